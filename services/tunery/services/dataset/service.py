"""Dataset rules: names and authorization, validation while bytes stream, content-addressed immutable
versions, resumable upload sessions, quotas and limits. Raises kit errors; knows nothing of gRPC."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Callable, Iterator

import structlog

from tunery.client.validation import SEVERITY, Code, LimitExceeded, Limits, Report, Severity, Validator
from tunery.services.dataset.peers import TrainerPeer
from tunery.services.dataset.repository import (ACTIVE, SUCCEEDED, DatasetExists, DatasetRow, PartRow, Repository,
                                                UploadRow, VersionRow)
from tunery.services.kit import names, paging
from tunery.services.kit.auth import authorize
from tunery.services.kit.errors import (Aborted, AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument,
                                         NotFound, ResourceExhausted, TuneryError)
from tunery.services.kit.objects import DOWNLOAD_URL_TTL, download_chunk_size, read_ahead
from tunery.services.kit.paging import PageTokens
from tunery.services.kit.settings import Settings

log = structlog.get_logger("tunery.dataset")

DATASET = "projects/{project}/datasets/{dataset}"
VERSION = "projects/{project}/datasets/{dataset}/versions/{version}"
UPLOAD = "projects/{project}/datasets/{dataset}/uploads/{upload}"
UUID = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
VERSION_ID = r"[0-9a-f]{16}"
LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
SHA256 = re.compile(r"[0-9a-f]{64}")
MAX_DESCRIPTION = 2000
MAX_LABELS = 64
STREAM_SETTLE_S = 0.5  # how long a rejected upload waits to tell a cut stream from a complete one
MIN_SEGMENT_BYTES = 5 * 1024 * 1024  # S3 multipart copy: every part but the last is at least 5 MiB
MAX_VIOLATIONS = 100
# Issue codes that mean a configured limit was exceeded: an upload stops at the first one.
LIMIT_CODES = {Code.LINE_TOO_LONG: "max_line_bytes", Code.TOO_DEEP: "max_depth"}


@dataclass(frozen=True)
class UploadHeader:
    dataset: str
    request_id: str
    offset: int = 0
    format: str = ""  # "" = detect
    expected_sha256: str = ""
    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    size_bytes: int = 0  # of the whole file; 0 = not declared


@dataclass(frozen=True)
class Page:
    items: list
    next_page_token: str


def check_labels(labels: dict[str, str], field_name: str) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument.field(field_name, f"has {len(labels)} labels; at most {MAX_LABELS} are allowed")
    for key, value in labels.items():
        if not LABEL.fullmatch(key):
            raise InvalidArgument.field(f"{field_name}[{key!r}]", "label keys match [a-z][a-z0-9_-]{0,62}")
        if value and not LABEL.fullmatch(value):
            raise InvalidArgument.field(f"{field_name}[{key!r}]", "label values are empty or match "
                                                                  "[a-z][a-z0-9_-]{0,62}")
    return dict(labels)


def check_description(description: str, field_name: str) -> str:
    if len(description) > MAX_DESCRIPTION:
        raise InvalidArgument.field(field_name, f"has {len(description)} characters; at most {MAX_DESCRIPTION}")
    return description


def dataset_name(project: str, dataset_id: str) -> str:
    return f"projects/{project}/datasets/{dataset_id}"


def version_name(project: str, dataset_id: str, version_id: str) -> str:
    return f"{dataset_name(project, dataset_id)}/versions/{version_id}"


def _now() -> datetime:
    return datetime.now(timezone.utc)


class _Incoming:
    """The upload's bytes as they arrive, cut into segments; `take` sees every chunk once, before it is
    stored (validation, hashing and limits run while the previous segment is written)."""

    def __init__(self, chunks: Iterator[bytes], take: Callable[[bytes], None]) -> None:
        self._chunks = chunks
        self._take = take
        self._pending = b""
        self._done = False

    def more(self) -> bool:
        while not self._pending and not self._done:
            chunk = next(self._chunks, None)
            if chunk is None:
                self._done = True
            elif chunk:
                self._take(chunk)
                self._pending = chunk
        return bool(self._pending)

    def segment(self, size: int) -> list[bytes]:
        """The next (up to) `size` bytes, as the chunks they arrived in."""
        pieces, left = [], size
        while left and self.more():
            piece, self._pending = self._pending[:left], self._pending[left:]
            left -= len(piece)
            pieces.append(piece)
        return pieces


class DatasetService:
    def __init__(self, settings: Settings, repo: Repository, page_tokens: PageTokens, trainer: TrainerPeer) -> None:
        self.settings = settings
        self.repo = repo
        self.tokens = page_tokens
        self.trainer = trainer
        self.limits = Limits(max_line_bytes=settings.dataset_max_line_bytes,
                             max_file_bytes=settings.dataset_max_file_bytes,
                             max_examples=settings.dataset_max_examples, max_depth=settings.dataset_max_depth)
        self.segment_bytes = max(settings.dataset_upload_segment_bytes, MIN_SEGMENT_BYTES)
        self.ttl = timedelta(seconds=settings.dataset_upload_ttl_s)
        self.download_chunk = download_chunk_size(settings.max_message_bytes)

    # -- datasets ---------------------------------------------------------------------------

    def create_dataset(self, parent: str, dataset_id: str, description: str, labels: dict[str, str],
                       request_id: str) -> DatasetRow:
        project = names.parse(parent, "projects/{project}", field="parent")["project"]
        authorize(project)
        names.check_id(dataset_id, "dataset_id")
        if request_id and not re.fullmatch(UUID, request_id):
            raise InvalidArgument.field("request_id", "must be a UUID such as 0f3c1d2e-7a4b-4c5d-9e6f-8a7b6c5d4e3f")
        row = DatasetRow(project, dataset_id, check_description(description, "dataset.description"),
                         check_labels(labels, "dataset.labels"), _now())
        try:
            created, fresh = self.repo.create_dataset(row, request_id.lower())
        except DatasetExists:
            raise AlreadyExists(f"dataset {dataset_name(project, dataset_id)} already exists; pick another "
                                "dataset_id or upload a new version to it", "DATASET_EXISTS",
                                dataset=dataset_name(project, dataset_id)) from None
        if fresh:
            log.info("dataset.created", project=project, dataset=dataset_id)
        return created

    def get_dataset(self, name: str) -> DatasetRow:
        ids = self._dataset_ids(name, "name")
        return self._dataset(*ids)

    def list_datasets(self, parent: str, page_size: int, page_token: str) -> Page:
        project = names.parse(parent, "projects/{project}", field="parent")["project"]
        authorize(project)
        size = paging.page_size(page_size)
        query = {"rpc": "ListDatasets", "parent": parent}
        after = self.tokens.decode(page_token, query)
        rows = self.repo.list_datasets(project, after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        token = self.tokens.encode(rows[-1].dataset_id, query) if more else ""
        return Page(rows, token)

    def delete_dataset(self, name: str, force: bool, caller_authorization: str = "") -> None:
        project, dataset_id = self._dataset_ids(name, "name")
        dataset = self._dataset(project, dataset_id)
        version_ids = self.repo.version_ids(project, dataset_id)
        if version_ids and not force:
            raise FailedPrecondition(f"dataset {name} has {len(version_ids)} versions; delete them first or "
                                     "set force to delete them too", "DATASET_NOT_EMPTY", dataset=name)
        used = {}
        for version_id in version_ids:
            jobs = self.trainer.jobs_using(project, version_name(project, dataset_id, version_id),
                                           caller_authorization)
            if jobs:
                used[version_id] = jobs
        if used:
            listed = "; ".join(f"{version_name(project, dataset_id, v)} by {', '.join(j)}" for v, j in used.items())
            raise FailedPrecondition(f"dataset {name} cannot be deleted: training jobs used its versions ({listed}); "
                                     "their lineage must stay reproducible", "DATASET_VERSION_IN_USE", dataset=name,
                                     jobs=",".join(j for jobs in used.values() for j in jobs))
        # Objects first, rows last: a failure part-way leaves a dataset that a retry deletes completely,
        # never rows pointing at missing bytes nor bytes no row knows.
        self.repo.remove_prefix(self.repo.dataset_prefix(project, dataset_id))
        self.repo.delete_dataset(project, dataset_id)
        log.info("dataset.deleted", project=project, dataset=dataset.dataset_id, versions=len(version_ids))

    # -- versions ---------------------------------------------------------------------------

    def get_version(self, name: str) -> VersionRow:
        return self._version(*self._version_ids(name, "name"))

    def list_versions(self, parent: str, page_size: int, page_token: str) -> Page:
        project, dataset_id = self._dataset_ids(parent, "parent")
        self._dataset(project, dataset_id)
        size = paging.page_size(page_size)
        query = {"rpc": "ListDatasetVersions", "parent": parent}
        before = self.tokens.decode(page_token, query)
        if before is not None and type(before) is not int:
            raise InvalidArgument.field("page_token", "is not a token this server issued", "INVALID_PAGE_TOKEN")
        rows = self.repo.list_versions(project, dataset_id, before, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        return Page(rows, self.tokens.encode(rows[-1].seq, query) if more else "")

    def delete_version(self, name: str, caller_authorization: str = "") -> None:
        project, dataset_id, version_id = self._version_ids(name, "name")
        version = self._version(project, dataset_id, version_id)
        jobs = self.trainer.jobs_using(project, name, caller_authorization)
        if jobs:
            raise FailedPrecondition(f"dataset version {name} was used by training job(s) {', '.join(jobs)}; it "
                                     "stays so their lineage remains reproducible", "DATASET_VERSION_IN_USE",
                                     dataset_version=name, jobs=",".join(jobs))
        # Bytes first: a failure in between leaves a version a retry deletes, never an orphan object.
        self.repo.remove([version.object_key])
        self.repo.delete_version(project, dataset_id, version_id)
        log.info("dataset_version.deleted", project=project, dataset=dataset_id, version=version_id)

    def download(self, name: str) -> Iterator[bytes]:
        """The version's exact bytes; DATA_LOSS at the end when they no longer match the digest."""
        version = self.get_version(name)
        return self._verified(version)

    def download_url(self, name: str) -> tuple[VersionRow, str, datetime]:
        """The version, a presigned URL of its bytes and when that expires."""
        version = self.get_version(name)
        expire_time = _now() + DOWNLOAD_URL_TTL  # taken before signing: never later than the URL's own
        return version, self.repo.download_url(version.object_key), expire_time

    def _verified(self, version: VersionRow) -> Iterator[bytes]:
        digest, size = hashlib.sha256(), 0
        for chunk in read_ahead(self.repo.read(version.object_key, chunk_size=self.download_chunk)):
            digest.update(chunk)
            size += len(chunk)
            yield chunk
        if size != version.size_bytes or digest.hexdigest() != version.sha256:
            log.error("dataset_version.corrupt", project=version.project, dataset=version.dataset_id,
                      version=version.version_id, size=size)
            raise DataLoss(f"the stored bytes of dataset version {version.version_id} no longer match its sha256; "
                           "upload the file again", "DATASET_VERSION_CORRUPT")

    def list_examples(self, parent: str, page_size: int, page_token: str) -> tuple[VersionRow, Page]:
        """A page of (line number, parsed example) in file order."""
        project, dataset_id, version_id = self._version_ids(parent, "parent")
        version = self._version(project, dataset_id, version_id)
        size = paging.page_size(page_size)
        query = {"rpc": "ListDatasetExamples", "parent": parent}
        position = self.tokens.decode(page_token, query) or [0, 0]
        if not (isinstance(position, list) and len(position) == 2 and all(type(p) is int for p in position)):
            raise InvalidArgument.field("page_token", "is not a token this server issued", "INVALID_PAGE_TOKEN")
        offset, line_no = position
        budget = self.settings.max_message_bytes // 2  # keep the response under the message limit
        examples: list[tuple[int, dict]] = []
        for start, raw in _lines(self.repo.read(version.object_key, offset), offset):
            line_no += 1
            if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            if not raw.strip(b" \t\r"):
                continue
            if len(examples) == size or (examples and budget - len(raw) < 0):
                return version, Page(examples, self.tokens.encode([start, line_no - 1], query))
            budget -= len(raw)
            examples.append((line_no, json.loads(raw)))
        return version, Page(examples, "")

    # -- uploads ----------------------------------------------------------------------------

    def get_upload(self, name: str) -> UploadRow:
        ids = names.parse(name, UPLOAD, field="name", upload=UUID)
        authorize(ids["project"])
        session = self.repo.get_upload(ids["project"], ids["dataset"], ids["upload"].lower())
        if session is None or self._expire_if_due(session):
            raise NotFound(f"upload {name} does not exist (never started, rejected, or expired); start it again "
                           "at offset 0", "DATASET_UPLOAD_NOT_FOUND", upload=name)
        return session

    def upload(self, header: UploadHeader, chunks: Iterator[bytes],
               check_stream: Callable[[float], None]) -> tuple[VersionRow, bool]:
        """Receive one upload stream: validate + hash + stage as the bytes arrive, then create the version
        (or return the existing one with the same bytes). `check_stream(settle_s)` raises if the stream was
        broken rather than complete, waiting up to settle_s for a cancellation to show; it runs once every
        byte is received. See the proto for the session rules."""
        project, dataset_id = self._dataset_ids(header.dataset, "header.dataset")
        upload_id = self._check_header(header)
        self._dataset(project, dataset_id)
        session = self.repo.get_upload(project, dataset_id, upload_id)
        if session is not None and self._expire_if_due(session):
            session = None
        if session is not None and session.state == SUCCEEDED:
            return self._replayed(session), False
        committed = session.committed_bytes if session else 0
        if header.offset not in (0, committed):
            raise FailedPrecondition(f"header.offset {header.offset} does not continue upload {upload_id}: its "
                                     f"committed_bytes is {committed}; resume at {committed} or restart at 0",
                                     "UPLOAD_OFFSET_MISMATCH", committed_bytes=committed)
        if session is not None and (session.format, session.expected_sha256, session.description,
                                    session.labels) != (header.format, header.expected_sha256, header.description,
                                                        header.labels):
            raise FailedPrecondition(f"upload {upload_id} was started with another header (format, expected_sha256, "
                                     "description or labels); resend the same header or use a new request_id",
                                     "UPLOAD_HEADER_MISMATCH")
        now = _now()
        session, committed_parts = self.repo.start_upload(UploadRow(
            project, dataset_id, upload_id, ACTIVE, 0, 0, header.expected_sha256, header.format, header.description,
            header.labels, None, now, now + self.ttl), restart=header.offset == 0)
        if header.offset == 0 and session.attempt > 1:
            # A restart: committed segments were dropped; remove every staged object (older attempts' too).
            self.repo.remove_prefix(self.repo.upload_prefix(project, dataset_id, upload_id))
        try:
            report, staged, tail = self._receive(session, committed_parts, chunks)
            check_stream(0.0)
            try:
                self._check_size(session, report, header)
                self._check_report(report, header)
            except TuneryError:
                # gRPC can end a cut stream as if it were complete, the cancellation showing a moment later,
                # and a cut ending is likelier to be rejected (size, sha256, a half line) than a whole one:
                # give it that moment before rejecting, so a cut keeps its resumable session.
                check_stream(STREAM_SETTLE_S)
                raise
        except LimitExceeded as error:
            self._discard(session)
            raise self.limit_exceeded(error) from None
        except (InvalidArgument, ResourceExhausted):
            self._discard(session)
            raise
        return self._store(session, report, staged, tail, header)

    def _check_header(self, header: UploadHeader) -> str:
        if not re.fullmatch(UUID, header.request_id or ""):
            raise InvalidArgument.field("header.request_id", "must be a UUID such as "
                                        "0f3c1d2e-7a4b-4c5d-9e6f-8a7b6c5d4e3f (it names the upload session)")
        if header.offset < 0:
            raise InvalidArgument.field("header.offset", "must not be negative")
        if header.size_bytes < 0:
            raise InvalidArgument.field("header.size_bytes", "must not be negative")
        if header.expected_sha256 and not SHA256.fullmatch(header.expected_sha256):
            raise InvalidArgument.field("header.expected_sha256", "must be 64 lowercase hex characters")
        check_description(header.description, "header.description")
        check_labels(header.labels, "header.labels")
        return header.request_id.lower()

    def _receive(self, session: UploadRow, committed: list[PartRow],
                 chunks: Iterator[bytes]) -> tuple[Report, list[PartRow], bytes | None]:
        """Feed committed segments (read back from the store, not resent) and then the new bytes through one
        validator, storing and committing the new bytes segment by segment. Returns the report, the committed
        segments and the bytes of a last, short segment (None when the file ends on a segment boundary).

        The short last segment is stored only once the upload is known complete and valid (`_store`): a cut
        stream can look ended, and a short part mid-file would make the session's segments impossible to
        compose (S3 wants 5 MiB for every part but the last). A file of one segment, as most datasets are,
        is then stored once, at its version key, with nothing staged."""
        validator = Validator(self.limits, session.format or None)
        quota = self.settings.quota_stored_bytes
        used = self.repo.stored_bytes(session.project) if quota else 0

        def take(chunk: bytes) -> None:
            for issue in validator.feed(chunk):
                if issue.code in LIMIT_CODES:
                    raise self._limit_error(issue.code, issue.line)
            if quota and used + validator.size_bytes > quota:
                raise self._quota_error(session.project, used, quota)

        for part in committed:
            for chunk in self.repo.read(part.object_key):
                take(chunk)
        staged = list(committed)
        offset = session.committed_bytes
        incoming = _Incoming(chunks, take)
        # One segment is stored and committed by the writer while the next one is received and validated
        # (hashing and sockets release the GIL). Leaving the block waits for the writer, so a failed stream
        # still commits the segments it completed and never leaves a write behind.
        with ThreadPoolExecutor(1, thread_name_prefix="dataset-segment-writer") as writer:
            writing: Future[PartRow] | None = None
            tail = None
            while incoming.more():
                pieces = incoming.segment(self.segment_bytes)
                if writing is not None:
                    staged.append(writing.result())
                    writing = None
                size = sum(map(len, pieces))
                if size < self.segment_bytes:  # the stream ended
                    tail = b"".join(pieces)
                    break
                writing = writer.submit(self._stage, session, offset, pieces)
                offset += size
            if writing is not None:
                staged.append(writing.result())
        return validator.finish(), staged, tail

    def _stage(self, session: UploadRow, offset: int, pieces: list[bytes]) -> PartRow:
        """Store one full segment (its pieces are dropped once joined) and commit it to the session."""
        data = b"".join(pieces)
        pieces.clear()
        part = self._put_part(session, offset, data)
        if not self.repo.commit_segment(session, part, _now() + self.ttl):
            self.repo.remove([part.object_key])
            raise Aborted(f"upload {session.upload_id} was taken over by another stream (or expired); call "
                          "GetDatasetUpload and resume from its committed_bytes", "UPLOAD_CONFLICT")
        return part

    def _put_part(self, session: UploadRow, offset: int, data: bytes) -> PartRow:
        key = self.repo.segment_key(session.project, session.dataset_id, session.upload_id, offset, session.attempt)
        self.repo.put(key, data)
        return PartRow(offset, len(data), key)

    def _check_size(self, session: UploadRow, report: Report, header: UploadHeader) -> None:
        """Against the declared file size: fewer bytes is a stream that ended early (the session stays to
        be resumed), more is a different file."""
        if not header.size_bytes or report.size_bytes == header.size_bytes:
            return
        if report.size_bytes > header.size_bytes:
            raise InvalidArgument.field("header.size_bytes", f"declares {header.size_bytes} bytes but the upload "
                                        f"carried {report.size_bytes}", "UPLOAD_SIZE_MISMATCH")
        committed = self.repo.get_upload(session.project, session.dataset_id, session.upload_id).committed_bytes
        raise FailedPrecondition(f"upload {session.upload_id} ended at byte {report.size_bytes} of the "
                                 f"{header.size_bytes} in header.size_bytes; resume at its committed_bytes "
                                 f"{committed}", "UPLOAD_INCOMPLETE", committed_bytes=committed)

    def _check_report(self, report: Report, header: UploadHeader) -> None:
        if header.expected_sha256 and report.sha256 != header.expected_sha256:
            raise InvalidArgument(f"the uploaded bytes ({report.size_bytes} bytes) have sha256 {report.sha256}, not "
                                  f"the expected {header.expected_sha256}; the file changed or was corrupted on the "
                                  "way, upload it again", "SHA256_MISMATCH",
                                  [("header.expected_sha256", f"received bytes hash to {report.sha256}")],
                                  actual_sha256=report.sha256)
        for code in LIMIT_CODES:  # issues beyond the report cap are only in the counts
            if report.issue_counts.get(str(code)):
                line = next((i.line for i in report.issues if i.code == code), 0)
                raise self._limit_error(code, line)
        if report.ok:
            return
        errors = [i for i in report.issues if i.severity is Severity.ERROR]
        error_codes = sorted(c for c, n in report.issue_counts.items() if n and SEVERITY[Code(c)] is Severity.ERROR)
        first = errors[0] if errors else None
        violations = [(f"line {i.line}: {i.path}" if i.path else (f"line {i.line}" if i.line else "file"),
                       f"{i.code}: {i.message}") for i in errors[:MAX_VIOLATIONS]]
        counts = ", ".join(f"{c}={report.issue_counts[c]}" for c in error_codes)
        where = f"line {first.line}: {first.message}" if first and first.line else (first.message if first else "")
        raise InvalidArgument(f"the file has {report.errors} validation error(s) ({counts}); first: {where}. Fix them "
                              "(ValidateDataset lists every issue) and upload again",
                              error_codes[0].upper() if len(error_codes) == 1 else "DATASET_INVALID", violations,
                              error_count=report.errors, codes=",".join(error_codes))

    def _store(self, session: UploadRow, report: Report, staged: list[PartRow], tail: bytes | None,
               header: UploadHeader) -> tuple[VersionRow, bool]:
        project, dataset_id = session.project, session.dataset_id
        version_id = report.sha256[:16]
        # Nothing is staged under the session's prefix when this stream committed no segment and is its
        # first (a restart at offset 0 makes another attempt; a resumed stream has committed segments).
        prefix = self.repo.upload_prefix(project, dataset_id, session.upload_id) \
            if staged or session.attempt > 1 else None
        existing = self.repo.get_version(project, dataset_id, version_id)
        if existing is not None:
            if existing.sha256 != report.sha256:
                self._discard(session)
                raise FailedPrecondition(f"version id {version_id} is taken by different bytes (sha256 "
                                         f"{existing.sha256}); change the file trivially to get another id",
                                         "VERSION_ID_COLLISION")
            # Same bytes: the existing version, no second object.
            self.repo.mark_upload_succeeded(project, dataset_id, session.upload_id, version_id)
            self._remove_quietly(prefix)
            return existing, False
        key = self.repo.version_key(project, dataset_id, report.sha256)
        if not staged:  # the whole file is one short segment
            self.repo.put(key, tail or b"")
        else:
            if tail:
                end = staged[-1].start_offset + staged[-1].size_bytes
                staged = [*staged, self._put_part(session, end, tail)]
            self.repo.compose(key, [part.object_key for part in staged])
        row = VersionRow(project, dataset_id, version_id, 0, report.sha256, report.size_bytes, str(report.format),
                         header.description, header.labels, asdict(report.stats), report_record(report), key, _now())
        try:
            version, created = self.repo.create_version(row, session.upload_id)
        except Exception:
            self._remove_unreferenced(key, project, dataset_id, version_id)
            raise
        self._remove_quietly(prefix)
        if created:
            log.info("dataset_version.created", project=project, dataset=dataset_id, version=version_id,
                     size_bytes=report.size_bytes, examples=report.stats.examples, warnings=report.warnings)
        return version, created

    def _remove_unreferenced(self, key: str, project: str, dataset_id: str, version_id: str) -> None:
        """After a failed insert: remove the composed object unless a version (a concurrent upload of the same
        bytes) refers to it. Failures are logged; the original error is what the caller sees."""
        try:
            if self.repo.get_version(project, dataset_id, version_id) is None:
                self.repo.remove([key])
        except Exception:  # noqa: BLE001 - the store or database is down; the insert's error is raised
            log.warning("dataset_version.cleanup_failed", key=key, exc_info=True)

    def _replayed(self, session: UploadRow) -> VersionRow:
        version = self.repo.get_version(session.project, session.dataset_id, session.version_id or "")
        if version is None:
            raise NotFound(f"upload {session.upload_id} finished as version {session.version_id}, which was deleted "
                           "since; upload again with a new request_id", "DATASET_VERSION_NOT_FOUND")
        return version

    def _discard(self, session: UploadRow) -> None:
        """A rejected upload leaves nothing: no session, no staged object."""
        self.repo.delete_upload(session.project, session.dataset_id, session.upload_id)
        self.repo.remove_prefix(self.repo.upload_prefix(session.project, session.dataset_id, session.upload_id))

    def _remove_quietly(self, prefix: str | None) -> None:
        """Staged segments of a finished upload (None: there are none); a failure leaves them to the expiry
        sweep."""
        if prefix is None:
            return
        try:
            self.repo.remove_prefix(prefix)
        except TuneryError as error:
            log.warning("dataset_upload.cleanup_failed", prefix=prefix, error=error.message)

    def _limit_error(self, code: Code, line: int) -> ResourceExhausted:
        limit = LIMIT_CODES[code]
        value = getattr(self.limits, limit)
        what = "bytes" if limit == "max_line_bytes" else "levels of JSON nesting"
        message = (f"line {line} exceeds {limit}={value} {what} (setting TUNERY_DATASET_{limit.upper()}); "
                   "shorten that example or raise the limit")
        return ResourceExhausted(message, "DATASET_LIMIT_EXCEEDED", [(f"dataset_{limit}", message)],
                                 limit=limit, value=value, line=line)

    @staticmethod
    def _quota_error(project: str, used: int, quota: int) -> ResourceExhausted:
        message = (f"project {project} stores {used} bytes of dataset versions; this upload would exceed its "
                   f"quota of {quota} bytes. Delete unused versions or ask for a larger quota")
        return ResourceExhausted(message, "STORED_BYTES_QUOTA_EXCEEDED",
                                 [(f"projects/{project}", f"stored bytes quota {quota}")], quota=quota, used=used)

    # -- expiry -----------------------------------------------------------------------------

    def _expire_if_due(self, session: UploadRow, now: datetime | None = None) -> bool:
        """Discard an expired session with its staged bytes; True if it was expired."""
        now = now or _now()
        if session.expire_time > now:
            return False
        if self.repo.delete_upload_if_expired(session, now):
            self.repo.remove_prefix(self.repo.upload_prefix(session.project, session.dataset_id, session.upload_id))
            log.info("dataset_upload.expired", project=session.project, dataset=session.dataset_id,
                     upload=session.upload_id, committed_bytes=session.committed_bytes)
        return True

    def sweep_uploads(self, now: datetime | None = None) -> int:
        """Discard every expired upload session and its staged bytes; returns how many."""
        now = now or _now()
        expired = self.repo.expired_uploads(now)
        for session in expired:
            self._expire_if_due(session, now)
        return len(expired)

    def start_sweeper(self, interval_s: float) -> Callable[[], None]:
        """A daemon thread sweeping expired uploads; returns its stop function."""
        stop = threading.Event()

        def run() -> None:
            while not stop.wait(interval_s):
                try:
                    self.sweep_uploads()
                except Exception:  # noqa: BLE001 - a failed sweep (store or DB down) is retried next time
                    log.warning("dataset_upload.sweep_failed", exc_info=True)

        threading.Thread(target=run, name="dataset-upload-sweeper", daemon=True).start()
        return stop.set

    # -- helpers ----------------------------------------------------------------------------

    def validator(self, parent: str, format: str) -> Validator:
        """A validator for ValidateDataset (authorized for `parent`)."""
        project = names.parse(parent, "projects/{project}", field="header.parent")["project"]
        authorize(project)
        return Validator(self.limits, format or None)

    @staticmethod
    def limit_exceeded(error: LimitExceeded) -> ResourceExhausted:
        return ResourceExhausted(str(error), "DATASET_LIMIT_EXCEEDED", [(f"dataset_{error.limit_name}", str(error))],
                                 limit=error.limit_name, value=error.limit)

    def _dataset_ids(self, name: str, field_name: str) -> tuple[str, str]:
        ids = names.parse(name, DATASET, field=field_name)
        authorize(ids["project"])
        return ids["project"], ids["dataset"]

    def _version_ids(self, name: str, field_name: str) -> tuple[str, str, str]:
        ids = names.parse(name, VERSION, field=field_name, version=VERSION_ID)
        authorize(ids["project"])
        return ids["project"], ids["dataset"], ids["version"]

    def _dataset(self, project: str, dataset_id: str) -> DatasetRow:
        row = self.repo.get_dataset(project, dataset_id)
        if row is None:
            name = dataset_name(project, dataset_id)
            raise NotFound(f"dataset {name} does not exist; create it first", "DATASET_NOT_FOUND", dataset=name)
        return row

    def _version(self, project: str, dataset_id: str, version_id: str) -> VersionRow:
        row = self.repo.get_version(project, dataset_id, version_id)
        if row is None:
            name = version_name(project, dataset_id, version_id)
            raise NotFound(f"dataset version {name} does not exist", "DATASET_VERSION_NOT_FOUND",
                           dataset_version=name)
        return row


def report_record(report: Report) -> dict:
    """The stored form of a version's validation report (warnings only, since errors block versions)."""
    return {
        "format": str(report.format) if report.format else "",
        "example_count": report.stats.examples + report.stats.invalid_examples,
        "valid_example_count": report.stats.examples,
        "error_count": report.errors,
        "warning_count": report.warnings,
        "issue_counts": dict(report.issue_counts),
        "truncated": report.truncated,
        "issues": [issue.to_dict() for issue in report.issues],
    }


def _lines(chunks: Iterator[bytes], offset: int) -> Iterator[tuple[int, bytes]]:
    """(start offset, line without its newline) from a byte stream that starts at `offset`."""
    pending = b""
    start = offset
    try:
        for chunk in chunks:
            data = pending + chunk
            pos = 0
            while (newline := data.find(b"\n", pos)) >= 0:
                yield start, data[pos:newline]
                start += newline - pos + 1
                pos = newline + 1
            pending = data[pos:]
        if pending:
            yield start, pending
    finally:
        close = getattr(chunks, "close", None)
        if close:
            close()
