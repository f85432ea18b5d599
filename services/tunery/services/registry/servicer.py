"""gRPC transport of the ModelRegistryService: parses names, authorizes, converts protos to and from the
domain records of the service layer."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Iterator

import grpc
from google.protobuf import json_format, timestamp_pb2

from tunery.registry.v1 import registry_pb2 as pb
from tunery.registry.v1 import registry_pb2_grpc as pb_grpc
from tunery.services.kit import auth, names, paging
from tunery.services.kit.errors import InvalidArgument
from tunery.services.kit.server import Runtime
from tunery.services.registry.repository import (AliasEventRecord, FileEntry, ModelRecord, Repository,
                                                 VersionFilter, VersionRecord)
from tunery.services.registry.service import (SHA256, IncomingFile, RegistryService, StagedFile, VersionInput,
                                              check_labels)

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["ModelRegistryService"].full_name

PROJECT = "projects/{project}"
MODEL = "projects/{project}/models/{model}"
VERSION = "projects/{project}/models/{model}/versions/{version}"
# A version number (at most what a 32-bit column holds) or an alias.
VERSION_REF = r"[1-9][0-9]{0,8}|[a-z][a-z0-9-]{0,62}"
TRAINING_JOB = "projects/{project}/trainingJobs/{job}"


def _project(parent: str, field: str = "parent") -> str:
    project = names.parse(parent, PROJECT, field=field)["project"]
    auth.authorize(project)
    return project


def _model(name: str, field: str = "name") -> tuple[str, str]:
    parts = names.parse(name, MODEL, field=field)
    auth.authorize(parts["project"])
    return parts["project"], parts["model"]


def _version(name: str, field: str = "name") -> tuple[str, str, str]:
    parts = names.parse(name, VERSION, field=field, version=VERSION_REF)
    auth.authorize(parts["project"])
    return parts["project"], parts["model"], parts["version"]


def _time(value: datetime) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _version_name(project: str, model_id: str, number: int) -> str:
    return f"projects/{project}/models/{model_id}/versions/{number}"


def model_proto(m: ModelRecord) -> pb.Model:
    return pb.Model(
        name=f"projects/{m.project}/models/{m.model_id}", base_model=m.base_model, description=m.description,
        labels=m.labels, aliases={a: _version_name(m.project, m.model_id, n) for a, n in m.aliases.items()},
        latest_version=_version_name(m.project, m.model_id, m.latest_version) if m.latest_version else "",
        version_count=m.version_count, create_time=_time(m.create_time), update_time=_time(m.update_time),
        etag=m.etag)


def _file_proto(f: FileEntry) -> pb.ManifestFile:
    return pb.ManifestFile(path=f.path, size_bytes=f.size_bytes, sha256=f.sha256, media_type=f.media_type)


def version_proto(v: VersionRecord) -> pb.ModelVersion:
    return pb.ModelVersion(
        name=_version_name(v.project, v.model_id, v.version), description=v.description, labels=v.labels,
        manifest=pb.Manifest(files=[_file_proto(f) for f in v.files]),
        lineage=json_format.ParseDict(v.lineage, pb.Lineage()), aliases=v.aliases,
        create_time=_time(v.create_time), update_time=_time(v.update_time), etag=v.etag)


def _event_proto(project: str, model_id: str, e: AliasEventRecord) -> pb.AliasEvent:
    return pb.AliasEvent(
        alias=e.alias, from_version=_version_name(project, model_id, e.from_version) if e.from_version else "",
        to_version=_version_name(project, model_id, e.to_version) if e.to_version else "",
        create_time=_time(e.create_time), actor=e.actor)


def _version_input(version: pb.ModelVersion, request_id: str) -> VersionInput:
    return VersionInput(description=version.description, labels=dict(version.labels), request_id=request_id,
                        lineage=json_format.MessageToDict(version.lineage, preserving_proto_field_name=True))


def _actor() -> str:
    principal = auth.current_principal()
    return f"projects/{principal.project}/apiKeys/{principal.key_id}"


class ModelRegistryServicer:
    def __init__(self, runtime: Runtime, service: RegistryService) -> None:
        self.runtime = runtime
        self.service = service
        self.repo = service.repo

    def _page(self, request, query: dict) -> tuple[int, object | None]:
        return paging.page_size(request.page_size), self.runtime.page_tokens.decode(request.page_token, query)

    # ---- models ---------------------------------------------------------------------------------------------

    def CreateModel(self, request: pb.CreateModelRequest, context) -> pb.CreateModelResponse:
        project = _project(request.parent)
        model = self.service.create_model(project, request.model_id, request.model.base_model,
                                          request.model.description, dict(request.model.labels), request.request_id)
        return pb.CreateModelResponse(model=model_proto(model))

    def GetModel(self, request: pb.GetModelRequest, context) -> pb.GetModelResponse:
        return pb.GetModelResponse(model=model_proto(self.repo.get_model(*_model(request.name))))

    def ListModels(self, request: pb.ListModelsRequest, context) -> pb.ListModelsResponse:
        project = _project(request.parent)
        query = {"rpc": "ListModels", "parent": request.parent}
        size, after = self._page(request, query)
        rows = self.repo.list_models(project, after, size + 1)
        token = self.runtime.page_tokens.encode(rows[size - 1].model_id, query) if len(rows) > size else ""
        return pb.ListModelsResponse(models=[model_proto(m) for m in rows[:size]], next_page_token=token)

    def UpdateModel(self, request: pb.UpdateModelRequest, context) -> pb.UpdateModelResponse:
        project, model_id = _model(request.model.name, "model.name")
        model = self.service.update_model(project, model_id, list(request.update_mask.paths),
                                          request.model.description, dict(request.model.labels), request.model.etag)
        return pb.UpdateModelResponse(model=model_proto(model))

    def DeleteModel(self, request: pb.DeleteModelRequest, context) -> pb.DeleteModelResponse:
        self.service.delete_model(*_model(request.name), request.force)
        return pb.DeleteModelResponse()

    # ---- versions -------------------------------------------------------------------------------------------

    def CreateModelVersion(self, request: pb.CreateModelVersionRequest, context) -> pb.CreateModelVersionResponse:
        project, model_id = _model(request.parent, "parent")
        staged = [StagedFile(f.path, f.object.bucket, f.object.key, f.size_bytes, f.sha256) for f in request.files]
        version = self.service.create_version(project, model_id, _version_input(request.model_version,
                                                                                request.request_id), staged)
        return pb.CreateModelVersionResponse(model_version=version_proto(version))

    def UploadModelVersion(self, request_iterator, context) -> pb.UploadModelVersionResponse:
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("payload") != "header":
            raise InvalidArgument.field("header", "the first message of the stream must be the header",
                                        "MISSING_HEADER")
        project, model_id = _model(first.header.parent, "header.parent")
        meta = _version_input(first.header.model_version, first.header.request_id)
        version = self.service.upload_version(project, model_id, meta, _upload_items(request_iterator))
        return pb.UploadModelVersionResponse(model_version=version_proto(version))

    def GetModelVersion(self, request: pb.GetModelVersionRequest, context) -> pb.GetModelVersionResponse:
        return pb.GetModelVersionResponse(model_version=version_proto(self.repo.get_version(*_version(request.name))))

    def ListModelVersions(self, request: pb.ListModelVersionsRequest, context) -> pb.ListModelVersionsResponse:
        parts = names.parse(request.parent, MODEL, field="parent", model=r"[a-z][a-z0-9-]{0,62}|-")
        project = parts["project"]
        auth.authorize(project)
        where = VersionFilter(labels=check_labels(dict(request.labels), "labels"), training_job=request.training_job,
                              dataset_sha256=request.dataset_version_sha256)
        if where.training_job:
            names.parse(where.training_job, TRAINING_JOB, field="training_job", job=r"job-[0-9a-f]{12}")
        if where.dataset_sha256 and not SHA256.fullmatch(where.dataset_sha256):
            raise InvalidArgument.field("dataset_version_sha256", "must be 64 lower-case hex characters",
                                        "INVALID_DIGEST")
        query = {"rpc": "ListModelVersions", "parent": request.parent, "labels": sorted(where.labels.items()),
                 "training_job": where.training_job, "sha256": where.dataset_sha256}
        size, before = self._page(request, query)
        model_id = None if parts["model"] == "-" else parts["model"]
        rows = self.repo.list_versions(project, model_id, where, before, size + 1)
        token = self.runtime.page_tokens.encode(rows[size - 1].id, query) if len(rows) > size else ""
        return pb.ListModelVersionsResponse(model_versions=[version_proto(v) for v in rows[:size]],
                                            next_page_token=token)

    def UpdateModelVersion(self, request: pb.UpdateModelVersionRequest, context) -> pb.UpdateModelVersionResponse:
        project, model_id, ref = _version(request.model_version.name, "model_version.name")
        version = self.service.update_version(project, model_id, ref, list(request.update_mask.paths),
                                              request.model_version.description, dict(request.model_version.labels),
                                              request.model_version.etag)
        return pb.UpdateModelVersionResponse(model_version=version_proto(version))

    def DeleteModelVersion(self, request: pb.DeleteModelVersionRequest, context) -> pb.DeleteModelVersionResponse:
        self.service.delete_version(*_version(request.name))
        return pb.DeleteModelVersionResponse()

    def DownloadModelVersion(self, request: pb.DownloadModelVersionRequest,
                             context) -> Iterator[pb.DownloadModelVersionResponse]:
        for item in self.service.download(*_version(request.name)):
            if isinstance(item, FileEntry):
                yield pb.DownloadModelVersionResponse(file=_file_proto(item))
            else:
                yield pb.DownloadModelVersionResponse(chunk=item)

    def GenerateModelVersionDownloadUrls(self, request: pb.GenerateModelVersionDownloadUrlsRequest,
                                         context) -> pb.GenerateModelVersionDownloadUrlsResponse:
        files, expire_time = self.service.download_urls(*_version(request.name))
        return pb.GenerateModelVersionDownloadUrlsResponse(
            files=[pb.FileDownloadUrl(file=_file_proto(entry), url=url) for entry, url in files],
            expire_time=_time(expire_time))

    # ---- aliases --------------------------------------------------------------------------------------------

    def SetAlias(self, request: pb.SetAliasRequest, context) -> pb.SetAliasResponse:
        project, model_id = _model(request.model, "model")
        names.check_id(request.alias, "alias")
        parts = names.parse(request.version, VERSION, field="version", version=VERSION_REF)
        if (parts["project"], parts["model"]) != (project, model_id):
            raise InvalidArgument.field("version", f"{request.version!r} is not a version of {request.model}",
                                        "VERSION_OF_OTHER_MODEL")
        model = self.repo.set_alias(project, model_id, request.alias, parts["version"], request.etag, _actor())
        return pb.SetAliasResponse(model=model_proto(model))

    def DeleteAlias(self, request: pb.DeleteAliasRequest, context) -> pb.DeleteAliasResponse:
        project, model_id = _model(request.model, "model")
        names.check_id(request.alias, "alias")
        model = self.repo.delete_alias(project, model_id, request.alias, request.etag, _actor())
        return pb.DeleteAliasResponse(model=model_proto(model))

    def ListAliasHistory(self, request: pb.ListAliasHistoryRequest, context) -> pb.ListAliasHistoryResponse:
        project, model_id = _model(request.parent, "parent")
        if request.alias:
            names.check_id(request.alias, "alias")
        query = {"rpc": "ListAliasHistory", "parent": request.parent, "alias": request.alias}
        size, before = self._page(request, query)
        rows = self.repo.alias_events(project, model_id, request.alias, before, size + 1)
        token = self.runtime.page_tokens.encode(rows[size - 1].id, query) if len(rows) > size else ""
        return pb.ListAliasHistoryResponse(events=[_event_proto(project, model_id, e) for e in rows[:size]],
                                           next_page_token=token)


def _upload_items(requests) -> Iterator[IncomingFile | bytes]:
    """The stream after its header as domain items: a file's announcement, then its bytes."""
    for request in requests:
        kind = request.WhichOneof("payload")
        if kind == "file":
            yield IncomingFile(request.file.path, request.file.size_bytes, request.file.sha256)
        elif kind == "chunk":
            yield request.chunk
        else:
            raise InvalidArgument.field("header" if kind == "header" else "payload",
                                        "only the first message may be a header; then file and chunk messages",
                                        "UNEXPECTED_MESSAGE")


def setup(runtime: Runtime, server: grpc.Server) -> list[str]:
    """Adds the registry to `server`, starts the sweeper of abandoned uploads; returns the service name."""
    service = RegistryService(Repository(runtime.db, runtime.objects), runtime.settings)
    runtime.on_stop.append(service.start_sweeper(min(runtime.settings.registry_upload_ttl_s, 600.0)))
    pb_grpc.add_ModelRegistryServiceServicer_to_server(ModelRegistryServicer(runtime, service), server)
    return [SERVICE_NAME]
