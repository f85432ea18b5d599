"""The scheduler: one thread in the trainer service that moves jobs along.

- VALIDATING jobs are planned (data downloaded and tokenized, base model resolved) on a helper thread and
  become QUEUED with their plan, or FAILED with a structured error.
- QUEUED jobs start, oldest first, while fewer than settings.trainer_max_concurrent_jobs workers run: the
  job becomes RUNNING with a new attempt and its executor (executors.py: local processes or Kubernetes Jobs,
  settings.trainer_executor) starts a worker (locally: hands it to the standby worker started ahead). A
  local worker's exit wakes the loop, so the next job starts at once.
- A worker that ends while its attempt still owns the RUNNING job died: the job is re-queued (it resumes
  from its latest checkpoint) or, after settings.trainer_max_attempts failures, FAILED. A preempted worker
  is re-queued without counting a failure.
- At start, RUNNING jobs are recovered: a worker left over from a previous service process (still alive)
  is adopted and watched; a job whose worker is gone is re-queued.
- On stop, the executor stops its workers (local ones checkpoint on SIGTERM and put their job back to
  QUEUED); Kubernetes Jobs keep running and the next service process adopts them.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import structlog

from tunery.services.kit.errors import Unavailable
from tunery.services.kit.settings import Settings
from tunery.services.trainer.executors import Executor, ExecutorError, make_executor
from tunery.services.trainer.peers import Peers
from tunery.services.trainer.repository import Job, Repository, now_us
from tunery.services.trainer.service import JobError, build_plan
from tunery.trainer.v1 import trainer_pb2 as pb

log = structlog.get_logger("tunery.trainer.scheduler")
VALIDATION_RETRY_S = 5.0  # wait before validating again when a peer service could not be reached


class Scheduler:
    def __init__(self, settings: Settings, repo: Repository, peers: Peers, executor: Executor | None = None) -> None:
        self.settings = settings
        self.repo = repo
        self.peers = peers
        self.executor = executor or make_executor(settings, on_exit=self.wake)
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
        """Stop the workers (local ones checkpoint and exit) and re-queue what they left RUNNING."""
        self._stopping.set()
        self._wake.set()
        self._thread.join()
        self._validator.shutdown(wait=True, cancel_futures=True)
        stopped = self.executor.stop(self.settings.trainer_stop_timeout_s)
        for job_id, attempt in stopped:
            self.repo.transition(job_id, ("RUNNING",), "QUEUED", "the trainer service stopped; the job resumes "
                                 "from its latest checkpoint when it starts again", attempt=attempt, worker_pid=None)
        log.info("scheduler.stopped", signalled_workers=len(stopped))

    def _recover(self) -> None:
        """Adopt workers of a previous service process that still run; re-queue jobs whose worker is gone."""
        running = self.repo.jobs_in_state("RUNNING")
        adopted = self.executor.recover(running)
        for job in running:
            if job.job_id not in adopted:
                self._worker_died(job, "its worker is gone after a restart of the trainer service", job.attempt_count)

    # ------------------------------------------------------------------ loop
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                self._reap()
                self._cancel()
                self._validate()
                self._dispatch()
            except Exception:  # noqa: BLE001 - a database hiccup must not end scheduling
                log.exception("scheduler.error")
            self._wake.wait(self.settings.trainer_poll_interval_s * 2)
            self._wake.clear()

    def _reap(self) -> None:
        for ended in self.executor.ended():
            job = self.repo.get_job(ended.job_id)
            if job is not None and job.state == "RUNNING" and job.attempt_count == ended.attempt:
                self._worker_died(job, ended.why, ended.attempt, counts=ended.counts)
            else:
                log.info("worker.exited", job=ended.job_id, attempt=ended.attempt, why=ended.why)

    def _cancel(self) -> None:
        """Tell the executor about running jobs whose cancellation was requested."""
        if self.executor.active():
            for job in self.repo.jobs_in_state("RUNNING"):
                if job.cancel_requested:
                    self.executor.cancel(job.job_id, job.attempt_count)

    def _worker_died(self, job: Job, why: str, attempt: int, counts: bool = True) -> None:
        failures = job.failure_count + (1 if counts else 0)
        step = job.progress.step if job.progress else 0
        if job.cancel_requested:
            self.repo.transition(job.job_id, ("RUNNING",), "CANCELLED", f"cancelled: {why}", attempt=attempt,
                                 worker_pid=None, failure_count=failures)
        elif not counts:
            self.repo.transition(job.job_id, ("RUNNING",), "QUEUED", f"{why}; re-queued after step {step} (not "
                                 "counted as a failure), resuming from the latest checkpoint", attempt=attempt,
                                 worker_pid=None)
        elif failures >= self.settings.trainer_max_attempts:
            error = pb.TrainingError(code="worker_failed", message=f"the job failed {failures} times; last time "
                                     f"{why}. Check the trainer logs, then create the job again")
            self.repo.transition(job.job_id, ("RUNNING",), "FAILED", error.message, error=error, attempt=attempt,
                                 worker_pid=None, failure_count=failures)
        else:
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
        free = self.settings.trainer_max_concurrent_jobs - self.executor.active()
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
                pid = self.executor.start(started)
            except ExecutorError as e:
                error = pb.TrainingError(code="internal", message=str(e))
                self.repo.transition(job.job_id, ("RUNNING",), "FAILED", error.message, error=error)
                continue
            if pid is not None:
                self.repo.update_job(job.job_id, attempt=attempt, worker_pid=pid)
            log.info("worker.started", job=started.name, attempt=attempt, pid=pid)
