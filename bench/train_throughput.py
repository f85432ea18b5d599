"""Benchmarks 1 and 2 of issue 9: LoRA training throughput of Tunery's recipe vs a plain Hugging Face
script, and how close Tunery gets to the machine's matmul peak.

The baseline is what a user would write: ``transformers.Trainer`` + ``peft``, padding to the longest
example of each batch, fp32, the same LoRA config, batch size, learning rate, schedule and steps. Tunery is
``run_training`` (services/tunery/services/trainer/recipe.py), in bf16 autocast (opt-in) and in fp32 (its
default). Both train on the same deterministic, variable-length support-chat
dataset with the same supervised tokens (assistant turns), alternating in one invocation, and both adapters
are scored by the same plain fp32 evaluator on the same held-out conversations.

    .venv/bin/python bench/train_throughput.py            # smollm2-135m-instruct and tiny-llama (~10 min, ~9 GB peak)
    .venv/bin/python bench/train_throughput.py --quick    # tiny-llama, a few steps (~1 min)

Prints a table and writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tunery.services.trainer import recipe  # first: it sets the worker's OpenMP spin before torch loads

import torch
import torch.nn.functional as F

from tunery.services.kit.settings import Settings
from tunery.services.trainer import base_models, data
from tunery.services.trainer import hyperparameters as hyper

RESULTS = Path(__file__).resolve().parent / "results"
# The tiny random-init model needs a larger rate than the LoRA default to move in ten steps (as in the tests).
LEARNING_RATES = {base_models.TINY_LLAMA: 3e-3}

# ------------------------------------------------------------------ data
PRODUCTS = ["router", "laptop", "phone plan", "subscription", "printer", "smart watch", "gift card", "headphones",
            "coffee machine", "streaming account"]
PROBLEMS = ["has not arrived", "stopped working", "was charged twice", "shows the wrong amount on the invoice",
            "cannot be activated", "keeps disconnecting", "arrived damaged", "was cancelled without notice"]
DETAILS = ["I already tried restarting it.", "This is the second time this month.", "I need it for work tomorrow.",
           "My account email has not changed.", "I ordered it last week.", "The tracking page shows no update.",
           "Could you please check what is going on?", "I have the receipt here if you need it.",
           "Your chat bot could not help me.", "I would prefer a refund over a replacement."]
FOLLOW_UPS = ["It still does not work.", "Thanks. What happens next?", "Can you confirm the refund?",
              "How long will that take?", "Do I need to send the old one back?"]
ANSWERS = ["Please open the settings page and choose the account tab.", "I have reset the connection on our side.",
           "A replacement has been scheduled at no cost to you.", "The duplicate charge will be refunded within five days.",
           "You will receive a confirmation email shortly.", "Let me know if the problem comes back.",
           "I have added a note to your account so the next agent sees it.", "The courier will call you before delivery.",
           "There is no need to return the old device.", "Your refund reference is the same as the order number."]


def support_conversation(rng: random.Random) -> dict:
    """One chat: 1-2 user/assistant exchanges whose lengths follow a log-normal scale, like real support
    threads (most short, a long tail; ~75-650 SmolLM2 tokens, median ~130)."""
    order, product, problem = rng.randint(10000, 99999), rng.choice(PRODUCTS), rng.choice(PROBLEMS)
    scale = rng.lognormvariate(-0.1, 0.6)
    messages = []
    for turn in range(rng.choice([1, 1, 1, 2])):
        user = f"Hello, my {product} (order {order}) {problem}." if turn == 0 else rng.choice(FOLLOW_UPS)
        user = " ".join([user] + [rng.choice(DETAILS) for _ in range(round(scale * rng.uniform(0.5, 4)))])
        answer = " ".join([f"I am sorry about the trouble with order {order}."] +
                          [rng.choice(ANSWERS) for _ in range(max(1, round(scale * rng.uniform(1.5, 5))))])
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


def dataset(n_train: int, n_val: int, seed: int = 0) -> tuple[list[dict], list[dict]]:
    rng = random.Random(seed)
    examples = [support_conversation(rng) for _ in range(n_train + n_val)]
    return examples[:n_train], examples[n_train:]


# ------------------------------------------------------------------ shared measurements
@dataclass
class Run:
    name: str
    real_tokens: int
    processed_tokens: int  # including padding
    seconds: float  # first step start → last step end
    validation_loss: float  # common fp32 evaluator
    own_validation_loss: float | None = None  # as the trainer itself reports it

    @property
    def tokens_per_s(self) -> float:
        return self.real_tokens / self.seconds


def heldout_loss(model, examples: list[data.TokenizedExample]) -> float:
    """Mean cross-entropy over supervised tokens, plain fp32 full-logit forward per example (no Tunery code)."""
    model.eval()
    total = count = 0
    with torch.no_grad():
        for e in examples:
            logits = model(input_ids=torch.tensor([e.input_ids])).logits[0].float()
            total += F.cross_entropy(logits, torch.tensor(e.labels), ignore_index=data.IGNORE, reduction="sum").item()
            count += e.num_supervised
    return total / count


def matmul_peak(dtype: torch.dtype, sizes=(2048, 3072), repeats: int = 5) -> float:
    """Best FLOP/s of several square matmuls at the current thread count."""
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
        a @ b
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * n**3 / (time.perf_counter() - t))
    return best


def training_flops(model_dir: Path, examples: list[data.TokenizedExample], lora_params: int) -> float:
    """Useful FLOPs of one epoch of LoRA training on real tokens: 4·N per token for the frozen linear layers
    (forward + input gradient), 6 per LoRA parameter (they also get weight gradients), the output head
    (4·hidden·vocab) only where a token is supervised, and causal attention (6·L²·hidden per layer)."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linear = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m is not head)
    tokens = sum(len(e.input_ids) for e in examples)
    supervised = sum(e.num_supervised for e in examples)
    attention = sum(6 * len(e.input_ids) ** 2 * config.hidden_size * config.num_hidden_layers for e in examples)
    return tokens * (4 * linear + 6 * lora_params) + supervised * 4 * head.weight.numel() + attention


# ------------------------------------------------------------------ the plain Hugging Face baseline
def run_baseline(model_dir: Path, hp: hyper.ResolvedHyperparameters, train: list[data.TokenizedExample],
                 val: list[data.TokenizedExample], work: Path) -> Run:
    """transformers.Trainer + peft as the docs show it: fp32, DataCollatorForSeq2Seq padding to the longest."""
    from peft import LoraConfig, get_peft_model
    from transformers import (AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq, Trainer,
                              TrainerCallback, TrainingArguments)

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    torch.manual_seed(hp.seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha, lora_dropout=hp.lora_dropout,
                                             target_modules="all-linear", task_type="CAUSAL_LM"))
    # Hugging Face labels are unshifted (the model shifts): label[t] is token t where supervised.
    rows = [{"input_ids": e.input_ids, "attention_mask": [1] * len(e.input_ids), "labels": [data.IGNORE] + e.labels[:-1]}
            for e in train]
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=data.IGNORE)
    padded: list[int] = []

    def collate(features):
        batch = collator(features)
        padded.append(batch["input_ids"].numel())
        return batch

    class Clock(TrainerCallback):
        start = end = None

        def on_step_begin(self, args, state, control, **kwargs):
            self.start = self.start or time.monotonic()

        def on_step_end(self, args, state, control, **kwargs):
            self.end = time.monotonic()

    clock = Clock()
    args = TrainingArguments(
        output_dir=str(work / "hf"), per_device_train_batch_size=hp.batch_size, num_train_epochs=hp.epochs,
        learning_rate=hp.learning_rate, lr_scheduler_type=hp.lr_scheduler, warmup_steps=hp.warmup_steps,
        weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm, seed=hp.seed, save_strategy="no",
        logging_steps=10, report_to="none", disable_tqdm=True, use_cpu=True, dataloader_num_workers=0,
    )
    Trainer(model=model, args=args, train_dataset=rows, data_collator=collate, callbacks=[clock]).train()
    return Run("baseline (HF Trainer, fp32, padded)", sum(len(e.input_ids) for e in train), sum(padded),
               clock.end - clock.start, heldout_loss(model, val))


# ------------------------------------------------------------------ Tunery
def run_tunery(model_id: str, model_dir: Path, hp: hyper.ResolvedHyperparameters, train: list[dict],
               val: list[dict], val_tokens: list[data.TokenizedExample], work: Path, bf16: bool) -> Run:
    from transformers import AutoTokenizer

    class Clock(recipe.TrainingCallbacks):
        start = end = None

        def should_stop(self):  # asked right before each step
            self.start = self.start or time.monotonic()
            return None

        def on_step(self, *args, **kwargs):
            self.end = time.monotonic()

    clock = Clock()
    out = work / ("tunery-bf16" if bf16 else "tunery-fp32")
    cfg = recipe.RecipeConfig(model_id, str(model_dir), hp, str(out / "adapter"), str(out / "checkpoints"), bf16=bf16)
    result = recipe.run_training(cfg, train, val, clock)
    tokens = int(result.metrics["trained_tokens"])
    # Tokens it pushed through the model: each micro-batch is one packed row, in bf16 on CPU rounded up to a
    # multiple of 64 tokens (see LoRARecipe._collate), replayed here from the recipe's own step plan.
    multiple = recipe.BF16_CPU_WIDTH_MULTIPLE if bf16 else 1
    lengths = [len(e.input_ids) for e in data.tokenize_examples(train, AutoTokenizer.from_pretrained(model_dir), hp.max_seq_len)]
    processed = sum(-(-sum(lengths[i] for i in micro) // multiple) * multiple
                    for epoch in range(hp.epochs) for step in data.epoch_steps(len(lengths), hp.batch_size, hp.seed, epoch)
                    for micro in data.micro_batches(step, lengths, 1, 0, hp.gradient_accumulation_steps) if micro)
    model = recipe.load_adapter(str(model_dir), result.adapter_dir)
    return Run(f"tunery ({'bf16 autocast' if bf16 else 'fp32'}, packed)", tokens, processed, clock.end - clock.start,
               heldout_loss(model, val_tokens), result.metrics.get("validation_loss"))


# ------------------------------------------------------------------ driver
def bench_model(model_id: str, cache: Path, n_train: int, n_val: int, batch: int, variants: list[str],
                work: Path) -> dict:
    from transformers import AutoTokenizer

    model_dir = base_models.resolve_base_model(model_id, cache)
    train, val = dataset(n_train, n_val)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    train_tok, val_tok = data.tokenize_examples(train, tokenizer), data.tokenize_examples(val, tokenizer)
    lengths = [len(e.input_ids) for e in train_tok]
    hp = hyper.resolve_hyperparameters(hyper.Hyperparameters(epochs=1, batch_size=batch, learning_rate=LEARNING_RATES.get(model_id)), example_lengths=lengths,
                                       context_length=base_models.model_shape(model_dir).context_length)
    runs: dict[str, Run] = {}
    for variant in variants:  # alternating: each variant once, in order, on the same data and settings
        if variant == "baseline":
            runs[variant] = run_baseline(model_dir, hp, train_tok, val_tok, work)
        else:
            runs[variant] = run_tunery(model_id, model_dir, hp, train, val, val_tok, work, bf16=variant == "tunery-bf16")
        print(f"  {model_id} {variant}: {runs[variant].tokens_per_s:.1f} real tok/s", flush=True)
    flops = training_flops(model_dir, train_tok, _lora_params(model_dir, hp))
    return {"model": model_id, "train_examples": n_train, "validation_examples": n_val,
            "steps": math.ceil(n_train / batch) * hp.epochs, "hyperparameters": hp.values(),
            "lengths": {"min": min(lengths), "median": sorted(lengths)[len(lengths) // 2], "mean": sum(lengths) / len(lengths),
                        "max": max(lengths)},
            "epoch_flops": flops, "runs": {k: {**vars(r), "tokens_per_s": r.tokens_per_s} for k, r in runs.items()}}


def _lora_params(model_dir: Path, hp: hyper.ResolvedHyperparameters) -> int:
    """LoRA parameters peft creates for ``all-linear`` at this rank, counted on a meta-device model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    model = get_peft_model(model, LoraConfig(r=hp.lora_rank, lora_alpha=hp.lora_alpha,
                                             target_modules=recipe.linear_module_names(model)))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def cpu_model() -> str:
    """The CPU's model name: the peaks and ratios differ a lot between the machines this runs on."""
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny-llama only, 4 steps: a smoke test")
    parser.add_argument("--models", nargs="+", default=[base_models.SMOLLM2, base_models.TINY_LLAMA])
    parser.add_argument("--train-examples", type=int, default=64)
    parser.add_argument("--validation-examples", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=["baseline", "tunery-bf16", "tunery-fp32"],
                        choices=["baseline", "tunery-bf16", "tunery-fp32"])
    parser.add_argument("--cache-dir", type=Path, default=None, help="base-model cache (default: the local stack's)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.train_examples, args.validation_examples = [base_models.TINY_LLAMA], 32, 8
    cache = args.cache_dir or Settings().model_cache()
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak ({threads} threads): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s")
    work = Path(tempfile.mkdtemp(prefix="tunery-bench-"))
    try:
        models = [bench_model(m, cache, args.train_examples, args.validation_examples, args.batch_size, args.variants, work)
                  for m in args.models]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    # Measured again at the end, keeping the best: on a shared machine one measurement may catch a busy moment.
    peaks = {"fp32": max(peaks["fp32"], matmul_peak(torch.float32)), "bf16": max(peaks["bf16"], matmul_peak(torch.bfloat16))}
    result = {"benchmark": "train_throughput", "quick": args.quick, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": threads,
                          "torch": torch.__version__, "load_average_before": load_before,
                          "load_average_after": os.getloadavg()},
              "matmul_peak_flops": peaks, "models": models}
    for m in models:
        base = m["runs"].get("baseline")
        for name, run in m["runs"].items():
            dtype = "bf16" if name == "tunery-bf16" else "fp32"
            run["achieved_flops"] = m["epoch_flops"] / run["seconds"]
            run["fraction_of_peak"] = run["achieved_flops"] / peaks[dtype]
            run["peak_dtype"] = dtype
            if base:
                run["speedup_vs_baseline"] = run["tokens_per_s"] / base["tokens_per_s"]
                run["validation_loss_vs_baseline"] = run["validation_loss"] / base["validation_loss"] - 1
    print_table(result)
    RESULTS.mkdir(exist_ok=True)
    name = "train_throughput-quick" if args.quick else "train_throughput"
    for path in (RESULTS / f"{name}.json", RESULTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"):
        path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {RESULTS / (name + '.json')}")


def print_table(result: dict) -> None:
    header = (f"{'model':<22} {'trainer':<36} {'real tok/s':>10} {'× base':>7} {'pad %':>6} {'val loss':>9} "
              f"{'Δ loss':>7} {'GFLOP/s':>8} {'% peak':>7}")
    print("\n" + header + "\n" + "-" * len(header))
    for m in result["models"]:
        for name, r in m["runs"].items():
            pad = 100 * (1 - r["real_tokens"] / r["processed_tokens"])
            speed = f"{r['speedup_vs_baseline']:.2f}" if "speedup_vs_baseline" in r else "-"
            delta = f"{100 * r['validation_loss_vs_baseline']:+.1f}%" if "validation_loss_vs_baseline" in r else "-"
            print(f"{m['model']:<22} {r['name']:<36} {r['tokens_per_s']:>10.1f} {speed:>7} {pad:>5.0f}% "
                  f"{r['validation_loss']:>9.4f} {delta:>7} {r['achieved_flops'] / 1e9:>8.1f} "
                  f"{100 * r['fraction_of_peak']:>5.1f}% ({r['peak_dtype']})")
    peaks = result["matmul_peak_flops"]
    print(f"matmul peak: fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s "
          f"({result['machine']['threads']} threads); load average before {result['machine']['load_average_before'][0]:.2f}, "
          f"after {result['machine']['load_average_after'][0]:.2f}")


if __name__ == "__main__":
    main()
