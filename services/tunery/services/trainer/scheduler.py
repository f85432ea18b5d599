"""The scheduler: one thread in the trainer service that moves jobs along.

- VALIDATING jobs are planned (data downloaded and tokenized, base model resolved) on a helper thread and
  become QUEUED with their plan, or FAILED with a structured error.
- QUEUED jobs start, oldest first, while fewer than settings.trainer_max_concurrent_jobs workers run: the
  job becomes RUNNING with a new attempt and a worker process is spawned (torchrun for num_processes > 1).
- A worker that exits while its attempt still owns the RUNNING job died: the job is re-queued (it resumes
  from its latest checkpoint) or, after settings.trainer_max_attempts failures, FAILED.
- At start, RUNNING jobs are recovered: a worker left over from a previous service process (still alive)
  is adopted and watched; a job whose worker is gone is re-queued.
- On stop, workers get SIGTERM: they checkpoint and put their job back to QUEUED.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

import structlog

from tunery.services.kit.errors import Unavailable
from tunery.services.kit.settings import Settings
from tunery.services.trainer import worker as worker_module
from tunery.services.trainer.peers import Peers
from tunery.services.trainer.repository import Job, Repository, now_us
from tunery.services.trainer.service import JobError, build_plan
from tunery.trainer.v1 import trainer_pb2 as pb

log = structlog.get_logger("tunery.trainer.scheduler")
VALIDATION_RETRY_S = 5.0  # wait before validating again when a peer service could not be reached


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


class Scheduler:
    def __init__(self, settings: Settings, repo: Repository, peers: Peers) -> None:
        self.settings = settings
        self.repo = repo
        self.peers = peers
        self.workers: dict[str, RunningWorker] = {}
        self._validating: set[str] = set()
        self._deferred: dict[str, float] = {}  # job id → monotonic time before which validation waits
        self._validator = ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainer-validate")
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="trainer-scheduler", daemon=True)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "Scheduler":
        self._recover()
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """SIGTERM every worker, wait for them to checkpoint and exit, re-queue what they left RUNNING."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._validator.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            workers = list(self.workers.values())
        for w in workers:
            _signal(w.pid, signal.SIGTERM)
        for w in workers:
            if not self._wait(w, self.settings.trainer_stop_timeout_s):
                log.warning("worker.kill", job=w.job_id, pid=w.pid)
                _signal(w.pid, signal.SIGKILL)
                self._wait(w, 10)
            self.repo.transition(w.job_id, ("RUNNING",), "QUEUED", "the trainer service stopped; the job resumes "
                                 "from its latest checkpoint when it starts again", attempt=w.attempt, worker_pid=None)
        log.info("scheduler.stopped", signalled_workers=len(workers))

    def _wait(self, w: RunningWorker, timeout_s: float) -> bool:
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

    def _recover(self) -> None:
        """Adopt workers of a previous service process that still run; re-queue jobs whose worker is gone."""
        for job in self.repo.jobs_in_state("RUNNING"):
            if job.worker_pid and _is_worker_of(job.worker_pid, job.job_id):
                log.info("worker.adopted", job=job.name, pid=job.worker_pid)
                self.workers[job.job_id] = RunningWorker(job.job_id, job.attempt_count, job.worker_pid, None)
            else:
                self._worker_died(job, "its worker is gone after a restart of the trainer service", job.attempt_count)

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reap()
                self._validate()
                self._dispatch()
            except Exception:  # noqa: BLE001 - a database hiccup must not end scheduling
                log.exception("scheduler.error")
            self._wake.wait(self.settings.trainer_poll_interval_s * 2)
            self._wake.clear()

    def _reap(self) -> None:
        with self._lock:
            ended = [(w, code) for w in self.workers.values() if (code := w.exit_code()) is not None]
            for w, _ in ended:
                del self.workers[w.job_id]
        for w, code in ended:
            job = self.repo.get_job(w.job_id)
            if job is not None and job.state == "RUNNING" and job.attempt_count == w.attempt:
                where = f"; its log is {w.log_path}" if w.log_path else ""
                self._worker_died(job, f"its worker exited with code {code}{where}", w.attempt)
            else:
                log.info("worker.exited", job=w.job_id, code=code)

    def _worker_died(self, job: Job, why: str, attempt: int) -> None:
        failures = job.failure_count + 1
        if job.cancel_requested:
            self.repo.transition(job.job_id, ("RUNNING",), "CANCELLED", f"cancelled: {why}", attempt=attempt,
                                 worker_pid=None, failure_count=failures)
        elif failures >= self.settings.trainer_max_attempts:
            error = pb.TrainingError(code="worker_failed", message=f"the job failed {failures} times; last time "
                                     f"{why}. Check the trainer logs, then create the job again")
            self.repo.transition(job.job_id, ("RUNNING",), "FAILED", error.message, error=error, attempt=attempt,
                                 worker_pid=None, failure_count=failures)
        else:
            step = job.progress.step if job.progress else 0
            self.repo.transition(job.job_id, ("RUNNING",), "QUEUED", f"{why}; re-queued (failure {failures} of "
                                 f"{self.settings.trainer_max_attempts}) after step {step}, resuming from the latest "
                                 "checkpoint", attempt=attempt, worker_pid=None, failure_count=failures)
        log.warning("worker.died", job=job.name, why=why, failures=failures)

    def _validate(self) -> None:
        for job in self.repo.jobs_in_state("VALIDATING"):
            with self._lock:
                if (job.job_id in self._validating or self._stopping.is_set()
                        or self._deferred.get(job.job_id, 0) > time.monotonic()):
                    continue
                self._validating.add(job.job_id)
            self._validator.submit(self._validate_one, job)

    def _validate_one(self, job: Job) -> None:
        try:
            planned = build_plan(self.settings.model_cache(), self.peers, job.spec, job.training_version,
                                 job.validation_version)
        except JobError as e:
            self.repo.transition(job.job_id, ("VALIDATING",), "FAILED", f"validation failed: {e.error.message}",
                                 error=e.error)
        except Unavailable as e:  # a peer is down: try again a little later
            log.warning("training_job.validation_deferred", job=job.name, error=e.message)
            with self._lock:
                self._deferred[job.job_id] = time.monotonic() + VALIDATION_RETRY_S
        except Exception as e:  # noqa: BLE001 - a bug must still end the job visibly
            log.exception("training_job.validation_crashed", job=job.name)
            error = pb.TrainingError(code="internal", message=f"validation failed unexpectedly ({type(e).__name__}); "
                                     "the trainer logs hold the details")
            self.repo.transition(job.job_id, ("VALIDATING",), "FAILED", error.message, error=error)
        else:
            plan = planned.plan
            self.repo.transition(job.job_id, ("VALIDATING",), "QUEUED",
                                 f"validated: {plan.training_example_count} training examples, {plan.total_steps} "
                                 "steps", plan=plan)
        finally:
            with self._lock:
                self._validating.discard(job.job_id)
            self._wake.set()

    def _dispatch(self) -> None:
        with self._lock:
            free = self.settings.trainer_max_concurrent_jobs - len(self.workers)
        if free <= 0 or self._stopping.is_set():
            return
        for job in self.repo.jobs_in_state("QUEUED")[:free]:
            attempt = job.attempt_count + 1
            started = self.repo.transition(
                job.job_id, ("QUEUED",), "RUNNING", f"attempt {attempt} started", attempt=job.attempt_count,
                attempt_count=attempt, start_us=job.start_us or now_us())
            if started is None:
                continue  # cancelled meanwhile
            try:
                process, log_path = self._spawn(started)
            except OSError as e:
                error = pb.TrainingError(code="internal", message=f"could not start a worker process: {e}")
                self.repo.transition(job.job_id, ("RUNNING",), "FAILED", error.message, error=error)
                continue
            self.repo.update_job(job.job_id, attempt=attempt, worker_pid=process.pid)
            with self._lock:
                self.workers[job.job_id] = RunningWorker(job.job_id, attempt, process.pid, process, log_path)
            log.info("worker.started", job=started.name, attempt=attempt, pid=process.pid)

    def _spawn(self, job: Job) -> tuple[subprocess.Popen, Path]:
        args = ["-m", worker_module.__name__, "--job", job.job_id, "--attempt", str(job.attempt_count)]
        processes = max(1, job.spec.num_processes)
        if processes > 1:
            args = ["-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}", *args]
        log_dir = self.settings.home / "trainer" / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"{job.job_id}-attempt-{job.attempt_count}.log"
        with open(log_path, "ab") as out:
            return subprocess.Popen([sys.executable, *args], env=worker_environment(self.settings), stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), log_path


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
