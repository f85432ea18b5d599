"""Executors run training workers for the scheduler: one worker per attempt of a RUNNING job.

The worker itself records what happened to its job (SUCCEEDED, FAILED, CANCELLED, or QUEUED after a
suspend) in the database. An executor only starts workers, tells the scheduler when one has ended (so a
job its worker left RUNNING is re-queued or failed), and stops or adopts workers across service restarts.

- `LocalExecutor`: worker processes on this machine (`torchrun` for several processes); a single-process
  worker is forked by the standby worker, started with the service, which has imported torch & co. once.
- `KubernetesExecutor` (kubernetes_executor.py): one batch/v1 Job per attempt.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Protocol

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


def make_executor(settings: Settings, on_exit: Callable[[], None] = lambda: None) -> Executor:
    """The executor settings.trainer_executor names; a local one calls `on_exit` when a worker ends."""
    if settings.trainer_executor == "local":
        return LocalExecutor(settings, on_exit)
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
    process: subprocess.Popen | None  # None for a worker forked by the standby or adopted from a previous service
    log_path: Path | None = None
    standby: Standby | None = None  # the standby that forked it (and reports its exit code)

    def exit_code(self) -> int | None:
        """The exit code once the worker has ended (-1 when unknown: an adopted process), else None."""
        if self.process is not None:
            return self.process.poll()
        if self.standby is not None:
            code = self.standby.exit_codes.get(self.pid)
            if code is not None or self.standby.process.poll() is None:
                return code
        return None if _alive(self.pid) else -1


class Standby:
    """`worker --standby`, started with the service: it imports torch, transformers and peft once, then forks
    one worker per attempt it is handed (worker.serve_standby). Its stdin is a pipe from this process, so it
    exits when the service stops or dies; the workers it forked outlive it like any worker."""

    def __init__(self, settings: Settings, on_exit: Callable[[], None]) -> None:
        self.on_exit = on_exit
        self.fork_timeout_s = settings.trainer_standby_fork_timeout_s
        self.exit_codes: dict[int, int] = {}
        self._forked: queue.Queue[int | None] = queue.Queue()
        with open(_log_dir(settings) / "standby.log", "ab") as out:
            self.process = subprocess.Popen([sys.executable, "-m", worker_module.__name__, "--standby"],
                                            env=worker_environment(settings), stdin=subprocess.PIPE,
                                            stdout=subprocess.PIPE, stderr=out)
        threading.Thread(target=self._read, name="trainer-standby", daemon=True).start()

    def fork(self, job: Job, log_path: Path) -> int | None:
        """The pid of a worker forked for the job's current attempt; None when the standby has ended or is
        ended now because it did not answer in time (a worker it may have forked without reporting it never
        starts training)."""
        try:
            self.process.stdin.write(json.dumps({"job": job.job_id, "attempt": job.attempt_count,
                                                 "log": str(log_path)}).encode() + b"\n")
            self.process.stdin.flush()
        except OSError:  # it has ended: its log says why
            return None
        try:
            return self._forked.get(timeout=self.fork_timeout_s)  # waits while it is still importing
        except queue.Empty:
            log.warning("worker.standby_hung", job=job.job_id, pid=self.process.pid, timeout_s=self.fork_timeout_s)
            self.stop()
            return None

    def _read(self) -> None:
        for line in self.process.stdout:
            report = json.loads(line)
            if "code" in report:
                self.exit_codes[report["pid"]] = report["code"]
                self.on_exit()
            else:
                self.exit_codes.pop(report["pid"], None)  # a reused pid
                self._forked.put(report["pid"])
        self._forked.put(None)
        log.info("worker.standby_ended", exit_code=self.process.wait())

    def stop(self) -> None:
        self.process.kill()
        self.process.wait()
        self.process.stdin.close()


class LocalExecutor:
    """Worker processes on this machine, logging to home/trainer/logs. Stopping the service SIGTERMs them
    (they checkpoint), then SIGKILLs what is left after the timeout.

    With settings.trainer_standby_worker, single-process workers are forked by a `Standby` (no imports to
    wait for); if it has ended, workers start as fresh processes."""

    def __init__(self, settings: Settings, on_exit: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.on_exit = on_exit
        self.workers: dict[str, RunningWorker] = {}
        self.standby: Standby | None = None

    def recover(self, jobs: list[Job]) -> set[str]:
        for job in jobs:
            if job.worker_pid and _is_worker_of(job.worker_pid, job.job_id):
                log.info("worker.adopted", job=job.name, pid=job.worker_pid)
                self.workers[job.job_id] = RunningWorker(job.job_id, job.attempt_count, job.worker_pid, None)
        if self.settings.trainer_standby_worker:  # recover runs once, when the service starts
            try:
                self.standby = Standby(self.settings, self.on_exit)
            except OSError as e:  # workers still start, as fresh processes
                log.warning("worker.standby_not_started", error=str(e))
        return set(self.workers)

    def start(self, job: Job) -> int | None:
        log_path = _log_dir(self.settings) / f"{job.job_id}-attempt-{job.attempt_count}.log"
        if self.standby is not None and job.spec.num_processes <= 1:
            pid = self.standby.fork(job, log_path)
            if pid is not None:
                self.workers[job.job_id] = RunningWorker(job.job_id, job.attempt_count, pid, None, log_path,
                                                         self.standby)
                return pid
            self.standby = None
        try:
            with open(log_path, "ab") as out:
                process = subprocess.Popen([sys.executable, *worker_argv(job)],
                                           env=worker_environment(self.settings), stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        except OSError as e:
            raise ExecutorError(f"could not start a worker process: {e}") from e
        self.workers[job.job_id] = RunningWorker(job.job_id, job.attempt_count, process.pid, process, log_path)
        threading.Thread(target=self._wake_on_exit, args=(process,), name=f"worker-{process.pid}", daemon=True).start()
        return process.pid

    def _wake_on_exit(self, process: subprocess.Popen) -> None:
        """Tell the scheduler as soon as the worker exits, so the next queued job starts without a poll delay."""
        process.wait()
        self.on_exit()

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
        if self.standby is not None:  # after its workers, so that it has reaped them
            self.standby.stop()
            self.standby = None
        self.workers.clear()
        return [(w.job_id, w.attempt) for w in workers]


def _log_dir(settings: Settings) -> Path:
    path = settings.home / "trainer" / "logs"
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    try:  # a worker forked by the standby has set its title to the same words, space-separated
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").split()
    except OSError:
        return False
    return _alive(pid) and worker_module.__name__.encode() in cmdline and job_id.encode() in cmdline


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
