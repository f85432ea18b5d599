"""The registry's rules: what a model, a version and its files must look like, how a version comes to exist
(all files verified, then numbered in one transaction), and how files go back out (verified while streaming).
Raises kit errors only; the servicer translates protos, the repository stores."""

from __future__ import annotations

import hashlib
import math
import re
import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Iterable, Iterator

import structlog

from tunery.services.kit import names
from tunery.services.kit.errors import DataLoss, InvalidArgument, NotFound, ResourceExhausted, TuneryError
from tunery.services.kit.objects import DOWNLOAD_URL_TTL, download_chunk_size, read_ahead
from tunery.services.kit.settings import Settings
from tunery.services.registry import adapter_checks
from tunery.services.registry.adapter_checks import FileCheck, FileResult, Limits
from tunery.services.registry.repository import (FileEntry, ModelRecord, NewVersion, Replayed, Repository,
                                                 VersionRecord, quota_exceeded)

log = structlog.get_logger("tunery.registry")

MAX_CHUNK_BYTES = 4 * 1024 * 1024
MAX_DESCRIPTION = 2000
MAX_LABELS = 64
MAX_LINEAGE_JSON = 256 * 1024
LABEL = re.compile(r"[a-z][a-z0-9_-]{0,62}")
LABEL_VALUE = re.compile(r"([a-z][a-z0-9_-]{0,62})?")
# Catalog ids ("smollm2-135m-instruct") and hub ids ("org/name").
BASE_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?")
SHA256 = re.compile(r"[0-9a-f]{64}")
UPDATABLE = ("description", "labels")
JOB = r"job-[0-9a-f]{12}"
DATASET_VERSION = r"[0-9a-f]{16}"


@dataclass
class VersionInput:
    """What a caller says about a new version (lineage in the JSON form of tunery.registry.v1.Lineage)."""

    description: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    lineage: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""


@dataclass
class IncomingFile:
    """The file message that starts a file of an upload; its chunks follow as bytes."""

    path: str
    size_bytes: int
    sha256: str


@dataclass
class StagedFile:
    path: str
    bucket: str
    key: str
    size_bytes: int
    sha256: str


def check_description(value: str, field_name: str) -> str:
    if len(value) > MAX_DESCRIPTION:
        raise InvalidArgument.field(field_name, f"has {len(value)} characters; at most {MAX_DESCRIPTION}")
    return value


def check_labels(labels: dict[str, str], field_name: str) -> dict[str, str]:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument.field(field_name, f"has {len(labels)} labels; at most {MAX_LABELS}")
    for key, value in labels.items():
        if not LABEL.fullmatch(key) or not LABEL_VALUE.fullmatch(value):
            raise InvalidArgument.field(f"{field_name}[{key!r}]", "keys and values must match [a-z][a-z0-9_-]{0,62} "
                                                                  "(values may be empty)", "INVALID_LABEL")
    return dict(labels)


def check_request_id(value: str, field_name: str = "request_id") -> str | None:
    if not value:
        return None
    try:
        if len(value) != 36:
            raise ValueError
        uuid.UUID(value)
    except ValueError:
        raise InvalidArgument.field(field_name, "must be a UUID such as 0f3c1d2e-7a4b-4c5d-9e6f-8a7b6c5d4e3f") from None
    return value


def check_update_mask(paths: list[str], field_name: str = "update_mask.paths") -> list[str]:
    if not paths:
        raise InvalidArgument.field(field_name, f"is required: name the fields to change ({', '.join(UPDATABLE)})")
    for path in paths:
        if path not in UPDATABLE:
            raise InvalidArgument.field(field_name, f"{path!r} cannot be changed; only {', '.join(UPDATABLE)} can")
    return paths


def _dataset_sha(ref: dict[str, Any], field_name: str) -> str:
    """Validates a DatasetVersionRef (JSON form); returns its digest ('' when unset)."""
    if not ref:
        return ""
    names.parse(ref.get("name", ""), "projects/{project}/datasets/{dataset}/versions/{version}",
                field=f"{field_name}.name", version=DATASET_VERSION)
    if not SHA256.fullmatch(ref.get("sha256", "")):
        raise InvalidArgument.field(f"{field_name}.sha256", "must be 64 lower-case hex characters", "INVALID_DIGEST")
    return ref["sha256"]


class RegistryService:
    def __init__(self, repository: Repository, settings: Settings) -> None:
        self.repo = repository
        self.settings = settings
        self.limits = Limits(settings.registry_max_header_bytes, settings.registry_max_json_bytes)
        self.download_chunk = download_chunk_size(settings.max_message_bytes)

    # ---- models ---------------------------------------------------------------------------------------------

    def create_model(self, project: str, model_id: str, base_model: str, description: str, labels: dict[str, str],
                     request_id: str) -> ModelRecord:
        names.check_id(model_id, "model_id")
        if not BASE_MODEL.fullmatch(base_model or ""):
            raise InvalidArgument.field("model.base_model", f"{base_model!r} is not a base model id: use a catalog "
                                                            f"id (smollm2-135m-instruct) or a hub id (org/name)")
        model = self.repo.create_model(project, model_id, base_model,
                                       check_description(description, "model.description"),
                                       check_labels(labels, "model.labels"), check_request_id(request_id))
        log.info("model.created", project=project, model=model_id, base_model=base_model)
        return model

    def update_model(self, project: str, model_id: str, paths: list[str], description: str,
                     labels: dict[str, str], etag: str) -> ModelRecord:
        values: dict[str, Any] = {}
        for path in check_update_mask(paths):
            values[path] = (check_description(description, "model.description") if path == "description"
                            else check_labels(labels, "model.labels"))
        return self.repo.update_model(project, model_id, values, etag)

    def delete_model(self, project: str, model_id: str, force: bool) -> None:
        for prefix in self.repo.delete_model(project, model_id, force):
            self._remove_or_sweep(project, prefix)
        log.info("model.deleted", project=project, model=model_id, force=force)

    # ---- versions: metadata ---------------------------------------------------------------------------------

    def update_version(self, project: str, model_id: str, ref: str, paths: list[str], description: str,
                       labels: dict[str, str], etag: str) -> VersionRecord:
        values: dict[str, Any] = {}
        for path in check_update_mask(paths):
            values[path] = (check_description(description, "model_version.description") if path == "description"
                            else check_labels(labels, "model_version.labels"))
        return self.repo.update_version(project, model_id, ref, values, etag)

    def delete_version(self, project: str, model_id: str, ref: str) -> None:
        prefix = self.repo.delete_version(project, model_id, ref)
        self._remove_or_sweep(project, prefix)
        log.info("model_version.deleted", project=project, model=model_id, version=ref)

    def _remove_or_sweep(self, project: str, prefix: str) -> None:
        try:
            self.repo.remove_prefix(prefix)
        except TuneryError:
            log.warning("model_version.objects_left_for_sweep", prefix=prefix)
            self.repo.sweep_later(project, prefix)

    # ---- versions: creation ---------------------------------------------------------------------------------

    def _prepare(self, project: str, model_id: str, meta: VersionInput, prefix: str) -> tuple[str, NewVersion]:
        """Checks the caller's metadata; returns the model's base model and the version-to-be (no files yet)."""
        base = self.repo.model_base(project, model_id)
        lineage = dict(meta.lineage)
        where = f"{prefix}model_version.lineage"
        base_ref = dict(lineage.get("base_model") or {})
        if base_ref.get("id", base) != base:
            raise InvalidArgument.field(f"{where}.base_model.id", f"is {base_ref['id']!r} but the model adapts "
                                                                  f"{base!r}", "BASE_MODEL_MISMATCH")
        base_ref["id"] = base
        if base_ref.get("weights_sha256") and not SHA256.fullmatch(base_ref["weights_sha256"]):
            raise InvalidArgument.field(f"{where}.base_model.weights_sha256", "must be 64 lower-case hex characters",
                                        "INVALID_DIGEST")
        lineage["base_model"] = base_ref
        job = lineage.get("training_job", "")
        if job:
            names.parse(job, "projects/{project}/trainingJobs/{job}", field=f"{where}.training_job", job=JOB)
        train_sha = _dataset_sha(lineage.get("training_data") or {}, f"{where}.training_data")
        valid_sha = _dataset_sha(lineage.get("validation_data") or {}, f"{where}.validation_data")
        for metric, value in (lineage.get("metrics") or {}).items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                raise InvalidArgument.field(f"{where}.metrics[{metric!r}]", "must be a finite number")
        if len(repr(lineage)) > MAX_LINEAGE_JSON:
            raise InvalidArgument.field(where, f"is larger than {MAX_LINEAGE_JSON} bytes")
        return base, NewVersion(
            description=check_description(meta.description, f"{prefix}model_version.description"),
            labels=check_labels(meta.labels, f"{prefix}model_version.labels"), files=[], lineage=lineage,
            training_job=job, training_data_sha256=train_sha, validation_data_sha256=valid_sha, object_prefix="",
            request_id=check_request_id(meta.request_id, f"{prefix}request_id"))

    def _replay(self, project: str, model_id: str, new: NewVersion) -> VersionRecord | None:
        return self.repo.version_by_request(project, model_id, new.request_id) if new.request_id else None

    def upload_version(self, project: str, model_id: str, meta: VersionInput,
                       stream: Iterable[IncomingFile | bytes]) -> VersionRecord:
        """A version from a client stream: each file is checked and hashed as its chunks are written to the
        object store; nothing is left behind when anything fails."""
        base, new = self._prepare(project, model_id, meta, "header.")
        if replayed := self._replay(project, model_id, new):
            return replayed
        budget = _Budget(self, project)
        items = iter(stream)
        upcoming: list[IncomingFile | bytes | None] = [next(items, None)]

        def files() -> Iterator[tuple[IncomingFile, str, Callable[[], Iterator[bytes]]]]:
            index = 0
            while (item := upcoming[0]) is not None:
                if not isinstance(item, IncomingFile):
                    raise InvalidArgument.field("chunk", "bytes arrived before a file message named their file",
                                                "UNEXPECTED_CHUNK")

                def chunks() -> Iterator[bytes]:
                    """This file's chunks; stops at the next file message and leaves it in `upcoming`."""
                    for piece in items:
                        if not isinstance(piece, bytes):
                            upcoming[0] = piece
                            return
                        if len(piece) > MAX_CHUNK_BYTES:
                            raise InvalidArgument.field("chunk", f"{len(piece)} bytes; at most {MAX_CHUNK_BYTES} "
                                                                 f"per message")
                        yield piece
                    upcoming[0] = None
                yield item, f"files[{index}]", chunks
                index += 1

        return self._store(project, model_id, base, new, lambda prefix: self._upload_files(prefix, files(), budget))

    def _upload_files(self, prefix: str, files: Iterator[tuple[IncomingFile, str, Callable[[], Iterator[bytes]]]],
                      budget: "_Budget") -> list[tuple[FileEntry, FileResult, str]]:
        stored = []
        for incoming, where, chunks in files:
            entry, check = budget.admit(incoming.path, incoming.size_bytes, incoming.sha256, where)
            digest = hashlib.sha256()

            def verified(source: Iterator[bytes]) -> Iterator[bytes]:
                for piece in source:
                    check.feed(piece)
                    digest.update(piece)
                    yield piece
            self.repo.put(prefix + entry.path, verified(chunks()), entry.media_type)
            stored.append((entry, _finish(check, digest, entry, where), where))
        return stored

    def create_version(self, project: str, model_id: str, meta: VersionInput,
                       staged: list[StagedFile]) -> VersionRecord:
        """A version from files the trainer staged under trainer/projects/{project}/: each is copied under the
        registry's prefix (server side), then the copy is read back and verified, so what is recorded is
        exactly what was checked."""
        base, new = self._prepare(project, model_id, meta, "")
        if replayed := self._replay(project, model_id, new):
            return replayed
        budget = _Budget(self, project)
        admitted = []
        for index, file in enumerate(staged):
            where = f"files[{index}]"
            entry, check = budget.admit(file.path, file.size_bytes, file.sha256, where)
            admitted.append((entry, check, where, self._staged_key(project, file, where)))

        def copy_and_verify(prefix: str) -> list[tuple[FileEntry, FileResult, str]]:
            stored = []
            for entry, check, where, source in admitted:
                try:
                    size = self.repo.size(source)
                except NotFound:
                    raise NotFound(f"{where}: staged object {source!r} does not exist", "STAGED_OBJECT_NOT_FOUND",
                                   field=where) from None
                if size != entry.size_bytes:
                    raise InvalidArgument.field(f"{where}.size_bytes", f"{entry.path}: the staged object holds "
                                                f"{size} bytes, not {entry.size_bytes}", "SIZE_MISMATCH")
                self.repo.copy(source, prefix + entry.path)
                digest = hashlib.sha256()
                for piece in self.repo.read(prefix + entry.path):
                    check.feed(piece)
                    digest.update(piece)
                stored.append((entry, _finish(check, digest, entry, where), where))
            return stored

        return self._store(project, model_id, base, new, copy_and_verify)

    def _staged_key(self, project: str, file: StagedFile, where: str) -> str:
        """Only the trainer's objects of the caller's own project may become a version."""
        if file.bucket != self.settings.s3_bucket:
            raise InvalidArgument.field(f"{where}.object.bucket", f"must be {self.settings.s3_bucket!r}, the bucket "
                                                                  f"Tunery stores objects in", "FOREIGN_OBJECT")
        key, allowed = file.key, f"trainer/projects/{project}/"
        if (not key.startswith(allowed) or key.endswith("/") or len(key) > 1024
                or any(part in ("", ".", "..") for part in key.split("/")) or "\\" in key or "\x00" in key):
            raise InvalidArgument.field(f"{where}.object.key", f"{key!r} is not a staged file of this project: keys "
                                                               f"must be plain paths under {allowed}", "FOREIGN_OBJECT")
        return key

    def _store(self, project: str, model_id: str, base: str, new: NewVersion,
               write: Callable[[str], list[tuple[FileEntry, FileResult, str]]]) -> VersionRecord:
        """Runs `write` into a fresh prefix, checks the adapter as a whole and records the version; removes
        every object written when anything fails."""
        prefix = self.repo.begin_upload(project, model_id)
        try:
            stored = write(prefix)
            adapter_checks.check_adapter({e.path: r for e, r, _ in stored}, base, {e.path: w for e, _, w in stored})
            new.files = sorted((e for e, _, _ in stored), key=lambda e: e.path)
            new.object_prefix = prefix
            version = self.repo.add_version(project, model_id, new, self.settings.quota_stored_bytes)
        except Replayed as replay:
            self._abandon(prefix)
            return replay.version
        except BaseException:
            self._abandon(prefix)
            raise
        log.info("model_version.created", project=project, model=model_id, version=version.version,
                 files=len(new.files), bytes=new.total_bytes, training_job=new.training_job or None)
        return version

    def _abandon(self, prefix: str) -> None:
        try:
            self.repo.abandon_upload(prefix)
        except Exception:  # noqa: BLE001 - the pending record stays; the sweeper retries
            log.warning("model_version.upload_cleanup_failed", prefix=prefix)

    def sweep(self) -> int:
        """Removes the objects of uploads that never finished; returns how many were swept."""
        swept = 0
        for prefix in self.repo.stale_uploads(self.settings.registry_upload_ttl_s):
            try:
                self.repo.abandon_upload(prefix)
                swept += 1
            except Exception:  # noqa: BLE001 - try again next round
                log.warning("model_version.sweep_failed", prefix=prefix)
        if swept:
            log.info("model_version.swept", uploads=swept)
        return swept

    def start_sweeper(self, interval_s: float) -> Callable[[], None]:
        """Sweeps now and every `interval_s` on a daemon thread; returns the function that stops it."""
        stop = threading.Event()

        def loop() -> None:
            while True:
                try:
                    self.sweep()
                except Exception:  # noqa: BLE001 - database down: try again next round
                    log.warning("model_version.sweep_failed")
                if stop.wait(interval_s):
                    return
        thread = threading.Thread(target=loop, name="registry-sweeper", daemon=True)
        thread.start()
        return stop.set

    # ---- download -------------------------------------------------------------------------------------------

    def download_urls(self, project: str, model_id: str, ref: str) -> tuple[list[tuple[FileEntry, str]], datetime]:
        """Each file's entry with a presigned URL of its bytes, and when the URLs expire."""
        version = self.repo.get_version(project, model_id, ref)
        expire_time = datetime.now(timezone.utc) + DOWNLOAD_URL_TTL  # taken before signing
        return [(entry, self.repo.download_url(version.key(entry.path))) for entry in version.files], expire_time

    def download(self, project: str, model_id: str, ref: str) -> Iterator[FileEntry | bytes]:
        """Each file's entry, then its bytes; DATA_LOSS as soon as a file's bytes differ from the manifest."""
        version = self.repo.get_version(project, model_id, ref)
        for entry in version.files:
            yield entry
            digest, size = hashlib.sha256(), 0
            try:
                for piece in read_ahead(self.repo.read(version.key(entry.path), self.download_chunk)):
                    digest.update(piece)
                    size += len(piece)
                    if size > entry.size_bytes:
                        break
                    yield piece
            except NotFound:
                raise DataLoss(f"{entry.path} of version {version.version} is missing from the object store",
                               "FILE_MISSING", path=entry.path) from None
            if size != entry.size_bytes or digest.hexdigest() != entry.sha256:
                log.error("model_version.corrupted", project=project, model=model_id, version=version.version,
                          path=entry.path)
                raise DataLoss(f"{entry.path} of version {version.version} no longer matches its sha256; the stored "
                               f"copy is corrupted", "DIGEST_MISMATCH", path=entry.path)


class _Budget:
    """Per-version admission: path rules, no duplicates, file count, total size, and the project quota."""

    def __init__(self, service: RegistryService, project: str) -> None:
        self.settings = service.settings
        self.limits = service.limits
        self.project = project
        self.used = service.repo.stored_bytes(project) if self.settings.quota_stored_bytes else 0
        self.paths: set[str] = set()
        self.total = 0

    def admit(self, path: str, size: int, sha256: str, where: str) -> tuple[FileEntry, FileCheck]:
        media_type = adapter_checks.check_path(path, f"{where}.path")
        adapter_checks.check_sha256(sha256, f"{where}.sha256")
        if path in self.paths:
            raise InvalidArgument.field(f"{where}.path", f"{path!r} appears twice", "DUPLICATE_FILE")
        if size < 0:
            raise InvalidArgument.field(f"{where}.size_bytes", "must not be negative")
        self.paths.add(path)
        if len(self.paths) > self.settings.registry_max_files:
            raise ResourceExhausted(f"a version may have at most {self.settings.registry_max_files} files",
                                    "TOO_MANY_FILES", limit=self.settings.registry_max_files)
        self.total += size
        if self.total > self.settings.registry_max_version_bytes:
            raise ResourceExhausted(f"the files add up to more than {self.settings.registry_max_version_bytes} "
                                    f"bytes, the most a version may hold", "VERSION_TOO_LARGE",
                                    limit=self.settings.registry_max_version_bytes)
        quota = self.settings.quota_stored_bytes
        if quota and self.used + self.total > quota:
            raise quota_exceeded(self.project, self.used, self.total, quota)
        return FileEntry(path, size, sha256, media_type), FileCheck(path, size, f"{where}", self.limits)


def _finish(check: FileCheck, digest: "hashlib._Hash", entry: FileEntry, where: str) -> FileResult:
    result = check.finish()
    if digest.hexdigest() != entry.sha256:
        raise InvalidArgument.field(f"{where}.sha256", f"{entry.path}: the bytes have sha256 {digest.hexdigest()}, "
                                                       f"not {entry.sha256}", "DIGEST_MISMATCH")
    return result
