"""The worker process: `python -m tunery.services.trainer.worker --job JOB --attempt N` (or the same under
torchrun), or forked by the standby worker (`--standby`, see serve_standby). It trains one attempt of one
RUNNING job and reports through the database and object store:

- loads the job and its stored plan, downloads the dataset versions (digest-verified) from the dataset
  service, resolves the base model into the model cache, and resumes from the job's latest checkpoint;
- runs the recipe with callbacks that append events, upload checkpoints under
  trainer/projects/{project}/trainingJobs/{job}/checkpoints/{step}/ and poll the cancel flag at step boundaries;
- on SIGTERM checkpoints and exits with SUSPENDED (the job goes back to QUEUED);
- on success stages the adapter under trainer/projects/{project}/trainingJobs/{job}/adapter/ and registers it with the registry
  (CreateModelVersion with lineage), then marks the job SUCCEEDED.

Exit codes: 0 when the job reached a state (or is no longer this attempt's), SUSPENDED after a suspend,
anything else for a crash (the scheduler re-queues the job or fails it after too many attempts).
Only rank 0 writes; every rank downloads what it needs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import selectors
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, TypeVar

import grpc
import setproctitle
import structlog
from google.protobuf import json_format, struct_pb2

from tunery.registry.v1 import registry_pb2
from tunery.services.kit import logs
from tunery.services.kit.db import Database
from tunery.services.kit.errors import NotFound, Unavailable
from tunery.services.kit.objects import ObjectStore
from tunery.services.kit.settings import Settings, load
from tunery.services.trainer import recipe
from tunery.services.trainer.peers import Peers
from tunery.services.trainer.repository import Job, Repository, now_us
from tunery.services.trainer.service import (JobError, intervals, load_data, recipe_hyperparameters, resolve_model,
                                             weights_sha256)
from tunery.trainer.v1 import trainer_pb2 as pb

SUSPENDED = 75  # EX_TEMPFAIL: stopped on request, resume later
RETRY_DELAYS_S = (1, 2, 4, 8, 16)  # backoff for an unreachable object store or peer, then the job fails
EARLY_STOPPING = {pb.EARLY_STOPPING_METRIC_UNSPECIFIED: "validation_loss",
                  pb.EARLY_STOPPING_METRIC_VALIDATION_LOSS: "validation_loss",
                  pb.EARLY_STOPPING_METRIC_VALIDATION_TOKEN_ACCURACY: "token_accuracy"}

log = structlog.get_logger("tunery.trainer.worker")
T = TypeVar("T")


def retrying(action: Callable[[], T], code: str, what: str) -> T:
    """Run `action`, retrying Unavailable with backoff; then fail the job with `code`."""
    for delay in (*RETRY_DELAYS_S, None):
        try:
            return action()
        except Unavailable as e:
            if delay is None:
                raise JobError(code, f"{what} failed: {e.message}; gave up after {len(RETRY_DELAYS_S) + 1} tries") from e
            log.warning("worker.retrying", what=what, delay_s=delay, error=e.message)
            time.sleep(delay)
    raise AssertionError("unreachable")


class JobCallbacks(recipe.TrainingCallbacks):
    """Recipe events → job events and progress (fenced by attempt); stop decisions from SIGTERM and cancel."""

    def __init__(self, worker: "Worker", job: Job, total_steps: int) -> None:
        self.worker, self.repo, self.job = worker, worker.repo, job
        self.progress = pb.TrainingProgress(total_steps=total_steps)
        if job.progress is not None:
            self.progress.best_validation_loss = job.progress.best_validation_loss
        self.best: float | None = None
        self.best_step: int | None = None
        self.recipe: recipe.LoRARecipe | None = None
        self.fenced = False  # this attempt is no longer the job's running attempt

    def _append(self, event: pb.TrainingJobEvent, **values: object) -> None:
        if self.repo.append_event(self.job.job_id, event, attempt=self.job.attempt_count, **values) is None:
            self.fenced = True

    def should_stop(self) -> str | None:
        # A requested cancel wins over SIGTERM: the Kubernetes executor cancels by deleting the Job.
        if self.fenced or self.repo.cancel_requested(self.job.job_id):
            return recipe.STOP_CANCEL
        return recipe.STOP_SUSPEND if self.worker.stop.is_set() else None

    def on_step(self, step: int, total_steps: int, epoch: float, loss: float, lr: float, grad_norm: float,
                tokens_per_s: float, eta_s: float) -> None:
        trained = self.recipe.trained_tokens if self.recipe is not None else 0
        event = pb.StepMetricsEvent(step=step, total_steps=total_steps, epoch=epoch, loss=loss, learning_rate=lr,
                                    grad_norm=grad_norm, tokens_per_second=tokens_per_s, trained_tokens=trained)
        event.eta.FromMilliseconds(int(eta_s * 1000))
        self.progress.step, self.progress.total_steps, self.progress.epoch = step, total_steps, epoch
        self.progress.loss, self.progress.trained_tokens = loss, trained
        self.progress.estimated_finish_time.FromMicroseconds(now_us() + int(eta_s * 1e6))
        self._append(pb.TrainingJobEvent(step_metrics=event), progress=self.progress)

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        name = EARLY_STOPPING[self.job.spec.early_stopping.metric]
        value = metrics[name] * (1 if name == "validation_loss" else -1)  # lower is better
        best = self.best is None or value < self.best
        if best:
            self.best, self.best_step = value, step
        loss = metrics["validation_loss"]
        if not self.progress.best_validation_loss or loss < self.progress.best_validation_loss:
            self.progress.best_validation_loss = loss
        self._append(pb.TrainingJobEvent(evaluation=pb.EvaluationEvent(
            step=step, validation_loss=loss, token_accuracy=metrics["token_accuracy"], best=best)),
            progress=self.progress)

    def on_checkpoint(self, step: int, path: str, metrics: dict[str, float]) -> None:
        job = self.job
        prefix = f"{object_prefix(job)}checkpoints/{step}/"
        retrying(lambda: self.repo.put_folder(Path(path), prefix), "object_store_unavailable",
                 f"uploading the checkpoint of step {step}")
        shutil.rmtree(path, ignore_errors=True)  # stored; the local copy is not needed again
        checkpoint = pb.Checkpoint(name=f"{job.name}/checkpoints/{step}", step=step, best=self.best_step == step,
                                   metrics={("loss" if k == "train_loss" else k): float(v)
                                            for k, v in metrics.items()})
        checkpoint.location.bucket = self.worker.settings.s3_bucket
        checkpoint.location.key = prefix
        checkpoint.create_time.FromMicroseconds(now_us())
        if self.repo.add_checkpoint(job.job_id, checkpoint, attempt=job.attempt_count) is None:
            self.fenced = True

    def on_samples(self, step: int, samples: list[recipe.Sample]) -> None:
        self._append(pb.TrainingJobEvent(sample_generations=pb.SampleGenerationsEvent(
            step=step, samples=[pb.Sample(prompt=s.prompt if isinstance(s.prompt, str) else s.prompt[-1]["content"],
                                          completion=s.completion) for s in samples])))

    def on_log(self, level: str, message: str, **fields: Any) -> None:
        details = ", ".join(f"{k}={v}" for k, v in fields.items())
        self._append(pb.TrainingJobEvent(log=pb.LogEvent(
            severity=pb.LOG_SEVERITY_WARNING if level == "warning" else pb.LOG_SEVERITY_INFO,
            code=message.rsplit(".", 1)[-1], message=f"{message}: {details}" if details else message)))


class Worker:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rank = int(os.environ.get("RANK", "0"))
        self.repo = Repository(Database(settings.database()), ObjectStore(settings))
        self.peers = Peers(settings)
        self.stop = threading.Event()

    def run(self, job_id: str, attempt: int) -> int:
        self.job_id, self.attempt = job_id, attempt
        self.work = self.settings.home / "trainer" / "work" / job_id / f"attempt-{attempt}-rank-{self.rank}"
        job = self.repo.get_job(self.job_id)
        if job is None or job.state != "RUNNING" or job.attempt_count != self.attempt:
            log.warning("worker.not_running", job=self.job_id, attempt=self.attempt)
            return 0
        structlog.contextvars.bind_contextvars(job=job.name, attempt=self.attempt, rank=self.rank)
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        try:
            return self._train(job)
        except JobError as e:
            log.warning("worker.failed", code=e.error.code, message=e.error.message)
            self._finish(job, "FAILED", f"failed: {e.error.message}", error=e.error)
            return 0
        finally:
            shutil.rmtree(self.work, ignore_errors=True)
            self.peers.close()

    def _train(self, job: Job) -> int:
        plan, spec = job.plan, job.spec
        hp = recipe_hyperparameters(plan)
        _, model_dir = resolve_model(self.settings.model_cache(), spec.base_model)
        if weights_sha256(model_dir) != plan.base_model.weights_sha256:
            raise JobError("base_model_changed", f"the weights of {spec.base_model} changed since the job was "
                           "planned; create a new job", "base_model")
        loaded = retrying(lambda: load_data(self.peers, spec, job.training_version, job.validation_version,
                                            hp.seed, expected=plan), "dataset_service_unavailable",
                          "downloading the training data")
        callbacks = JobCallbacks(self, job, plan.total_steps)
        resume_from = self._resume(job)
        eval_every, checkpoint_every = intervals(spec, plan.total_steps)
        config = recipe.RecipeConfig(
            base_model_id=spec.base_model, base_model_dir=str(model_dir), hyperparameters=hp,
            output_dir=str(self.work / "adapter"), checkpoint_dir=str(self.work / "checkpoints"),
            eval_interval_steps=eval_every if loaded.validation else 0, checkpoint_interval_steps=checkpoint_every,
            sample_prompts=list(spec.sample_prompts),
            early_stopping_metric=EARLY_STOPPING[spec.early_stopping.metric] if spec.HasField("early_stopping")
            else None,
            early_stopping_patience=max(1, spec.early_stopping.patience), resume_from=resume_from,
            bf16=plan.resolved.hyperparameters.precision == pb.PRECISION_BF16)
        trainer = recipe.LoRARecipe(config, loaded.train, loaded.validation,
                                    callbacks if self.rank == 0 else None)
        callbacks.recipe = trainer
        try:
            trainer.setup()
            result = trainer.train_loop()
        except recipe.CheckpointMismatch as e:
            raise JobError("checkpoint_mismatch", str(e)) from e
        finally:
            trainer.cleanup()
        if self.rank != 0:
            return SUSPENDED if result.status == "suspended" else 0
        if result.status == "cancelled":
            self._finish(job, "CANCELLED", f"cancelled at step {result.step}")
            return 0
        if result.status == "suspended":
            self._finish(job, "QUEUED", f"suspended at step {result.step}; resumes from its checkpoint")
            return SUSPENDED
        version = self._register(job, Path(result.adapter_dir), result.metrics, hp.seed)
        self._finish(job, "SUCCEEDED", f"adapter registered as {version}", model_version=version)
        return 0

    def _resume(self, job: Job) -> str | None:
        """Download the latest checkpoint (if any) and record the steps that will be trained again."""
        checkpoint = self.repo.latest_checkpoint(job.job_id)
        if checkpoint is None:
            return None
        folder = self.work / "resume"
        retrying(lambda: self.repo.get_folder(checkpoint.location.key, folder), "object_store_unavailable",
                 f"downloading the checkpoint of step {checkpoint.step}")
        if self.rank == 0:
            lost = max(0, (job.progress.step if job.progress else 0) - checkpoint.step)
            self.repo.append_event(job.job_id, pb.TrainingJobEvent(log=pb.LogEvent(
                severity=pb.LOG_SEVERITY_INFO, code="resumed",
                message=f"resumed from the checkpoint at step {checkpoint.step}; {lost} steps are trained again")),
                attempt=self.attempt, lost_steps=job.lost_steps + lost)
        return str(folder)

    def _register(self, job: Job, adapter: Path, metrics: dict[str, float], seed: int) -> str:
        """Stage the adapter files, make sure the output model exists, create the version with lineage."""
        spec, plan = job.spec, job.plan
        prefix = f"{object_prefix(job)}adapter/"
        staged = retrying(lambda: self.repo.put_folder(adapter, prefix), "object_store_unavailable",
                          "staging the adapter")
        files = []
        for relative, key in staged:
            data = (adapter / relative).read_bytes()
            files.append(registry_pb2.StagedFile(path=relative, size_bytes=len(data),
                                                 sha256=hashlib.sha256(data).hexdigest(),
                                                 object={"bucket": self.settings.s3_bucket, "key": key}))
        self._ensure_model(job)
        hyperparameters = struct_pb2.Struct()
        hyperparameters.update(json_format.MessageToDict(plan.resolved))
        lineage = registry_pb2.Lineage(
            training_job=job.name, training_data=plan.training_data, base_model=plan.base_model,
            hyperparameters=hyperparameters, seed=seed,
            metrics={("loss" if k == "train_loss" else k): float(v) for k, v in metrics.items()},
            library_versions={name: _version(name) for name in ("torch", "transformers", "peft", "tunery")})
        if plan.HasField("validation_data"):
            lineage.validation_data.CopyFrom(plan.validation_data)
        request = registry_pb2.CreateModelVersionRequest(
            parent=spec.output_model, files=files, request_id=str(uuid.uuid5(uuid.NAMESPACE_URL, job.name)),
            model_version=registry_pb2.ModelVersion(description=f"Trained by {job.name}", lineage=lineage))
        version = retrying(lambda: _registry_call(lambda: self.peers.create_model_version(request)),
                           "registration_failed", "registering the adapter")
        try:
            self.repo.objects.remove_prefix(prefix)  # the registry holds its own copy now
        except Unavailable:
            log.warning("worker.staging_not_removed", prefix=prefix)
        return version.name

    def _ensure_model(self, job: Job) -> None:
        """The output model exists and adapts this job's base model (created when missing)."""
        name = job.spec.output_model
        try:
            model = retrying(lambda: _registry_call(lambda: self.peers.get_model(name)), "registration_failed",
                             "reading the output model")
        except NotFound:
            project, model_id = name.split("/")[1], name.split("/")[3]
            request_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{job.name}/output-model"))
            try:
                model = retrying(lambda: _registry_call(lambda: self.peers.create_model(
                    f"projects/{project}", model_id, job.spec.base_model, request_id)), "registration_failed",
                                 "creating the output model")
            except JobError as e:  # created meanwhile by someone else: use it
                if "ALREADY_EXISTS" not in e.error.message:
                    raise
                model = retrying(lambda: _registry_call(lambda: self.peers.get_model(name)), "registration_failed",
                                 "reading the output model")
        if model.base_model != job.spec.base_model:
            raise JobError("registration_failed", f"the output model {name} adapts {model.base_model!r}, not "
                           f"{job.spec.base_model!r}; choose another output_model", "output_model")

    def _finish(self, job: Job, state: str, message: str, **values: object) -> None:
        done = self.repo.transition(job.job_id, ("RUNNING",), state, message, attempt=self.attempt,
                                    worker_pid=None, **values)
        log.info("training_job.state_changed", state=state, applied=done is not None)


def object_prefix(job: Job) -> str:
    """Where a job's objects live; the registry accepts staged files only under trainer/projects/{project}/."""
    return f"trainer/{job.name}/"


def _registry_call(call: Callable[[], T]) -> T:
    """Registry errors as kit errors (UNAVAILABLE retried by `retrying`), NOT_FOUND kept for the caller,
    anything else a registration failure."""
    try:
        return call()
    except grpc.RpcError as e:
        if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise Unavailable(f"the registry did not answer: {e.details()}", "PEER_UNAVAILABLE") from None
        if e.code() == grpc.StatusCode.NOT_FOUND:
            raise NotFound(e.details() or "not found") from None
        raise JobError("registration_failed", f"the registry refused the adapter ({e.code().name}): "
                       f"{e.details()}", "output_model") from None


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def run_attempt(settings: Settings, job_id: str, attempt: int) -> int:
    worker = Worker(settings)
    # SIGTERM means "suspend": the recipe checkpoints at the next step boundary and the job is re-queued.
    signal.signal(signal.SIGTERM, lambda *_: worker.stop.set())
    return worker.run(job_id, attempt)


def exit_now(code: int) -> None:
    """Exit without the interpreter's teardown: finalizing torch, transformers and peft takes ~1 s, during
    which the process would still hold its worker slot. The job's outcome is already stored."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def serve_standby(settings: Settings) -> None:
    """`--standby`: the local executor's warm worker. It has imported everything once; each line on stdin,
    {"job", "attempt", "log"}, forks one worker process for that attempt, and stdout reports {"pid"} for the
    fork and {"pid", "code"} when it has ended. End of input (the service stopped or died) ends the standby;
    its workers live on, and a new service adopts them by their command line."""
    Worker(settings)  # imports the database driver once, for every fork
    selector = selectors.DefaultSelector()
    selector.register(0, selectors.EVENT_READ)
    children: dict[int, int] = {}  # pidfd → pid
    pending = b""
    while True:
        for key, _ in selector.select():
            if key.fd in children:  # a worker ended
                pid = children.pop(key.fd)
                selector.unregister(key.fd)
                os.close(key.fd)
                code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                _report({"pid": pid, "code": code})
                continue
            data = os.read(0, 65536)
            if not data:
                return
            *lines, pending = (pending + data).split(b"\n")
            for line in lines:
                handed = json.loads(line)
                pid = _fork_worker(settings, handed, selector, list(children))
                fd = os.pidfd_open(pid)
                children[fd] = pid
                selector.register(fd, selectors.EVENT_READ)


def _fork_worker(settings: Settings, handed: dict, selector: selectors.BaseSelector, pidfds: list[int]) -> int:
    """Fork the worker of one attempt. It starts only once its pid is reported, so a standby that dies in
    between leaves no worker the executor does not know about."""
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            selector.close()  # the standby's file descriptors are not the worker's
            for fd in (go_write, *pidfds):
                os.close(fd)
            if not os.read(go_read, 1):
                exit_now(0)
            os.close(go_read)
            null = os.open(os.devnull, os.O_RDONLY)
            out = os.open(handed["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            for fd, source in ((0, null), (1, out), (2, out)):
                os.dup2(source, fd)
            os.close(null)
            os.close(out)
            # The executor adopts a worker after a service restart only when its command line names the job.
            setproctitle.setproctitle(f"{sys.executable} -m {__spec__.name} --job {handed['job']} "
                                      f"--attempt {handed['attempt']}")
            code = run_attempt(settings, handed["job"], handed["attempt"])
        except BaseException:  # noqa: BLE001 - a forked worker must never return into the standby's loop
            traceback.print_exc()
        finally:
            exit_now(code)
    os.close(go_read)
    _report({"pid": pid})
    os.write(go_write, b"x")
    os.close(go_write)
    return pid


def _report(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m tunery.services.trainer.worker")
    parser.add_argument("--job")
    parser.add_argument("--attempt", type=int)
    parser.add_argument("--standby", action="store_true", help="fork a worker for each attempt handed on stdin")
    settings, args = load(argv, parser=parser)
    if not args.standby and (args.job is None or args.attempt is None):
        parser.error("--job and --attempt are required (or --standby)")
    logs.configure(settings.log_format, settings.log_level)
    if args.standby:
        serve_standby(settings)
    else:
        exit_now(run_attempt(settings, args.job, args.attempt))


if __name__ == "__main__":
    main()
