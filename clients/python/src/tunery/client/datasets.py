"""`client.datasets`: create datasets, validate and upload JSONL files (resumably), read and download versions."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

import grpc

from tunery.client import validation
from tunery.client._base import (SubApi, check_id, direct_downloads_off, new_request_id, read_url, retry_unavailable,
                                 with_backoff)
from tunery.client.errors import DataLoss, NotFound, TuneryError, Unavailable
from tunery.dataset.v1 import dataset_pb2 as pb

CHUNK_BYTES = 1024 * 1024
FORMATS = {"auto": pb.DATASET_FORMAT_UNSPECIFIED, "chat": pb.DATASET_FORMAT_CHAT,
           "prompt_completion": pb.DATASET_FORMAT_PROMPT_COMPLETION, "text": pb.DATASET_FORMAT_TEXT}
# progress(bytes_done, bytes_total)
Progress = Callable[[int, int], None]


def format_value(format: str | int | None) -> int:
    """The DatasetFormat enum value of "chat" / "prompt_completion" / "text" / "auto" (or an enum value)."""
    if format is None:
        return pb.DATASET_FORMAT_UNSPECIFIED
    if isinstance(format, int):
        return format
    try:
        return FORMATS[format.lower().replace("-", "_")]
    except KeyError:
        raise ValueError(f"format {format!r} is not one of {', '.join(FORMATS)}") from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


class Datasets(SubApi):
    """Datasets and their immutable, content-addressed versions."""

    _service = "dataset"

    # -- names ---------------------------------------------------------------------------------------------
    def dataset_name(self, ref: str) -> str:
        """projects/{p}/datasets/{d} for "d", "d@version" or any full dataset / version name."""
        if ref.startswith("projects/"):
            return "/".join(ref.split("/")[:4])
        return f"{self.parent}/datasets/{check_id(ref.split('@', 1)[0], 'dataset')}"

    def version_name(self, ref: str) -> str:
        """projects/{p}/datasets/{d}/versions/{v} for "d@v" or a full version name."""
        if ref.startswith("projects/"):
            if "/versions/" not in ref:
                raise ValueError(f"{ref!r} names a dataset, not a version")
            return ref
        if "@" not in ref:
            raise ValueError(f"{ref!r} names no version; write DATASET@VERSION")
        dataset, version = ref.split("@", 1)
        return f"{self.dataset_name(dataset)}/versions/{version}"

    def data_name(self, ref: str) -> str:
        """A version name for "d@v", a dataset name (meaning its latest version) for "d"."""
        if ref.startswith("projects/"):
            return ref
        return self.version_name(ref) if "@" in ref else self.dataset_name(ref)

    # -- datasets ------------------------------------------------------------------------------------------
    def create(self, dataset_id: str, description: str = "", labels: dict[str, str] | None = None,
               request_id: str | None = None) -> pb.Dataset:
        """Create an empty dataset; a retry with the same request_id never creates a second one."""
        request = pb.CreateDatasetRequest(parent=self.parent, dataset_id=dataset_id,
                                          dataset=pb.Dataset(description=description, labels=labels or {}),
                                          request_id=request_id or new_request_id())
        return self._call("CreateDataset", request).dataset

    def get(self, dataset: str) -> pb.Dataset:
        """One dataset by id or name."""
        return self._call("GetDataset", pb.GetDatasetRequest(name=self.dataset_name(dataset))).dataset

    def list(self, page_size: int = 0) -> Iterator[pb.Dataset]:
        """Every dataset of the project, ordered by id (pages fetched lazily)."""
        return self._pages("ListDatasets", pb.ListDatasetsRequest(parent=self.parent, page_size=page_size),
                           "datasets")

    def delete(self, dataset: str, force: bool = False) -> None:
        """Delete a dataset; `force` also deletes its versions (none may have been trained on)."""
        self._call("DeleteDataset", pb.DeleteDatasetRequest(name=self.dataset_name(dataset), force=force))

    # -- versions ------------------------------------------------------------------------------------------
    def get_version(self, ref: str) -> pb.DatasetVersion:
        """One version ("d@v" or a full name) with statistics and validation report; "d" gives the latest."""
        name = self.data_name(ref)
        if "/versions/" not in name:
            latest = self.get(name).latest_version
            if not latest:
                raise NotFound(grpc.StatusCode.NOT_FOUND, f"dataset {name} has no versions yet")
            name = latest
        return self._call("GetDatasetVersion", pb.GetDatasetVersionRequest(name=name)).dataset_version

    def versions(self, dataset: str, page_size: int = 0) -> Iterator[pb.DatasetVersion]:
        """Every version of a dataset, newest first."""
        request = pb.ListDatasetVersionsRequest(parent=self.dataset_name(dataset), page_size=page_size)
        return self._pages("ListDatasetVersions", request, "dataset_versions")

    def delete_version(self, ref: str) -> None:
        """Delete a version and its bytes (refused when a training job used it)."""
        self._call("DeleteDatasetVersion", pb.DeleteDatasetVersionRequest(name=self.version_name(ref)))

    def examples(self, ref: str, page_size: int = 0) -> Iterator[pb.Example]:
        """The parsed examples of a version, in file order."""
        request = pb.ListDatasetExamplesRequest(parent=self.version_name(ref), page_size=page_size)
        return self._pages("ListDatasetExamples", request, "examples")

    # -- validation ----------------------------------------------------------------------------------------
    @staticmethod
    def validate_file(path: str | os.PathLike, format: str | None = None,
                      limits: validation.Limits | None = None) -> validation.Report:
        """Validate a JSONL file offline with exactly the rules the dataset service applies.

        Raises `validation.LimitExceeded` when the file breaks a size limit (the service would answer
        RESOURCE_EXHAUSTED)."""
        fmt = None if format in (None, "auto") else format
        return validation.validate_file(path, limits=limits, format=fmt)

    # -- upload --------------------------------------------------------------------------------------------
    def upload(self, path: str | os.PathLike, dataset: str, format: str | None = None, description: str = "",
               labels: dict[str, str] | None = None, progress: Progress | None = None,
               request_id: str | None = None, create_dataset: bool = True, chunk_bytes: int = CHUNK_BYTES,
               give_up_after_s: float = 120.0) -> pb.UploadDatasetVersionResponse:
        """Upload a JSONL file as a new version of `dataset` and return it (`created` is False when the same
        bytes already formed a version).

        The bytes stream in chunks with the file's size and sha256. When the connection breaks (UNAVAILABLE),
        the upload resumes from the server's committed offset under the same request_id, for up to
        `give_up_after_s` seconds. Passing the request_id of an earlier, broken upload resumes that one.
        With `create_dataset`, a missing dataset is created first."""
        path = Path(path)
        size = path.stat().st_size
        sha256 = _file_sha256(path)
        dataset_name = self.dataset_name(dataset)
        if create_dataset:
            try:
                self.get(dataset_name)
            except NotFound:
                self.create(dataset_name.rsplit("/", 1)[1])
        resuming = request_id is not None
        request_id = request_id or new_request_id()
        header = pb.UploadDatasetVersionHeader(dataset=dataset_name, request_id=request_id,
                                               format=format_value(format), expected_sha256=sha256,
                                               size_bytes=size, description=description, labels=labels or {})
        upload_name = f"{dataset_name}/uploads/{request_id}"
        # A generous deadline: the whole file at 1 MiB/s plus the service's validation time.
        timeout_s = self._transport.config.timeout_s + 60 + size / (1024 * 1024)
        attempt = 0
        while True:
            offset = 0
            if resuming:
                session = self._session(upload_name, give_up_after_s)
                if session is not None and session.state == pb.DATASET_UPLOAD_STATE_SUCCEEDED:
                    version = self._call("GetDatasetVersion",
                                         pb.GetDatasetVersionRequest(name=session.dataset_version))
                    return pb.UploadDatasetVersionResponse(dataset_version=version.dataset_version, created=True)
                offset = session.committed_bytes if session is not None else 0
            header.offset = offset
            try:
                return self._call("UploadDatasetVersion",
                                  self._requests(path, header, size, chunk_bytes, progress), timeout_s)
            except Unavailable:
                attempt += 1
                if attempt > 20:
                    raise
                resuming = True
                with_backoff(attempt)

    def _session(self, upload_name: str, give_up_after_s: float) -> pb.DatasetUpload | None:
        """The upload session, or None when the server has none (then the upload restarts at 0)."""
        try:
            return retry_unavailable(
                lambda: self._call("GetDatasetUpload", pb.GetDatasetUploadRequest(name=upload_name)).upload,
                give_up_after_s)
        except NotFound:
            return None

    @staticmethod
    def _requests(path: Path, header: pb.UploadDatasetVersionHeader, size: int, chunk_bytes: int,
                  progress: Progress | None) -> Iterator[pb.UploadDatasetVersionRequest]:
        yield pb.UploadDatasetVersionRequest(header=header)
        done = header.offset
        if progress:
            progress(done, size)
        with open(path, "rb") as f:
            f.seek(done)
            while chunk := f.read(chunk_bytes):
                yield pb.UploadDatasetVersionRequest(chunk=chunk)
                done += len(chunk)
                if progress:
                    progress(done, size)

    # -- download ------------------------------------------------------------------------------------------
    def download(self, ref: str, path: str | os.PathLike, progress: Progress | None = None) -> Path:
        """Write the exact bytes of a version to `path`, verifying size and sha256 before the file appears
        (raises `DataLoss` and leaves nothing on a mismatch).

        The bytes come straight from the object store through a presigned URL when the service hands one
        out and it can be read from here; otherwise they stream through the service."""
        version = self.get_version(ref)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                report = (lambda done: progress(done, version.size_bytes)) if progress else None
                done, sha256 = self._direct(version, out, report) or self._streamed(version, out, report)
            if done != version.size_bytes or sha256 != version.sha256:
                raise DataLoss.digest_mismatch(
                    f"downloaded {version.name}: got {done} bytes with sha256 {sha256}, "
                    f"expected {version.size_bytes} bytes with sha256 {version.sha256}")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    def _direct(self, version: pb.DatasetVersion, out: BinaryIO,
                progress: Callable[[int], None] | None) -> tuple[int, str] | None:
        """(bytes, sha256) read through a presigned URL, or None when there is none or it cannot be read."""
        try:
            url = self._call("GenerateDatasetVersionDownloadUrl",
                             pb.GenerateDatasetVersionDownloadUrlRequest(name=version.name)).url
        except TuneryError as error:
            if direct_downloads_off(error):
                return None
            raise
        return read_url(url, out, progress)

    def _streamed(self, version: pb.DatasetVersion, out: BinaryIO,
                  progress: Callable[[int], None] | None) -> tuple[int, str]:
        """(bytes, sha256) streamed through the service."""
        digest, done = hashlib.sha256(), 0
        for response in self._stream("DownloadDatasetVersion", pb.DownloadDatasetVersionRequest(name=version.name),
                                     timeout_s=self._transport.config.timeout_s + 60
                                     + version.size_bytes / (1024 * 1024)):
            chunk = response.chunk  # each access copies the bytes out of the message
            out.write(chunk)
            digest.update(chunk)
            done += len(chunk)
            if progress:
                progress(done)
        return done, digest.hexdigest()
