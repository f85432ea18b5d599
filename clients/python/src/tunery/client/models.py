"""`client.models`: the model registry — models, adapter versions, aliases and verified downloads."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator

import grpc

from tunery.client._base import SubApi, check_id, direct_downloads_off, new_request_id, read_url
from tunery.client.errors import DataLoss, InvalidArgument, NotFound, TuneryError
from tunery.registry.v1 import registry_pb2 as pb

# progress(path, bytes_done_overall, bytes_total_overall)
DownloadProgress = Callable[[str, int, int], None]


def _safe_relative(path: str) -> PurePosixPath:
    """The manifest path if it is a plain relative path (a file, or one folder and a file), else DataLoss."""
    pure = PurePosixPath(path)
    if (not path or path.startswith("/") or "\\" in path or "\0" in path or len(pure.parts) > 2
            or any(part in ("..", ".", "") for part in pure.parts)):
        raise DataLoss.digest_mismatch(f"the registry sent an unsafe file path {path!r}")
    return pure


def _expected_path(path: str, expected: dict, received: dict, version: str) -> str:
    """`path` if the manifest lists it and it has not come yet, else DataLoss."""
    if path not in expected or path in received:
        raise DataLoss.digest_mismatch(f"the registry sent {path!r}, which is not (or no longer) expected from the "
                                       f"manifest of {version}")
    return path


class Models(SubApi):
    """Registry models (one base model each), their numbered adapter versions and aliases."""

    _service = "registry"

    # -- names ---------------------------------------------------------------------------------------------
    def model_name(self, ref: str) -> str:
        """projects/{p}/models/{m} for "m", "m@3", "m:alias" or a full model / version name."""
        if ref.startswith("projects/"):
            return "/".join(ref.split("/")[:4])
        return f"{self.parent}/models/{check_id(ref.split('@', 1)[0].split(':', 1)[0], 'model')}"

    def version_name(self, ref: str) -> str:
        """projects/{p}/models/{m}/versions/{v} for "m@3", "m:alias" or a full version name. A bare "m"
        means its latest version."""
        if ref.startswith("projects/") and "/versions/" in ref:
            return ref
        if "@" in ref:
            return f"{self.model_name(ref)}/versions/{ref.split('@', 1)[1]}"
        if ":" in ref:
            return f"{self.model_name(ref)}/versions/{check_id(ref.split(':', 1)[1], 'alias')}"
        latest = self.get(ref).latest_version
        if not latest:
            raise NotFound(grpc.StatusCode.NOT_FOUND, f"model {self.model_name(ref)} has no versions yet")
        return latest

    # -- models --------------------------------------------------------------------------------------------
    def create(self, model_id: str, base_model: str, description: str = "", labels: dict[str, str] | None = None,
               request_id: str | None = None) -> pb.Model:
        """Create a model whose versions adapt `base_model`; retries with the same request_id are safe."""
        request = pb.CreateModelRequest(parent=self.parent, model_id=model_id,
                                        model=pb.Model(base_model=base_model, description=description,
                                                       labels=labels or {}),
                                        request_id=request_id or new_request_id())
        return self._call("CreateModel", request).model

    def get(self, model: str) -> pb.Model:
        """One model with its aliases."""
        return self._call("GetModel", pb.GetModelRequest(name=self.model_name(model))).model

    def list(self, page_size: int = 0) -> Iterator[pb.Model]:
        """Every model of the project, ordered by id."""
        return self._pages("ListModels", pb.ListModelsRequest(parent=self.parent, page_size=page_size), "models")

    def delete(self, model: str, force: bool = False) -> None:
        """Delete a model; `force` also deletes its versions, aliases and alias history."""
        self._call("DeleteModel", pb.DeleteModelRequest(name=self.model_name(model), force=force))

    # -- versions ------------------------------------------------------------------------------------------
    def get_version(self, ref: str) -> pb.ModelVersion:
        """One version ("m@3", "m:production", "m" for the latest) with manifest and lineage."""
        return self._call("GetModelVersion", pb.GetModelVersionRequest(name=self.version_name(ref))).model_version

    def versions(self, model: str = "-", labels: dict[str, str] | None = None, training_job: str = "",
                 dataset_version_sha256: str = "", page_size: int = 0) -> Iterator[pb.ModelVersion]:
        """Versions newest first, of one model or ("-") of every model, optionally filtered by labels, by
        the training job that produced them, or by the sha256 of the data they were trained on."""
        parent = f"{self.parent}/models/-" if model == "-" else self.model_name(model)
        if training_job and not training_job.startswith("projects/"):
            training_job = f"{self.parent}/trainingJobs/{training_job}"
        request = pb.ListModelVersionsRequest(parent=parent, page_size=page_size, labels=labels or {},
                                              training_job=training_job,
                                              dataset_version_sha256=dataset_version_sha256)
        return self._pages("ListModelVersions", request, "model_versions")

    def delete_version(self, ref: str) -> None:
        """Delete a version and its files (refused while an alias points at it)."""
        self._call("DeleteModelVersion", pb.DeleteModelVersionRequest(name=self.version_name(ref)))

    # -- aliases -------------------------------------------------------------------------------------------
    def alias(self, version: str, alias: str, etag: str = "") -> pb.Model:
        """Point `alias` at `version` ("m@3"), creating or moving it atomically; with `etag` the move is
        refused (Aborted) when the model changed since it was read."""
        request = pb.SetAliasRequest(model=self.model_name(version), alias=check_id(alias, "alias"),
                                     version=self.version_name(version), etag=etag)
        return self._call("SetAlias", request).model

    def delete_alias(self, model: str, alias: str, etag: str = "") -> pb.Model:
        """Remove an alias."""
        return self._call("DeleteAlias", pb.DeleteAliasRequest(model=self.model_name(model), alias=alias,
                                                               etag=etag)).model

    def history(self, model: str, alias: str = "", page_size: int = 0) -> Iterator[pb.AliasEvent]:
        """The alias moves of a model (optionally of one alias), newest first."""
        request = pb.ListAliasHistoryRequest(parent=self.model_name(model), alias=alias, page_size=page_size)
        return self._pages("ListAliasHistory", request, "events")

    # -- files ---------------------------------------------------------------------------------------------
    def download(self, version: str, directory: str | os.PathLike,
                 progress: DownloadProgress | None = None) -> Path:
        """Write the files of a version ("m@3", "m:production", "m") into `directory`, ready for
        `PeftModel.from_pretrained(base, directory)`.

        Every file is checked against the version's manifest (path, size, sha256) before any file appears
        in `directory`; on a mismatch `DataLoss` is raised and nothing is written.

        The files come straight from the object store through presigned URLs when the registry hands them
        out and they can be read from here; otherwise they stream through the registry."""
        model_version = self.get_version(version)
        expected = {f.path: f for f in model_version.manifest.files}
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".tunery-download-", dir=directory))
        try:
            received = (self._direct(model_version, expected, staging, progress)
                        or self._streamed(model_version, expected, staging, progress))
            for path, entry in expected.items():
                got = received.get(path)
                if got != (entry.size_bytes, entry.sha256):
                    raise DataLoss.digest_mismatch(f"{path} of {model_version.name}: " + (
                        "missing from the download" if got is None else
                        f"got {got[0]} bytes with sha256 {got[1]}, expected {entry.size_bytes} bytes with "
                        f"sha256 {entry.sha256}"))
            for path in expected:
                final = directory / path
                final.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / path, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    def _direct(self, version: pb.ModelVersion, expected: dict[str, pb.ManifestFile], staging: Path,
                progress: DownloadProgress | None) -> dict[str, tuple[int, str]] | None:
        """{path: (bytes, sha256)} of the files read through presigned URLs into `staging`, or None when there
        are none or one cannot be read."""
        try:
            files = self._call("GenerateModelVersionDownloadUrls",
                               pb.GenerateModelVersionDownloadUrlsRequest(name=version.name)).files
        except TuneryError as error:
            if direct_downloads_off(error):
                return None
            raise
        total, before, received = sum(f.size_bytes for f in expected.values()), 0, {}
        for item in files:
            path = _expected_path(item.file.path, expected, received, version.name)
            target = staging / _safe_relative(path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, "wb") as out:
                got = read_url(item.url, out, (lambda done: progress(path, before + done, total)) if progress else None)
            if got is None:
                return None
            received[path] = got
            before += got[0]
        return received

    def _streamed(self, version: pb.ModelVersion, expected: dict[str, pb.ManifestFile], staging: Path,
                  progress: DownloadProgress | None) -> dict[str, tuple[int, str]]:
        """{path: (bytes, sha256)} of the files streamed through the registry into `staging`."""
        total = sum(f.size_bytes for f in expected.values())
        received: dict[str, tuple[int, str]] = {}
        current, out, digest, size, done = None, None, hashlib.sha256(), 0, 0
        try:
            for response in self._stream("DownloadModelVersion", pb.DownloadModelVersionRequest(name=version.name),
                                         self._transport.config.timeout_s + 60 + total / (1024 * 1024)):
                if response.WhichOneof("payload") == "file":
                    if out:
                        out.close()
                        received[current] = (size, digest.hexdigest())
                    current = _expected_path(response.file.path, expected, received, version.name)
                    target = staging / _safe_relative(current)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    out, digest, size = open(target, "wb"), hashlib.sha256(), 0
                else:
                    if out is None:
                        raise DataLoss.digest_mismatch("the registry sent bytes before naming a file")
                    chunk = response.chunk  # each access copies the bytes out of the message
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                    done += len(chunk)
                    if progress:
                        progress(current, done, total)
            if out:
                out.close()
                received[current] = (size, digest.hexdigest())
        finally:
            if out and not out.closed:
                out.close()
        return received

    def upload(self, model: str, directory: str | os.PathLike, description: str = "",
               labels: dict[str, str] | None = None, request_id: str | None = None) -> pb.ModelVersion:
        """Upload an adapter trained elsewhere (adapter_config.json, adapter_model.safetensors, tokenizer
        files, README.md from `directory`) as a new version of `model`."""
        directory = Path(directory)
        files = sorted(p for p in directory.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise InvalidArgument(grpc.StatusCode.INVALID_ARGUMENT, f"{directory} holds no files")

        def requests() -> Iterator[pb.UploadModelVersionRequest]:
            yield pb.UploadModelVersionRequest(header=pb.UploadModelVersionHeader(
                parent=self.model_name(model), request_id=request_id or new_request_id(),
                model_version=pb.ModelVersion(description=description, labels=labels or {})))
            for path in files:
                data = path.read_bytes()
                yield pb.UploadModelVersionRequest(file=pb.ManifestFile(
                    path=path.relative_to(directory).as_posix(), size_bytes=len(data),
                    sha256=hashlib.sha256(data).hexdigest()))
                for start in range(0, len(data), 1024 * 1024):
                    yield pb.UploadModelVersionRequest(chunk=data[start:start + 1024 * 1024])

        total = sum(p.stat().st_size for p in files)
        return self._call("UploadModelVersion", requests(),
                          self._transport.config.timeout_s + 60 + total / (1024 * 1024)).model_version
