"""The base-model catalogue: tiny model built deterministically, local folders, digests, SmolLM2 (slow)."""

import json
import os
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.services.trainer import base_models as bm

@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return bm.resolve_base_model(bm.TINY_LLAMA, tmp_path_factory.getbasetemp() / "models")


def test_catalogue_lists_builtin_models_without_building(tmp_path):
    entries = {e.id: e for e in bm.list_base_models(tmp_path)}
    assert set(entries) == {bm.TINY_LLAMA, bm.SMOLLM2}
    tiny = entries[bm.TINY_LLAMA]
    assert tiny.available and tiny.has_chat_template and not tiny.cached
    assert 100_000 < tiny.parameter_count < 1_000_000 and tiny.context_length == 2048
    assert entries[bm.SMOLLM2].parameter_count == 134_515_008 and entries[bm.SMOLLM2].context_length == 8192
    assert list(tmp_path.iterdir()) == []  # listing is cheap: nothing was built


def test_tiny_model_is_deterministic_and_cached(tiny_dir, tmp_path):
    assert bm.describe_base_model(bm.TINY_LLAMA, tiny_dir.parent).cached
    again = bm.resolve_base_model(bm.TINY_LLAMA, tmp_path)
    assert bm.weight_digest(again) == bm.weight_digest(tiny_dir)
    assert (again / "tokenizer.json").read_bytes() == (tiny_dir / "tokenizer.json").read_bytes()
    assert [p.name for p in tmp_path.iterdir()] == [again.name]  # no temporary folders left behind
    config = json.loads((tiny_dir / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["initializer_range"]) == (128, 2, 0.1)


def test_tiny_model_loads_and_has_a_chat_template(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_dir)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    # Byte-level BPE: any text round-trips, including characters never seen in training.
    sample = "Grüße, 東京! {\"x\": 1}"
    assert tokenizer.decode(tokenizer(sample)["input_ids"]) == sample
    logits = model(torch.tensor([tokenizer(sample)["input_ids"]])).logits
    assert logits.shape[-1] == len(tokenizer) and torch.isfinite(logits).all()


def test_local_folder_is_a_base_model(tiny_dir, tmp_path):
    folder = tmp_path / "my-model"
    shutil.copytree(tiny_dir, folder)
    info = bm.describe_base_model(str(folder))
    assert info.available and info.has_chat_template
    assert info.parameter_count == bm.describe_base_model(bm.TINY_LLAMA).parameter_count
    assert bm.resolve_base_model(str(folder), tmp_path / "cache") == folder
    assert bm.model_shape(folder).hidden_size == 128


def test_unknown_or_broken_models_are_rejected(tmp_path):
    with pytest.raises(bm.BaseModelError, match="unknown base model 'no-such-model'"):
        bm.resolve_base_model("no-such-model", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(bm.BaseModelError, match="unknown base model"):
        bm.describe_base_model(str(tmp_path / "empty"))
    with pytest.raises(bm.BaseModelError, match="no \\*.safetensors"):
        bm.weight_digest(tmp_path / "empty")
    with pytest.raises(bm.BaseModelError):
        bm.describe_base_model("some-org/not-in-any-cache")


def test_weight_digest_changes_with_weights(tiny_dir, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(tiny_dir, folder)
    before = bm.weight_digest(folder)
    assert before.startswith("sha256:") and len(before) == 7 + 64
    with (folder / "model.safetensors").open("r+b") as f:
        f.seek(-1, os.SEEK_END)
        last = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([last[0] ^ 1]))
    assert bm.weight_digest(folder) != before


@pytest.mark.slow
def test_smollm2_converts_once_to_safetensors(tmp_path):
    folder = bm.resolve_base_model(bm.SMOLLM2, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config
    shape = bm.model_shape(folder)
    assert shape == bm._SMOLLM2_SHAPE
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert "<|im_start|>assistant" in tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True)
    digest = bm.weight_digest(folder)
    assert bm.resolve_base_model(bm.SMOLLM2, tmp_path) == folder and bm.weight_digest(folder) == digest
