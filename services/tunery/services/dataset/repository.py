"""The only code of the dataset service that touches the database and the object store.

Object keys (all under the service's `dataset/` prefix):
    dataset/{project}/{dataset}/versions/{sha256}              the bytes of one version
    dataset/{project}/{dataset}/uploads/{upload}/{offset}-{n}  a committed segment of an upload session
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Iterable, Iterator

import sqlalchemy as sa

from tunery.services.kit.db import Database
from tunery.services.kit.errors import Aborted, NotFound
from tunery.services.kit.objects import READ_SIZE, ObjectStore

_metadata = sa.MetaData()
datasets = sa.Table(
    "dataset_datasets", _metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("dataset_id", sa.String(63), primary_key=True),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("request_id", sa.String(64), nullable=True),
    sa.Column("last_seq", sa.BigInteger, nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
)
versions = sa.Table(
    "dataset_versions", _metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("dataset_id", sa.String(63), primary_key=True),
    sa.Column("version_id", sa.String(16), primary_key=True),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("statistics", sa.JSON, nullable=False),
    sa.Column("report", sa.JSON, nullable=False),
    sa.Column("object_key", sa.String(512), nullable=False),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
)
uploads = sa.Table(
    "dataset_uploads", _metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("dataset_id", sa.String(63), primary_key=True),
    sa.Column("upload_id", sa.String(36), primary_key=True),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("committed_bytes", sa.BigInteger, nullable=False),
    sa.Column("attempt", sa.Integer, nullable=False),
    sa.Column("expected_sha256", sa.String(64), nullable=False),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("description", sa.Text, nullable=False),
    sa.Column("labels", sa.JSON, nullable=False),
    sa.Column("version_id", sa.String(16), nullable=True),
    sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expire_time", sa.DateTime(timezone=True), nullable=False),
)
parts = sa.Table(
    "dataset_upload_parts", _metadata,
    sa.Column("project", sa.String(63), primary_key=True),
    sa.Column("dataset_id", sa.String(63), primary_key=True),
    sa.Column("upload_id", sa.String(36), primary_key=True),
    sa.Column("start_offset", sa.BigInteger, primary_key=True),
    sa.Column("size_bytes", sa.BigInteger, nullable=False),
    sa.Column("object_key", sa.String(512), nullable=False),
)

ACTIVE = "active"
SUCCEEDED = "succeeded"


def _utc(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; every time we store is UTC."""
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class DatasetRow:
    project: str
    dataset_id: str
    description: str
    labels: dict[str, str]
    create_time: datetime
    latest_version: str = ""  # version id
    version_count: int = 0


@dataclass(frozen=True)
class VersionRow:
    project: str
    dataset_id: str
    version_id: str
    seq: int
    sha256: str
    size_bytes: int
    format: str
    description: str
    labels: dict[str, str]
    statistics: dict
    report: dict
    object_key: str
    create_time: datetime


@dataclass(frozen=True)
class UploadRow:
    project: str
    dataset_id: str
    upload_id: str
    state: str
    committed_bytes: int
    attempt: int
    expected_sha256: str
    format: str
    description: str
    labels: dict[str, str] = field(default_factory=dict)
    version_id: str | None = None
    create_time: datetime = datetime.min.replace(tzinfo=timezone.utc)
    expire_time: datetime = datetime.min.replace(tzinfo=timezone.utc)


@dataclass(frozen=True)
class PartRow:
    start_offset: int
    size_bytes: int
    object_key: str


class DatasetExists(Exception):
    """The dataset id is taken (by a create with another request id)."""


class Repository:
    def __init__(self, db: Database, objects: ObjectStore) -> None:
        self.db = db
        self.objects = objects

    # -- keys -------------------------------------------------------------------------------

    @staticmethod
    def dataset_prefix(project: str, dataset_id: str) -> str:
        return f"dataset/{project}/{dataset_id}/"

    @classmethod
    def version_key(cls, project: str, dataset_id: str, sha256: str) -> str:
        return f"{cls.dataset_prefix(project, dataset_id)}versions/{sha256}.jsonl"

    @classmethod
    def upload_prefix(cls, project: str, dataset_id: str, upload_id: str) -> str:
        return f"{cls.dataset_prefix(project, dataset_id)}uploads/{upload_id}/"

    @classmethod
    def segment_key(cls, project: str, dataset_id: str, upload_id: str, offset: int, attempt: int) -> str:
        return f"{cls.upload_prefix(project, dataset_id, upload_id)}{offset:016d}-{attempt}"

    # -- datasets ---------------------------------------------------------------------------

    def create_dataset(self, row: DatasetRow, request_id: str) -> tuple[DatasetRow, bool]:
        """Insert the dataset; a replay of the same request_id returns the first result (created False)."""
        try:
            with self.db.write() as conn:
                existing = conn.execute(sa.select(datasets.c.request_id).where(
                    datasets.c.project == row.project, datasets.c.dataset_id == row.dataset_id)).first()
                if existing is not None:
                    if request_id and existing.request_id == request_id:
                        return self._dataset(conn, row.project, row.dataset_id), False
                    raise DatasetExists(row.dataset_id)
                conn.execute(datasets.insert().values(
                    project=row.project, dataset_id=row.dataset_id, description=row.description, labels=row.labels,
                    request_id=request_id or None, last_seq=0, create_time=row.create_time))
                return self._dataset(conn, row.project, row.dataset_id), True
        except sa.exc.IntegrityError:  # a concurrent create of the same id won
            raise DatasetExists(row.dataset_id) from None

    def get_dataset(self, project: str, dataset_id: str) -> DatasetRow | None:
        with self.db.read() as conn:
            return self._dataset(conn, project, dataset_id)

    def list_datasets(self, project: str, after: str | None, limit: int) -> list[DatasetRow]:
        query = sa.select(datasets.c.dataset_id).where(datasets.c.project == project)
        if after is not None:
            query = query.where(datasets.c.dataset_id > after)
        with self.db.read() as conn:
            ids = conn.execute(query.order_by(datasets.c.dataset_id).limit(limit)).scalars().all()
            return [self._dataset(conn, project, dataset_id) for dataset_id in ids]

    def delete_dataset(self, project: str, dataset_id: str) -> None:
        """Delete the dataset's rows: parts, uploads, versions, then the dataset."""
        where = dict(project=project, dataset_id=dataset_id)
        with self.db.write() as conn:
            for table in (parts, uploads, versions, datasets):
                conn.execute(table.delete().where(*(table.c[k] == v for k, v in where.items())))

    @staticmethod
    def _dataset(conn: sa.Connection, project: str, dataset_id: str) -> DatasetRow | None:
        row = conn.execute(sa.select(datasets).where(datasets.c.project == project,
                                                     datasets.c.dataset_id == dataset_id)).first()
        if row is None:
            return None
        count, = conn.execute(sa.select(sa.func.count()).select_from(versions).where(
            versions.c.project == project, versions.c.dataset_id == dataset_id)).one()
        latest = conn.execute(sa.select(versions.c.version_id).where(
            versions.c.project == project, versions.c.dataset_id == dataset_id)
            .order_by(versions.c.seq.desc()).limit(1)).scalar()
        return DatasetRow(row.project, row.dataset_id, row.description, dict(row.labels), _utc(row.create_time),
                          latest or "", count)

    # -- versions ---------------------------------------------------------------------------

    def get_version(self, project: str, dataset_id: str, version_id: str) -> VersionRow | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(versions).where(
                versions.c.project == project, versions.c.dataset_id == dataset_id,
                versions.c.version_id == version_id)).first()
        return _version(row) if row else None

    def list_versions(self, project: str, dataset_id: str, before_seq: int | None, limit: int) -> list[VersionRow]:
        """Newest first, starting below `before_seq`."""
        query = sa.select(versions).where(versions.c.project == project, versions.c.dataset_id == dataset_id)
        if before_seq is not None:
            query = query.where(versions.c.seq < before_seq)
        with self.db.read() as conn:
            rows = conn.execute(query.order_by(versions.c.seq.desc()).limit(limit)).all()
        return [_version(row) for row in rows]

    def version_ids(self, project: str, dataset_id: str) -> list[str]:
        with self.db.read() as conn:
            return list(conn.execute(sa.select(versions.c.version_id).where(
                versions.c.project == project, versions.c.dataset_id == dataset_id)
                .order_by(versions.c.seq)).scalars())

    def stored_bytes(self, project: str) -> int:
        """Bytes of every version of the project (what the stored-bytes quota counts)."""
        with self.db.read() as conn:
            return int(conn.execute(sa.select(sa.func.coalesce(sa.func.sum(versions.c.size_bytes), 0))
                                    .where(versions.c.project == project)).scalar())

    def create_version(self, row: VersionRow, upload_id: str) -> tuple[VersionRow, bool]:
        """Insert the version and mark its upload session succeeded, in one transaction.

        Returns the existing version (created False) when the same id appeared meanwhile.
        Raises NotFound when the dataset was deleted meanwhile."""
        with self.db.write() as conn:
            last_seq = conn.execute(sa.select(datasets.c.last_seq).where(
                datasets.c.project == row.project, datasets.c.dataset_id == row.dataset_id)
                .with_for_update()).scalar()
            if last_seq is None:
                raise NotFound(f"dataset projects/{row.project}/datasets/{row.dataset_id} was deleted during the "
                               "upload", "DATASET_NOT_FOUND")
            existing = conn.execute(sa.select(versions).where(
                versions.c.project == row.project, versions.c.dataset_id == row.dataset_id,
                versions.c.version_id == row.version_id)).first()
            created = existing is None
            if created:
                values = {**row.__dict__, "seq": last_seq + 1}
                conn.execute(versions.insert().values(**values))
                conn.execute(datasets.update().where(datasets.c.project == row.project,
                                                     datasets.c.dataset_id == row.dataset_id)
                             .values(last_seq=last_seq + 1))
            self._succeed_upload(conn, row.project, row.dataset_id, upload_id, row.version_id)
            result = conn.execute(sa.select(versions).where(
                versions.c.project == row.project, versions.c.dataset_id == row.dataset_id,
                versions.c.version_id == row.version_id)).one()
        return _version(result), created

    def delete_version(self, project: str, dataset_id: str, version_id: str) -> None:
        with self.db.write() as conn:
            conn.execute(versions.delete().where(versions.c.project == project, versions.c.dataset_id == dataset_id,
                                                 versions.c.version_id == version_id))

    # -- upload sessions --------------------------------------------------------------------

    def get_upload(self, project: str, dataset_id: str, upload_id: str) -> UploadRow | None:
        with self.db.read() as conn:
            row = conn.execute(sa.select(uploads).where(*_upload_key(project, dataset_id, upload_id))).first()
        return _upload(row) if row else None

    def start_upload(self, session: UploadRow, restart: bool) -> tuple[UploadRow, list[PartRow]]:
        """Create the session, or take it over for a new stream (attempt + 1), in one transaction.

        `restart` drops the committed segments (their objects are the caller's to remove).
        Returns the session as now stored and its committed segments in offset order."""
        key = _upload_key(session.project, session.dataset_id, session.upload_id)
        try:
            with self.db.write() as conn:
                current = conn.execute(sa.select(uploads).where(*key).with_for_update()).first()
                if current is None:
                    conn.execute(uploads.insert().values(**{**session.__dict__, "attempt": 1, "committed_bytes": 0}))
                else:
                    values = {"attempt": current.attempt + 1, "expire_time": session.expire_time}
                    if restart:
                        conn.execute(parts.delete().where(*_part_key(session)))
                        values["committed_bytes"] = 0
                    conn.execute(uploads.update().where(*key).values(**values))
                row = conn.execute(sa.select(uploads).where(*key)).one()
                committed = conn.execute(sa.select(parts).where(*_part_key(session))
                                         .order_by(parts.c.start_offset)).all()
        except sa.exc.IntegrityError:  # another stream created the session at the same moment
            raise Aborted(f"another stream started upload {session.upload_id} at the same time; call "
                          "GetDatasetUpload and resume from its committed_bytes", "UPLOAD_CONFLICT") from None
        return _upload(row), [PartRow(p.start_offset, p.size_bytes, p.object_key) for p in committed]

    def commit_segment(self, session: UploadRow, part: PartRow, expire_time: datetime) -> bool:
        """Record a stored segment if this stream still owns the session and the segment follows the
        committed bytes (compare-and-set); False when another stream took over or the session is gone."""
        key = _upload_key(session.project, session.dataset_id, session.upload_id)
        with self.db.write() as conn:
            done = conn.execute(uploads.update().where(
                *key, uploads.c.state == ACTIVE, uploads.c.attempt == session.attempt,
                uploads.c.committed_bytes == part.start_offset)
                .values(committed_bytes=part.start_offset + part.size_bytes, expire_time=expire_time)).rowcount
            if done:
                conn.execute(parts.insert().values(project=session.project, dataset_id=session.dataset_id,
                                                   upload_id=session.upload_id, start_offset=part.start_offset,
                                                   size_bytes=part.size_bytes, object_key=part.object_key))
        return bool(done)

    def committed_segments(self, session: UploadRow) -> list[PartRow]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(parts).where(*_part_key(session)).order_by(parts.c.start_offset)).all()
        return [PartRow(p.start_offset, p.size_bytes, p.object_key) for p in rows]

    def mark_upload_succeeded(self, project: str, dataset_id: str, upload_id: str, version_id: str) -> None:
        with self.db.write() as conn:
            self._succeed_upload(conn, project, dataset_id, upload_id, version_id)

    @staticmethod
    def _succeed_upload(conn: sa.Connection, project: str, dataset_id: str, upload_id: str, version_id: str) -> None:
        key = _upload_key(project, dataset_id, upload_id)
        conn.execute(parts.delete().where(parts.c.project == project, parts.c.dataset_id == dataset_id,
                                          parts.c.upload_id == upload_id))
        conn.execute(uploads.update().where(*key).values(state=SUCCEEDED, version_id=version_id))

    def delete_upload(self, project: str, dataset_id: str, upload_id: str) -> None:
        """Forget the session (its staged objects are removed by the caller)."""
        with self.db.write() as conn:
            conn.execute(parts.delete().where(parts.c.project == project, parts.c.dataset_id == dataset_id,
                                              parts.c.upload_id == upload_id))
            conn.execute(uploads.delete().where(*_upload_key(project, dataset_id, upload_id)))

    def expired_uploads(self, now: datetime, limit: int = 1000) -> list[UploadRow]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(uploads).where(uploads.c.expire_time <= now)
                                .order_by(uploads.c.expire_time).limit(limit)).all()
        return [_upload(row) for row in rows]

    def delete_upload_if_expired(self, session: UploadRow, now: datetime) -> bool:
        """Delete an expired session unless a stream renewed it meanwhile."""
        key = _upload_key(session.project, session.dataset_id, session.upload_id)
        with self.db.write() as conn:
            expire = conn.execute(sa.select(uploads.c.expire_time).where(*key).with_for_update()).scalar()
            if expire is None or _utc(expire) > now:
                return False
            conn.execute(parts.delete().where(*_part_key(session)))
            conn.execute(uploads.delete().where(*key))
        return True

    # -- objects ----------------------------------------------------------------------------

    def put(self, key: str, data: bytes) -> None:
        self.objects.put_bytes(key, data)

    def read(self, key: str, offset: int = 0, chunk_size: int = READ_SIZE) -> Iterator[bytes]:
        return self.objects.get(key, offset, chunk_size)

    def download_url(self, key: str) -> str:
        return self.objects.download_url(key)

    def compose(self, key: str, sources: list[str]) -> None:
        """Server-side concatenation of `sources` into `key` (S3 multipart copy: every source but the last
        must be at least 5 MiB); the bytes never pass through this process."""
        self.objects.compose(sources, key)

    def remove(self, keys: Iterable[str]) -> None:
        self.objects.remove(keys)

    def remove_prefix(self, prefix: str) -> None:
        self.objects.remove_prefix(prefix)


def _upload_key(project: str, dataset_id: str, upload_id: str) -> tuple:
    return uploads.c.project == project, uploads.c.dataset_id == dataset_id, uploads.c.upload_id == upload_id


def _part_key(session: UploadRow) -> tuple:
    return (parts.c.project == session.project, parts.c.dataset_id == session.dataset_id,
            parts.c.upload_id == session.upload_id)


def _version(row) -> VersionRow:
    return VersionRow(row.project, row.dataset_id, row.version_id, row.seq, row.sha256, row.size_bytes, row.format,
                      row.description, dict(row.labels), row.statistics, row.report, row.object_key,
                      _utc(row.create_time))


def _upload(row) -> UploadRow:
    return UploadRow(row.project, row.dataset_id, row.upload_id, row.state, row.committed_bytes, row.attempt,
                     row.expected_sha256, row.format, row.description, dict(row.labels), row.version_id,
                     _utc(row.create_time), _utc(row.expire_time))
