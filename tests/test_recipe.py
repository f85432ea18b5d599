"""Real LoRA training on the tiny Llama: hyperparameter rules, learning, exact resume, cancel/suspend,
early stopping, samples, stock-PEFT loading, and 2-process torchrun (gloo) equivalence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from tunery.services.trainer import base_models as bm
from tunery.services.trainer import data as d
from tunery.services.trainer import hyperparameters as h
from tunery.services.trainer import recipe as r



@pytest.fixture(autouse=True)
def one_thread():
    """Training tests run on one thread: the same numerics as the torchrun children, quiet on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


COUNTRIES = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Peru", "Lima"), ("Kenya", "Nairobi")]


def capitals(n: int) -> list[dict]:
    """Chat examples of varied length: the same fact pattern with a varying amount of filler."""
    out = []
    for i in range(n):
        country, capital = COUNTRIES[i % len(COUNTRIES)]
        filler = " Please answer briefly." * (i % 4)
        out.append({"messages": [{"role": "user", "content": f"What is the capital of {country}?{filler}"},
                                 {"role": "assistant", "content": f"The capital of {country} is {capital}."}]})
    return out


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return bm.resolve_base_model(bm.TINY_LLAMA, tmp_path_factory.getbasetemp() / "models")


def hyper(**given) -> h.ResolvedHyperparameters:
    defaults = dict(epochs=2, batch_size=8, learning_rate=3e-3, lora_dropout=0.0, warmup_steps=1, max_seq_len=128)
    return h.resolve_hyperparameters(h.Hyperparameters(**{**defaults, **given}), example_lengths=[60] * 40, context_length=2048)


def config(tiny_dir: Path, out: Path, hp: h.ResolvedHyperparameters | None = None, **fields) -> r.RecipeConfig:
    return r.RecipeConfig(bm.TINY_LLAMA, str(tiny_dir), hp or hyper(), str(out / "adapter"), str(out / "checkpoints"), **fields)


class Recorder(r.TrainingCallbacks):
    """Records every event; optionally answers should_stop with `stop` once `stop_after` steps are done."""

    def __init__(self, stop: str | None = None, stop_after: int = 0):
        self.stop, self.stop_after = stop, stop_after
        self.steps, self.evals, self.checkpoints, self.samples, self.logs = [], [], [], [], []

    def should_stop(self):
        return self.stop if self.stop and len(self.steps) >= self.stop_after else None

    def on_step(self, step, total_steps, epoch, loss, lr, grad_norm, tokens_per_s, eta_s):
        self.steps.append(dict(step=step, total=total_steps, epoch=epoch, loss=loss, lr=lr, grad_norm=grad_norm,
                               tokens_per_s=tokens_per_s, eta_s=eta_s))

    def on_eval(self, step, metrics):
        self.evals.append((step, metrics))

    def on_checkpoint(self, step, path, metrics):
        self.checkpoints.append((step, path))

    def on_samples(self, step, samples):
        self.samples.append((step, samples))

    def on_log(self, level, message, **fields):
        self.logs.append((level, message, fields))


def adapter_tensors(path: str) -> dict[str, torch.Tensor]:
    return load_file(Path(path) / "adapter_model.safetensors")


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


# ---------------------------------------------------------------- hyperparameters and plan


def test_auto_hyperparameters_suit_small_datasets():
    for n in (50, 60, 100):
        hp = h.resolve_hyperparameters(h.Hyperparameters(), example_lengths=[150] * n, context_length=8192)
        steps = -(-n // hp.batch_size) * hp.epochs
        assert 3 <= hp.epochs <= 8 and 2 <= hp.batch_size <= 8 and 30 <= steps <= 100, (n, hp)
        assert hp.learning_rate == 2e-4 and hp.lr_scheduler == "cosine" and 1 <= hp.warmup_steps < steps // 5
        assert hp.max_seq_len == 192 and hp.gradient_accumulation_steps == 1 and hp.packing
        assert (hp.lora_rank, hp.lora_alpha, hp.lora_target_modules) == (16, 32.0, ("all-linear",))
        assert set(hp.reasons) == set(hp.values()) and all(hp.reasons.values())
    big = h.resolve_hyperparameters(h.Hyperparameters(), example_lengths=[150] * 100_000, context_length=8192)
    assert big.epochs == 1 and big.batch_size == 16


def test_user_values_win_and_are_validated():
    hp = h.resolve_hyperparameters(h.Hyperparameters(epochs=1, learning_rate=1e-3, lora_target_modules=["q_proj"], packing=False),
                                   example_lengths=[10, 20], context_length=512)
    assert (hp.epochs, hp.learning_rate, hp.lora_target_modules, hp.packing) == (1, 1e-3, ("q_proj",), False)
    assert hp.reasons["epochs"] == "set by the user" and hp.reasons["batch_size"] != "set by the user"
    for bad in [dict(epochs=0), dict(lr_scheduler="step"), dict(max_seq_len=4096), dict(lora_dropout=1.0), dict(lora_target_modules=[])]:
        with pytest.raises(h.HyperparameterError) as err:
            h.resolve_hyperparameters(h.Hyperparameters(**bad), example_lengths=[10], context_length=2048)
        assert err.value.field == next(iter(bad)) and next(iter(bad)) in str(err.value)
    with pytest.raises(h.HyperparameterError, match="training_data"):
        h.resolve_hyperparameters(h.Hyperparameters(), example_lengths=[], context_length=2048)


def test_max_seq_len_rule_reports_truncation():
    fits = h.resolve_hyperparameters(h.Hyperparameters(), example_lengths=[100, 130], context_length=2048)
    assert fits.max_seq_len == 192 and "nothing is truncated" in fits.reasons["max_seq_len"]
    capped = h.resolve_hyperparameters(h.Hyperparameters(), example_lengths=[100, 3000, 5000], context_length=2048)
    assert capped.max_seq_len == 2048 and "2 example(s) will be truncated" in capped.reasons["max_seq_len"]
    accum = h.resolve_hyperparameters(h.Hyperparameters(batch_size=16), example_lengths=[2000] * 200, context_length=2048)
    assert accum.gradient_accumulation_steps == 4  # 16 × 2048 tokens in micro-batches of at most 8192


def test_plan_counts_steps_and_tokens(tiny_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    train = d.tokenize_examples(capitals(50), tokenizer)
    hp = h.resolve_hyperparameters(h.Hyperparameters(), example_lengths=[len(e.input_ids) for e in train], context_length=2048)
    stats = d.token_stats(train)
    shape = bm.model_shape(tiny_dir)
    plan = h.estimate_plan(hp, stats, shape, validation=d.token_stats(train[:5]), eval_interval_steps=10)
    assert plan.steps_per_epoch == 13 and plan.total_steps == 13 * hp.epochs
    assert plan.total_train_tokens == stats.total_tokens * hp.epochs and plan.supervised_tokens_per_epoch == stats.supervised_tokens
    assert plan.num_evaluations == plan.total_steps // 10 + 1 and plan.estimated_duration_s > 0
    bigger = h.estimate_plan(replace(hp, max_seq_len=hp.max_seq_len * 8, packing=False), stats, shape)
    assert bigger.estimated_peak_memory_bytes > plan.estimated_peak_memory_bytes > 4 * shape.parameter_count


# ---------------------------------------------------------------- training


def test_training_lowers_validation_loss_and_reports_events(tiny_dir, tmp_path):
    examples = capitals(48)
    train, val = d.split_validation(examples, 0.2, seed=0)
    cb = Recorder()
    cfg = config(tiny_dir, tmp_path, hyper(epochs=3, lora_dropout=0.05), eval_interval_steps=5,
                 sample_prompts=["What is the capital of Peru?", [{"role": "user", "content": "Capital of Japan?"}]],
                 sample_max_new_tokens=8)
    result = r.run_training(cfg, train, val, cb)
    assert result.status == "completed" and result.step == result.total_steps == 15
    assert [s["step"] for s in cb.steps] == list(range(1, 16)) and all(s["total"] == 15 for s in cb.steps)
    assert cb.steps[-1]["epoch"] == 3.0 and cb.steps[-1]["eta_s"] == 0.0
    assert cb.steps[0]["lr"] == pytest.approx(3e-3 / 2) and cb.steps[-1]["lr"] < cb.steps[1]["lr"]  # warmup, then decay
    assert all(s["grad_norm"] > 0 and s["tokens_per_s"] > 0 for s in cb.steps)
    losses = [e[1]["validation_loss"] for e in cb.evals]
    assert [e[0] for e in cb.evals] == [5, 10, 15] and losses[-1] < losses[0] - 0.5
    assert cb.steps[-1]["loss"] < cb.steps[0]["loss"] - 2  # pinned loosely: ~6.8 → ~2.5
    assert result.metrics["validation_loss"] == losses[-1] and 0 < result.metrics["token_accuracy"] <= 1
    assert [c[0] for c in cb.checkpoints] == [15]  # no interval: only the final checkpoint
    assert [(s, len(x)) for s, x in cb.samples] == [(5, 2), (10, 2), (15, 2)]
    assert isinstance(cb.samples[0][1][0].completion, str) and cb.samples[0][1][1].prompt[0]["role"] == "user"
    assert [log[1] for log in cb.logs] == ["training.setup"] and cb.logs[0][2]["trainable_parameters"] > 0
    assert result.metrics["trained_tokens"] == 3 * sum(len(e.input_ids) for e in d.tokenize_examples(train, AutoTokenizer.from_pretrained(tiny_dir)))


def test_adapter_loads_with_stock_peft_and_beats_the_base_model(tiny_dir, tmp_path):
    from peft import PeftModel

    train, val = d.split_validation(capitals(48), 0.2, seed=1)
    result = r.run_training(config(tiny_dir, tmp_path, hyper(epochs=3)), train, val)
    adapter = Path(result.adapter_dir)
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "chat_template.jinja"} <= {p.name for p in adapter.iterdir()}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "tiny-llama" and adapter_config["r"] == 8 * 2
    assert adapter_config["target_modules"] == sorted(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    examples = d.tokenize_examples(val, tokenizer)

    def held_out_loss(model) -> float:  # plain full-logits forward, no Tunery code involved
        total = count = 0
        with torch.no_grad():
            for e in examples:
                logits = model(input_ids=torch.tensor([e.input_ids])).logits[0]
                total += F.cross_entropy(logits, torch.tensor(e.labels), ignore_index=d.IGNORE, reduction="sum").item()
                count += e.num_supervised
        return total / count

    base_loss = held_out_loss(AutoModelForCausalLM.from_pretrained(tiny_dir).eval())
    tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), adapter).eval()
    tuned_loss = held_out_loss(tuned)
    assert tuned_loss == pytest.approx(result.metrics["validation_loss"], abs=1e-5)  # our loss path == stock forward
    assert tuned_loss < base_loss - 1.0


def test_packing_and_accumulation_do_not_change_what_is_learned(tiny_dir, tmp_path):
    train = capitals(24)
    runs = {}
    for name, hp in {"packed": hyper(), "padded": hyper(packing=False), "accumulated": hyper(gradient_accumulation_steps=3)}.items():
        cb = Recorder()
        result = r.run_training(config(tiny_dir, tmp_path / name, hp), train, None, cb)
        runs[name] = ([s["loss"] for s in cb.steps], adapter_tensors(result.adapter_dir))
    for name in ("padded", "accumulated"):
        assert runs[name][0] == pytest.approx(runs["packed"][0], abs=1e-5)
        # Float summation order differs; Adam turns that into weight differences far below one step (lr 3e-3).
        assert max_diff(runs[name][1], runs["packed"][1]) < 1e-4


def test_suspend_and_resume_is_exact(tiny_dir, tmp_path):
    train, val = d.split_validation(capitals(40), 0.2, seed=2)
    hp = hyper(epochs=3, lora_dropout=0.1)  # dropout: the RNG state must be restored too
    fields = dict(eval_interval_steps=4, checkpoint_interval_steps=4)

    whole = Recorder()
    reference = r.run_training(config(tiny_dir, tmp_path / "whole", hp, **fields), train, val, whole)
    assert reference.status == "completed" and [c[0] for c in whole.checkpoints] == [4, 8, 12]

    first = Recorder(stop="suspend", stop_after=6)
    suspended = r.run_training(config(tiny_dir, tmp_path / "split", hp, **fields), train, val, first)
    assert (suspended.status, suspended.step, suspended.adapter_dir) == ("suspended", 6, None)
    assert suspended.checkpoint_dir.endswith("step-000006") and [c[0] for c in first.checkpoints] == [4, 6]

    second = Recorder()
    resumed = r.run_training(config(tiny_dir, tmp_path / "split", hp, resume_from=suspended.checkpoint_dir, **fields),
                             train, val, second)
    assert resumed.status == "completed" and [s["step"] for s in second.steps] == list(range(7, 13))
    assert [s["loss"] for s in first.steps + second.steps] == [s["loss"] for s in whole.steps]  # bit for bit
    assert first.evals + second.evals == whole.evals
    assert max_diff(adapter_tensors(resumed.adapter_dir), adapter_tensors(reference.adapter_dir)) == 0.0
    assert resumed.metrics == reference.metrics

    # A worker killed after step 9 restarts from the periodic checkpoint of step 8.
    third = Recorder()
    again = r.run_training(config(tiny_dir, tmp_path / "killed", hp, resume_from=whole.checkpoints[1][1], **fields), train, val, third)
    assert [s["loss"] for s in third.steps] == [s["loss"] for s in whole.steps[8:]]
    assert max_diff(adapter_tensors(again.adapter_dir), adapter_tensors(reference.adapter_dir)) == 0.0


def test_resume_refuses_a_checkpoint_of_other_settings(tiny_dir, tmp_path):
    result = r.run_training(config(tiny_dir, tmp_path / "a", hyper(epochs=1)), capitals(16))
    with pytest.raises(r.CheckpointMismatch, match="different hyperparameters"):
        r.run_training(config(tiny_dir, tmp_path / "b", hyper(epochs=1, learning_rate=1e-3), resume_from=result.checkpoint_dir), capitals(16))


def test_cancel_stops_at_the_next_step_boundary(tiny_dir, tmp_path):
    cb = Recorder(stop="cancel", stop_after=3)
    result = r.run_training(config(tiny_dir, tmp_path, checkpoint_interval_steps=2), capitals(40), None, cb)
    assert (result.status, result.step, result.adapter_dir) == ("cancelled", 3, None)
    assert len(cb.steps) == 3 and [c[0] for c in cb.checkpoints] == [2]
    assert not (tmp_path / "adapter").exists()


def test_bad_settings_fail_before_training(tiny_dir, tmp_path):
    with pytest.raises(ValueError, match="early stopping needs validation data"):
        r.run_training(config(tiny_dir, tmp_path, early_stopping_metric="validation_loss"), capitals(8))
    with pytest.raises(ValueError, match="early_stopping_metric must be one of"):
        r.run_training(config(tiny_dir, tmp_path, early_stopping_metric="bleu"), capitals(8), capitals(2))
    with pytest.raises(ValueError, match="no training examples"):
        r.run_training(config(tiny_dir, tmp_path), [])
    with pytest.raises(ValueError, match="should_stop\\(\\) returned 'pause'"):
        r.run_training(config(tiny_dir, tmp_path), capitals(8), None, Recorder(stop="pause"))
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "checkpoints").exists()


def test_early_stopping_keeps_the_best_adapter(tiny_dir, tmp_path):
    # Train to answer "yes"; validate on a long, different answer: validation loss first falls (turn format)
    # then rises as the model commits to "yes".
    train = [{"messages": [{"role": "user", "content": f"Say the word {i}."}, {"role": "assistant", "content": "yes"}]} for i in range(16)]
    val = [{"messages": [{"role": "user", "content": f"Say the word {i}."},
                         {"role": "assistant", "content": "The quick brown fox jumps over the lazy dog."}]} for i in range(4)]
    cb = Recorder()
    cfg = config(tiny_dir, tmp_path, hyper(epochs=4, batch_size=4, learning_rate=1e-2), eval_interval_steps=1,
                 checkpoint_interval_steps=1, early_stopping_metric="validation_loss", early_stopping_patience=2)
    result = r.run_training(cfg, train, val, cb)
    losses = [m["validation_loss"] for _, m in cb.evals]
    best = min(range(len(losses)), key=losses.__getitem__)
    assert result.status == "early_stopped" and result.step < result.total_steps
    assert len(losses) == best + 1 + 2  # stopped after exactly `patience` evaluations without improvement
    assert result.metrics["best_step"] == best + 1 and result.metrics["validation_loss"] == losses[best]
    best_checkpoint = load_file(Path(cb.checkpoints[best][1]) / "adapter.safetensors")
    output = adapter_tensors(result.adapter_dir)
    assert {k.replace(".default", "") for k in best_checkpoint} == set(output)
    assert all(torch.equal(best_checkpoint[k], output[k.replace(".default", "")]) for k in best_checkpoint)


# ---------------------------------------------------------------- torchrun


DRIVER = textwrap.dedent('''
    """Runs under torchrun; every rank writes its own result file (no stdout parsing)."""
    import json, os, sys
    import torch, torch.distributed as dist
    from tunery.services.trainer import recipe as r
    from tunery.services.trainer.hyperparameters import ResolvedHyperparameters

    torch.set_num_threads(1)
    spec = json.loads(open(sys.argv[1]).read())
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")  # owned by the driver, so the recipe can run twice in one group

    class Events(r.TrainingCallbacks):
        def __init__(self, stop_after):
            self.stop_after, self.steps = stop_after, []
        def should_stop(self):  # only rank 0 is asked; its answer must reach rank 1
            return "suspend" if self.stop_after is not None and len(self.steps) >= self.stop_after else None
        def on_step(self, step, total_steps, epoch, loss, lr, grad_norm, tokens_per_s, eta_s):
            self.steps.append([step, loss])

    hp = ResolvedHyperparameters(**spec["hp"])
    out = {}
    for phase, stop_after in (("first", 2), ("second", None)):
        events = Events(stop_after)
        cfg = r.RecipeConfig("tiny-llama", spec["model"], hp, spec["out"] + "/adapter", spec["out"] + "/checkpoints",
                             resume_from=out.get("first", {}).get("checkpoint"))
        result = r.run_training(cfg, spec["train"], None, events)
        out[phase] = {"status": result.status, "step": result.step, "checkpoint": result.checkpoint_dir,
                      "adapter": result.adapter_dir, "steps": events.steps}
    dist.destroy_process_group()
    with open(f"{spec['out']}/rank{rank}.json.tmp", "w") as f:
        json.dump(out, f)
    os.replace(f"{spec['out']}/rank{rank}.json.tmp", f"{spec['out']}/rank{rank}.json")
''')


def test_two_process_torchrun_matches_one_process(tiny_dir, tmp_path):
    hp = hyper(epochs=1, batch_size=8)  # 24 examples → 3 steps; dropout 0 so both runs see the same model
    train = capitals(24)
    single = Recorder()
    reference = r.run_training(config(tiny_dir, tmp_path / "single", hp), train, None, single)

    (tmp_path / "driver.py").write_text(DRIVER)
    spec = {"hp": {**hp.values(), "lora_target_modules": list(hp.lora_target_modules)}, "model": str(tiny_dir),
            "out": str(tmp_path / "ddp"), "train": train}
    (tmp_path / "ddp").mkdir()
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    # gloo binds to the loopback interface: sandboxes and CI often cannot resolve their own hostname.
    env = {"GLOO_SOCKET_IFNAME": "lo", **os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(tmp_path / "driver.py"), str(tmp_path / "spec.json")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / "ddp" / f"rank{i}.json").read_text()) for i in range(2)]
    for rank, out in enumerate(ranks):
        # The stop decision reached both ranks at the same step boundary.
        assert (out["first"]["status"], out["first"]["step"]) == ("suspended", 2)
        assert (out["second"]["status"], out["second"]["step"]) == ("completed", 3)
        assert len(out["first"]["steps"] + out["second"]["steps"]) == (3 if rank == 0 else 0)  # only rank 0 emits
    losses = [loss for _, loss in ranks[0]["first"]["steps"] + ranks[0]["second"]["steps"]]
    assert losses == pytest.approx([s["loss"] for s in single.steps], abs=1e-5)
    assert max_diff(adapter_tensors(ranks[0]["second"]["adapter"]), adapter_tensors(reference.adapter_dir)) < 1e-4


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_fused_lora_layers_train_like_peft_ones(tiny_dir, dropout):
    """CPU fp32 training runs each LoRA Linear as one autograd node (recipe.use_fused_lora): same loss and
    gradients as PEFT's own modules, with the same dropout masks drawn from the same random stream."""
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir),
                           LoraConfig(r=8, lora_alpha=16, lora_dropout=dropout, target_modules=["q_proj", "down_proj"]))
    for name, p in model.named_parameters():
        if "lora_B" in name:  # PEFT starts B at zero, which would hide mistakes in the branch
            torch.nn.init.normal_(p, std=0.02)
    r.use_fast_dropout(model)
    fused = __import__("copy").deepcopy(model)
    r.use_fused_lora(fused)
    layers = [m for m in fused.modules() if hasattr(m, "lora_A")]
    assert layers and all("forward" in vars(m) for m in layers)  # every LoRA layer takes the fused path
    ids = torch.randint(0, model.config.vocab_size, (2, 33))
    grads = []
    for m in (model, fused):
        m.train()
        torch.manual_seed(7)
        loss = m(input_ids=ids, labels=ids).loss
        loss.backward()
        grads.append((loss.item(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}))
    (loss, expected), (fused_loss, got) = grads
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    assert expected.keys() == got.keys()
    for name, grad in expected.items():
        assert torch.allclose(got[name], grad, rtol=1e-4, atol=1e-6 * grad.abs().max().item()), name
    with torch.no_grad():  # evaluation and generation take PEFT's own forward
        fused.eval(), model.eval()
        assert torch.equal(fused(input_ids=ids).logits, model(input_ids=ids).logits)


def test_trainer_worker_loads_torch_with_a_short_openmp_spin():
    """The worker's torch thread pool must see the recipe's GOMP_SPINCOUNT: libgomp reads it once, when
    torch first loads, so a torch import ahead of the recipe's would silently bring back the long spin."""
    env = {k: v for k, v in os.environ.items() if k != "GOMP_SPINCOUNT"}
    proc = subprocess.run([sys.executable, "-c", "import tunery.services.trainer.worker"],
                          env={**env, "OMP_DISPLAY_ENV": "verbose"}, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "GOMP_SPINCOUNT = '1000'" in proc.stderr


@pytest.mark.slow
def test_smollm2_adapter_beats_the_base_model_on_held_out_chat(tmp_path_factory, tmp_path):
    """The issue's bar: 60 chat examples fine-tune SmolLM2-135M-Instruct to a lower held-out loss."""
    model_dir = bm.resolve_base_model(bm.SMOLLM2, tmp_path_factory.getbasetemp() / "models")
    train, val = d.split_validation(capitals(60), 0.2, seed=0)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    lengths = [len(e.input_ids) for e in d.tokenize_examples(train, tokenizer)]
    hp = h.resolve_hyperparameters(h.Hyperparameters(epochs=1), example_lengths=lengths, context_length=8192)
    cfg = r.RecipeConfig(bm.SMOLLM2, str(model_dir), hp, str(tmp_path / "adapter"), str(tmp_path / "ckpt"), bf16=True)
    recipe = r.LoRARecipe(cfg, train, val)
    recipe.setup()
    try:
        base_loss = recipe.evaluate()["validation_loss"]  # LoRA B starts at zero: this is the base model
        result = recipe.train_loop()
    finally:
        recipe.cleanup()
    assert result.status == "completed" and result.metrics["validation_loss"] < base_loss
