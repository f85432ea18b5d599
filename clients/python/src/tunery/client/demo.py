"""`tunery demo`: the main job end to end on a bundled dataset.

Starts the local stack when it is not running, uploads support replies written in the Kettle & Co. house
style (greeting, numbered steps, sign-off) plus a held-out set, plans and trains a LoRA adapter, follows
the job live, sets the `production` alias, downloads the adapter, loads it with PEFT and prints base vs
tuned answers to held-out questions with the held-out loss of each. Needs the `tunery` services
distribution (torch, transformers, peft) for the local stack and the before/after comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from importlib import resources
from pathlib import Path
from typing import Any

DATA = resources.files("tunery.client") / "demo_data"
TRAIN_FILE, HELDOUT_FILE = "support_train.jsonl", "support_heldout.jsonl"
DEFAULT_BASE_MODEL = "smollm2-135m-instruct"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-model", default=DEFAULT_BASE_MODEL,
                        help=f"catalog id to tune (default {DEFAULT_BASE_MODEL}; tiny-llama for a fast run)")
    parser.add_argument("--dataset", default="support-demo", help="dataset id for the training examples")
    parser.add_argument("--model", default="support-bot", help="registry model that receives the adapter")
    parser.add_argument("--epochs", type=int, help="override the automatic epoch count")
    parser.add_argument("--budget-minutes", type=float, default=12.0,
                        help="fewer epochs than auto when the plan's estimate exceeds this (default 12)")
    parser.add_argument("--output", help="folder for the downloaded adapter (default $TUNERY_HOME/demo/<model>)")
    parser.add_argument("--samples", type=int, default=3, help="held-out questions to answer before/after")
    parser.add_argument("--max-new-tokens", type=int, default=120, help="length of each sample answer")


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _ensure_stack() -> None:
    """Start the local stack unless every component already reports SERVING."""
    try:
        from tunery.services import stack
        from tunery.services.kit.settings import load
    except ImportError:
        raise RuntimeError("the demo needs the Tunery services installed (pip install tunery)") from None
    settings = load([])[0]
    rows = stack.status(settings)
    if rows and all(r["health"] == "SERVING" for r in rows) and stack.client_config_file(settings).exists():
        _say("local stack is running")
        return
    if any(r["pid"] for r in rows):  # a stack from this home half-runs: restart it cleanly
        stack.down(settings)
    _say("starting the local stack (object store + dataset, trainer and registry services)…")
    stack.up(settings, _say)


def _messages(path: Path) -> list[list[dict[str, str]]]:
    return [json.loads(line)["messages"] for line in path.read_text().splitlines() if line.strip()]


def _compare(base_model: str, adapter_dir: Path, heldout: list[list[dict[str, str]]], samples: int,
             max_new_tokens: int) -> dict[str, Any]:
    """Held-out loss of the base model and of base + adapter, and greedy answers of both."""
    import warnings

    import torch
    import transformers
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.utils.logging.disable_progress_bar()  # the demo prints its own progress
    warnings.filterwarnings("ignore", category=FutureWarning)

    from tunery.services.kit.settings import load
    from tunery.services.trainer.base_models import resolve_base_model
    from tunery.services.trainer.data import IGNORE, tokenize_examples

    torch.manual_seed(0)
    base_dir = resolve_base_model(base_model, load([])[0].model_cache())
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_dir), str(adapter_dir))
    model.eval()
    tokenized = tokenize_examples([{"messages": m} for m in heldout], tokenizer)
    questions = [[m for m in conversation if m["role"] != "assistant"] for conversation in heldout[:samples]]

    def loss() -> float:
        total, count = 0.0, 0
        for example in tokenized:
            logits = model(torch.tensor([example.input_ids])).logits[0]
            labels = torch.tensor(example.labels)
            keep = labels != IGNORE
            total += torch.nn.functional.cross_entropy(logits[keep], labels[keep], reduction="sum").item()
            count += int(keep.sum())
        return total / max(count, 1)

    def answer(messages: list[dict[str, str]]) -> str:
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
        out = model.generate(**ids, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True).strip()

    with torch.no_grad():
        with model.disable_adapter():
            base_loss, base_answers = loss(), [answer(q) for q in questions]
        tuned_loss, tuned_answers = loss(), [answer(q) for q in questions]
    return {"heldout_loss_base": base_loss, "heldout_loss_tuned": tuned_loss,
            "samples": [{"question": q[-1]["content"], "base": b, "tuned": t}
                        for q, b, t in zip(questions, base_answers, tuned_answers)]}


def run(args: argparse.Namespace) -> None:
    """The demo; with --json the summary is the only thing on stdout, everything else goes to stderr."""
    from tunery.client import Client
    from tunery.client.commands import follow, render_plan
    from tunery.client.transport import home
    from tunery.trainer.v1 import trainer_pb2

    out = sys.stderr if args.json else sys.stdout
    show = lambda text="": print(text, file=out, flush=True)  # noqa: E731
    _ensure_stack()
    client = Client()
    with resources.as_file(DATA) as data:
        train_path, heldout_path = data / TRAIN_FILE, data / HELDOUT_FILE
        heldout = _messages(heldout_path)
        for path in (train_path, heldout_path):
            report = client.datasets.validate_file(path)
            show(f"validated {path.name}: {report.stats.examples} examples, {report.errors} errors, "
                 f"{report.warnings} warnings")
        train = client.datasets.upload(train_path, dataset=args.dataset, format="chat",
                                       description="Kettle & Co. support replies (demo)").dataset_version
        held = client.datasets.upload(heldout_path, dataset=f"{args.dataset}-heldout", format="chat",
                                      description="held-out Kettle & Co. questions (demo)").dataset_version
    show(f"uploaded {train.name} and {held.name}")
    spec = client.jobs.spec(args.base_model, train.name, args.model, validation_dataset=held.name,
                            hyperparameters={"epochs": args.epochs},
                            sample_prompts=[heldout[0][-2]["content"]])
    plan = client.jobs.plan(spec)
    estimate_s = plan.estimated_duration.ToTimedelta().total_seconds()
    if args.epochs is None and estimate_s > args.budget_minutes * 60:
        # Keep the demo short: scale the automatic epoch count down to the time budget.
        auto = plan.resolved.hyperparameters.epochs
        epochs = max(1, int(auto * args.budget_minutes * 60 / estimate_s))
        show(f"the automatic plan ({auto} epochs) needs about {estimate_s / 60:.1f} min; the demo trains "
             f"{epochs} epoch(s) to stay within {args.budget_minutes:g} min")
        spec.hyperparameters.epochs = epochs
        plan = client.jobs.plan(spec)
    show("\nplan:\n" + render_plan(plan) + "\n")
    job = client.jobs.create(spec)
    show(f"training {job.name} — follow it elsewhere with: tunery jobs watch {job.name.rsplit('/', 1)[1]}")
    job = follow(client, job, as_json=False, out=out)
    if job.state != trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED:
        raise RuntimeError(f"the demo job ended {trainer_pb2.TrainingJobState.Name(job.state)}: "
                           f"[{job.error.code}] {job.error.message}")
    version_ref = f"{args.model}@{job.model_version.rsplit('/', 1)[1]}"
    client.models.alias(version_ref, "production")
    show(f"\nregistered {job.model_version}; alias production -> {version_ref}")
    adapter_dir = Path(args.output) if args.output else home() / "demo" / args.model
    client.models.download(f"{args.model}:production", adapter_dir)
    show(f"downloaded {args.model}:production to {adapter_dir} (every file's sha256 verified)")
    show("loading base model + adapter with PEFT to compare on held-out questions…")
    comparison = _compare(args.base_model, adapter_dir, heldout, args.samples, args.max_new_tokens)
    show(f"\nheld-out loss: base {comparison['heldout_loss_base']:.4f}  ->  tuned "
         f"{comparison['heldout_loss_tuned']:.4f}")
    for sample in comparison["samples"]:
        show(f"\n=== {sample['question']}\n--- base model:\n{sample['base']}\n--- tuned ({version_ref}):\n"
             f"{sample['tuned']}")
    job_id = job.name.rsplit("/", 1)[1]
    tunery = _command_name()
    show("\nnext, try:\n"
         f"  {tunery} jobs show {job_id}\n"
         f"  {tunery} models show {args.model}:production\n"
         f"  {tunery} models list\n"
         f"  {tunery} datasets show {args.dataset}\n"
         f"  {tunery} datasets upload my-replies.jsonl --dataset my-replies\n"
         f"  {tunery} jobs create --base-model {args.base_model} --dataset my-replies --model my-bot --wait\n"
         f"  {tunery} down   # stop the local stack")
    if args.json:
        print(json.dumps({"training_job": job.name, "model_version": job.model_version, "alias": "production",
                          "adapter_dir": str(adapter_dir), "training_data": train.name,
                          "validation_data": held.name, **comparison}, indent=2))


def _command_name() -> str:
    """`tunery` when that name on PATH is this program, else the path that ran it (e.g. .venv/bin/tunery)."""
    ran = Path(sys.argv[0])
    on_path = shutil.which("tunery")
    if ran.name != "tunery" or (on_path and Path(on_path).resolve() == ran.resolve()):
        return "tunery"
    relative = os.path.relpath(ran)
    return str(ran) if relative.startswith("..") else relative
