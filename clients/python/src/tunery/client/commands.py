"""The `tunery datasets|jobs|models|demo` commands, registered on the parser built in cli.py.

With --json, stdout carries only JSON: protobuf messages in their JSON form with snake_case field names
(64-bit integers as strings, enums by name), one document per command, one object per line for streams.
Progress goes to stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Callable

from google.protobuf import json_format
from google.protobuf.message import Message

from tunery.client.cli import CommandError, emit, table

Register = Callable[..., argparse.ArgumentParser]


# -- output helpers ------------------------------------------------------------------------------------------
def to_dict(message: Message) -> dict[str, Any]:
    """The JSON form of a message, with the proto's own (snake_case) field names."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else ""


def _time(ts) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else ""


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


class Bar:
    """A one-line progress bar on stderr (redrawn in place on a terminal, a line per 10% otherwise)."""

    def __init__(self, label: str, width: int = 30) -> None:
        self.label, self.width = label, width
        self.tty = sys.stderr.isatty()
        self._shown = -1

    def update(self, done: int, total: int, suffix: str = "") -> None:
        fraction = done / total if total else 1.0
        if not self.tty:
            tenth = int(fraction * 10)
            if tenth == self._shown:
                return
            self._shown = tenth
        filled = int(fraction * self.width)
        line = f"{self.label} [{'#' * filled}{'.' * (self.width - filled)}] {fraction:6.1%} {suffix}"
        sys.stderr.write(("\r" + line + "\033[K") if self.tty else line + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def client():
    """The SDK client from the local config / environment (imported here so `tunery --help` stays fast)."""
    from tunery.client import Client
    return Client()


# -- datasets ------------------------------------------------------------------------------------------------
def cmd_datasets_validate(args: argparse.Namespace) -> None:
    from tunery.client.datasets import Datasets
    from tunery.client.validation import LimitExceeded
    try:
        report = Datasets.validate_file(args.file, format=args.format)
    except LimitExceeded as error:
        raise CommandError(f"RESOURCE_EXHAUSTED: {error}") from None

    def human(r: dict) -> str:
        lines = [f"line {i['line']}: {i['severity']} {i['code']}" + (f" at {i['path']}" if i["path"] else "")
                 + f": {i['message']}" for i in r["issues"]]
        stats = r["stats"]
        lines.append(f"{'OK' if r['ok'] else 'INVALID'}: {r['format'] or 'unknown'} format, "
                     f"{stats['examples']} valid examples, {r['errors']} errors, {r['warnings']} warnings"
                     + (" (issue list truncated)" if r["truncated"] else ""))
        return "\n".join(lines)

    emit(args, report.to_dict(), human)
    if not report.ok:
        raise CommandError(f"{args.file} has {report.errors} validation error(s)")


def _format_label(value: int) -> str:
    from tunery.dataset.v1 import dataset_pb2
    return dataset_pb2.DatasetFormat.Name(value).removeprefix("DATASET_FORMAT_").lower()


def _version_summary(v) -> dict[str, Any]:
    return {"version": _short(v.name), "examples": v.statistics.example_count, "size": _size(v.size_bytes),
            "format": _format_label(v.format),
            "warnings": v.validation_report.summary.warning_count, "created": _time(v.create_time)}


def cmd_datasets_upload(args: argparse.Namespace) -> None:
    bar = Bar(f"uploading {args.file}")
    result = client().datasets.upload(args.file, dataset=args.dataset, format=args.format,
                                      description=args.description,
                                      progress=lambda done, total: bar.update(done, total, _size(done)))
    bar.close()
    v = result.dataset_version
    emit(args, to_dict(result), lambda _: (
        f"{'created' if result.created else 'already present:'} {args.dataset}@{_short(v.name)} "
        f"({v.statistics.example_count} examples, {_size(v.size_bytes)}, "
        f"{v.validation_report.summary.warning_count} warnings)\nsha256 {v.sha256}"))


def cmd_datasets_list(args: argparse.Namespace) -> None:
    datasets = list(client().datasets.list())
    rows = [{"dataset": _short(d.name), "versions": d.version_count, "latest": _short(d.latest_version),
             "created": _time(d.create_time), "description": d.description} for d in datasets]
    emit(args, [to_dict(d) for d in datasets],
         lambda _: table(rows, ["dataset", "versions", "latest", "created", "description"]))


def cmd_datasets_show(args: argparse.Namespace) -> None:
    c = client()
    if "@" in args.ref:
        v = c.datasets.get_version(args.ref)
        s = v.statistics

        def human(_: Any) -> str:
            lines = [f"{v.name}", f"  sha256     {v.sha256}", f"  size       {_size(v.size_bytes)}",
                     f"  format     {_version_summary(v)['format']}", f"  examples   {s.example_count}",
                     f"  duplicates {s.duplicate_count}",
                     f"  chars/ex   min {s.characters_per_example.min}  p50 {s.characters_per_example.p50}  "
                     f"p95 {s.characters_per_example.p95}  max {s.characters_per_example.max}",
                     f"  created    {_time(v.create_time)}"]
            if s.message_count_by_role:
                lines.append("  messages   " + ", ".join(f"{k} {n}" for k, n in sorted(s.message_count_by_role.items())))
            lines += [f"  line {i.line}: warning {i.code}: {i.message}" for i in v.validation_report.issues[:20]]
            return "\n".join(lines)

        emit(args, to_dict(v), human)
        return
    d = c.datasets.get(args.ref)
    versions = list(c.datasets.versions(args.ref))
    emit(args, {"dataset": to_dict(d), "versions": [to_dict(v) for v in versions]},
         lambda _: f"{d.name}  ({d.version_count} versions) {d.description}\n"
                   + table([_version_summary(v) for v in versions],
                           ["version", "examples", "size", "format", "warnings", "created"]))


def cmd_datasets_download(args: argparse.Namespace) -> None:
    bar = Bar(f"downloading {args.ref}")
    path = client().datasets.download(args.ref, args.output,
                                      progress=lambda done, total: bar.update(done, total, _size(done)))
    bar.close()
    emit(args, {"path": str(path)}, lambda v: f"wrote {v['path']} (sha256 verified)")


# -- jobs ----------------------------------------------------------------------------------------------------
_HYPERPARAMETER_FLAGS = [  # flag, dest in Hyperparameters, type
    ("--epochs", "epochs", int), ("--batch-size", "batch_size", int), ("--learning-rate", "learning_rate", float),
    ("--scheduler", "scheduler", str), ("--warmup-ratio", "warmup_ratio", float),
    ("--weight-decay", "weight_decay", float), ("--max-grad-norm", "max_grad_norm", float),
    ("--max-sequence-length", "max_sequence_length", int),
    ("--gradient-accumulation-steps", "gradient_accumulation_steps", int), ("--seed", "seed", int),
    ("--precision", "precision", str),
]
_LORA_FLAGS = [("--lora-rank", "rank", int), ("--lora-alpha", "alpha", int), ("--lora-dropout", "dropout", float)]


def _spec_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-model", required=True, help="catalog id, e.g. smollm2-135m-instruct or tiny-llama")
    p.add_argument("--dataset", required=True, help="training data: NAME (latest version) or NAME@VERSION")
    p.add_argument("--model", required=True, help="registry model that receives the adapter (created if new)")
    validation = p.add_mutually_exclusive_group()
    validation.add_argument("--validation-dataset", help="held-out data: NAME or NAME@VERSION")
    validation.add_argument("--validation-fraction", type=float, help="hold out this fraction, in (0, 0.5]")
    hp = p.add_argument_group("hyperparameters (unset: chosen automatically, see `tunery jobs plan`)")
    for flag, dest, kind in _HYPERPARAMETER_FLAGS:
        choices = {"scheduler": ["linear", "cosine", "constant"], "precision": ["fp32", "bf16"]}.get(dest)
        hp.add_argument(flag, dest=f"hp_{dest}", type=kind, choices=choices, metavar=None if choices else dest.upper())
    hp.add_argument("--packing", dest="hp_packing", action=argparse.BooleanOptionalAction, default=None,
                    help="pack several examples per sequence")
    for flag, dest, kind in _LORA_FLAGS:
        hp.add_argument(flag, dest=f"lora_{dest}", type=kind, metavar=dest.upper())
    hp.add_argument("--lora-target-modules", dest="lora_target_modules", help="comma-separated, e.g. q_proj,v_proj")
    p.add_argument("--eval-interval-steps", type=int, help="0: evaluate only at the end")
    p.add_argument("--checkpoint-interval-steps", type=int, help="0: checkpoint only at the end")
    p.add_argument("--sample-prompt", dest="sample_prompts", action="append", default=[],
                   help="generate from this prompt at each evaluation (repeatable, at most 8)")
    p.add_argument("--num-processes", type=int, default=0, help="training processes (torchrun) for the job")


def _spec(c, args: argparse.Namespace):
    hyperparameters = {dest: getattr(args, f"hp_{dest}") for _, dest, _ in _HYPERPARAMETER_FLAGS}
    hyperparameters["packing"] = args.hp_packing
    lora: dict[str, Any] = {dest: getattr(args, f"lora_{dest}") for _, dest, _ in _LORA_FLAGS}
    if args.lora_target_modules:
        lora["target_modules"] = [m.strip() for m in args.lora_target_modules.split(",") if m.strip()]
    return c.jobs.spec(args.base_model, args.dataset, args.model, validation_dataset=args.validation_dataset,
                       validation_fraction=args.validation_fraction, hyperparameters=hyperparameters, lora=lora,
                       sample_prompts=args.sample_prompts, eval_interval_steps=args.eval_interval_steps,
                       checkpoint_interval_steps=args.checkpoint_interval_steps, num_processes=args.num_processes)


def render_plan(plan) -> str:
    """A plan as readable lines: data, sizes, estimates, then each resolved value with its reason."""
    r = plan.resolved
    lines = [f"base model      {plan.base_model.id}", f"training data   {plan.training_data.name}"]
    if plan.validation_data.name:
        lines.append(f"validation data {plan.validation_data.name}")
    lines += [f"examples        {plan.training_example_count} training, {plan.validation_example_count} validation",
              f"tokens/epoch    {plan.total_tokens} ({plan.supervised_tokens} supervised)",
              f"steps           {plan.total_steps} ({plan.steps_per_epoch} per epoch)",
              f"device          {plan.device}",
              f"estimated time  {_duration(plan.estimated_duration.ToTimedelta().total_seconds())}",
              f"peak memory     {_size(plan.estimated_peak_memory_bytes)}"]
    if plan.over_length_example_count:
        lines.append(f"truncated       {plan.over_length_example_count} examples (lines "
                     f"{', '.join(map(str, plan.over_length_lines[:10]))})")
    values = {**{k: v for k, v in to_dict(r.hyperparameters).items()},
              **{f"lora.{k}": v for k, v in to_dict(r.lora).items()}}
    width = max((len(k) for k in values), default=0)
    lines.append("resolved:")
    lines += [f"  {k.ljust(width)}  {json.dumps(v)}  ({r.reasons.get(k, '')})" for k, v in sorted(values.items())]
    return "\n".join(lines)


def cmd_jobs_plan(args: argparse.Namespace) -> None:
    c = client()
    plan = c.jobs.plan(_spec(c, args))
    emit(args, to_dict(plan), lambda _: render_plan(plan))


def _job_row(j) -> dict[str, Any]:
    from tunery.client.jobs import state_label
    p = j.progress
    return {"job": _short(j.name), "state": state_label(j.state), "base_model": j.spec.base_model,
            "model": _short(j.spec.output_model), "step": f"{p.step}/{p.total_steps}" if p.total_steps else "",
            "loss": f"{p.loss:.4f}" if p.step else "", "created": _time(j.create_time),
            "model_version": _short(j.model_version)}


def render_event(event) -> str:
    """One human line for a training job event."""
    from tunery.client.jobs import state_label
    kind = event.WhichOneof("event")
    e = getattr(event, kind)
    if kind == "state_changed":
        text = f"state {state_label(e.previous_state)} -> {state_label(e.state)}" + (f": {e.message}" if e.message else "")
        if e.error.code:
            text += f" [{e.error.code}] {e.error.message}"
        return text
    if kind == "step_metrics":
        return (f"step {e.step}/{e.total_steps}  loss {e.loss:.4f}  lr {e.learning_rate:.2e}  "
                f"{e.tokens_per_second:.0f} tok/s  eta {_duration(e.eta.ToTimedelta().total_seconds())}")
    if kind == "evaluation":
        return (f"eval at step {e.step}: validation loss {e.validation_loss:.4f}, "
                f"token accuracy {e.token_accuracy:.3f}" + ("  (best)" if e.best else ""))
    if kind == "checkpoint_saved":
        return f"checkpoint at step {e.checkpoint.step}"
    if kind == "sample_generations":
        return "\n".join([f"samples at step {e.step}:"] + [f"  > {s.prompt}\n    {s.completion.strip()}" for s in e.samples])
    return f"{'warning' if e.severity == 2 else 'info'} {e.code}: {e.message}"


def follow(c, job, as_json: bool, out: Any = None) -> Any:
    """Watch a job to its end: one JSON object per event on stdout with --json; else a line per event on
    stdout (or `out`), with step metrics as a progress bar on stderr when it is a terminal. Returns the
    terminal job."""
    bar = None if as_json else Bar("training")

    def on_event(event) -> None:
        if as_json:
            print(json.dumps(to_dict(event)), flush=True)
            return
        if event.WhichOneof("event") == "step_metrics" and bar and bar.tty:
            m = event.step_metrics
            bar.update(m.step, m.total_steps, f"loss {m.loss:.4f}  {m.tokens_per_second:.0f} tok/s  "
                                              f"eta {_duration(m.eta.ToTimedelta().total_seconds())}")
            return
        if bar and bar.tty:
            sys.stderr.write("\r\033[K")  # clear the bar before the line
        print(render_event(event), file=out or sys.stdout, flush=True)

    job = c.jobs.wait(job, on_event=on_event)
    if bar and bar.tty:
        bar.close()
    return job


def _check_terminal(job) -> None:
    from tunery.client.jobs import state_label
    from tunery.trainer.v1 import trainer_pb2 as tpb
    if job.state != tpb.TRAINING_JOB_STATE_SUCCEEDED:
        detail = f": [{job.error.code}] {job.error.message}" if job.error.code else ""
        raise CommandError(f"job {_short(job.name)} ended {state_label(job.state)}{detail}")


def cmd_jobs_create(args: argparse.Namespace) -> None:
    c = client()
    job = c.jobs.create(_spec(c, args), request_id=args.request_id)
    print(f"created {_short(job.name)}", file=sys.stderr)
    if args.wait:
        job = follow(c, job, args.json)
        if args.json:
            print(json.dumps(to_dict(job)))
        else:
            print(f"{_short(job.name)}: {_job_row(job)['state']}" + (f", adapter {job.model_version}"
                                                                   if job.model_version else ""))
        _check_terminal(job)
        return
    emit(args, to_dict(job), lambda _: f"{_short(job.name)} ({_job_row(job)['state']}); follow it with: "
                                       f"tunery jobs watch {_short(job.name)}")


def cmd_jobs_list(args: argparse.Namespace) -> None:
    jobs = list(client().jobs.list(state=args.state))
    emit(args, [to_dict(j) for j in jobs], lambda _: table(
        [_job_row(j) for j in jobs], ["job", "state", "base_model", "model", "step", "loss", "model_version",
                                       "created"]))


def cmd_jobs_show(args: argparse.Namespace) -> None:
    job = client().jobs.get(args.job)

    def human(_: Any) -> str:
        row = _job_row(job)
        lines = [job.name, f"  state       {row['state']}" + ("  (cancel requested)" if job.cancel_requested else ""),
                 f"  base model  {job.spec.base_model}", f"  data        {job.spec.training_data}",
                 f"  model       {job.spec.output_model}", f"  progress    {row['step']}  loss {row['loss']}",
                 f"  created     {row['created']}"]
        if job.model_version:
            lines.append(f"  adapter     {job.model_version}")
        if job.error.code:
            lines.append(f"  error       [{job.error.code}] {job.error.message}")
        if job.plan.total_steps:
            lines += ["plan:"] + ["  " + line for line in render_plan(job.plan).splitlines()]
        return "\n".join(lines)

    emit(args, to_dict(job), human)


def cmd_jobs_watch(args: argparse.Namespace) -> None:
    c = client()
    job = follow(c, args.job, args.json)
    if not args.json:
        print(f"{_short(job.name)}: {_job_row(job)['state']}")
    _check_terminal(job)


def cmd_jobs_cancel(args: argparse.Namespace) -> None:
    job = client().jobs.cancel(args.job)
    emit(args, to_dict(job), lambda _: f"{_short(job.name)}: {_job_row(job)['state']}"
                                       + (" (stops at the next step)" if job.cancel_requested else ""))


# -- models --------------------------------------------------------------------------------------------------
def _model_version_row(v) -> dict[str, Any]:
    metrics = v.lineage.metrics
    return {"version": _short(v.name), "aliases": ",".join(v.aliases), "job": _short(v.lineage.training_job),
            "data": _short(v.lineage.training_data.name),
            "val_loss": f"{metrics['validation_loss']:.4f}" if "validation_loss" in metrics else "",
            "files": len(v.manifest.files), "created": _time(v.create_time)}


def cmd_models_list(args: argparse.Namespace) -> None:
    models = list(client().models.list())
    rows = [{"model": _short(m.name), "base_model": m.base_model, "versions": m.version_count,
             "latest": _short(m.latest_version),
             "aliases": ", ".join(f"{a}->{_short(v)}" for a, v in sorted(m.aliases.items())),
             "created": _time(m.create_time)} for m in models]
    emit(args, [to_dict(m) for m in models],
         lambda _: table(rows, ["model", "base_model", "versions", "latest", "aliases", "created"]))


def cmd_models_show(args: argparse.Namespace) -> None:
    c = client()
    if "@" in args.ref or ":" in args.ref:
        v = c.models.get_version(args.ref)

        def human(_: Any) -> str:
            lineage = v.lineage
            lines = [v.name, f"  aliases     {', '.join(v.aliases) or '-'}",
                     f"  base model  {lineage.base_model.id} (weights {lineage.base_model.weights_sha256[:16]})",
                     f"  job         {lineage.training_job or '(uploaded)'}",
                     f"  data        {lineage.training_data.name} ({lineage.training_data.sha256[:16]})"]
            if lineage.validation_data.name:
                lines.append(f"  validation  {lineage.validation_data.name}")
            if lineage.metrics:
                lines.append("  metrics     " + ", ".join(f"{k} {x:.4f}" for k, x in sorted(lineage.metrics.items())))
            lines.append(f"  created     {_time(v.create_time)}")
            lines.append("files:")
            lines += [f"  {f.path}  {_size(f.size_bytes)}  sha256 {f.sha256[:16]}" for f in v.manifest.files]
            return "\n".join(lines)

        emit(args, to_dict(v), human)
        return
    m = c.models.get(args.ref)
    versions = list(c.models.versions(args.ref))
    emit(args, {"model": to_dict(m), "versions": [to_dict(v) for v in versions]},
         lambda _: f"{m.name}  (base {m.base_model}, {m.version_count} versions) {m.description}\n"
                   + table([_model_version_row(v) for v in versions],
                           ["version", "aliases", "job", "data", "val_loss", "files", "created"]))


def cmd_models_download(args: argparse.Namespace) -> None:
    bar = Bar(f"downloading {args.ref}")
    path = client().models.download(args.ref, args.output,
                                    progress=lambda _p, done, total: bar.update(done, total, _size(done)))
    bar.close()
    emit(args, {"path": str(path)}, lambda v: f"wrote {v['path']} (every file's sha256 verified)")


def cmd_models_alias(args: argparse.Namespace) -> None:
    if "@" not in args.version and "/versions/" not in args.version:
        raise CommandError(f"{args.version!r} names no version; write MODEL@VERSION")
    model = client().models.alias(args.version, args.alias)
    emit(args, to_dict(model), lambda _: f"{args.alias} -> {model.aliases[args.alias]}")


# -- demo ----------------------------------------------------------------------------------------------------
def cmd_demo(args: argparse.Namespace) -> None:
    from tunery.client import demo
    demo.run(args)


def register(groups: argparse._SubParsersAction, command: Register) -> None:
    """Add the dataset, job, model and demo commands to the `tunery` parser."""
    datasets = groups.add_parser("datasets", help="validate, upload, list and download datasets") \
        .add_subparsers(dest="datasets_command", required=True)
    p = command(datasets, "validate", cmd_datasets_validate, "check a JSONL file offline with the server's rules")
    p.add_argument("file")
    p.add_argument("--format", choices=["auto", "chat", "prompt_completion", "text"], default="auto")
    p = command(datasets, "upload", cmd_datasets_upload, "upload a JSONL file as a new dataset version")
    p.add_argument("file")
    p.add_argument("--dataset", required=True, help="dataset id (created if it does not exist)")
    p.add_argument("--format", choices=["auto", "chat", "prompt_completion", "text"], default="auto")
    p.add_argument("--description", default="")
    command(datasets, "list", cmd_datasets_list, "list the project's datasets")
    p = command(datasets, "show", cmd_datasets_show, "show a dataset and its versions, or one version")
    p.add_argument("ref", metavar="NAME[@VERSION]")
    p = command(datasets, "download", cmd_datasets_download, "download a version's exact bytes (sha256 verified)")
    p.add_argument("ref", metavar="NAME@VERSION")
    p.add_argument("-o", "--output", required=True, metavar="FILE")

    jobs = groups.add_parser("jobs", help="plan, create, follow and cancel training jobs") \
        .add_subparsers(dest="jobs_command", required=True)
    p = command(jobs, "plan", cmd_jobs_plan, "resolve a job spec (hyperparameters with reasons, estimates) "
                                             "without running it")
    _spec_flags(p)
    p = command(jobs, "create", cmd_jobs_create, "create a training job")
    _spec_flags(p)
    p.add_argument("--request-id", help="idempotency key (UUID); a retry with it never creates a second job")
    p.add_argument("--wait", action="store_true", help="follow the job until it ends; fail unless it succeeds")
    p = command(jobs, "list", cmd_jobs_list, "list training jobs, newest first")
    p.add_argument("--state", choices=["validating", "queued", "running", "succeeded", "failed", "cancelled"])
    p = command(jobs, "show", cmd_jobs_show, "show a job with its plan and progress")
    p.add_argument("job")
    p = command(jobs, "watch", cmd_jobs_watch, "follow a job's events until it ends (--json: one object per line)")
    p.add_argument("job")
    p = command(jobs, "cancel", cmd_jobs_cancel, "stop a job (at its next step)")
    p.add_argument("job")

    models = groups.add_parser("models", help="list, inspect, alias and download adapters") \
        .add_subparsers(dest="models_command", required=True)
    command(models, "list", cmd_models_list, "list the project's models")
    p = command(models, "show", cmd_models_show, "show a model and its versions, or one version with lineage")
    p.add_argument("ref", metavar="MODEL[@VERSION|:ALIAS]")
    p = command(models, "download", cmd_models_download,
                "download a version into a folder PeftModel.from_pretrained loads (every digest verified)")
    p.add_argument("ref", metavar="MODEL[@VERSION|:ALIAS]")
    p.add_argument("-o", "--output", required=True, metavar="DIR")
    p = command(models, "alias", cmd_models_alias, "point an alias (e.g. production) at a version")
    p.add_argument("version", metavar="MODEL@VERSION")
    p.add_argument("alias")

    p = command(groups, "demo", cmd_demo, "run the whole flow end to end on a bundled support-reply dataset")
    from tunery.client import demo
    demo.add_arguments(p)
