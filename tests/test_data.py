"""Examples → tokens and labels, validation split, step plans and packed/padded batches."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.services.trainer import base_models as bm
from tunery.services.trainer import data as d


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return bm.resolve_base_model(bm.TINY_LLAMA, tmp_path_factory.getbasetemp() / "models")


@pytest.fixture(scope="module")
def tokenizer(tiny_dir):
    return AutoTokenizer.from_pretrained(tiny_dir)


def supervised_text(example: d.TokenizedExample, tokenizer) -> str:
    return tokenizer.decode([label for label in example.labels if label != d.IGNORE])


CHAT = {"messages": [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hello!"},
    {"role": "assistant", "content": "Hi, how can I help?"},
    {"role": "user", "content": "Reset my password."},
    {"role": "assistant", "content": "Open the settings page."},
]}


def test_chat_supervises_only_assistant_turns(tokenizer):
    example = d.tokenize_example(CHAT, tokenizer)
    assert tokenizer.decode(example.input_ids) == tokenizer.apply_chat_template(CHAT["messages"], tokenize=False)
    assert supervised_text(example, tokenizer) == "Hi, how can I help?<|im_end|>\nOpen the settings page.<|im_end|>\n"
    # Labels are shifted: position t predicts token t+1.
    for t, label in enumerate(example.labels):
        if label != d.IGNORE:
            assert label == example.input_ids[t + 1]
    assert example.labels[-1] == d.IGNORE and not example.truncated


def test_chat_weight_zero_turn_is_not_supervised(tokenizer):
    messages = [dict(m) for m in CHAT["messages"]]
    messages[2]["weight"] = 0
    example = d.tokenize_example({"messages": messages}, tokenizer)
    assert supervised_text(example, tokenizer) == "Open the settings page.<|im_end|>\n"
    assert example.input_ids == d.tokenize_example(CHAT, tokenizer).input_ids


def test_prompt_completion_and_text(tokenizer):
    pc = d.tokenize_example({"prompt": "Capital of France?", "completion": " Paris."}, tokenizer)
    assert tokenizer.decode(pc.input_ids) == "Capital of France? Paris.<|im_end|>"
    assert supervised_text(pc, tokenizer) == " Paris.<|im_end|>"
    text = d.tokenize_example({"text": "The quick brown fox."}, tokenizer)
    assert text.num_supervised == len(text.input_ids) - 1  # every token but the first is predicted
    assert supervised_text(text, tokenizer) == tokenizer.decode(text.input_ids[1:])


def test_truncation_is_reported_and_keeps_labels_consistent(tokenizer):
    examples = [{"text": "short"}, {"text": "a much longer piece of text that will not fit " * 4}, CHAT]
    full = d.tokenize_examples(examples, tokenizer)
    cut = d.tokenize_examples(examples, tokenizer, max_seq_len=24)
    stats = d.token_stats(cut)
    assert stats.over_length == (1, 2) and stats.max_length == max(len(e.input_ids) for e in full)
    assert stats.total_tokens == sum(min(24, len(e.input_ids)) for e in full)
    assert stats.supervised_tokens == sum(e.num_supervised for e in cut)
    assert all(len(e.input_ids) <= 24 and e.labels[-1] == d.IGNORE for e in cut)
    assert cut[1].input_ids == full[1].input_ids[:24] and cut[1].labels[:23] == full[1].labels[:23]
    assert stats.unsupervised == (2,)  # the chat's first answer starts after token 24: nothing to learn
    assert d.token_stats(full).over_length == ()


def test_bad_example_names_its_index(tokenizer):
    with pytest.raises(d.DataError) as err:
        d.tokenize_examples([{"text": "ok"}, {"messages": [{"role": "user"}]}], tokenizer)
    assert err.value.index == 1 and "example 1" in str(err.value)
    with pytest.raises(d.DataError, match="example 0: .*none of"):
        d.tokenize_examples([{"input": "x"}], tokenizer)


def test_validation_split_is_seeded_and_deterministic():
    items = list(range(100))
    train, val = d.split_validation(items, 0.1, seed=7)
    assert len(val) == 10 and sorted(train + val) == items and train == sorted(train)
    assert d.split_validation(items, 0.1, seed=7) == (train, val)
    assert d.split_validation(items, 0.1, seed=8)[1] != val
    assert d.split_validation(items[:3], 0.01, seed=1)[1] != [] and d.split_validation(items, 0.0, 1) == (items, [])
    with pytest.raises(ValueError):
        d.split_validation(items, 1.0, 1)


def test_steps_cover_each_example_once_per_epoch_and_shard_exactly():
    steps = d.epoch_steps(10, 4, seed=3, epoch=0)
    assert [len(s) for s in steps] == [4, 4, 2] and sorted(sum(steps, [])) == list(range(10))
    assert d.epoch_steps(10, 4, seed=3, epoch=0) == steps != d.epoch_steps(10, 4, seed=3, epoch=1)
    lengths = [5, 9, 1, 7, 3, 8, 2, 6, 4, 10]
    for world, accum in [(1, 1), (2, 1), (2, 3), (3, 2)]:
        parts = [mb for rank in range(world) for mb in d.micro_batches(steps[0], lengths, world, rank, accum)]
        assert len(parts) == world * accum and sorted(sum(parts, [])) == sorted(steps[0])


def test_pack_rows_first_fit_decreasing():
    rows = d.pack_rows([5, 3, 8, 2, 6], max_seq_len=10)
    assert sorted(sum(rows, [])) == [0, 1, 2, 3, 4]
    assert all(sum([5, 3, 8, 2, 6][i] for i in row) <= 10 for row in rows) and len(rows) == 3


def test_collate_packed_mask_is_block_diagonal_causal():
    a = d.TokenizedExample([1, 2, 3], [2, 3, d.IGNORE], 3)
    b = d.TokenizedExample([4, 5], [d.IGNORE, d.IGNORE], 2)
    batch = d.collate([a, b], pad_id=0, packing=True, max_seq_len=8)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4, 5]] and batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    allowed = batch.attention_mask[0, 0] == 0
    expected = torch.tensor([[1, 0, 0, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]).bool()
    assert torch.equal(allowed, expected) and batch.num_tokens == 5 and batch.num_supervised == 2
    padded = d.collate([a, b], pad_id=0, packing=False, max_seq_len=8)
    assert padded.input_ids.tolist() == [[1, 2, 3], [4, 5, 0]] and padded.attention_mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert d.collate([a], pad_id=0, packing=False, max_seq_len=8).attention_mask is None


def test_packed_logits_and_loss_match_unpacked(tiny_dir, tokenizer):
    model = AutoModelForCausalLM.from_pretrained(tiny_dir).eval()
    examples = d.tokenize_examples([CHAT, {"prompt": "2+2=", "completion": " 4"}, {"text": "The weather is sunny."}], tokenizer)
    packed = d.collate(examples, tokenizer.pad_token_id, packing=True, max_seq_len=512)
    assert packed.input_ids.shape[0] == 1  # all three share one row
    with torch.no_grad():
        logits = model(input_ids=packed.input_ids, attention_mask=packed.attention_mask,
                       position_ids=packed.position_ids).logits[0]
        at = 0
        for e in sorted(examples, key=lambda e: -len(e.input_ids)):  # pack order: longest first
            n = len(e.input_ids)
            alone = model(input_ids=torch.tensor([e.input_ids])).logits[0]
            assert (logits[at : at + n] - alone).abs().max() < 1e-4
            at += n
        padded = d.collate(examples, tokenizer.pad_token_id, packing=False, max_seq_len=512)
        padded_logits = model(input_ids=padded.input_ids, attention_mask=padded.attention_mask).logits
    ce = torch.nn.functional.cross_entropy
    loss_packed = ce(logits, packed.labels[0], ignore_index=d.IGNORE, reduction="sum") / packed.num_supervised
    loss_padded = ce(padded_logits.flatten(0, 1), padded.labels.flatten(), ignore_index=d.IGNORE, reduction="sum") / padded.num_supervised
    assert packed.num_supervised == padded.num_supervised == sum(e.num_supervised for e in examples)
    assert abs(loss_packed.item() - loss_padded.item()) < 1e-5
