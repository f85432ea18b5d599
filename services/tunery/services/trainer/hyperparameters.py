"""Hyperparameters: every unset value becomes a concrete one plus the rule that chose it, and a plan
(steps, tokens, duration, memory) is estimated from token counts before anything runs.

Meaning of the batch knobs: ``batch_size`` is the *global* number of examples per optimizer step. Each step's
examples are split across processes, then into ``gradient_accumulation_steps`` micro-batches per process;
losses are normalized by the step's supervised tokens, so neither knob changes what is learned (only memory).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields

from .base_models import ModelShape
from .data import TokenStats

SCHEDULERS = ("linear", "cosine", "constant")
ALL_LINEAR = "all-linear"  # peft's name for every linear layer except the output head
MICRO_BATCH_TOKEN_BUDGET = 8192  # tokens per micro-batch that keep activations well under a few GiB on CPU


class HyperparameterError(ValueError):
    """A user-given value is out of range; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


@dataclass
class Hyperparameters:
    """Requested values; None means auto."""

    epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    lr_scheduler: str | None = None
    warmup_steps: int | None = None
    weight_decay: float | None = None
    max_grad_norm: float | None = None
    max_seq_len: int | None = None
    gradient_accumulation_steps: int | None = None
    seed: int | None = None
    packing: bool | None = None
    lora_rank: int | None = None
    lora_alpha: float | None = None
    lora_dropout: float | None = None
    lora_target_modules: list[str] | None = None


@dataclass(frozen=True)
class ResolvedHyperparameters:
    """Concrete values; ``reasons[name]`` says why each has its value ("set by the user" or the auto rule)."""

    epochs: int
    batch_size: int
    learning_rate: float
    lr_scheduler: str
    warmup_steps: int
    weight_decay: float
    max_grad_norm: float
    max_seq_len: int
    gradient_accumulation_steps: int
    seed: int
    packing: bool
    lora_rank: int
    lora_alpha: float
    lora_dropout: float
    lora_target_modules: tuple[str, ...]
    reasons: dict[str, str] = field(default_factory=dict, compare=False)

    def values(self) -> dict:
        """Name → value (JSON-friendly), without reasons."""
        out = asdict(self)
        out.pop("reasons")
        out["lora_target_modules"] = list(self.lora_target_modules)
        return out


def _check(hp: Hyperparameters, context_length: int) -> None:
    rules = {
        "epochs": lambda v: 1 <= v <= 1000,
        "batch_size": lambda v: 1 <= v <= 65536,
        "learning_rate": lambda v: 0 < v <= 1,
        "lr_scheduler": lambda v: v in SCHEDULERS,
        "warmup_steps": lambda v: v >= 0,
        "weight_decay": lambda v: 0 <= v <= 1,
        "max_grad_norm": lambda v: v > 0,
        "max_seq_len": lambda v: 8 <= v <= context_length,
        "gradient_accumulation_steps": lambda v: 1 <= v <= 1024,
        "seed": lambda v: 0 <= v < 2**63,
        "lora_rank": lambda v: 1 <= v <= 1024,
        "lora_alpha": lambda v: v > 0,
        "lora_dropout": lambda v: 0 <= v < 1,
        "lora_target_modules": lambda v: len(v) > 0 and all(isinstance(m, str) and m for m in v),
    }
    hint = {
        "lr_scheduler": f"one of {', '.join(SCHEDULERS)}",
        "max_seq_len": f"between 8 and the model's context length {context_length}",
        "lora_dropout": "in [0, 1)",
        "learning_rate": "in (0, 1]",
        "lora_target_modules": "a non-empty list of module names",
    }
    for name, ok in rules.items():
        value = getattr(hp, name)
        if value is not None and not ok(value):
            raise HyperparameterError(name, f"{value!r} is out of range; expected {hint.get(name, 'a valid value')}")


def resolve_hyperparameters(requested: Hyperparameters, *, example_lengths: Sequence[int], context_length: int,
                            num_processes: int = 1) -> ResolvedHyperparameters:
    """Resolve each unset field with a rule tuned for small datasets (50–100 examples get several epochs,
    small batches and a LoRA-typical learning rate). ``example_lengths`` are the untruncated token lengths
    of the training examples. Raises HyperparameterError for out-of-range user values."""
    if not example_lengths:
        raise HyperparameterError("training_data", "there are no training examples")
    _check(requested, context_length)
    n, longest = len(example_lengths), max(example_lengths)
    reasons: dict[str, str] = {}
    values: dict = {}

    def pick(name: str, auto, reason: str):
        given = getattr(requested, name)
        values[name] = given if given is not None else auto
        reasons[name] = "set by the user" if given is not None else reason
        return values[name]

    epochs = pick("epochs", min(8, max(3, round(300 / n))) if n < 1000 else max(1, min(3, round(30000 / n))),
                  f"{n} examples: about 300 example passes for small sets, 3 epochs at most for large ones"
                  if n < 1000 else f"{n} examples: at most ~30,000 example passes, between 1 and 3 epochs")
    batch = pick("batch_size", min(16, max(1, 2 ** int(math.log2(max(1, n // 10))))),
                 f"largest power of two ≤ {n}/10, at most 16: small datasets need enough optimizer steps")
    pick("learning_rate", 2e-4, "2e-4 is the usual LoRA learning rate (adapters start at zero)")
    pick("lr_scheduler", "cosine", "cosine decay after warmup")
    steps = math.ceil(n / batch) * epochs
    pick("warmup_steps", max(1, min(100, round(0.05 * steps))), f"5% of the {steps} steps (at least 1, at most 100)")
    pick("weight_decay", 0.0, "LoRA adapters start at zero; decay would only pull the update back")
    pick("max_grad_norm", 1.0, "clip the gradient norm at 1.0 to absorb spikes from small batches")
    fit = max(64, 64 * math.ceil(longest / 64))
    cap = min(context_length, 4096)
    if fit <= cap:
        reason = f"longest example has {longest} tokens; rounded up to a multiple of 64, nothing is truncated"
    else:
        over = sum(length > cap for length in example_lengths)
        reason = f"longest example has {longest} tokens; capped at {cap}, {over} example(s) will be truncated"
    max_len = pick("max_seq_len", min(fit, cap), reason)
    per_process = math.ceil(batch / num_processes)
    pick("gradient_accumulation_steps", max(1, min(per_process, math.ceil(per_process * max_len / MICRO_BATCH_TOKEN_BUDGET))),
         f"keep each micro-batch ({per_process} examples per process × up to {max_len} tokens) "
         f"under {MICRO_BATCH_TOKEN_BUDGET} tokens")
    pick("seed", 42, "fixed seed so that reruns are reproducible")
    pick("packing", True, "packing removes padding; each example attends only to itself, so the loss is unchanged")
    rank = pick("lora_rank", 16, "rank 16 is ample for tens to thousands of examples")
    pick("lora_alpha", float(2 * rank), "alpha = 2 × rank")
    pick("lora_dropout", 0.05, "light dropout against over-fitting small datasets")
    pick("lora_target_modules", [ALL_LINEAR], "all linear layers of the transformer blocks")
    values["lora_target_modules"] = tuple(values["lora_target_modules"])
    values["lora_alpha"] = float(values["lora_alpha"])
    return ResolvedHyperparameters(**values, reasons=reasons)


@dataclass(frozen=True)
class TrainingPlan:
    steps_per_epoch: int
    total_steps: int
    train_tokens_per_epoch: int
    supervised_tokens_per_epoch: int
    total_train_tokens: int  # tokens processed over all epochs
    validation_tokens: int
    num_evaluations: int
    estimated_duration_s: float
    estimated_peak_memory_bytes: int

    def values(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# What the 2-core development machine sustains for LoRA training in fp32 (SmolLM2-135M at ~160 tok/s).
CPU_TRAINING_FLOPS = 8e10


def lora_parameter_count(shape: ModelShape, rank: int) -> int:
    """LoRA parameters on all linear layers of a Llama-style block (q, k, v, o, gate, up, down); kv
    projections are counted at full width, an upper bound for grouped-query attention."""
    h, i = shape.hidden_size, shape.intermediate_size
    return shape.num_layers * rank * (4 * (h + h) + 2 * (h + i) + (i + h))


def estimate_plan(hp: ResolvedHyperparameters, train: TokenStats, shape: ModelShape, *,
                  validation: TokenStats | None = None, eval_interval_steps: int | None = None,
                  num_processes: int = 1, flops_per_second: float = CPU_TRAINING_FLOPS) -> TrainingPlan:
    """Steps, tokens, duration and peak memory (per process) estimated from token counts.
    Training costs ≈ 4·N FLOPs per token for LoRA (forward + activation gradients, no weight gradients
    for the frozen base) plus attention; evaluation ≈ 2·N per token."""
    steps_per_epoch = math.ceil(train.num_examples / hp.batch_size)
    total_steps = steps_per_epoch * hp.epochs
    val_tokens = validation.total_tokens if validation else 0
    evals = (total_steps // eval_interval_steps if eval_interval_steps else 0) + (1 if val_tokens else 0)
    avg_len = train.total_tokens / max(1, train.num_examples)
    attention = 6 * shape.num_layers * avg_len * shape.hidden_size  # scores and weighted sums, fwd + bwd
    flops = train.total_tokens * hp.epochs * (4 * shape.parameter_count + attention) + evals * val_tokens * 2 * shape.parameter_count
    # Per-token activations kept for backward per layer (~12·hidden + 4·intermediate floats), the attention
    # scores of one micro-batch, fp32 base weights, LoRA weights with gradients and two Adam moments.
    micro_examples = math.ceil(hp.batch_size / num_processes / hp.gradient_accumulation_steps)
    micro_tokens = micro_examples * (math.ceil(avg_len) if hp.packing else hp.max_seq_len)  # padding: worst case
    heads = max(1, shape.hidden_size // 64)
    activations = micro_tokens * shape.num_layers * (12 * shape.hidden_size + 4 * shape.intermediate_size) * 4
    scores = shape.num_layers * heads * micro_tokens * hp.max_seq_len * 4 * 2
    head = micro_tokens * shape.vocab_size * 4 * 2  # logits at supervised positions and their gradient
    memory = 4 * shape.parameter_count + 16 * lora_parameter_count(shape, hp.lora_rank) + activations + scores + head
    return TrainingPlan(
        steps_per_epoch=steps_per_epoch,
        total_steps=total_steps,
        train_tokens_per_epoch=train.total_tokens,
        supervised_tokens_per_epoch=train.supervised_tokens,
        total_train_tokens=train.total_tokens * hp.epochs,
        validation_tokens=val_tokens,
        num_evaluations=evals,
        estimated_duration_s=round(flops / flops_per_second, 1),
        estimated_peak_memory_bytes=int(memory * 1.2 + 300 * 2**20),  # +20% and the Python/torch runtime
    )
