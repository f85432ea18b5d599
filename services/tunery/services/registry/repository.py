"""The registry's storage: its tables (SQLAlchemy Core) and its objects under the `registry/` prefix.

Version files live under `registry/projects/{project}/models/{model}/files/{upload id}/{path}`: an upload gets
its own prefix before it has a number, so a failed upload is removed by prefix and numbers are handed out only
to versions that made it. Uploads in flight are recorded in `registry_pending_uploads` so their objects can be
swept when the process dies or the object store is down at cleanup time.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Iterable, Iterator

import sqlalchemy as sa
from sqlalchemy import Connection

from tunery.services.kit.db import Database
from tunery.services.kit.errors import Aborted, AlreadyExists, FailedPrecondition, NotFound, ResourceExhausted
from tunery.services.kit.objects import READ_SIZE, ObjectStore

_metadata = sa.MetaData()
models = sa.Table(
    "registry_models", _metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("model_id", sa.String(63), primary_key=True),
    sa.Column("base_model", sa.String(256)),
    sa.Column("description", sa.Text),
    sa.Column("labels", sa.Text),
    sa.Column("etag", sa.String(32)),
    sa.Column("next_version", sa.Integer),
    sa.Column("request_id", sa.String(36)),
    sa.Column("create_time", sa.DateTime(timezone=True)),
    sa.Column("update_time", sa.DateTime(timezone=True)),
)
versions = sa.Table(
    "registry_versions", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(63)),
    sa.Column("model_id", sa.String(63)),
    sa.Column("version", sa.Integer),
    sa.Column("description", sa.Text),
    sa.Column("labels", sa.Text),
    sa.Column("etag", sa.String(32)),
    sa.Column("manifest", sa.Text),
    sa.Column("lineage", sa.Text),
    sa.Column("training_job", sa.String(128)),
    sa.Column("training_data_sha256", sa.String(64)),
    sa.Column("validation_data_sha256", sa.String(64)),
    sa.Column("total_bytes", sa.BigInteger),
    sa.Column("object_prefix", sa.String(512)),
    sa.Column("request_id", sa.String(36)),
    sa.Column("create_time", sa.DateTime(timezone=True)),
    sa.Column("update_time", sa.DateTime(timezone=True)),
)
version_labels = sa.Table(
    "registry_version_labels", _metadata,
    sa.Column("version_id", sa.Integer, primary_key=True),
    sa.Column("key", sa.String(63), primary_key=True),
    sa.Column("value", sa.String(63)),
)
aliases = sa.Table(
    "registry_aliases", _metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("model_id", sa.String(63), primary_key=True),
    sa.Column("alias", sa.String(63), primary_key=True),
    sa.Column("version", sa.Integer),
)
alias_events = sa.Table(
    "registry_alias_events", _metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("project", sa.String(63)),
    sa.Column("model_id", sa.String(63)),
    sa.Column("alias", sa.String(63)),
    sa.Column("from_version", sa.Integer),
    sa.Column("to_version", sa.Integer),
    sa.Column("actor", sa.String(128)),
    sa.Column("create_time", sa.DateTime(timezone=True)),
)
pending_uploads = sa.Table(
    "registry_pending_uploads", _metadata,
    sa.Column("object_prefix", sa.String(512), primary_key=True),
    sa.Column("project", sa.String(63)),
    sa.Column("create_time", sa.DateTime(timezone=True)),
)


@dataclass
class ModelRecord:
    project: str
    model_id: str
    base_model: str
    description: str
    labels: dict[str, str]
    etag: str
    create_time: datetime
    update_time: datetime
    aliases: dict[str, int] = field(default_factory=dict)
    latest_version: int | None = None
    version_count: int = 0


@dataclass
class FileEntry:
    path: str
    size_bytes: int
    sha256: str
    media_type: str


@dataclass
class VersionRecord:
    id: int
    project: str
    model_id: str
    version: int
    description: str
    labels: dict[str, str]
    etag: str
    files: list[FileEntry]
    lineage: dict[str, Any]
    object_prefix: str
    total_bytes: int
    create_time: datetime
    update_time: datetime
    aliases: list[str] = field(default_factory=list)

    def key(self, path: str) -> str:
        return self.object_prefix + path


@dataclass
class NewVersion:
    """A verified version about to be recorded (its files are already under object_prefix)."""

    description: str
    labels: dict[str, str]
    files: list[FileEntry]
    lineage: dict[str, Any]
    training_job: str
    training_data_sha256: str
    validation_data_sha256: str
    object_prefix: str
    request_id: str | None

    @property
    def total_bytes(self) -> int:
        return sum(f.size_bytes for f in self.files)


@dataclass
class AliasEventRecord:
    id: int
    alias: str
    from_version: int | None
    to_version: int | None
    actor: str
    create_time: datetime


@dataclass
class VersionFilter:
    labels: dict[str, str] = field(default_factory=dict)
    training_job: str = ""
    dataset_sha256: str = ""


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _etag() -> str:
    return uuid.uuid4().hex[:16]


def _model_not_found(project: str, model_id: str) -> NotFound:
    return NotFound(f"model projects/{project}/models/{model_id} does not exist", "MODEL_NOT_FOUND",
                    model=f"projects/{project}/models/{model_id}")


class Repository:
    def __init__(self, db: Database, objects: ObjectStore) -> None:
        self.db = db
        self.objects = objects

    # ---- models ---------------------------------------------------------------------------------------------

    def create_model(self, project: str, model_id: str, base_model: str, description: str, labels: dict[str, str],
                     request_id: str | None) -> ModelRecord:
        now = _now()
        with self.db.write() as conn:
            existing = conn.execute(sa.select(models.c.request_id).where(
                models.c.project == project, models.c.model_id == model_id)).first()
            if existing is None:
                conn.execute(models.insert().values(
                    project=project, model_id=model_id, base_model=base_model, description=description,
                    labels=json.dumps(labels), etag=_etag(), next_version=1, request_id=request_id,
                    create_time=now, update_time=now))
            elif not request_id or existing.request_id != request_id:
                raise AlreadyExists(f"model projects/{project}/models/{model_id} already exists; pick another id",
                                    "MODEL_EXISTS", model=f"projects/{project}/models/{model_id}")
            return self._model(conn, project, model_id)

    def get_model(self, project: str, model_id: str) -> ModelRecord:
        with self.db.read() as conn:
            return self._model(conn, project, model_id)

    def list_models(self, project: str, after: str | None, limit: int) -> list[ModelRecord]:
        query = sa.select(models).where(models.c.project == project).order_by(models.c.model_id).limit(limit)
        if after is not None:
            query = query.where(models.c.model_id > after)
        with self.db.read() as conn:
            rows = conn.execute(query).all()
            return self._with_details(conn, project, [_model_record(row) for row in rows])

    def update_model(self, project: str, model_id: str, values: dict[str, Any], etag: str) -> ModelRecord:
        with self.db.write() as conn:
            self._bump_model(conn, project, model_id, etag, **values)
            return self._model(conn, project, model_id)

    def delete_model(self, project: str, model_id: str, force: bool) -> list[str]:
        """Deletes the model's rows; returns the object prefixes of its versions for the caller to remove."""
        with self.db.write() as conn:
            self._lock_model(conn, project, model_id)
            where = (versions.c.project == project, versions.c.model_id == model_id)
            rows = conn.execute(sa.select(versions.c.id, versions.c.object_prefix).where(*where)).all()
            if rows and not force:
                raise FailedPrecondition(f"model projects/{project}/models/{model_id} still has {len(rows)} "
                                         f"versions: delete them first or pass force", "MODEL_HAS_VERSIONS",
                                         versions=len(rows))
            ids = [row.id for row in rows]
            if ids:
                conn.execute(version_labels.delete().where(version_labels.c.version_id.in_(ids)))
            conn.execute(versions.delete().where(*where))
            conn.execute(aliases.delete().where(aliases.c.project == project, aliases.c.model_id == model_id))
            conn.execute(alias_events.delete().where(alias_events.c.project == project,
                                                     alias_events.c.model_id == model_id))
            conn.execute(models.delete().where(models.c.project == project, models.c.model_id == model_id))
        return [row.object_prefix for row in rows]

    def _lock_model(self, conn: Connection, project: str, model_id: str) -> sa.Row:
        """The model row, locked until the transaction ends (PostgreSQL; SQLite writers are serial anyway)."""
        row = conn.execute(sa.select(models).where(models.c.project == project, models.c.model_id == model_id)
                           .with_for_update()).first()
        if row is None:
            raise _model_not_found(project, model_id)
        return row

    def _bump_model(self, conn: Connection, project: str, model_id: str, etag: str, **values: Any) -> str:
        """Compare-and-set of the model's etag (when `etag` is given) with a new etag; returns it."""
        new = _etag()
        if "labels" in values:
            values["labels"] = json.dumps(values["labels"])
        update = models.update().where(models.c.project == project, models.c.model_id == model_id)
        if etag:
            update = update.where(models.c.etag == etag)
        if conn.execute(update.values(etag=new, update_time=_now(), **values)).rowcount == 0:
            self._lock_model(conn, project, model_id)  # raises NOT_FOUND when it is missing
            raise Aborted(f"model projects/{project}/models/{model_id} changed since it was read (etag {etag!r} "
                          f"is stale): read it again and retry", "ETAG_MISMATCH")
        return new

    @staticmethod
    def _check_model(conn: Connection, project: str, model_id: str) -> None:
        if conn.execute(sa.select(models.c.model_id).where(models.c.project == project,
                                                           models.c.model_id == model_id)).first() is None:
            raise _model_not_found(project, model_id)

    def _model(self, conn: Connection, project: str, model_id: str) -> ModelRecord:
        row = conn.execute(sa.select(models).where(models.c.project == project, models.c.model_id == model_id)).first()
        if row is None:
            raise _model_not_found(project, model_id)
        return self._with_details(conn, project, [_model_record(row)])[0]

    def _with_details(self, conn: Connection, project: str, records: list[ModelRecord]) -> list[ModelRecord]:
        """Adds aliases, version counts and latest versions to a page of models in two queries."""
        by_id = {r.model_id: r for r in records}
        if not by_id:
            return records
        for row in conn.execute(sa.select(aliases).where(aliases.c.project == project,
                                                         aliases.c.model_id.in_(by_id))):
            by_id[row.model_id].aliases[row.alias] = row.version
        counts = sa.select(versions.c.model_id, sa.func.count(), sa.func.max(versions.c.version)).where(
            versions.c.project == project, versions.c.model_id.in_(by_id)).group_by(versions.c.model_id)
        for model_id, count, latest in conn.execute(counts):
            by_id[model_id].version_count, by_id[model_id].latest_version = count, latest
        return records

    # ---- versions -------------------------------------------------------------------------------------------

    def model_base(self, project: str, model_id: str) -> str:
        with self.db.read() as conn:
            row = conn.execute(sa.select(models.c.base_model).where(
                models.c.project == project, models.c.model_id == model_id)).first()
        if row is None:
            raise _model_not_found(project, model_id)
        return row.base_model

    def version_by_request(self, project: str, model_id: str, request_id: str) -> VersionRecord | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(versions).where(
                versions.c.project == project, versions.c.model_id == model_id,
                versions.c.request_id == request_id)).first()
            return self._versions(conn, [row])[0] if row else None

    def stored_bytes(self, project: str) -> int:
        with self.db.read() as conn:
            return self._stored_bytes(conn, project)

    @staticmethod
    def _stored_bytes(conn: Connection, project: str) -> int:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(versions.c.total_bytes), 0))
                                .where(versions.c.project == project)).scalar_one())

    def add_version(self, project: str, model_id: str, new: NewVersion, quota_bytes: int) -> VersionRecord:
        """Numbers and records a verified version, and closes its pending upload, in one transaction."""
        now = _now()
        with self.db.write() as conn:
            model = self._lock_model(conn, project, model_id)
            if new.request_id:  # a retry that raced the first call: the first one wins
                row = conn.execute(sa.select(versions).where(
                    versions.c.project == project, versions.c.model_id == model_id,
                    versions.c.request_id == new.request_id)).first()
                if row is not None:
                    raise Replayed(self._versions(conn, [row])[0])
            if quota_bytes:
                used = self._stored_bytes(conn, project)
                if used + new.total_bytes > quota_bytes:
                    raise quota_exceeded(project, used, new.total_bytes, quota_bytes)
            number = model.next_version
            conn.execute(models.update().where(models.c.project == project, models.c.model_id == model_id)
                         .values(next_version=number + 1))
            version_id = conn.execute(versions.insert().values(
                project=project, model_id=model_id, version=number, description=new.description,
                labels=json.dumps(new.labels), etag=_etag(),
                manifest=json.dumps([f.__dict__ for f in new.files]), lineage=json.dumps(new.lineage),
                training_job=new.training_job, training_data_sha256=new.training_data_sha256,
                validation_data_sha256=new.validation_data_sha256, total_bytes=new.total_bytes,
                object_prefix=new.object_prefix, request_id=new.request_id, create_time=now,
                update_time=now)).inserted_primary_key[0]
            self._write_labels(conn, version_id, new.labels)
            conn.execute(pending_uploads.delete().where(pending_uploads.c.object_prefix == new.object_prefix))
            row = conn.execute(sa.select(versions).where(versions.c.id == version_id)).one()
            return self._versions(conn, [row])[0]

    def get_version(self, project: str, model_id: str, ref: str) -> VersionRecord:
        with self.db.read() as conn:
            return self._version(conn, project, model_id, ref)

    def list_versions(self, project: str, model_id: str | None, where: VersionFilter, before: int | None,
                      limit: int) -> list[VersionRecord]:
        """Newest first (by creation order), after the version with id `before`; model_id None: every model."""
        query = sa.select(versions).where(versions.c.project == project).order_by(versions.c.id.desc()).limit(limit)
        if model_id is not None:
            query = query.where(versions.c.model_id == model_id)
        if before is not None:
            query = query.where(versions.c.id < before)
        for key, value in sorted(where.labels.items()):
            query = query.where(sa.exists().where(version_labels.c.version_id == versions.c.id,
                                                  version_labels.c.key == key, version_labels.c.value == value))
        if where.training_job:
            query = query.where(versions.c.training_job == where.training_job)
        if where.dataset_sha256:
            query = query.where(sa.or_(versions.c.training_data_sha256 == where.dataset_sha256,
                                       versions.c.validation_data_sha256 == where.dataset_sha256))
        with self.db.read() as conn:
            if model_id is not None:
                self._check_model(conn, project, model_id)  # NOT_FOUND for a missing model, not an empty list
            return self._versions(conn, conn.execute(query).all())

    def update_version(self, project: str, model_id: str, ref: str, values: dict[str, Any],
                       etag: str) -> VersionRecord:
        with self.db.write() as conn:
            current = self._version(conn, project, model_id, ref)
            update = versions.update().where(versions.c.id == current.id)
            if etag:
                update = update.where(versions.c.etag == etag)
            stored = {k: json.dumps(v) if k == "labels" else v for k, v in values.items()}
            if conn.execute(update.values(etag=_etag(), update_time=_now(), **stored)).rowcount == 0:
                raise Aborted(f"version {current.version} of projects/{project}/models/{model_id} changed since it "
                              f"was read (etag {etag!r} is stale): read it again and retry", "ETAG_MISMATCH")
            if "labels" in values:
                conn.execute(version_labels.delete().where(version_labels.c.version_id == current.id))
                self._write_labels(conn, current.id, values["labels"])
            return self._version(conn, project, model_id, str(current.version))

    def delete_version(self, project: str, model_id: str, ref: str) -> str:
        """Deletes the version's rows; returns its object prefix for the caller to remove."""
        with self.db.write() as conn:
            self._lock_model(conn, project, model_id)
            current = self._version(conn, project, model_id, ref)
            if current.aliases:
                raise FailedPrecondition(
                    f"version {current.version} of projects/{project}/models/{model_id} is what the aliases "
                    f"{', '.join(current.aliases)} point at: move or delete them first", "VERSION_HAS_ALIASES",
                    aliases=",".join(current.aliases))
            conn.execute(version_labels.delete().where(version_labels.c.version_id == current.id))
            conn.execute(versions.delete().where(versions.c.id == current.id))
        return current.object_prefix

    def _version(self, conn: Connection, project: str, model_id: str, ref: str) -> VersionRecord:
        """The version named by number or alias; NOT_FOUND naming whichever is missing."""
        self._check_model(conn, project, model_id)
        number = self._resolve(conn, project, model_id, ref)
        row = conn.execute(sa.select(versions).where(versions.c.project == project, versions.c.model_id == model_id,
                                                     versions.c.version == number)).first()
        if row is None:
            raise NotFound(f"version {ref} of projects/{project}/models/{model_id} does not exist",
                           "VERSION_NOT_FOUND", version=f"projects/{project}/models/{model_id}/versions/{ref}")
        return self._versions(conn, [row])[0]

    @staticmethod
    def _resolve(conn: Connection, project: str, model_id: str, ref: str) -> int:
        if ref.isdigit():
            return int(ref)
        number = conn.execute(sa.select(aliases.c.version).where(
            aliases.c.project == project, aliases.c.model_id == model_id, aliases.c.alias == ref)).scalar()
        if number is None:
            raise NotFound(f"model projects/{project}/models/{model_id} has no alias {ref!r}", "ALIAS_NOT_FOUND",
                           alias=ref)
        return number

    @staticmethod
    def _write_labels(conn: Connection, version_id: int, labels: dict[str, str]) -> None:
        if labels:
            conn.execute(version_labels.insert(), [{"version_id": version_id, "key": k, "value": v}
                                                   for k, v in labels.items()])

    @staticmethod
    def _versions(conn: Connection, rows: Iterable[sa.Row]) -> list[VersionRecord]:
        records = [VersionRecord(
            id=row.id, project=row.project, model_id=row.model_id, version=row.version,
            description=row.description, labels=json.loads(row.labels), etag=row.etag,
            files=[FileEntry(**f) for f in json.loads(row.manifest)], lineage=json.loads(row.lineage),
            object_prefix=row.object_prefix, total_bytes=row.total_bytes, create_time=_utc(row.create_time),
            update_time=_utc(row.update_time)) for row in rows]
        keys = {(r.project, r.model_id, r.version): r for r in records}
        models_seen = {(r.project, r.model_id) for r in records}
        for project, model_id in models_seen:
            for row in conn.execute(sa.select(aliases).where(aliases.c.project == project,
                                                             aliases.c.model_id == model_id)
                                    .order_by(aliases.c.alias)):
                if (project, model_id, row.version) in keys:
                    keys[(project, model_id, row.version)].aliases.append(row.alias)
        return records

    # ---- aliases --------------------------------------------------------------------------------------------

    def set_alias(self, project: str, model_id: str, alias: str, ref: str, etag: str, actor: str) -> ModelRecord:
        """Points `alias` at the version `ref` and records the move, in one transaction."""
        with self.db.write() as conn:
            self._bump_model(conn, project, model_id, etag)  # CAS + row lock: concurrent moves serialize here
            target = self._version(conn, project, model_id, ref).version
            current = conn.execute(sa.select(aliases.c.version).where(
                aliases.c.project == project, aliases.c.model_id == model_id, aliases.c.alias == alias)).scalar()
            if current is None:
                conn.execute(aliases.insert().values(project=project, model_id=model_id, alias=alias, version=target))
            else:
                conn.execute(aliases.update().where(aliases.c.project == project, aliases.c.model_id == model_id,
                                                    aliases.c.alias == alias).values(version=target))
            conn.execute(alias_events.insert().values(project=project, model_id=model_id, alias=alias,
                                                      from_version=current, to_version=target, actor=actor,
                                                      create_time=_now()))
            return self._model(conn, project, model_id)

    def delete_alias(self, project: str, model_id: str, alias: str, etag: str, actor: str) -> ModelRecord:
        with self.db.write() as conn:
            self._bump_model(conn, project, model_id, etag)
            current = self._resolve(conn, project, model_id, alias)
            conn.execute(aliases.delete().where(aliases.c.project == project, aliases.c.model_id == model_id,
                                                aliases.c.alias == alias))
            conn.execute(alias_events.insert().values(project=project, model_id=model_id, alias=alias,
                                                      from_version=current, to_version=None, actor=actor,
                                                      create_time=_now()))
            return self._model(conn, project, model_id)

    def alias_events(self, project: str, model_id: str, alias: str, before: int | None,
                     limit: int) -> list[AliasEventRecord]:
        query = sa.select(alias_events).where(alias_events.c.project == project, alias_events.c.model_id == model_id)
        if alias:
            query = query.where(alias_events.c.alias == alias)
        if before is not None:
            query = query.where(alias_events.c.id < before)
        with self.db.read() as conn:
            self._check_model(conn, project, model_id)
            rows = conn.execute(query.order_by(alias_events.c.id.desc()).limit(limit)).all()
        return [AliasEventRecord(r.id, r.alias, r.from_version, r.to_version, r.actor, _utc(r.create_time))
                for r in rows]

    # ---- objects --------------------------------------------------------------------------------------------

    def begin_upload(self, project: str, model_id: str) -> str:
        """A fresh object prefix for a version's files, recorded as pending until the version is added."""
        prefix = f"registry/projects/{project}/models/{model_id}/files/{uuid.uuid4().hex}/"
        with self.db.write() as conn:
            conn.execute(pending_uploads.insert().values(object_prefix=prefix, project=project, create_time=_now()))
        return prefix

    def abandon_upload(self, prefix: str) -> None:
        """Removes a failed upload's objects, then its pending record (kept for the sweeper if removal fails)."""
        self.objects.remove_prefix(prefix)
        with self.db.write() as conn:
            conn.execute(pending_uploads.delete().where(pending_uploads.c.object_prefix == prefix))

    def sweep_later(self, project: str, prefix: str) -> None:
        """Hands objects that could not be removed now to the sweeper (recorded as long stale)."""
        with self.db.write() as conn:
            conn.execute(pending_uploads.insert().values(object_prefix=prefix, project=project,
                                                         create_time=datetime(2000, 1, 1, tzinfo=timezone.utc)))

    def stale_uploads(self, older_than_s: float) -> list[str]:
        cutoff = _now() - timedelta(seconds=older_than_s)
        with self.db.read() as conn:
            return list(conn.execute(sa.select(pending_uploads.c.object_prefix)
                                     .where(pending_uploads.c.create_time < cutoff)).scalars())

    def put(self, key: str, chunks: Iterable[bytes], media_type: str) -> None:
        self.objects.put(key, chunks, media_type)

    def read(self, key: str, chunk_size: int = READ_SIZE) -> Iterator[bytes]:
        return self.objects.get(key, chunk_size=chunk_size)

    def download_url(self, key: str) -> str:
        return self.objects.download_url(key)

    def size(self, key: str) -> int:
        return self.objects.size(key)

    def copy(self, source: str, destination: str) -> None:
        self.objects.copy(source, destination)

    def remove_prefix(self, prefix: str) -> None:
        self.objects.remove_prefix(prefix)


class Replayed(Exception):
    """A create with a request_id that already produced a version (raised inside add_version's transaction)."""

    def __init__(self, version: VersionRecord) -> None:
        super().__init__("replayed")
        self.version = version


def quota_exceeded(project: str, used: int, adding: int, quota: int) -> ResourceExhausted:
    return ResourceExhausted(
        f"project {project!r} stores {used} bytes of model versions; adding {adding} would exceed its quota of "
        f"{quota} bytes: delete versions you no longer need", "QUOTA_EXCEEDED",
        [(f"projects/{project}", f"stored bytes: {used} used + {adding} requested > {quota} allowed")],
        project=project)


def _model_record(row: sa.Row) -> ModelRecord:
    return ModelRecord(project=row.project, model_id=row.model_id, base_model=row.base_model,
                       description=row.description, labels=json.loads(row.labels), etag=row.etag,
                       create_time=_utc(row.create_time), update_time=_utc(row.update_time))


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every stored time is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
