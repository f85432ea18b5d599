"""gRPC transport of the dataset service: protos in, domain calls, protos out."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from datetime import datetime
from pathlib import Path
from typing import Iterator

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tunery.client.validation import LimitExceeded, Report, Severity
from tunery.common.v1 import common_pb2
from tunery.dataset.v1 import dataset_pb2 as pb
from tunery.dataset.v1 import dataset_pb2_grpc
from tunery.services.dataset.peers import TrainerPeer
from tunery.services.dataset.repository import SUCCEEDED, DatasetRow, Repository, UploadRow, VersionRow
from tunery.services.dataset.service import DatasetService, UploadHeader, dataset_name, report_record, version_name
from tunery.services.kit.errors import Cancelled, InvalidArgument
from tunery.services.kit.server import Runtime

MIGRATIONS = Path(__file__).parent / "migrations"
SERVICE_NAME = "tunery.dataset.v1.DatasetService"

FORMATS = {pb.DATASET_FORMAT_UNSPECIFIED: "", pb.DATASET_FORMAT_CHAT: "chat",
           pb.DATASET_FORMAT_PROMPT_COMPLETION: "prompt_completion", pb.DATASET_FORMAT_TEXT: "text"}
FORMAT_ENUMS = {value: key for key, value in FORMATS.items()}
SEVERITIES = {Severity.ERROR.value: pb.VALIDATION_SEVERITY_ERROR, Severity.WARNING.value: pb.VALIDATION_SEVERITY_WARNING}


def _big_buffers_off_the_heap() -> None:
    """Fix glibc's mmap threshold at 4 MiB. By default each freed mmapped block raises the threshold to its
    size, after which the 16 MiB upload segments are carved from the heaps of several threads and fragment
    them: the service's peak RSS grew with every large upload. Other C libraries: nothing to do."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    if hasattr(libc, "mallopt"):
        libc.mallopt(-3, 4 * 1024 * 1024)  # M_MMAP_THRESHOLD


def setup(runtime: Runtime, server: grpc.Server) -> list[str]:
    """Add the dataset servicer to `server`, start the upload sweeper; returns the full service name."""
    _big_buffers_off_the_heap()
    trainer = TrainerPeer(runtime.settings)
    service = DatasetService(runtime.settings, Repository(runtime.db, runtime.objects), runtime.page_tokens, trainer)
    dataset_pb2_grpc.add_DatasetServiceServicer_to_server(DatasetServicer(service), server)
    runtime.on_stop.append(service.start_sweeper(runtime.settings.dataset_upload_sweep_interval_s))
    runtime.on_stop.append(trainer.close)
    return [SERVICE_NAME]


def _timestamp(value: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(value)
    return stamp


def _format(value: int, field: str) -> str:
    if value not in FORMATS:
        raise InvalidArgument.field(field, f"unknown dataset format {value}")
    return FORMATS[value]


def _authorization(context: grpc.ServicerContext) -> str:
    return dict(context.invocation_metadata()).get("authorization", "")


def dataset_proto(row: DatasetRow) -> pb.Dataset:
    return pb.Dataset(name=dataset_name(row.project, row.dataset_id), description=row.description, labels=row.labels,
                      latest_version=(version_name(row.project, row.dataset_id, row.latest_version)
                                      if row.latest_version else ""),
                      version_count=row.version_count, create_time=_timestamp(row.create_time))


def issue_proto(issue: dict) -> pb.ValidationIssue:
    return pb.ValidationIssue(line=issue["line"], byte_offset=issue["offset"], json_path=issue["path"],
                              code=issue["code"], severity=SEVERITIES[issue["severity"]], message=issue["message"])


def summary_proto(record: dict) -> pb.ValidationSummary:
    return pb.ValidationSummary(format=FORMAT_ENUMS.get(record["format"], pb.DATASET_FORMAT_UNSPECIFIED),
                                example_count=record["example_count"],
                                valid_example_count=record["valid_example_count"],
                                error_count=record["error_count"], warning_count=record["warning_count"],
                                issue_counts=record["issue_counts"], truncated=record["truncated"])


def _distribution(low: int, p50: int, p95: int, high: int, mean: float) -> pb.Distribution:
    return pb.Distribution(min=low, p50=p50, p95=p95, max=high, mean=mean)


def statistics_proto(stats: dict) -> pb.DatasetStatistics:
    chat = bool(stats.get("messages_per_role"))
    return pb.DatasetStatistics(
        example_count=stats["examples"],
        message_count_by_role=stats.get("messages_per_role", {}),
        turns_per_example=_distribution(stats["turns_min"], stats["turns_p50"], stats["turns_p95"],
                                        stats["turns_max"], stats["turns_mean"]) if chat else None,
        characters_per_example=_distribution(stats["chars_min"], stats["chars_p50"], stats["chars_p95"],
                                             stats["chars_max"], stats["chars_mean"]),
        duplicate_count=stats["duplicates"])


def version_proto(row: VersionRow, bucket: str, with_issues: bool = True) -> pb.DatasetVersion:
    report = pb.ValidationReport(summary=summary_proto(row.report))
    if with_issues:
        report.issues.extend(issue_proto(issue) for issue in row.report["issues"])
    return pb.DatasetVersion(
        name=version_name(row.project, row.dataset_id, row.version_id), sha256=row.sha256, size_bytes=row.size_bytes,
        format=FORMAT_ENUMS[row.format], description=row.description, labels=row.labels,
        statistics=statistics_proto(row.statistics), validation_report=report,
        content=common_pb2.ObjectReference(bucket=bucket, key=row.object_key), create_time=_timestamp(row.create_time))


def upload_proto(row: UploadRow) -> pb.DatasetUpload:
    succeeded = row.state == SUCCEEDED
    return pb.DatasetUpload(
        name=f"{dataset_name(row.project, row.dataset_id)}/uploads/{row.upload_id}",
        state=pb.DATASET_UPLOAD_STATE_SUCCEEDED if succeeded else pb.DATASET_UPLOAD_STATE_ACTIVE,
        committed_bytes=row.committed_bytes, expected_sha256=row.expected_sha256, format=FORMAT_ENUMS[row.format],
        create_time=_timestamp(row.create_time), expire_time=_timestamp(row.expire_time),
        dataset_version=version_name(row.project, row.dataset_id, row.version_id) if succeeded else "")


def example_proto(line: int, data: dict, format: str) -> pb.Example:
    if format == "chat":
        messages = [pb.ChatMessage(role=m["role"], content=m["content"], weight=m.get("weight"))
                    for m in data["messages"]]
        return pb.Example(line=line, chat=pb.ChatExample(messages=messages))
    if format == "prompt_completion":
        return pb.Example(line=line, prompt_completion=pb.PromptCompletionExample(prompt=data["prompt"],
                                                                                  completion=data["completion"]))
    return pb.Example(line=line, text=pb.TextExample(text=data["text"]))


def _broken() -> Cancelled:
    return Cancelled("the client ended the stream before it was complete; resume it", "STREAM_BROKEN")


def _check_stream(context: grpc.ServicerContext, settle_s: float = 0.0) -> None:
    """A cancelled call (client gone, server stopping) can look like a stream that simply ended: CANCELLED
    unless the call is still active, for up to `settle_s` (gRPC may report the end of the stream just before
    the cancellation)."""
    deadline = time.monotonic() + settle_s
    while context.is_active():
        if time.monotonic() >= deadline:
            return
        time.sleep(0.01)
    raise _broken()


def _chunks(requests: Iterator, context: grpc.ServicerContext) -> Iterator[bytes]:
    """The bytes of the chunk messages after the header; a broken client stream becomes CANCELLED."""
    try:
        for request in requests:
            if request.WhichOneof("payload") != "chunk":
                raise InvalidArgument.field("header", "only the first message of the stream may be a header",
                                            "UNEXPECTED_HEADER")
            yield request.chunk
    except grpc.RpcError:
        raise _broken() from None
    _check_stream(context)


def _header(requests: Iterator, field: str):
    first = next(requests, None)
    if first is None or first.WhichOneof("payload") != "header":
        raise InvalidArgument.field(field, "the first message of the stream must be a header", "HEADER_MISSING")
    return first.header


class DatasetServicer:
    def __init__(self, service: DatasetService) -> None:
        self.service = service
        self.bucket = service.repo.objects.bucket

    def CreateDataset(self, request: pb.CreateDatasetRequest, context) -> pb.CreateDatasetResponse:
        row = self.service.create_dataset(request.parent, request.dataset_id, request.dataset.description,
                                          dict(request.dataset.labels), request.request_id)
        return pb.CreateDatasetResponse(dataset=dataset_proto(row))

    def GetDataset(self, request: pb.GetDatasetRequest, context) -> pb.GetDatasetResponse:
        return pb.GetDatasetResponse(dataset=dataset_proto(self.service.get_dataset(request.name)))

    def ListDatasets(self, request: pb.ListDatasetsRequest, context) -> pb.ListDatasetsResponse:
        page = self.service.list_datasets(request.parent, request.page_size, request.page_token)
        return pb.ListDatasetsResponse(datasets=[dataset_proto(row) for row in page.items],
                                       next_page_token=page.next_page_token)

    def DeleteDataset(self, request: pb.DeleteDatasetRequest, context) -> pb.DeleteDatasetResponse:
        self.service.delete_dataset(request.name, request.force, _authorization(context))
        return pb.DeleteDatasetResponse()

    def UploadDatasetVersion(self, request_iterator, context) -> pb.UploadDatasetVersionResponse:
        header = _header(request_iterator, "header")
        version, created = self.service.upload(UploadHeader(
            dataset=header.dataset, request_id=header.request_id, offset=header.offset,
            format=_format(header.format, "header.format"), expected_sha256=header.expected_sha256,
            description=header.description, labels=dict(header.labels), size_bytes=header.size_bytes),
            _chunks(request_iterator, context), lambda settle_s: _check_stream(context, settle_s))
        return pb.UploadDatasetVersionResponse(dataset_version=version_proto(version, self.bucket), created=created)

    def GetDatasetUpload(self, request: pb.GetDatasetUploadRequest, context) -> pb.GetDatasetUploadResponse:
        return pb.GetDatasetUploadResponse(upload=upload_proto(self.service.get_upload(request.name)))

    def ValidateDataset(self, request_iterator, context) -> Iterator[pb.ValidateDatasetResponse]:
        header = _header(request_iterator, "header")
        validator = self.service.validator(header.parent, _format(header.format, "header.format"))
        streamed = 0
        try:
            for chunk in _chunks(request_iterator, context):
                for issue in validator.feed(chunk):
                    streamed += 1
                    yield pb.ValidateDatasetResponse(issue=issue_proto(issue.to_dict()))
            report: Report = validator.finish()
        except LimitExceeded as error:
            raise self.service.limit_exceeded(error) from None
        # finish() adds the issues of a last line without newline and the whole-file ones.
        for issue in report.issues[streamed:]:
            yield pb.ValidateDatasetResponse(issue=issue_proto(issue.to_dict()))
        yield pb.ValidateDatasetResponse(summary=summary_proto(report_record(report)))

    def GetDatasetVersion(self, request: pb.GetDatasetVersionRequest, context) -> pb.GetDatasetVersionResponse:
        return pb.GetDatasetVersionResponse(dataset_version=version_proto(self.service.get_version(request.name),
                                                                          self.bucket))

    def ListDatasetVersions(self, request: pb.ListDatasetVersionsRequest, context) -> pb.ListDatasetVersionsResponse:
        page = self.service.list_versions(request.parent, request.page_size, request.page_token)
        return pb.ListDatasetVersionsResponse(
            dataset_versions=[version_proto(row, self.bucket, with_issues=False) for row in page.items],
            next_page_token=page.next_page_token)

    def DeleteDatasetVersion(self, request: pb.DeleteDatasetVersionRequest, context) -> pb.DeleteDatasetVersionResponse:
        self.service.delete_version(request.name, _authorization(context))
        return pb.DeleteDatasetVersionResponse()

    def DownloadDatasetVersion(self, request: pb.DownloadDatasetVersionRequest,
                               context) -> Iterator[pb.DownloadDatasetVersionResponse]:
        for chunk in self.service.download(request.name):
            yield pb.DownloadDatasetVersionResponse(chunk=chunk)

    def GenerateDatasetVersionDownloadUrl(self, request: pb.GenerateDatasetVersionDownloadUrlRequest,
                                          context) -> pb.GenerateDatasetVersionDownloadUrlResponse:
        version, url, expire_time = self.service.download_url(request.name)
        return pb.GenerateDatasetVersionDownloadUrlResponse(url=url, expire_time=_timestamp(expire_time),
                                                            size_bytes=version.size_bytes, sha256=version.sha256)

    def ListDatasetExamples(self, request: pb.ListDatasetExamplesRequest, context) -> pb.ListDatasetExamplesResponse:
        version, page = self.service.list_examples(request.parent, request.page_size, request.page_token)
        return pb.ListDatasetExamplesResponse(examples=[example_proto(line, data, version.format)
                                                        for line, data in page.items],
                                              next_page_token=page.next_page_token)
