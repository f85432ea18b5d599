"""Trainer rules: spec checks, planning (data, base model, hyperparameters, estimates), job lifecycle and
the queries behind the RPCs. Raises kit errors; the servicer only converts requests and responses.

Planning is shared by PlanTrainingJob, the VALIDATING step of a job (scheduler) and the worker, so a job
trains on exactly what its plan says.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import structlog

from tunery.common.v1 import common_pb2
from tunery.services.kit import auth, names, paging
from tunery.services.kit.errors import (FailedPrecondition, InvalidArgument, NotFound, TuneryError, Unavailable)
from tunery.services.kit.server import Runtime
from tunery.services.trainer import base_models, data, hyperparameters
from tunery.services.trainer.peers import DigestMismatch, Peers
from tunery.services.trainer.repository import Job, Repository
from tunery.trainer.v1 import trainer_pb2 as pb

log = structlog.get_logger("tunery.trainer")

JOB_PATTERN = "projects/{project}/trainingJobs/{job}"
JOB_ID = r"job-[0-9a-f]{12}"
PROJECT_PATTERN = "projects/{project}"
VERSION_PATTERN = "projects/{project}/datasets/{dataset}/versions/{version}"
DATASET_PATTERN = "projects/{project}/datasets/{dataset}"
MODEL_PATTERN = "projects/{project}/models/{model}"
VERSION_ID = r"[0-9a-f]{16}"
MAX_SAMPLE_PROMPTS, MAX_PROMPT_CHARS, MAX_PROCESSES = 8, 2000, 64
OVER_LENGTH_LINES = 100

# Proto field path of each recipe hyperparameter (keys of ResolvedHyperparameters.reasons).
PROTO_PATHS = {"epochs": "epochs", "batch_size": "batch_size", "learning_rate": "learning_rate",
               "lr_scheduler": "scheduler", "warmup_steps": "warmup_ratio", "weight_decay": "weight_decay",
               "max_grad_norm": "max_grad_norm", "max_seq_len": "max_sequence_length",
               "gradient_accumulation_steps": "gradient_accumulation_steps", "seed": "seed", "packing": "packing",
               "lora_rank": "lora.rank", "lora_alpha": "lora.alpha", "lora_dropout": "lora.dropout",
               "lora_target_modules": "lora.target_modules"}
SCHEDULERS = {pb.LEARNING_RATE_SCHEDULER_LINEAR: "linear", pb.LEARNING_RATE_SCHEDULER_COSINE: "cosine",
              pb.LEARNING_RATE_SCHEDULER_CONSTANT: "constant"}


class JobError(Exception):
    """A problem found while planning or running a job: becomes a TrainingError on a FAILED job, or
    INVALID_ARGUMENT / NOT_FOUND from PlanTrainingJob."""

    def __init__(self, code: str, message: str, field: str = "", dataset_version: str = "", line: int = 0) -> None:
        super().__init__(message)
        self.error = pb.TrainingError(code=code, message=message, field=field, dataset_version=dataset_version,
                                      line=line)

    def as_rpc_error(self) -> TuneryError:
        e = self.error
        if e.code in ("dataset_not_found", "dataset_version_deleted", "base_model_not_found"):
            return NotFound(e.message, e.code.upper(), field=e.field)
        where = f"line {e.line}" if e.line else (f"spec.{e.field}" if e.field else "spec")
        return InvalidArgument(e.message, e.code.upper(), [(where, e.message)])


# ---------------------------------------------------------------------- cheap checks
def check_spec(project: str, spec: pb.TrainingJobSpec) -> None:
    """Names, ranges and combinations; every problem at once as INVALID_ARGUMENT field violations."""
    bad: list[tuple[str, str]] = []

    def need(ok: bool, field: str, description: str) -> None:
        if not ok:
            bad.append((f"spec.{field}", description))

    need(bool(spec.base_model), "base_model", "is required: a catalog id from ListBaseModels")
    _check_data_name(project, spec.training_data, "training_data", bad, required=True)
    which = spec.WhichOneof("validation")
    if which == "validation_data":
        _check_data_name(project, spec.validation_data, "validation_data", bad, required=True)
    elif which == "validation_fraction":
        need(0 < spec.validation_fraction <= 0.5, "validation_fraction", "must be in (0, 0.5]")
    need(spec.method in (pb.TRAINING_METHOD_UNSPECIFIED, pb.TRAINING_METHOD_SFT), "method", "must be SFT")
    hp, lora = spec.hyperparameters, spec.lora
    ranges = [
        ("epochs", hp.HasField("epochs") and not 1 <= hp.epochs <= 1000, "must be in [1, 1000]"),
        ("batch_size", hp.HasField("batch_size") and not 1 <= hp.batch_size <= 65536, "must be in [1, 65536]"),
        ("learning_rate", hp.HasField("learning_rate") and not 0 < hp.learning_rate <= 1, "must be in (0, 1]"),
        ("warmup_ratio", hp.HasField("warmup_ratio") and not 0 <= hp.warmup_ratio <= 0.5, "must be in [0, 0.5]"),
        ("weight_decay", hp.HasField("weight_decay") and not 0 <= hp.weight_decay <= 1, "must be in [0, 1]"),
        ("max_grad_norm", hp.HasField("max_grad_norm") and not 0 <= hp.max_grad_norm < math.inf,
         "must be ≥ 0 (0 disables clipping)"),
        ("max_sequence_length", hp.HasField("max_sequence_length") and hp.max_sequence_length < 8,
         "must be at least 8"),
        ("gradient_accumulation_steps", hp.HasField("gradient_accumulation_steps")
         and not 1 <= hp.gradient_accumulation_steps <= 1024, "must be in [1, 1024]"),
        ("seed", hp.HasField("seed") and hp.seed < 0, "must not be negative"),
    ]
    for field, broken, description in ranges:
        need(not broken, f"hyperparameters.{field}", description)
    need(hp.scheduler in pb.LearningRateScheduler.values(), "hyperparameters.scheduler", "is not a known scheduler")
    need(hp.precision in pb.Precision.values(), "hyperparameters.precision", "is not a known precision")
    need(not lora.HasField("rank") or 1 <= lora.rank <= 1024, "lora.rank", "must be in [1, 1024]")
    need(not lora.HasField("alpha") or lora.alpha >= 1, "lora.alpha", "must be at least 1")
    need(not lora.HasField("dropout") or 0 <= lora.dropout < 1, "lora.dropout", "must be in [0, 1)")
    need(all(m and len(m) <= 128 for m in lora.target_modules), "lora.target_modules",
         "module names must be non-empty and at most 128 characters")
    try:
        output = names.parse(spec.output_model, MODEL_PATTERN, field="spec.output_model")
        need(output["project"] == project, "output_model", f"must be a model of project {project!r}")
    except InvalidArgument as e:
        bad.extend(e.violations)
    need(not spec.HasField("eval_interval_steps") or spec.eval_interval_steps >= 0, "eval_interval_steps",
         "must not be negative")
    need(not spec.HasField("checkpoint_interval_steps") or spec.checkpoint_interval_steps >= 0,
         "checkpoint_interval_steps", "must not be negative")
    need(len(spec.sample_prompts) <= MAX_SAMPLE_PROMPTS, "sample_prompts", f"at most {MAX_SAMPLE_PROMPTS} prompts")
    need(all(0 < len(p) <= MAX_PROMPT_CHARS for p in spec.sample_prompts), "sample_prompts",
         f"each prompt must have 1 to {MAX_PROMPT_CHARS} characters")
    if spec.HasField("early_stopping"):
        stop = spec.early_stopping
        need(which is not None, "early_stopping", "needs validation_data or validation_fraction")
        need(stop.patience >= 1, "early_stopping.patience", "must be at least 1")
        need(stop.metric in pb.EarlyStoppingMetric.values(), "early_stopping.metric", "is not a known metric")
        # The recipe counts any improvement; a threshold would silently be ignored, so refuse it.
        need(stop.min_delta == 0, "early_stopping.min_delta", "only 0 (any improvement counts) is supported")
    need(0 <= spec.num_processes <= MAX_PROCESSES, "num_processes", f"must be in [0, {MAX_PROCESSES}]")
    if bad:
        raise InvalidArgument("; ".join(f"{f}: {d}" for f, d in bad), "INVALID_SPEC", bad)


def _check_data_name(project: str, name: str, field: str, bad: list, required: bool) -> None:
    if not name and not required:
        return
    parsed = _parse_data_name(name, field, bad)
    if parsed and parsed["project"] != project:
        bad.append((f"spec.{field}", f"must be a dataset of project {project!r}"))


def _parse_data_name(name: str, field: str, bad: list | None = None) -> dict | None:
    for pattern, extra in ((VERSION_PATTERN, {"version": VERSION_ID}), (DATASET_PATTERN, {})):
        try:
            return names.parse(name, pattern, field=f"spec.{field}", **extra)
        except InvalidArgument:
            continue
    problem = (f"{name!r} is neither a dataset version (projects/P/datasets/D/versions/V) nor a dataset "
               "(projects/P/datasets/D)")
    if bad is None:
        raise InvalidArgument.field(f"spec.{field}", problem, "INVALID_NAME")
    bad.append((f"spec.{field}", problem))
    return None


# ---------------------------------------------------------------------- planning
@dataclass
class LoadedData:
    """Examples with their 1-based lines, and the dataset versions they come from."""

    train: list[dict]
    train_lines: list[int]
    validation: list[dict]
    validation_lines: list[int]
    training_ref: common_pb2.DatasetVersionRef
    validation_ref: common_pb2.DatasetVersionRef | None


@dataclass
class Planned:
    plan: pb.TrainingPlan
    hyperparameters: hyperparameters.ResolvedHyperparameters
    data: LoadedData
    model_dir: Path


def _peer_call(call: Callable, *, not_found: JobError):
    """A peer call with NOT_FOUND as `not_found`; unreachable peers stay Unavailable (retryable)."""
    try:
        return call()
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise not_found from None
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise Unavailable(f"a Tunery service the trainer needs did not answer: {e.details()}",
                              "PEER_UNAVAILABLE") from None
        if e.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            raise Unavailable("a Tunery service refused the trainer's credentials: set TUNERY_SERVICE_API_KEY to "
                              f"an admin API key ({e.details()})", "PEER_REJECTED_CREDENTIALS") from None
        raise


def _parse_jsonl(raw: bytes, version: str) -> tuple[list[dict], list[int]]:
    examples, lines = [], []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            example = json.loads(line)
        except ValueError as e:
            raise JobError("wrong_dataset_format", f"line {number} is not valid JSON: {e}", "", version, number) from e
        if not isinstance(example, dict):
            raise JobError("wrong_dataset_format", f"line {number} is not a JSON object", "", version, number)
        examples.append(example)
        lines.append(number)
    return examples, lines


def load_version(peers: Peers, name: str, field: str,
                 expected_sha256: str | None = None) -> tuple[list[dict], list[int], common_pb2.DatasetVersionRef]:
    """Download a dataset version (digest-verified) and parse its examples."""
    gone = JobError("dataset_version_deleted", f"dataset version {name} no longer exists", field, name)
    version = _peer_call(lambda: peers.get_dataset_version(name), not_found=gone)
    if expected_sha256 and version.sha256 != expected_sha256:
        raise JobError("dataset_changed", f"dataset version {name} no longer has the digest the job was planned "
                       "with", field, name)
    try:
        raw = _peer_call(lambda: peers.download_dataset_version(name, version.sha256), not_found=gone)
    except DigestMismatch as e:
        raise JobError("dataset_corrupted", str(e), field, name) from e
    examples, lines = _parse_jsonl(raw, name)
    return examples, lines, common_pb2.DatasetVersionRef(name=name, sha256=version.sha256)


def load_data(peers: Peers, spec: pb.TrainingJobSpec, training_version: str, validation_version: str | None,
              seed: int, expected: pb.TrainingPlan | None = None) -> LoadedData:
    """Training and validation examples: a second dataset version, a seeded fraction, or none."""
    train, lines, train_ref = load_version(peers, training_version, "training_data",
                                           expected.training_data.sha256 if expected else None)
    if not train:
        raise JobError("no_training_examples", f"{training_version} has no examples", "training_data",
                       training_version)
    val, val_lines, val_ref = [], [], None
    if validation_version:
        val, val_lines, val_ref = load_version(peers, validation_version, "validation_data",
                                               expected.validation_data.sha256 if expected else None)
    elif spec.WhichOneof("validation") == "validation_fraction":
        if len(train) < 2:
            raise JobError("too_few_examples", "a validation fraction needs at least 2 training examples",
                           "validation_fraction", training_version)
        kept, held = data.split_validation(list(zip(lines, train)), spec.validation_fraction, seed)
        lines, train = [n for n, _ in kept], [e for _, e in kept]
        val_lines, val = [n for n, _ in held], [e for _, e in held]
    return LoadedData(train, lines, val, val_lines, train_ref, val_ref)


_digests: dict[tuple[str, int, int], str] = {}


def weights_sha256(model_dir: Path) -> str:
    """common.v1.BaseModelRef.weights_sha256: sha256 of "<file sha256>  <name>\\n" per *.safetensors file,
    sorted by name (memoized by path, size and mtime: the files are large)."""
    lines = []
    for path in sorted(model_dir.glob("*.safetensors")):
        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _digests:
            digest = hashlib.sha256()
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
            _digests[key] = digest.hexdigest()
        lines.append(f"{_digests[key]}  {path.name}\n")
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def resolve_model(settings_cache: Path, model_id: str) -> tuple[base_models.BaseModelInfo, Path]:
    try:
        info = base_models.describe_base_model(model_id, settings_cache)
        if not info.available:
            raise base_models.BaseModelError(f"base model {model_id!r} is not available here: "
                                             f"{info.unavailable_reason}")
        return info, base_models.resolve_base_model(model_id, settings_cache)
    except base_models.BaseModelError as e:
        raise JobError("base_model_not_found", str(e), "base_model") from e


def linear_modules(model_dir: Path) -> list[str]:
    """Names of the linear layers LoRA can adapt (all but the output head), from the config alone."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(model_dir)))
    head = model.get_output_embeddings()
    return sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                   if isinstance(m, torch.nn.Linear) and m is not head})


def _requested(spec: pb.TrainingJobSpec, warmup_steps: int | None) -> hyperparameters.Hyperparameters:
    hp, lora = spec.hyperparameters, spec.lora
    opt = lambda msg, field: getattr(msg, field) if msg.HasField(field) else None  # noqa: E731
    return hyperparameters.Hyperparameters(
        epochs=opt(hp, "epochs"), batch_size=opt(hp, "batch_size"), learning_rate=opt(hp, "learning_rate"),
        lr_scheduler=SCHEDULERS.get(hp.scheduler), warmup_steps=warmup_steps, weight_decay=opt(hp, "weight_decay"),
        # 0 disables clipping: the recipe clips at an infinite norm, which only measures it.
        max_grad_norm=(math.inf if hp.max_grad_norm == 0 else hp.max_grad_norm) if hp.HasField("max_grad_norm")
        else None,
        max_seq_len=opt(hp, "max_sequence_length"), gradient_accumulation_steps=opt(hp, "gradient_accumulation_steps"),
        seed=opt(hp, "seed"), packing=opt(hp, "packing"), lora_rank=opt(lora, "rank"),
        lora_alpha=float(lora.alpha) if lora.HasField("alpha") else None, lora_dropout=opt(lora, "dropout"),
        lora_target_modules=list(lora.target_modules) or None)


def _resolve(spec: pb.TrainingJobSpec, lengths: list[int], context_length: int,
             processes: int) -> tuple[hyperparameters.ResolvedHyperparameters, int]:
    """Resolved hyperparameters and total steps; warmup_ratio becomes warmup steps of the resolved total."""
    try:
        hp = hyperparameters.resolve_hyperparameters(_requested(spec, None), example_lengths=lengths,
                                                     context_length=context_length, num_processes=processes)
        total = math.ceil(len(lengths) / hp.batch_size) * hp.epochs
        if spec.hyperparameters.HasField("warmup_ratio"):
            steps = round(spec.hyperparameters.warmup_ratio * total)
            hp = hyperparameters.resolve_hyperparameters(_requested(spec, steps), example_lengths=lengths,
                                                         context_length=context_length, num_processes=processes)
    except hyperparameters.HyperparameterError as e:
        path = PROTO_PATHS.get(e.field, e.field)
        field = path if path.startswith("lora.") or e.field == "training_data" else f"hyperparameters.{path}"
        code = "sequence_too_long" if e.field == "max_seq_len" else "invalid_hyperparameters"
        raise JobError(code, str(e).replace(f"{e.field}:", f"{field}:", 1), field) from e
    return hp, total


def default_seed(spec: pb.TrainingJobSpec) -> int:
    """The seed a job uses: the user's, or the automatic one (needed before the split, so resolve it alone)."""
    if spec.hyperparameters.HasField("seed"):
        return spec.hyperparameters.seed
    return hyperparameters.resolve_hyperparameters(hyperparameters.Hyperparameters(), example_lengths=[1],
                                                   context_length=8).seed


def intervals(spec: pb.TrainingJobSpec, total_steps: int) -> tuple[int, int]:
    """(eval, checkpoint) intervals in steps: the user's, or about 10 per job; 0 means only at the end."""
    auto = max(1, math.ceil(total_steps / 10))
    return (spec.eval_interval_steps if spec.HasField("eval_interval_steps") else auto,
            spec.checkpoint_interval_steps if spec.HasField("checkpoint_interval_steps") else auto)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _precision(spec: pb.TrainingJobSpec) -> tuple[int, str]:
    if spec.hyperparameters.precision != pb.PRECISION_UNSPECIFIED:
        return spec.hyperparameters.precision, "set by the user"
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return pb.PRECISION_BF16, "auto: the GPU supports bf16 autocast"
    return pb.PRECISION_FP32, "auto: fp32 on CPU keeps training exact and reproducible"


def build_plan(cache: Path, peers: Peers, spec: pb.TrainingJobSpec, training_version: str,
               validation_version: str | None) -> Planned:
    """Everything a job will train on and with, checked: raises JobError for data or model problems."""
    from transformers import AutoTokenizer

    info, model_dir = resolve_model(cache, spec.base_model)
    processes = max(1, spec.num_processes)
    loaded = load_data(peers, spec, training_version, validation_version, default_seed(spec))
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    train = _tokenize(loaded.train, loaded.train_lines, tokenizer, loaded.training_ref.name, "training_data")
    validation_name = loaded.validation_ref.name if loaded.validation_ref else loaded.training_ref.name
    val = _tokenize(loaded.validation, loaded.validation_lines, tokenizer, validation_name, "validation_data")
    hp, total_steps = _resolve(spec, [t.full_length for t in train], info.context_length, processes)
    available = linear_modules(model_dir)
    if list(hp.lora_target_modules) == [hyperparameters.ALL_LINEAR]:
        reasons = hp.reasons
        hp = hyperparameters.ResolvedHyperparameters(**{**hp.values(), "lora_target_modules": tuple(available)},
                                                     reasons=reasons)
    else:
        unknown = sorted(set(hp.lora_target_modules) - set(available))
        if unknown:
            raise JobError("invalid_target_modules", f"lora.target_modules: {', '.join(unknown)} are not linear "
                           f"layers of {spec.base_model}; choose from {', '.join(available)}", "lora.target_modules")
    truncated = [t.truncate(hp.max_seq_len) for t in train]
    stats = data.token_stats(truncated)
    if stats.supervised_tokens == 0:
        raise JobError("no_supervised_tokens", "no training example has a token to learn from (all assistant "
                       "turns have weight 0 or were truncated)", "training_data", loaded.training_ref.name)
    val_stats = data.token_stats([t.truncate(hp.max_seq_len) for t in val]) if val else None
    eval_every, _ = intervals(spec, total_steps)
    estimate = hyperparameters.estimate_plan(hp, stats, base_models.model_shape(model_dir), validation=val_stats,
                                             eval_interval_steps=eval_every, num_processes=processes)
    precision, precision_reason = _precision(spec)
    plan = pb.TrainingPlan(
        resolved=resolved_proto(hp, total_steps, precision, precision_reason),
        training_data=loaded.training_ref, validation_data=loaded.validation_ref,
        base_model=common_pb2.BaseModelRef(id=spec.base_model, weights_sha256=weights_sha256(model_dir)),
        training_example_count=len(train), validation_example_count=len(val),
        total_tokens=stats.total_tokens, supervised_tokens=stats.supervised_tokens,
        over_length_example_count=len(stats.over_length),
        over_length_lines=[loaded.train_lines[i] for i in stats.over_length[:OVER_LENGTH_LINES]],
        steps_per_epoch=estimate.steps_per_epoch, total_steps=estimate.total_steps,
        estimated_peak_memory_bytes=estimate.estimated_peak_memory_bytes, device=device())
    plan.estimated_duration.FromMilliseconds(int(estimate.estimated_duration_s * 1000))
    return Planned(plan, hp, loaded, model_dir)


def _tokenize(examples: list[dict], lines: list[int], tokenizer, version: str, field: str):
    try:
        return data.tokenize_examples(examples, tokenizer)
    except data.DataError as e:
        line = lines[e.index]
        raise JobError("tokenization_failed", f"line {line} of {version}: {e.__cause__ or e}", field, version,
                       line) from e


def resolved_proto(hp: hyperparameters.ResolvedHyperparameters, total_steps: int, precision: int,
                   precision_reason: str) -> pb.ResolvedHyperparameters:
    reasons = {PROTO_PATHS[k]: v for k, v in hp.reasons.items()}
    reasons["precision"] = precision_reason
    return pb.ResolvedHyperparameters(
        hyperparameters=pb.Hyperparameters(
            epochs=hp.epochs, batch_size=hp.batch_size, learning_rate=hp.learning_rate,
            scheduler=pb.LearningRateScheduler.Value(f"LEARNING_RATE_SCHEDULER_{hp.lr_scheduler.upper()}"),
            warmup_ratio=hp.warmup_steps / max(1, total_steps), weight_decay=hp.weight_decay,
            max_grad_norm=0.0 if math.isinf(hp.max_grad_norm) else hp.max_grad_norm,
            max_sequence_length=hp.max_seq_len, gradient_accumulation_steps=hp.gradient_accumulation_steps,
            seed=hp.seed, packing=hp.packing, precision=precision),
        lora=pb.LoraConfig(rank=hp.lora_rank, alpha=int(hp.lora_alpha), dropout=hp.lora_dropout,
                           target_modules=list(hp.lora_target_modules)),
        reasons=reasons)


def recipe_hyperparameters(plan: pb.TrainingPlan) -> hyperparameters.ResolvedHyperparameters:
    """The recipe's hyperparameters from a stored plan (the inverse of resolved_proto)."""
    hp, lora = plan.resolved.hyperparameters, plan.resolved.lora
    return hyperparameters.ResolvedHyperparameters(
        epochs=hp.epochs, batch_size=hp.batch_size, learning_rate=hp.learning_rate,
        lr_scheduler=SCHEDULERS[hp.scheduler], warmup_steps=round(hp.warmup_ratio * plan.total_steps),
        weight_decay=hp.weight_decay, max_grad_norm=math.inf if hp.max_grad_norm == 0 else hp.max_grad_norm,
        max_seq_len=hp.max_sequence_length, gradient_accumulation_steps=hp.gradient_accumulation_steps,
        seed=hp.seed, packing=hp.packing, lora_rank=lora.rank, lora_alpha=float(lora.alpha),
        lora_dropout=lora.dropout, lora_target_modules=tuple(lora.target_modules))


# ---------------------------------------------------------------------- protos of stored jobs
def state_value(state: str) -> int:
    return pb.TrainingJobState.Value(f"TRAINING_JOB_STATE_{state}")


def job_proto(job: Job, message: pb.TrainingJob | None = None) -> pb.TrainingJob:
    """The job as its proto (filled into `message` when given, e.g. a response's field, to skip a copy)."""
    message = pb.TrainingJob() if message is None else message
    message.name = job.name
    message.state = state_value(job.state)
    # The stored bytes are merged in directly: parsing them into messages first and copying those cost more.
    message.spec.MergeFromString(job.spec_bytes)
    if job.plan_bytes is not None:
        message.plan.MergeFromString(job.plan_bytes)
    if job.progress_bytes is not None:
        message.progress.MergeFromString(job.progress_bytes)
    if job.error_bytes is not None and job.state == "FAILED":
        message.error.MergeFromString(job.error_bytes)
    message.cancel_requested = job.cancel_requested
    message.attempt_count = job.attempt_count
    message.lost_steps = job.lost_steps
    message.model_version = job.model_version or ""
    message.create_time.FromMicroseconds(job.create_us)
    if job.start_us:
        message.start_time.FromMicroseconds(job.start_us)
    if job.end_us:
        message.end_time.FromMicroseconds(job.end_us)
    return message


# ---------------------------------------------------------------------- the service
class TrainerService:
    """The rules behind each RPC. `wake` nudges the scheduler after a change it should act on."""

    def __init__(self, runtime: Runtime, peers: Peers, wake: Callable[[], None] = lambda: None) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.repo = Repository(runtime.db, runtime.objects)
        self.peers = peers
        self.wake = wake

    # ------------------------------------------------------------------ create / plan
    def create(self, parent: str, spec: pb.TrainingJobSpec, request_id: str) -> Job:
        project = self._project(parent)
        if request_id:
            _check_request_id(request_id)
        check_spec(project, spec)
        self._check_base_model(spec.base_model)
        training = self._resolve_version(spec.training_data, "training_data")
        validation = (self._resolve_version(spec.validation_data, "validation_data")
                      if spec.WhichOneof("validation") == "validation_data" else None)
        job, created = self.repo.create_job(
            job_id=f"job-{uuid.uuid4().hex[:12]}", project=project, request_id=request_id or None, spec=spec,
            training_version=training, validation_version=validation, quota=self.settings.quota_concurrent_jobs)
        if not created and job.spec.SerializeToString(deterministic=True) != spec.SerializeToString(deterministic=True):
            raise InvalidArgument.field("request_id", "was already used for a job with a different spec",
                                        "REQUEST_ID_REUSED")
        if created:
            log.info("training_job.created", job=job.name, training_data=training)
            self.wake()
        return job

    def plan(self, parent: str, spec: pb.TrainingJobSpec) -> pb.TrainingPlan:
        check_spec(self._project(parent), spec)
        self._check_base_model(spec.base_model)
        training = self._resolve_version(spec.training_data, "training_data")
        validation = (self._resolve_version(spec.validation_data, "validation_data")
                      if spec.WhichOneof("validation") == "validation_data" else None)
        try:
            return build_plan(self.settings.model_cache(), self.peers, spec, training, validation).plan
        except JobError as e:
            raise e.as_rpc_error() from e

    def _check_base_model(self, model_id: str) -> None:
        try:
            info = base_models.describe_base_model(model_id, self.settings.model_cache())
        except base_models.BaseModelError as e:
            raise NotFound(str(e), "BASE_MODEL_NOT_FOUND", base_model=model_id) from e
        if not info.available:
            raise NotFound(f"base model {model_id!r} is not available on this server: {info.unavailable_reason}",
                           "BASE_MODEL_NOT_FOUND", base_model=model_id)

    def _resolve_version(self, name: str, field: str) -> str:
        """The dataset version a data reference means now (a dataset's latest version)."""
        parsed = _parse_data_name(name, field)
        if parsed.get("version"):
            missing = JobError("dataset_not_found", f"dataset version {name} does not exist", field)
            _peer_call(lambda: self.peers.get_dataset_version(name), not_found=_not_found(missing, name, field))
            return name
        missing = JobError("dataset_not_found", f"dataset {name} does not exist", field)
        dataset = _peer_call(lambda: self.peers.get_dataset(name), not_found=_not_found(missing, name, field))
        if not dataset.latest_version:
            raise FailedPrecondition(f"dataset {name} has no versions yet; upload one first", "DATASET_HAS_NO_VERSIONS",
                                     dataset=name)
        return dataset.latest_version

    # ------------------------------------------------------------------ read
    def get(self, name: str) -> Job:
        parsed = names.parse(name, JOB_PATTERN, field="name", job=JOB_ID)
        auth.authorize(parsed["project"])
        job = self.repo.get_job(parsed["job"])
        if job is None or job.project != parsed["project"]:
            raise NotFound(f"training job {name} does not exist", "TRAINING_JOB_NOT_FOUND", training_job=name)
        return job

    def list(self, parent: str, page_size: int, page_token: str, state: int,
             dataset_version: str) -> tuple[list[Job], str]:
        project = self._project(parent)
        size = paging.page_size(page_size)
        if state not in pb.TrainingJobState.values():
            raise InvalidArgument.field("state", "is not a known state")
        if dataset_version:
            names.parse(dataset_version, VERSION_PATTERN, field="dataset_version", version=VERSION_ID)
        query = {"parent": parent, "state": state, "dataset_version": dataset_version}
        after = self.runtime.page_tokens.decode(page_token, query)
        state_name = pb.TrainingJobState.Name(state).removeprefix("TRAINING_JOB_STATE_") if state else None
        found = self.repo.list_jobs(project, state=state_name, dataset_version=dataset_version or None,
                                    after=tuple(after) if after else None, limit=size + 1)
        token = ""
        if len(found) > size:
            found = found[:size]
            token = self.runtime.page_tokens.encode([found[-1].create_us, found[-1].job_id], query)
        return found, token

    def list_events(self, parent: str, page_size: int, page_token: str) -> tuple[list[pb.TrainingJobEvent], str]:
        job = self.get(parent)
        size = paging.page_size(page_size)
        query = {"parent": parent}
        after = self.runtime.page_tokens.decode(page_token, query) or 0
        found = self.repo.list_events(job.job_id, int(after), size + 1)
        token = ""
        if len(found) > size:
            found = found[:size]
            token = self.runtime.page_tokens.encode(found[-1].seq, query)
        return found, token

    def list_checkpoints(self, parent: str, page_size: int, page_token: str) -> tuple[list[pb.Checkpoint], str]:
        job = self.get(parent)
        size = paging.page_size(page_size)
        query = {"parent": parent, "checkpoints": True}
        after = self.runtime.page_tokens.decode(page_token, query)
        found = self.repo.list_checkpoints(job.job_id, -1 if after is None else int(after), size + 1)
        token = ""
        if len(found) > size:
            found = found[:size]
            token = self.runtime.page_tokens.encode(found[-1].step, query)
        return found, token

    def watch(self, name: str, after_seq: int, active: Callable[[], bool]) -> Iterator[pb.TrainingJobEvent]:
        """History after `after_seq`, then live events (polled) until the event that ends the job."""
        job = self.get(name)
        if after_seq < 0:
            raise InvalidArgument.field("after_seq", "must not be negative")
        seq = after_seq
        while active():
            if self.runtime.stopping.is_set():
                raise Unavailable(f"the trainer service is stopping; reconnect with after_seq={seq}",
                                  "SERVICE_STOPPING", after_seq=seq)
            batch = self.repo.list_events(job.job_id, seq, 500)
            for event in batch:
                yield event
                seq = event.seq
                if event.WhichOneof("event") == "state_changed" and event.state_changed.state in (
                        pb.TRAINING_JOB_STATE_SUCCEEDED, pb.TRAINING_JOB_STATE_FAILED, pb.TRAINING_JOB_STATE_CANCELLED):
                    return
            if batch:
                continue
            current = self.repo.get_job(job.job_id)
            if current is None or (current.terminal and current.last_seq <= seq):
                return  # the terminal event was before after_seq
            time.sleep(self.settings.trainer_poll_interval_s)  # pacing of the poll, not synchronisation

    def list_base_models(self, parent: str, page_size: int, page_token: str) -> tuple[list[pb.BaseModel], str]:
        self._project(parent)
        size = paging.page_size(page_size)
        query = {"parent": parent, "base_models": True}
        after = self.runtime.page_tokens.decode(page_token, query) or ""
        cache = self.settings.model_cache()
        entries = sorted((e for e in base_models.list_base_models(cache) if e.available), key=lambda e: e.id)
        entries = [e for e in entries if e.id > after]
        token = ""
        if len(entries) > size:
            entries = entries[:size]
            token = self.runtime.page_tokens.encode(entries[-1].id, query)
        found = []
        for entry in entries:
            # Cached entries resolve to their folder without building anything; others have no digest yet.
            folder = base_models.resolve_base_model(entry.id, cache) if entry.cached else None
            found.append(pb.BaseModel(
                id=entry.id, description=entry.description, source=pb.BASE_MODEL_SOURCE_BUILTIN,
                parameter_count=entry.parameter_count, context_length=entry.context_length,
                has_chat_template=entry.has_chat_template,
                weights_sha256=weights_sha256(folder) if folder else ""))
        return found, token

    # ------------------------------------------------------------------ cancel
    def cancel(self, name: str) -> Job:
        job = self.get(name)
        if job.terminal:
            raise FailedPrecondition(f"training job {name} is already {job.state}", "TRAINING_JOB_TERMINAL",
                                     state=job.state)
        if job.state in ("VALIDATING", "QUEUED"):
            done = self.repo.transition(job.job_id, ("VALIDATING", "QUEUED"), "CANCELLED", "cancelled by request",
                                        cancel_requested=True)
            if done is not None:
                log.info("training_job.cancelled", job=name, previous=job.state)
                return done
        if not job.cancel_requested:
            flagged = self.repo.update_job(job.job_id, when_state="RUNNING", cancel_requested=True)
            if flagged is not None:
                self.repo.append_event(job.job_id, pb.TrainingJobEvent(log=pb.LogEvent(
                    severity=pb.LOG_SEVERITY_INFO, code="cancel_requested",
                    message="cancellation requested; the job stops at the next step boundary")))
                log.info("training_job.cancel_requested", job=name)
        self.wake()
        return self.get(name)

    def _project(self, parent: str) -> str:
        project = names.parse(parent, PROJECT_PATTERN, field="parent")["project"]
        auth.authorize(project)
        return project


def _not_found(error: JobError, name: str, field: str) -> TuneryError:
    reason = "DATASET_VERSION_NOT_FOUND" if "/versions/" in name else "DATASET_NOT_FOUND"
    return NotFound(error.error.message, reason, field=f"spec.{field}")


def _check_request_id(request_id: str) -> None:
    try:
        uuid.UUID(request_id)
    except ValueError:
        raise InvalidArgument.field("request_id", "must be a UUID such as 0f3c1d2e-7a4b-4c5d-9e6f-8a7b6c5d4e3f",
                                    "INVALID_REQUEST_ID") from None
