"""Examples → token ids and next-token labels, validation split, and batches (packed or padded).

Examples are the dicts of validated JSONL (see the dataset service): ``{"messages": [...]}`` (chat),
``{"prompt", "completion"}`` or ``{"text"}``. Labels are stored *already shifted*: ``labels[t]`` is the
token that position ``t`` must predict (``IGNORE`` where nothing is supervised), so a packed row needs
no shifting across example boundaries and the loss is a plain cross-entropy over positions.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

IGNORE = -100
T = TypeVar("T")


class DataError(ValueError):
    """An example cannot be turned into tokens; ``index`` is its 0-based position in the list given."""

    def __init__(self, index: int, message: str):
        super().__init__(f"example {index}: {message}")
        self.index = index


@dataclass(frozen=True)
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # shifted next-token targets, IGNORE where unsupervised
    full_length: int  # length before truncation

    @property
    def truncated(self) -> bool:
        return self.full_length > len(self.input_ids)

    @property
    def num_supervised(self) -> int:
        return sum(label != IGNORE for label in self.labels)

    def truncate(self, max_seq_len: int) -> TokenizedExample:
        """The first ``max_seq_len`` tokens; the last kept position has nothing left to predict."""
        if len(self.input_ids) <= max_seq_len:
            return self
        return TokenizedExample(self.input_ids[:max_seq_len], self.labels[: max_seq_len - 1] + [IGNORE], self.full_length)


def example_format(example: dict[str, Any]) -> str:
    """``"chat"``, ``"prompt_completion"`` or ``"text"``."""
    if "messages" in example:
        return "chat"
    if "prompt" in example and "completion" in example:
        return "prompt_completion"
    if "text" in example:
        return "text"
    raise ValueError("example has none of 'messages', 'prompt'+'completion', 'text'")


def _chat_tokens(messages: list[dict[str, Any]], tokenizer) -> tuple[list[int], list[bool]]:
    """Render with the tokenizer's chat template; supervise each assistant turn (content and end-of-turn
    marker) unless it has ``"weight": 0``. Turn spans come from rendering prefixes of the conversation,
    which works for any template whose renders of a prefix are prefixes of the full render."""
    if not tokenizer.chat_template:
        raise ValueError("the base model's tokenizer has no chat template; use prompt/completion or text")
    plain = [{"role": m["role"], "content": m["content"]} for m in messages]
    render = lambda msgs, gen=False: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    text = render(plain)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight", 1) == 0:
            continue
        before, through = render(plain[:i], True), render(plain[: i + 1])
        if not (text.startswith(through) and through.startswith(before)):
            raise ValueError("the chat template does not render conversations prefix by prefix; cannot find turns")
        spans.append((len(before), len(through)))
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    mask = [any(s <= tok_start < e for s, e in spans) for tok_start, _ in enc["offset_mapping"]]
    return list(enc["input_ids"]), mask


def tokenize_example(example: dict[str, Any], tokenizer, max_seq_len: int | None = None) -> TokenizedExample:
    """Token ids and shifted labels of one example, truncated (from the end) to ``max_seq_len``."""
    fmt = example_format(example)
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    if fmt == "chat":
        ids, mask = _chat_tokens(example["messages"], tokenizer)
    elif fmt == "prompt_completion":
        # Tokenized separately, as at inference time the prompt is encoded on its own.
        prompt = tokenizer(example["prompt"], add_special_tokens=True)["input_ids"]
        completion = tokenizer(example["completion"], add_special_tokens=False)["input_ids"] + eos
        ids, mask = list(prompt) + completion, [False] * len(prompt) + [True] * len(completion)
    else:
        ids = list(tokenizer(example["text"], add_special_tokens=True)["input_ids"]) + eos
        mask = [True] * len(ids)
    labels = [ids[t + 1] if mask[t + 1] else IGNORE for t in range(len(ids) - 1)] + [IGNORE]
    example = TokenizedExample(ids, labels, len(ids))
    return example if max_seq_len is None else example.truncate(max_seq_len)


def tokenize_examples(examples: Sequence[dict[str, Any]], tokenizer, max_seq_len: int | None = None) -> list[TokenizedExample]:
    """Tokenize all examples; raises DataError naming the first example that fails."""
    out = []
    for i, example in enumerate(examples):
        try:
            out.append(tokenize_example(example, tokenizer, max_seq_len))
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(i, str(e)) from e
    return out


@dataclass(frozen=True)
class TokenStats:
    num_examples: int
    total_tokens: int  # after truncation
    supervised_tokens: int
    max_length: int  # longest example before truncation
    over_length: tuple[int, ...]  # indices of examples longer than max_seq_len (truncated)
    unsupervised: tuple[int, ...]  # indices left with no supervised token (they teach nothing)


def token_stats(tokenized: Sequence[TokenizedExample]) -> TokenStats:
    return TokenStats(
        num_examples=len(tokenized),
        total_tokens=sum(len(t.input_ids) for t in tokenized),
        supervised_tokens=sum(t.num_supervised for t in tokenized),
        max_length=max((t.full_length for t in tokenized), default=0),
        over_length=tuple(i for i, t in enumerate(tokenized) if t.truncated),
        unsupervised=tuple(i for i, t in enumerate(tokenized) if t.num_supervised == 0),
    )


def split_validation(examples: Sequence[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Seeded, deterministic (train, validation) split keeping the original order inside each part.
    A positive fraction always holds out at least one example and leaves at least one for training."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError("validation fraction must be in [0, 1)")
    n = len(examples)
    k = 0 if fraction == 0 or n < 2 else min(n - 1, max(1, round(n * fraction)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def epoch_steps(num_examples: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Example indices of each optimizer step of one epoch: a seeded shuffle cut into global batches
    (the last one may be smaller). The same for every rank and every resume."""
    order = list(range(num_examples))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return [order[i : i + batch_size] for i in range(0, num_examples, batch_size)]


def micro_batches(step: Sequence[int], lengths: Sequence[int], world_size: int, rank: int, grad_accum: int) -> list[list[int]]:
    """This rank's share of one step, split into ``grad_accum`` micro-batches (some may be empty).
    Sorting by length first puts similar lengths together, so padding (or packing waste) stays small."""
    by_length = sorted(step, key=lambda i: (-lengths[i], i))
    mine = by_length[rank::world_size]
    size = -(-len(mine) // grad_accum) if mine else 0
    return [mine[i * size : (i + 1) * size] for i in range(grad_accum)]


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, seq]
    labels: torch.Tensor  # [rows, seq], shifted, IGNORE at padding / unsupervised
    position_ids: torch.Tensor  # [rows, seq], restarting at each packed example
    attention_mask: torch.Tensor | None  # [rows, 1, seq, seq] float (packed), [rows, seq] (padded) or None
    num_tokens: int  # real (non-padding) tokens
    num_supervised: int
    # Per row, the lengths of its examples in order (padding, if any, follows them): what per-example
    # attention needs instead of a dense mask.
    segments: list[list[int]] = field(default_factory=list)


def pack_rows(lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """First-fit decreasing: positions into ``lengths`` grouped into rows of at most ``max_seq_len`` tokens."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for r, free in enumerate(room):
            if lengths[i] <= free:
                rows[r].append(i)
                room[r] -= lengths[i]
                break
        else:
            rows.append([i])
            room.append(max_seq_len - lengths[i])
    return rows


def collate(examples: Sequence[TokenizedExample], pad_id: int, packing: bool, max_seq_len: int,
            mask_dtype: torch.dtype = torch.float32, dense_mask: bool = True, pad_to_multiple_of: int = 1) -> Batch:
    """Tensors for one micro-batch. Packed: examples share rows, with a block-diagonal causal float mask
    (0 allowed, dtype-min elsewhere) and restarting position ids, so no token attends across examples.
    Padded: one example per row, right padding and a 2D mask (None when nothing is padded).
    ``dense_mask=False`` leaves the packed mask out (None) for callers that attend per segment: the
    [rows, 1, seq, seq] square costs time and memory quadratic in the row width. ``pad_to_multiple_of``
    rounds the row width up, so that shapes repeat across batches (kernels that are compiled per shape,
    like oneDNN's bf16 matmuls, are then reused)."""
    groups = pack_rows([len(e.input_ids) for e in examples], max_seq_len) if packing else [[i] for i in range(len(examples))]
    width = max(sum(len(examples[i].input_ids) for i in g) for g in groups)
    width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full((len(groups), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    segments = torch.full((len(groups), width), -1, dtype=torch.long)  # -1 marks padding
    for r, group in enumerate(groups):
        at = 0
        for s, i in enumerate(group):
            n = len(examples[i].input_ids)
            ids[r, at : at + n] = torch.tensor(examples[i].input_ids)
            labels[r, at : at + n] = torch.tensor(examples[i].labels)
            positions[r, at : at + n] = torch.arange(n)
            segments[r, at : at + n] = s
            at += n
    real = segments >= 0
    if packing and not dense_mask:
        attention_mask = None
    elif packing:
        causal = torch.ones(width, width, dtype=torch.bool).tril()
        # Padding forms its own segment, so padded query rows still see themselves (no all-masked row).
        allowed = (segments[:, :, None] == segments[:, None, :]) & causal
        mask = torch.zeros(allowed.shape, dtype=mask_dtype).masked_fill_(~allowed, torch.finfo(mask_dtype).min)
        attention_mask = mask[:, None]
    else:
        attention_mask = None if bool(real.all()) else real.long()
    segments = [[len(examples[i].input_ids) for i in group] for group in groups]
    return Batch(ids, labels, positions, attention_mask, int(real.sum()), int((labels != IGNORE).sum()), segments)
