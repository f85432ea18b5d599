"""Executors run training workers for the scheduler: one worker per attempt of a RUNNING job.

The worker itself records what happened to its job (SUCCEEDED, FAILED, CANCELLED, or QUEUED after a
suspend) in the database. An executor only starts workers, tells the scheduler when one has ended (so a
job its worker left RUNNING is re-queued or failed), and stops or adopts workers across service restarts.

- `LocalExecutor`: worker processes on this machine (`torchrun` for several processes).
- `KubernetesExecutor` (kubernetes_executor.py): one batch/v1 Job per attempt.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import structlog

from tunery.services.kit.settings import Settings
from tunery.services.trainer import worker as worker_module
from tunery.services.trainer.repository import Job

log = structlog.get_logger("tunery.trainer.executor")


class ExecutorError(Exception):
    """A worker could not be started; the message says why."""


@dataclass(frozen=True)
class Ended:
    """A worker that has ended. `why` completes "the job's worker ended: …" in the job's state event;
    `counts` is False when the attempt was taken away (preempted, suspended) rather than failed, so the job
    is re-queued without using up one of settings.trainer_max_attempts."""

    job_id: str
    attempt: int
    why: str
    counts: bool = True


class Executor(Protocol):
    def recover(self, jobs: list[Job]) -> set[str]:
        """Called once at start with the RUNNING jobs of a previous service process: adopt the workers that
        still run and return their job ids (the scheduler re-queues the others)."""

    def start(self, job: Job) -> int | None:
        """Start a worker for the job's current attempt; returns its process id where there is one.
        Raises ExecutorError."""

    def ended(self) -> list[Ended]:
        """Workers that ended since the last call (each reported once)."""

    def active(self) -> int:
        """How many workers run (or wait to run) now."""

    def cancel(self, job_id: str, attempt: int) -> None:
        """The job has cancel_requested: stop its worker if waiting for it to notice is not enough."""

    def stop(self, timeout_s: float) -> list[tuple[str, int]]:
        """The service stops: stop watching, and return the (job id, attempt) of workers that were stopped
        (their jobs go back to QUEUED). Workers that outlive the service are not returned."""


def worker_argv(job: Job) -> list[str]:
    """The worker entrypoint after `python` for the job's current attempt (torchrun for several processes)."""
    args = ["-m", worker_module.__name__, "--job", job.job_id, "--attempt", str(job.attempt_count)]
    processes = max(1, job.spec.num_processes)
    if processes > 1:
        args = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]
    return args


def make_executor(settings: Settings) -> Executor:
    """The executor settings.trainer_executor names."""
    if settings.trainer_executor == "local":
        return LocalExecutor(settings)
    if settings.trainer_executor == "kubernetes":
        from tunery.services.trainer.kubernetes_executor import from_settings  # needs the kubernetes client

        return from_settings(settings)
    raise ValueError(f"TUNERY_TRAINER_EXECUTOR={settings.trainer_executor!r}: expected 'local' or 'kubernetes'")


# ---------------------------------------------------------------------- local processes
@dataclass
class RunningWorker:
    job_id: str
    attempt: int
    pid: int
    process: subprocess.Popen | None  # None for a worker adopted from a previous service process
    log_path: Path | None = None

    def exit_code(self) -> int | None:
        """The exit code once the worker has ended (-1 when unknown: an adopted process), else None."""
        if self.process is not None:
            return self.process.poll()
        return None if _alive(self.pid) else -1


class LocalExecutor:
    """Worker processes on this machine, logging to home/trainer/logs. Stopping the service SIGTERMs them
    (they checkpoint), then SIGKILLs what is left after the timeout."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.workers: dict[str, RunningWorker] = {}

    def recover(self, jobs: list[Job]) -> set[str]:
        for job in jobs:
            if job.worker_pid and _is_worker_of(job.worker_pid, job.job_id):
                log.info("worker.adopted", job=job.name, pid=job.worker_pid)
                self.workers[job.job_id] = RunningWorker(job.job_id, job.attempt_count, job.worker_pid, None)
        return set(self.workers)

    def start(self, job: Job) -> int | None:
        log_dir = self.settings.home / "trainer" / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{job.job_id}-attempt-{job.attempt_count}.log"
        try:
            with open(log_path, "ab") as out:
                process = subprocess.Popen([sys.executable, *worker_argv(job)],
                                           env=worker_environment(self.settings), stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise ExecutorError(f"could not start a worker process: {e}") from e
        self.workers[job.job_id] = RunningWorker(job.job_id, job.attempt_count, process.pid, process, log_path)
        return process.pid

    def ended(self) -> list[Ended]:
        done = []
        for w in list(self.workers.values()):
            code = w.exit_code()
            if code is not None:
                del self.workers[w.job_id]
                where = f"; its log is {w.log_path}" if w.log_path else ""
                done.append(Ended(w.job_id, w.attempt, f"its worker exited with code {code}{where}"))
        return done

    def active(self) -> int:
        return len(self.workers)

    def cancel(self, job_id: str, attempt: int) -> None:
        """Nothing to do: a local worker polls the cancel flag at every step boundary."""

    def stop(self, timeout_s: float) -> list[tuple[str, int]]:
        workers = list(self.workers.values())
        for w in workers:
            _signal(w.pid, signal.SIGTERM)
        for w in workers:
            if not _wait(w, timeout_s):
                log.warning("worker.kill", job=w.job_id, pid=w.pid)
                _signal(w.pid, signal.SIGKILL)
                _wait(w, 10)
        self.workers.clear()
        return [(w.job_id, w.attempt) for w in workers]


def worker_environment(settings: Settings) -> dict[str, str]:
    """This process's environment plus every setting as TUNERY_* (so the worker reads the same settings)."""
    env = dict(os.environ)
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value is not None:
            env[f"TUNERY_{f.name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env["TUNERY_DATABASE_URL"] = settings.database()
    if settings.trainer_worker_threads:
        env["OMP_NUM_THREADS"] = str(settings.trainer_worker_threads)
    return env


def _wait(w: RunningWorker, timeout_s: float) -> bool:
    if w.process is not None:
        try:
            w.process.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    stopped = threading.Event()
    for _ in range(int(timeout_s / 0.1) + 1):
        if not _alive(w.pid):
            return True
        stopped.wait(0.1)
    return False


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _is_worker_of(pid: int, job_id: str) -> bool:
    """Whether `pid` is a live trainer worker (or torchrun) for this job, not a reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return _alive(pid) and worker_module.__name__.encode() in cmdline and job_id.encode() in cmdline


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
