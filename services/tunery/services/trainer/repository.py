"""The only trainer code that touches the database and the object store.

Jobs keep their spec, plan, progress and error as serialized protos; every state change and every worker
report appends an event whose `seq` is taken from the job row under a row lock, in the same transaction,
so `seq` increases by exactly one per event whoever writes it (the service or a worker process).
Workers write with their attempt number: a write from a stale attempt (a worker the service already gave
up on) changes nothing.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy import Connection

from tunery.services.kit.db import Database
from tunery.services.kit.errors import ResourceExhausted
from tunery.services.kit.objects import ObjectStore
from tunery.trainer.v1 import trainer_pb2 as pb

ACTIVE_STATES = ("VALIDATING", "QUEUED", "RUNNING")
TERMINAL_STATES = ("SUCCEEDED", "FAILED", "CANCELLED")

_metadata = sa.MetaData()
jobs = sa.Table(
    "trainer_jobs", _metadata,
    sa.Column("job_id", sa.String(16), primary_key=True),
    sa.Column("project", sa.String(63), nullable=False),
    sa.Column("request_id", sa.String(64)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("spec", sa.LargeBinary, nullable=False),
    sa.Column("plan", sa.LargeBinary),
    sa.Column("progress", sa.LargeBinary),
    sa.Column("error", sa.LargeBinary),
    sa.Column("training_version", sa.String(256), nullable=False),
    sa.Column("validation_version", sa.String(256)),
    sa.Column("cancel_requested", sa.Boolean, nullable=False),
    sa.Column("attempt_count", sa.Integer, nullable=False),
    sa.Column("failure_count", sa.Integer, nullable=False),
    sa.Column("lost_steps", sa.BigInteger, nullable=False),
    sa.Column("worker_pid", sa.Integer),
    sa.Column("model_version", sa.String(256)),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("create_us", sa.BigInteger, nullable=False),
    sa.Column("start_us", sa.BigInteger),
    sa.Column("end_us", sa.BigInteger),
)
events = sa.Table(
    "trainer_events", _metadata,
    sa.Column("job_id", sa.String(16), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("event", sa.LargeBinary, nullable=False),
)
checkpoints = sa.Table(
    "trainer_checkpoints", _metadata,
    sa.Column("job_id", sa.String(16), primary_key=True),
    sa.Column("step", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("checkpoint", sa.LargeBinary, nullable=False),
)

# A job's columns under the names of Job's fields: the protos are selected as their stored *_bytes.
_JOB_COLUMNS = [column.label(f"{column.name}_bytes") if column.name in ("spec", "plan", "progress", "error")
                else column for column in jobs.c]
# Built once: the hottest read (GetTrainingJob) skips building and cache-keying a statement per call.
_JOB_BY_ID = sa.select(*_JOB_COLUMNS).where(jobs.c.job_id == sa.bindparam("job_id"))


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Job:
    """One row of trainer_jobs. Its protos keep their stored bytes and are parsed when first used: an RPC
    response merges the bytes straight into its message (GetTrainingJob spent more on parsing and copying
    them than on reading the row)."""

    job_id: str
    project: str
    request_id: str | None
    state: str
    spec_bytes: bytes
    plan_bytes: bytes | None
    progress_bytes: bytes | None
    error_bytes: bytes | None
    training_version: str
    validation_version: str | None
    cancel_requested: bool
    attempt_count: int
    failure_count: int
    lost_steps: int
    worker_pid: int | None
    model_version: str | None
    last_seq: int
    create_us: int
    start_us: int | None
    end_us: int | None

    @property
    def name(self) -> str:
        return f"projects/{self.project}/trainingJobs/{self.job_id}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @cached_property
    def spec(self) -> pb.TrainingJobSpec:
        return _parse(pb.TrainingJobSpec, self.spec_bytes)

    @cached_property
    def plan(self) -> pb.TrainingPlan | None:
        return _parse(pb.TrainingPlan, self.plan_bytes)

    @cached_property
    def progress(self) -> pb.TrainingProgress | None:
        return _parse(pb.TrainingProgress, self.progress_bytes)

    @cached_property
    def error(self) -> pb.TrainingError | None:
        return _parse(pb.TrainingError, self.error_bytes)


def _parse(kind, raw: bytes | None):
    if raw is None:
        return None
    message = kind()
    message.ParseFromString(raw)
    return message


def _state_event(previous: str, state: str, message: str, error: pb.TrainingError | None) -> pb.TrainingJobEvent:
    return pb.TrainingJobEvent(state_changed=pb.StateChangedEvent(
        previous_state=pb.TrainingJobState.Value(f"TRAINING_JOB_STATE_{previous}") if previous else 0,
        state=pb.TrainingJobState.Value(f"TRAINING_JOB_STATE_{state}"), message=message, error=error))


class Repository:
    """Jobs, events and checkpoints in the database; checkpoint and adapter files in the object store."""

    def __init__(self, db: Database, objects: ObjectStore | None = None) -> None:
        self.db = db
        self.objects = objects

    # ------------------------------------------------------------------ jobs
    def create_job(self, *, job_id: str, project: str, request_id: str | None, spec: pb.TrainingJobSpec,
                   training_version: str, validation_version: str | None, quota: int) -> tuple[Job, bool]:
        """Insert a VALIDATING job with its first event; (existing job, False) when request_id was seen.
        Raises ResourceExhausted when the project already has `quota` unfinished jobs (0: no quota)."""
        with self.db.write() as conn:
            if request_id:
                existing = self._by_request(conn, project, request_id)
                if existing is not None:
                    return existing, False
            if quota:
                active = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                    jobs.c.project == project, jobs.c.state.in_(ACTIVE_STATES))).scalar_one()
                if active >= quota:
                    raise ResourceExhausted(
                        f"project {project!r} already has {active} unfinished training jobs, its quota is {quota}; "
                        "wait for one to finish or cancel one", "QUOTA_EXCEEDED",
                        [(f"projects/{project}", f"at most {quota} concurrent training jobs")], quota=quota)
            conn.execute(jobs.insert().values(
                job_id=job_id, project=project, request_id=request_id or None, state="VALIDATING",
                spec=spec.SerializeToString(deterministic=True), training_version=training_version,
                validation_version=validation_version, cancel_requested=False, attempt_count=0, failure_count=0,
                lost_steps=0, last_seq=0, create_us=now_us()))
            self._append(conn, job_id, 0, _state_event("", "VALIDATING", "job created; validating data and model",
                                                       None))
            return self._lock(conn, job_id), True

    def _by_request(self, conn: Connection, project: str, request_id: str) -> Job | None:
        row = conn.execute(sa.select(*_JOB_COLUMNS).where(jobs.c.project == project,
                                                          jobs.c.request_id == request_id)).first()
        return Job(**row._mapping) if row else None

    def get_job(self, job_id: str) -> Job | None:
        row = self.db.first(_JOB_BY_ID, {"job_id": job_id})
        return Job(**row) if row else None

    def list_jobs(self, project: str, *, state: str | None, dataset_version: str | None,
                  after: tuple[int, str] | None, limit: int) -> list[Job]:
        """Newest first; `after` is the (create_us, job_id) of the last job of the previous page."""
        query = sa.select(*_JOB_COLUMNS).where(jobs.c.project == project)
        if state:
            query = query.where(jobs.c.state == state)
        if dataset_version:
            query = query.where(sa.or_(jobs.c.training_version == dataset_version,
                                       jobs.c.validation_version == dataset_version))
        if after:
            query = query.where(sa.or_(jobs.c.create_us < after[0],
                                       sa.and_(jobs.c.create_us == after[0], jobs.c.job_id < after[1])))
        query = query.order_by(jobs.c.create_us.desc(), jobs.c.job_id.desc()).limit(limit)
        with self.db.read() as conn:
            return [Job(**row._mapping) for row in conn.execute(query)]

    def jobs_in_state(self, *states: str) -> list[Job]:
        """Every job in these states, oldest first (the scheduler's queue order)."""
        query = (sa.select(*_JOB_COLUMNS).where(jobs.c.state.in_(states))
                 .order_by(jobs.c.create_us, jobs.c.job_id))
        with self.db.read() as conn:
            return [Job(**row._mapping) for row in conn.execute(query)]

    def transition(self, job_id: str, from_states: Iterable[str], to: str, message: str, *,
                   error: pb.TrainingError | None = None, attempt: int | None = None, **values: object) -> Job | None:
        """Move the job from one of `from_states` to `to` with a state event, in one transaction; None when
        the job is elsewhere (or `attempt` is given and is not the job's current attempt)."""
        with self.db.write() as conn:
            job = self._lock(conn, job_id)
            if job is None or job.state not in tuple(from_states) or (attempt is not None and
                                                                      job.attempt_count != attempt):
                return None
            changes = dict(values, state=to)
            if error is not None:
                changes["error"] = error.SerializeToString()
            if to in TERMINAL_STATES:
                changes["end_us"] = now_us()
            conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(**_serialized(changes)))
            self._append(conn, job_id, job.last_seq, _state_event(job.state, to, message, error))
            return self._lock(conn, job_id)

    def update_job(self, job_id: str, *, when_state: str | None = None, attempt: int | None = None,
                   **values: object) -> Job | None:
        """Change columns of a job (no event); None when it is not in `when_state` / `attempt`."""
        with self.db.write() as conn:
            job = self._lock(conn, job_id)
            if job is None or (when_state and job.state != when_state) or (attempt is not None and
                                                                          job.attempt_count != attempt):
                return None
            conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(**_serialized(values)))
            return self._lock(conn, job_id)

    def cancel_requested(self, job_id: str) -> bool:
        with self.db.read() as conn:
            return bool(conn.execute(sa.select(jobs.c.cancel_requested).where(jobs.c.job_id == job_id)).scalar())

    # ------------------------------------------------------------------ events
    def append_event(self, job_id: str, event: pb.TrainingJobEvent, *, attempt: int | None = None,
                     **values: object) -> int | None:
        """Append an event (and change columns, e.g. progress) while the job runs attempt `attempt`;
        returns its seq, or None when that attempt is no longer the running one."""
        with self.db.write() as conn:
            job = self._lock(conn, job_id)
            if job is None or (attempt is not None and (job.state != "RUNNING" or job.attempt_count != attempt)):
                return None
            if values:
                conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(**_serialized(values)))
            return self._append(conn, job_id, job.last_seq, event)

    def list_events(self, job_id: str, after_seq: int, limit: int) -> list[pb.TrainingJobEvent]:
        query = (sa.select(events.c.event).where(events.c.job_id == job_id, events.c.seq > after_seq)
                 .order_by(events.c.seq).limit(limit))
        with self.db.read() as conn:
            return [_parse(pb.TrainingJobEvent, raw) for raw in conn.execute(query).scalars()]

    def _lock(self, conn: Connection, job_id: str) -> Job | None:
        row = conn.execute(sa.select(*_JOB_COLUMNS).where(jobs.c.job_id == job_id).with_for_update()).first()
        return Job(**row._mapping) if row else None

    @staticmethod
    def _append(conn: Connection, job_id: str, last_seq: int, event: pb.TrainingJobEvent) -> int:
        seq = last_seq + 1
        stamped = pb.TrainingJobEvent()
        stamped.CopyFrom(event)
        stamped.seq = seq
        stamped.event_time.FromMicroseconds(now_us())
        conn.execute(events.insert().values(job_id=job_id, seq=seq, event=stamped.SerializeToString()))
        conn.execute(jobs.update().where(jobs.c.job_id == job_id).values(last_seq=seq))
        return seq

    # ------------------------------------------------------------------ checkpoints
    def add_checkpoint(self, job_id: str, checkpoint: pb.Checkpoint, *, attempt: int) -> int | None:
        """Record a checkpoint whose files are stored, with its checkpoint_saved event."""
        with self.db.write() as conn:
            job = self._lock(conn, job_id)
            if job is None or job.state != "RUNNING" or job.attempt_count != attempt:
                return None
            conn.execute(checkpoints.delete().where(checkpoints.c.job_id == job_id,
                                                    checkpoints.c.step == checkpoint.step))
            conn.execute(checkpoints.insert().values(job_id=job_id, step=checkpoint.step,
                                                     checkpoint=checkpoint.SerializeToString()))
            event = pb.TrainingJobEvent(checkpoint_saved=pb.CheckpointSavedEvent(checkpoint=checkpoint))
            return self._append(conn, job_id, job.last_seq, event)

    def list_checkpoints(self, job_id: str, after_step: int, limit: int) -> list[pb.Checkpoint]:
        query = (sa.select(checkpoints.c.checkpoint).where(checkpoints.c.job_id == job_id,
                                                           checkpoints.c.step > after_step)
                 .order_by(checkpoints.c.step).limit(limit))
        with self.db.read() as conn:
            return [_parse(pb.Checkpoint, raw) for raw in conn.execute(query).scalars()]

    def latest_checkpoint(self, job_id: str) -> pb.Checkpoint | None:
        query = (sa.select(checkpoints.c.checkpoint).where(checkpoints.c.job_id == job_id)
                 .order_by(checkpoints.c.step.desc()).limit(1))
        with self.db.read() as conn:
            raw = conn.execute(query).scalar()
        return _parse(pb.Checkpoint, raw)

    # ------------------------------------------------------------------ objects
    def put_folder(self, folder: Path, prefix: str) -> list[tuple[str, str]]:
        """Upload every file of `folder` (recursively) under `prefix`; returns (relative path, key) pairs."""
        assert self.objects is not None
        stored = []
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = path.relative_to(folder).as_posix()
            key = prefix + relative
            with path.open("rb") as f:
                self.objects.put(key, iter(lambda: f.read(1 << 20), b""))
            stored.append((relative, key))
        return stored

    def get_folder(self, prefix: str, folder: Path) -> None:
        """Download every object under `prefix` into `folder`, keeping relative paths."""
        assert self.objects is not None
        for key in self.objects.list(prefix):
            target = folder / key[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("wb") as f:
                for chunk in self.objects.get(key):
                    f.write(chunk)

    def iter_object(self, key: str) -> Iterator[bytes]:
        assert self.objects is not None
        return self.objects.get(key)


def _serialized(values: dict) -> dict:
    """Protos become bytes; everything else passes through."""
    return {k: (v.SerializeToString() if hasattr(v, "SerializeToString") else v) for k, v in values.items()}
