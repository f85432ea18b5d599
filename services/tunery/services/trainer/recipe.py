"""The LoRA fine-tuning recipe: one explicit loop in the torchtune style — setup, train, evaluate,
checkpoint, cleanup — with no trainer framework in between.

Runs in one process or under ``torchrun`` (gloo on CPU, NCCL on GPU). Data parallelism is explicit: every
rank computes the same step plan, takes its share of each step's examples, and the LoRA gradients (small)
are summed across ranks once per optimizer step. Losses are normalized by the step's *global* count of
supervised tokens, so the result does not depend on the number of processes or micro-batches (up to float
summation order). Only rank 0 writes files and calls the callbacks; rank 0's stop decision is broadcast.

Checkpoints hold everything the next step depends on — LoRA weights, AdamW moments, learning-rate schedule,
every rank's RNG state and the step counter (the data order is a pure function of seed and epoch) — all as
safetensors and JSON (no pickle), so a resumed run reproduces an uninterrupted one exactly.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# torch's CPU thread pool (libgomp) spins ~300k iterations at each of the ~10k barriers of a SmolLM2 step
# before it sleeps. When another process holds a core, the thread that got there first spins on its own
# core while its partner waits for one: steps ran 3-15x slower under load. A short spin costs nothing
# measurable on a quiet machine. libgomp reads this once, when torch loads: set here, before the first
# torch import of a trainer worker (worker.py imports this module first; test_recipe checks it).
os.environ.setdefault("GOMP_SPINCOUNT", "1000")

import torch
import torch.distributed as dist
import torch.nn.functional as F
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from safetensors.torch import load_file, save_file
from transformers import AttentionInterface, AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
from transformers.pytorch_utils import Conv1D

from . import data
from .hyperparameters import ALL_LINEAR, ResolvedHyperparameters

STOP_CANCEL, STOP_SUSPEND = "cancel", "suspend"
SEGMENT_ATTENTION = "tunery_segment_sdpa"  # registered below; SDPA per packed example
BF16_CPU_WIDTH_MULTIPLE = 64
EARLY_STOPPING_METRICS = {"validation_loss": -1.0, "token_accuracy": 1.0}  # sign: +1 means higher is better


@dataclass
class RecipeConfig:
    base_model_id: str  # catalogue id, written into adapter_config.json
    base_model_dir: str  # resolved local folder (base_models.resolve_base_model)
    hyperparameters: ResolvedHyperparameters
    output_dir: str  # final PEFT adapter folder
    checkpoint_dir: str  # checkpoints go to <checkpoint_dir>/step-000042/
    eval_interval_steps: int = 0  # 0: evaluate only at the end (when there is validation data)
    checkpoint_interval_steps: int = 0  # 0: checkpoint only at the end
    sample_prompts: list[str | list[dict[str, str]]] = field(default_factory=list)  # text or chat messages
    sample_max_new_tokens: int = 48
    early_stopping_metric: str | None = None  # "validation_loss" or "token_accuracy"
    early_stopping_patience: int = 3  # evaluations without improvement before stopping
    resume_from: str | None = None  # a checkpoint folder, readable by every rank
    bf16: bool = False  # bf16 autocast for the forward/backward pass (weights and optimizer stay fp32)
    device: str = "auto"  # "auto" (CUDA when present), "cpu" or "cuda"


@dataclass
class Sample:
    prompt: str | list[dict[str, str]]
    completion: str


@dataclass
class TrainingResult:
    status: str  # "completed" | "early_stopped" | "cancelled" | "suspended"
    step: int  # optimizer steps done
    total_steps: int
    adapter_dir: str | None  # the PEFT adapter (completed / early_stopped), else None
    checkpoint_dir: str | None  # the last checkpoint written, if any
    metrics: dict[str, float]


class TrainingCallbacks:
    """Events out, stop decisions in. Subclass and override what you need; only rank 0 is called.
    Calls happen on the training thread, between steps: keep them quick."""

    def should_stop(self) -> str | None:
        """Checked before every step: None to go on, "cancel" to stop now, "suspend" to checkpoint and stop."""
        return None

    def on_step(self, step: int, total_steps: int, epoch: float, loss: float, lr: float, grad_norm: float,
                tokens_per_s: float, eta_s: float) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        """``metrics``: validation_loss, token_accuracy."""

    def on_checkpoint(self, step: int, path: str, metrics: dict[str, float]) -> None:
        """A complete checkpoint folder now exists at ``path``."""

    def on_samples(self, step: int, samples: list[Sample]) -> None: ...

    def on_log(self, level: str, message: str, **fields: Any) -> None:
        """``level``: "info" or "warning"; ``message`` is a dotted event name."""


class CheckpointMismatch(ValueError):
    """The checkpoint was written for other hyperparameters or data."""


class LoRARecipe:
    def __init__(self, config: RecipeConfig, train_examples: list[dict], validation_examples: list[dict] | None = None,
                 callbacks: TrainingCallbacks | None = None):
        self.cfg, self.hp = config, config.hyperparameters
        self.raw_train, self.raw_val = train_examples, validation_examples or []
        self.cb = callbacks or TrainingCallbacks()

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        self._check_config()
        self.owns_group = False
        # Collectives run on this device too (NCCL needs CUDA tensors, gloo takes CPU ones).
        self.device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if self._want_cuda() else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        else:
            keep_freed_memory()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
            self.owns_group = True
        self.world = dist.get_world_size() if dist.is_initialized() else 1
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.tokenizer = AutoTokenizer.from_pretrained(self.cfg.base_model_dir)
        pad = self.tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else (self.tokenizer.eos_token_id or 0)
        self.train = data.tokenize_examples(self.raw_train, self.tokenizer, self.hp.max_seq_len)
        self.val = data.tokenize_examples(self.raw_val, self.tokenizer, self.hp.max_seq_len)
        self.lengths = [len(e.input_ids) for e in self.train]
        stats = data.token_stats(self.train)
        if stats.over_length:
            self._log("warning", "training.examples_truncated", count=len(stats.over_length), max_seq_len=self.hp.max_seq_len)
        if stats.unsupervised:
            self._log("warning", "training.examples_without_targets", count=len(stats.unsupervised))
        self.steps_per_epoch = math.ceil(len(self.train) / self.hp.batch_size)
        self._plan: tuple[int, list[list[int]]] = (-1, [])  # (epoch, its steps), recomputed once per epoch
        self.total_steps = self.steps_per_epoch * self.hp.epochs

        torch.manual_seed(self.hp.seed)  # LoRA initialization; identical on every rank
        base = AutoModelForCausalLM.from_pretrained(self.cfg.base_model_dir, dtype=torch.float32)
        self.segment_attention = use_segment_attention(base)
        targets = list(self.hp.lora_target_modules)
        if targets == [ALL_LINEAR]:
            targets = linear_module_names(base)
        lora = LoraConfig(r=self.hp.lora_rank, lora_alpha=self.hp.lora_alpha, lora_dropout=self.hp.lora_dropout,
                          target_modules=targets, task_type="CAUSAL_LM")
        self.model = get_peft_model(base, lora).to(self.device)
        self.model.peft_config["default"].base_model_name_or_path = self.cfg.base_model_id
        if self.device.type == "cpu":
            use_fast_dropout(self.model)
            if not self.cfg.bf16:
                use_fused_lora(self.model)
        if self.cfg.bf16:
            self._prepare_bf16()
        self.params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        for p in self.params.values():  # identical start on every rank, whatever happened before
            self._broadcast(p.data)
        self.optimizer = torch.optim.AdamW(self.params.values(), lr=self.hp.learning_rate, weight_decay=self.hp.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)

        self.start_step, self.best, self.best_step, self.bad_evals = 0, None, None, 0
        self.best_metrics: dict[str, float] = {}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.metrics: dict[str, float] = {}
        self.trained_tokens = 0
        if self.cfg.resume_from:
            self.load_checkpoint(Path(self.cfg.resume_from))
        self._log("info", "training.setup", steps=self.total_steps, start_step=self.start_step, world_size=self.world,
                  train_examples=len(self.train), validation_examples=len(self.val),
                  trainable_parameters=sum(p.numel() for p in self.params.values()))

    def _check_config(self) -> None:
        cfg = self.cfg
        if not self.raw_train:
            raise ValueError("there are no training examples")
        if cfg.early_stopping_metric is not None:
            if cfg.early_stopping_metric not in EARLY_STOPPING_METRICS:
                raise ValueError(f"early_stopping_metric must be one of {sorted(EARLY_STOPPING_METRICS)}")
            if not self.raw_val:
                raise ValueError("early stopping needs validation data (validation examples or a validation fraction)")
            if cfg.early_stopping_patience < 1:
                raise ValueError("early_stopping_patience must be at least 1")
        if cfg.eval_interval_steps < 0 or cfg.checkpoint_interval_steps < 0:
            raise ValueError("eval_interval_steps and checkpoint_interval_steps must be >= 0")

    def _prepare_bf16(self) -> None:
        """Under bf16 autocast every matmul rounds its fp32 weight to bf16 on each call (the autocast cache
        skips frozen weights). Rounding the frozen linear weights once gives the same products without
        re-casting ~all of the model per micro-batch; trained LoRA weights, the output head (often tied
        to the embedding) and norms stay fp32. PEFT's cast of the LoRA input back to fp32 is switched
        off for the same reason: autocast rounds it to bf16 again right after."""
        head = self.model.get_output_embeddings()
        for module in self.model.modules():
            if isinstance(module, torch.nn.Linear) and module is not head and not module.weight.requires_grad:
                module.to(torch.bfloat16)
            if hasattr(module, "cast_input_dtype_enabled"):
                module.cast_input_dtype_enabled = False

    def _want_cuda(self) -> bool:
        return self.cfg.device == "cuda" or (self.cfg.device == "auto" and torch.cuda.is_available())

    def _lr_factor(self, step: int) -> float:
        """Linear warmup, then linear / cosine decay to zero, or constant."""
        warmup = min(self.hp.warmup_steps, self.total_steps)
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if self.hp.lr_scheduler == "constant":
            return 1.0
        progress = (step - warmup) / max(1, self.total_steps - warmup)
        return max(0.0, 1 - progress) if self.hp.lr_scheduler == "linear" else 0.5 * (1 + math.cos(math.pi * progress))

    # ------------------------------------------------------------------ train
    def train_loop(self) -> TrainingResult:
        status, last_checkpoint, done = "completed", self.cfg.resume_from, self.start_step
        started, start_step = time.monotonic(), self.start_step
        for step in range(self.start_step, self.total_steps):
            stop = self._stop_decision()
            if stop == STOP_CANCEL:
                return self._result("cancelled", step, None)
            if stop == STOP_SUSPEND:
                return self._result("suspended", step, self.save_checkpoint(step))
            t0 = time.monotonic()
            loss, grad_norm, tokens = self._train_step(step)
            done = step + 1
            elapsed = time.monotonic() - started
            self.metrics["train_loss"] = loss
            if self.rank == 0:
                self.cb.on_step(done, self.total_steps, done / self.steps_per_epoch, loss, self.step_lr,
                                grad_norm, tokens / max(1e-9, time.monotonic() - t0),
                                elapsed / (done - start_step) * (self.total_steps - done))
            every = self.cfg.eval_interval_steps
            evaluate = bool(self.val) and (done == self.total_steps or (every > 0 and done % every == 0))
            if evaluate and self._evaluate_and_track(done):
                status = "early_stopped"
            interval = self.cfg.checkpoint_interval_steps
            if (interval and done % interval == 0) or done == self.total_steps or status != "completed":
                last_checkpoint = self.save_checkpoint(done)
            if status != "completed":
                break
        return self._result(status, done, last_checkpoint, final=True)

    def _train_step(self, step: int) -> tuple[float, float, int]:
        """One optimizer step over this rank's share of the step's examples; returns the global mean loss,
        the gradient norm before clipping and the step's real token count."""
        epoch, k = divmod(step, self.steps_per_epoch)
        if self._plan[0] != epoch:
            self._plan = (epoch, data.epoch_steps(len(self.train), self.hp.batch_size, self.hp.seed, epoch))
        indices = self._plan[1][k]
        supervised = max(1, sum(self.train[i].num_supervised for i in indices))  # global, known to every rank
        self.model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        for micro in data.micro_batches(indices, self.lengths, self.world, self.rank, self.hp.gradient_accumulation_steps):
            if not micro:
                continue
            batch_loss, _, _ = self._forward(self._collate([self.train[i] for i in micro]))
            (batch_loss / supervised).backward()
            loss_sum += batch_loss.detach().double()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params.values()]
        if self.world > 1:  # sum the LoRA gradients of all ranks in one flat buffer
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            dist.all_reduce(loss_sum)
            offset = 0
            for p, g in zip(self.params.values(), grads):
                p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
                offset += g.numel()
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()), self.hp.max_grad_norm)
        self.step_lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used (reported in on_step)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        tokens = sum(self.lengths[i] for i in indices)
        self.trained_tokens += tokens
        return float(loss_sum) / supervised, float(grad_norm), tokens

    def _collate(self, examples: list[data.TokenizedExample]) -> data.Batch:
        # oneDNN compiles a bf16 matmul per input shape (~10 ms each, dozens per step): rounding widths up
        # to a multiple of 64 lets later batches reuse them, for at most 63 padding tokens per row.
        multiple = BF16_CPU_WIDTH_MULTIPLE if self.cfg.bf16 and self.device.type == "cpu" else 1
        if self.hp.packing and self.segment_attention:
            # Attention runs per example, so one row holding the whole micro-batch is exact and has no
            # padding (beyond the rounding): the row need not fit max_seq_len (each example does).
            width = max(1, sum(len(e.input_ids) for e in examples))
            return data.collate(examples, self.pad_id, True, width, dense_mask=False, pad_to_multiple_of=multiple)
        return data.collate(examples, self.pad_id, self.hp.packing, self.hp.max_seq_len,
                            dense_mask=not self.segment_attention, pad_to_multiple_of=multiple)

    def _forward(self, batch: data.Batch) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Summed cross-entropy, correct-prediction count and count over supervised positions. The LM head
        runs only at those positions: on chat data most positions are unsupervised, and the head is a large
        share of a small model's compute."""
        model = self.model.get_base_model()
        if self.segment_attention:  # per-example attention replaces the mask
            masking: dict[str, Any] = {"attention_mask": None, "segments": batch.segments}
        else:
            masking = {"attention_mask": None if batch.attention_mask is None else batch.attention_mask.to(self.device)}
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16):
            hidden = model.base_model(
                input_ids=batch.input_ids.to(self.device), position_ids=batch.position_ids.to(self.device),
                use_cache=False, **masking,
            ).last_hidden_state
            labels = batch.labels.to(self.device)
            selected = labels != data.IGNORE
            logits = model.get_output_embeddings()(hidden[selected]).float()
        cap = getattr(model.config, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        targets = labels[selected]
        loss = F.cross_entropy(logits, targets, reduction="sum")
        return loss, (logits.argmax(-1) == targets).sum(), int(targets.numel())

    # ------------------------------------------------------------------ evaluate
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Validation loss (mean over supervised tokens) and next-token accuracy, over all ranks."""
        self.model.eval()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)
        mine = self.val[self.rank :: self.world]
        size = max(1, math.ceil(self.hp.batch_size / self.world / self.hp.gradient_accumulation_steps))
        for i in range(0, len(mine), size):
            loss, correct, count = self._forward(self._collate(mine[i : i + size]))
            totals += torch.stack([loss.double(), correct.double(), loss.new_tensor(count, dtype=torch.float64)])
        if self.world > 1:
            dist.all_reduce(totals)
        count = max(1.0, float(totals[2]))
        return {"validation_loss": float(totals[0]) / count, "token_accuracy": float(totals[1]) / count}

    def _evaluate_and_track(self, step: int) -> bool:
        """Evaluate, emit samples, track the best adapter; True when early stopping says stop."""
        metrics = self.evaluate()
        self.metrics.update(metrics)
        if self.rank == 0:
            self.cb.on_eval(step, metrics)
            if self.cfg.sample_prompts:
                self.cb.on_samples(step, self.generate_samples())
        name = self.cfg.early_stopping_metric
        if name is None:
            return False
        value = EARLY_STOPPING_METRICS[name] * metrics[name]
        if self.best is None or value > self.best:
            self.best, self.best_step, self.best_metrics, self.bad_evals = value, step, metrics, 0
            self.best_state = {n: p.detach().clone() for n, p in self.params.items()}
            return False
        self.bad_evals += 1
        if self.bad_evals >= self.cfg.early_stopping_patience:
            self._log("info", "training.early_stopped", step=step, best_step=self.best_step, metric=name)
            return True
        return False

    @torch.no_grad()
    def generate_samples(self) -> list[Sample]:
        """Greedy completions of the configured prompts with the current adapter."""
        self.model.eval()
        samples = []
        for prompt in self.cfg.sample_prompts:
            if self.tokenizer.chat_template:
                messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
                text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                ids = self.tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            else:
                text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
                ids = self.tokenizer(text, return_tensors="pt")["input_ids"]
            with (torch.random.fork_rng(devices=[]),  # generation must not shift the training RNG stream
                  torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)):  # bf16 weights
                ids = ids.to(self.device)
                out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                          max_new_tokens=self.cfg.sample_max_new_tokens, pad_token_id=self.pad_id)
            samples.append(Sample(prompt, self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)))
        return samples

    # ------------------------------------------------------------------ checkpoint
    def _fingerprint(self) -> dict:
        return {"hyperparameters": self.hp.values(), "base_model_id": self.cfg.base_model_id,
                "train_examples": len(self.train), "validation_examples": len(self.val)}

    def save_checkpoint(self, step: int) -> str:
        """Write <checkpoint_dir>/step-NNNNNN atomically (rank 0), then report it. All ranks take part
        (RNG states are gathered) and return the path."""
        rng = {"cpu": torch.get_rng_state()}
        if self.device.type == "cuda":  # dropout on GPU draws from the CUDA generator
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        rngs = {f"{kind}.rank{r}": t for kind, state in rng.items() for r, t in enumerate(self._gather(state))}
        path = Path(self.cfg.checkpoint_dir) / f"step-{step:06d}"
        if self.rank == 0:
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_file({n: p.detach().cpu().contiguous() for n, p in self.params.items()}, tmp / "adapter.safetensors")
            names = {id(p): n for n, p in self.params.items()}
            ordered = [names[id(p)] for p in self.optimizer.param_groups[0]["params"]]
            moments = {f"{ordered[i]}::{k}": v.cpu().contiguous()
                       for i, s in self.optimizer.state_dict()["state"].items() for k, v in s.items()}
            save_file(moments, tmp / "optimizer.safetensors")
            save_file(rngs, tmp / "rng.safetensors")
            if self.best_state is not None:
                best = {n: t.cpu().contiguous() for n, t in self.best_state.items()}
                save_file(best, tmp / "best_adapter.safetensors")
            state = {"step": step, "fingerprint": self._fingerprint(), "scheduler": self.scheduler.state_dict(),
                     "lr": [g["lr"] for g in self.optimizer.param_groups], "best": self.best,
                     "best_step": self.best_step, "best_metrics": self.best_metrics,
                     "bad_evals": self.bad_evals, "metrics": self.metrics, "trained_tokens": self.trained_tokens}
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
            shutil.rmtree(path, ignore_errors=True)
            os.replace(tmp, path)
            self.cb.on_checkpoint(step, str(path), dict(self.metrics))
        self._barrier()
        return str(path)

    def load_checkpoint(self, path: Path) -> None:
        state = json.loads((path / "trainer_state.json").read_text())
        if state["fingerprint"] != json.loads(json.dumps(self._fingerprint())):
            raise CheckpointMismatch(f"checkpoint {path} was written for different hyperparameters or data")
        weights = load_file(path / "adapter.safetensors")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(weights[n])
        moments = load_file(path / "optimizer.safetensors")
        names = {id(p): n for n, p in self.params.items()}
        opt_state = self.optimizer.state_dict()
        order = [names[id(p)] for p in self.optimizer.param_groups[0]["params"]]
        opt_state["state"] = {i: {k.split("::")[1]: v for k, v in moments.items() if k.split("::")[0] == n}
                              for i, n in enumerate(order) if f"{n}::step" in moments}
        for group, lr in zip(opt_state["param_groups"], state["lr"]):
            group["lr"] = lr
        self.optimizer.load_state_dict(opt_state)
        self.scheduler.load_state_dict(state["scheduler"])
        rngs = load_file(path / "rng.safetensors")
        torch.set_rng_state(rngs.get(f"cpu.rank{self.rank}", rngs["cpu.rank0"]))
        if self.device.type == "cuda" and "cuda.rank0" in rngs:
            torch.cuda.set_rng_state(rngs.get(f"cuda.rank{self.rank}", rngs["cuda.rank0"]), self.device)
        if (path / "best_adapter.safetensors").exists():
            self.best_state = load_file(path / "best_adapter.safetensors")
        self.start_step, self.best, self.best_step = state["step"], state["best"], state["best_step"]
        self.best_metrics = state["best_metrics"]
        self.bad_evals, self.metrics, self.trained_tokens = state["bad_evals"], state["metrics"], state["trained_tokens"]

    def save_adapter(self, out: Path) -> None:
        """The PEFT adapter (best one when early stopping tracked one) plus the tokenizer files."""
        if self.cfg.early_stopping_metric and self.best_state is not None:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(self.best_state[n])
        tmp = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.model.save_pretrained(tmp, save_embedding_layers=False)  # embeddings are frozen; no hub lookup
        config_file = tmp / "adapter_config.json"  # peft keeps target modules as a set: sort for stable bytes
        adapter_config = json.loads(config_file.read_text())
        if isinstance(adapter_config.get("target_modules"), list):
            adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
        config_file.write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        self.tokenizer.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)

    # ------------------------------------------------------------------ helpers
    def _result(self, status: str, step: int, checkpoint: str | None, final: bool = False) -> TrainingResult:
        adapter = None
        if final:
            adapter = Path(self.cfg.output_dir)
            if self.rank == 0:
                self.save_adapter(adapter)
            self._barrier()
        metrics = dict(self.metrics, trained_tokens=float(self.trained_tokens), steps=float(step))
        if final and self.best_step is not None:  # the adapter written is the best one: report its metrics
            metrics.update(self.best_metrics, best_step=float(self.best_step))
        return TrainingResult(status, step, self.total_steps, str(adapter) if adapter else None, checkpoint, metrics)

    def _stop_decision(self) -> str | None:
        codes = [None, STOP_CANCEL, STOP_SUSPEND]
        decision = self.cb.should_stop() if self.rank == 0 else None
        if decision not in codes:
            raise ValueError(f"should_stop() returned {decision!r}; expected None, 'cancel' or 'suspend'")
        code = torch.tensor([codes.index(decision)], device=self.device)
        self._broadcast(code)
        return codes[int(code)]

    def _broadcast(self, tensor: torch.Tensor) -> None:
        if self.world > 1:
            dist.broadcast(tensor, src=0)

    def _gather(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's copy of ``tensor`` (same shape on all ranks), on the CPU."""
        if self.world == 1:
            return [tensor.cpu()]
        parts = [torch.empty_like(tensor.to(self.device)) for _ in range(self.world)]
        dist.all_gather(parts, tensor.to(self.device))
        return [p.cpu() for p in parts]

    def _barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def _log(self, level: str, message: str, **fields: Any) -> None:
        if self.rank == 0:
            self.cb.on_log(level, message, **fields)

    def cleanup(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def run_training(config: RecipeConfig, train_examples: list[dict], validation_examples: list[dict] | None = None,
                 callbacks: TrainingCallbacks | None = None) -> TrainingResult:
    """Set up, train (from ``config.resume_from`` when given), write the adapter, clean up."""
    recipe = LoRARecipe(config, train_examples, validation_examples, callbacks)
    try:
        recipe.setup()
        return recipe.train_loop()
    finally:
        if hasattr(recipe, "owns_group"):
            recipe.cleanup()


def segment_attention(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                      segments: list[list[int]] | None = None, **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal SDPA run separately on each example of a packed row (``segments``: per row, its example
    lengths; trailing padding forms one more segment). Exact like padding, but nothing is computed across
    examples: a block-diagonal mask makes SDPA compute the whole row-wide square and skip no causal
    blocks (~7x slower on CPU for support-chat lengths). Without ``segments`` (generation): stock SDPA."""
    if segments is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    width, gqa = query.shape[2], query.shape[1] != key.shape[1]
    rows = []
    for r, lengths in enumerate(segments):
        sizes = list(lengths) + ([width - sum(lengths)] if sum(lengths) < width else [])
        parts = [F.scaled_dot_product_attention(q, k, v, dropout_p=dropout, scale=scaling, is_causal=True, enable_gqa=gqa)
                 for q, k, v in zip(*(t[r : r + 1].split(sizes, dim=2) for t in (query, key, value)))]
        rows.append(torch.cat(parts, dim=2))
    return torch.cat(rows).transpose(1, 2).contiguous(), None


AttentionInterface.register(SEGMENT_ATTENTION, segment_attention)
AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)  # generation builds its masks as for SDPA


def use_segment_attention(model: torch.nn.Module) -> bool:
    """Switch ``model`` to per-example attention when that is exact for it: plain causal self-attention
    (no sliding window, no logit soft-capping) in an architecture with pluggable attention. Otherwise it
    keeps its attention and packed rows carry a dense block-diagonal mask."""
    config = model.config
    if getattr(config, "sliding_window", None) or getattr(config, "attn_logit_softcapping", None):
        return False
    try:
        model.set_attn_implementation(SEGMENT_ATTENTION)
    except (ValueError, ImportError):
        return False
    return True


def keep_freed_memory() -> None:
    """Keep freed blocks up to 32 MiB in glibc's heap for reuse. A CPU step allocates and frees thousands of
    activations of 1-10 MB; by default glibc maps blocks that size fresh (or trims them off the heap top) and
    every reuse page-faults zeroed pages back in: a new 2.6 MB tensor cost 550 µs instead of 150 µs, and
    SmolLM2 fp32 training runs ~4 % faster (peak RSS +3 %). Other C libraries: nothing to do."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, 32 * 1024 * 1024)  # M_MMAP_THRESHOLD, at its maximum
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD (a C int): keep the heap top unless 2 GiB are free


class FastDropout(torch.nn.Module):
    """Inverted dropout whose keep mask comes from 16-bit slices of 64-bit random words: four samples per
    generator call. Off Intel MKL, torch's CPU ``bernoulli_`` draws one sample per call in a serial loop,
    which made LoRA dropout a quarter of a SmolLM2 training step; this is ~5x cheaper. Samples are
    independent per element and per module as in PEFT; ``p`` is rounded to a multiple of 2^-16."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p
        self.threshold = round(p * 65536)  # drop when the sample, read as unsigned 16 bits, is below this
        self.scale = 65536 / (65536 - self.threshold)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = self.mask(x)
        return x if mask is None else x * mask

    def mask(self, x: torch.Tensor) -> torch.Tensor | None:
        """The scaled keep mask for x (None when nothing is dropped)."""
        if not self.training or self.threshold == 0:
            return None
        words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), None)
        samples = words.view(torch.int16)[: x.numel()].view(x.shape)  # uniform over [-32768, 32767]
        return (samples >= self.threshold - 32768).to(x.dtype).mul_(self.scale)  # x's dtype: no casts in backward


def use_fast_dropout(model: torch.nn.Module) -> None:
    """Swap PEFT's LoRA ``nn.Dropout`` modules for FastDropout with the same ``p`` (CPU training)."""
    for module in model.modules():
        dropouts = getattr(module, "lora_dropout", None)
        if isinstance(dropouts, torch.nn.ModuleDict):
            for name, dropout in dropouts.items():
                if isinstance(dropout, torch.nn.Dropout):
                    dropouts[name] = FastDropout(dropout.p)


class _LoRALinear(torch.autograd.Function):
    """y = x·Wᵀ + b + s·((x⊙m)·Aᵀ)·Bᵀ for a frozen W and a dropout mask m, as one autograd node. PEFT's
    composition of modules makes ~8 nodes per LoRA layer, each with its own full-size temporaries (the
    scaled branch output, the sum, the branch's input gradient and its add); here the branch is added
    into the base output in place and its input gradient into the base one."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, mask, scaling):
        dropped = x if mask is None else x * mask
        low = dropped.reshape(-1, x.shape[-1]) @ lora_a.t()
        y = F.linear(x, weight, bias)
        y.view(-1, y.shape[-1]).addmm_(low, lora_b.t(), alpha=scaling)
        ctx.save_for_backward(dropped, low, mask, weight, lora_a, lora_b)
        ctx.scaling = scaling
        return y

    @staticmethod
    def backward(ctx, grad):
        dropped, low, mask, weight, lora_a, lora_b = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])
        grad_low = (grad2 @ lora_b).mul_(ctx.scaling)
        grad_b = (grad2.t() @ low).mul_(ctx.scaling)
        grad_a = grad_low.t() @ dropped.reshape(-1, dropped.shape[-1])
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = (grad2 @ weight).view(*grad.shape[:-1], weight.shape[1])
            branch = (grad_low @ lora_a).view_as(grad_x)
            grad_x = grad_x.add_(branch) if mask is None else grad_x.addcmul_(branch, mask)
        return grad_x, None, None, grad_a, grad_b, None, None


def _fused_lora_forward(layer, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """A PEFT LoRA Linear's forward through _LoRALinear while it trains with its one plain adapter."""
    if args or kwargs or not (layer.training and torch.is_grad_enabled()) or layer.merged or layer.disable_adapters:
        return type(layer).forward(layer, x, *args, **kwargs)
    (name,) = layer.active_adapters
    base, dropout = layer.base_layer, layer.lora_dropout[name]
    return _LoRALinear.apply(x, base.weight, base.bias, layer.lora_A[name].weight, layer.lora_B[name].weight,
                             dropout.mask(x) if isinstance(dropout, FastDropout) else None, layer.scaling[name])


def use_fused_lora(model: torch.nn.Module) -> None:
    """Route the forward of every PEFT LoRA Linear (one plain adapter on a frozen torch Linear, FastDropout
    or none) through _LoRALinear (CPU fp32 training). Same parameters, same dropout random stream, same
    result up to float summation order."""
    for module in model.modules():
        if (isinstance(module, LoraLinear) and isinstance(module.base_layer, torch.nn.Linear)
                and len(module.lora_A) == 1 and not module.lora_variant and not any(module.use_dora.values())
                and all(isinstance(d, (FastDropout, torch.nn.Identity)) for d in module.lora_dropout.values())):
            module.forward = _fused_lora_forward.__get__(module)


def linear_module_names(model: torch.nn.Module) -> list[str]:
    """Sorted names of the linear layers except the output head: what "all-linear" means, spelled out so
    adapter_config.json is the same on every run (peft would store an unordered set)."""
    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head})


def load_adapter(base_model_dir: str, adapter_dir: str) -> PeftModel:
    """Stock PEFT loading of a trained adapter onto its base model (for checks and sample serving)."""
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_model_dir), adapter_dir)
