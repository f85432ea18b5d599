"""The dataset service through a real gRPC server on a real port, with SeaweedFS S3 and SQLite."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta, timezone
from typing import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from service_fixtures import fails, running, running_stack
from tunery.client.validation import validate_bytes
from tunery.dataset.v1 import dataset_pb2 as pb
from tunery.dataset.v1 import dataset_pb2_grpc
from tunery.services.dataset.peers import TrainerPeer
from tunery.services.dataset.repository import Repository
from tunery.services.dataset.service import DatasetService, UploadHeader
from tunery.services.kit.auth import Principal, set_principal
from tunery.services.kit.errors import Cancelled
from tunery.services.kit.seaweed import SeaweedS3, free_port
from tunery.services.kit.settings import Settings
from tunery.trainer.v1 import trainer_pb2, trainer_pb2_grpc

MiB = 1024 * 1024
PROJECT = "projects/alpha"

# From OpenAI's fine-tuning guide (chat format, including per-message weight).
OPENAI_CHAT = (
    b'{"messages": [{"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."}, '
    b'{"role": "user", "content": "What\'s the capital of France?"}, '
    b'{"role": "assistant", "content": "Paris, as if everyone doesn\'t know that already."}]}\n'
    b'{"messages": [{"role": "system", "content": "Marv is a factual chatbot that is also sarcastic."}, '
    b'{"role": "user", "content": "What\'s the capital of France?"}, '
    b'{"role": "assistant", "content": "Paris", "weight": 0}, {"role": "user", "content": "Can you be more '
    b'sarcastic?"}, {"role": "assistant", "content": "Paris, as if everyone doesn\'t know that already.", '
    b'"weight": 1}]}\n'
)
PROMPT_COMPLETION = b'{"prompt": "2+2=", "completion": "4"}\n{"prompt": "", "completion": "hello"}\n'
TEXT = b'{"text": "one"}\n\n{"text": "three"}'  # a blank line and no final newline


class Client:
    """A stub with the key of project alpha, plus upload helpers."""

    def __init__(self, run, key: str | None = None) -> None:
        self.run = run
        self.stub = dataset_pb2_grpc.DatasetServiceStub(run.channel)
        self.md = run.metadata(key)

    def __getattr__(self, method: str):
        call = getattr(self.stub, method)
        return lambda request, **kw: call(request, metadata=self.md, timeout=60, **kw)

    def dataset(self, dataset_id: str | None = None) -> str:
        dataset_id = dataset_id or f"d-{uuid.uuid4().hex[:8]}"
        return self.CreateDataset(pb.CreateDatasetRequest(parent=PROJECT, dataset_id=dataset_id)).dataset.name

    def upload(self, dataset: str, data: bytes | Iterator[bytes], request_id: str | None = None, chunk: int = MiB,
               **header) -> pb.UploadDatasetVersionResponse:
        chunks = (data[i:i + chunk] for i in range(0, len(data), chunk)) if isinstance(data, bytes) else data
        return self.UploadDatasetVersion(self.requests(dataset, chunks, request_id, **header))

    @staticmethod
    def requests(dataset: str, chunks, request_id: str | None = None, **header):
        yield pb.UploadDatasetVersionRequest(header=pb.UploadDatasetVersionHeader(
            dataset=dataset, request_id=request_id or str(uuid.uuid4()), **header))
        for chunk in chunks:
            yield pb.UploadDatasetVersionRequest(chunk=chunk)

    def validate(self, data: bytes, chunk: int = 7) -> list[pb.ValidateDatasetResponse]:
        def requests():
            yield pb.ValidateDatasetRequest(header=pb.ValidateDatasetHeader(parent=PROJECT))
            for i in range(0, len(data), chunk):
                yield pb.ValidateDatasetRequest(chunk=data[i:i + chunk])
        return list(self.ValidateDataset(requests()))

    def download(self, name: str) -> bytes:
        return b"".join(r.chunk for r in self.DownloadDatasetVersion(pb.DownloadDatasetVersionRequest(name=name)))

    def objects(self, dataset: str) -> list[str]:
        project, dataset_id = dataset.split("/")[1], dataset.split("/")[3]
        return sorted(self.run.service.runtime.objects.list(f"dataset/{project}/{dataset_id}/"))


@pytest.fixture(scope="module")
def shared(s3, tmp_path_factory):
    """One dataset service for the tests that need no special settings (each uses its own datasets)."""
    tmp = tmp_path_factory.mktemp("dataset")
    settings = Settings(home=tmp / "home", port=0, database_url=f"sqlite:///{tmp / 'tunery.db'}",
                        s3_endpoint=s3.endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
                        s3_bucket=f"t-{uuid.uuid4().hex[:16]}", health_interval_s=0.3, shutdown_grace_s=5.0,
                        trainer_target=f"127.0.0.1:{free_port()}")
    with running("dataset", settings) as run:
        yield run


@pytest.fixture
def client(shared) -> Client:
    return Client(shared)


def quota_failure(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    for detail in status.details:
        if detail.Is(error_details_pb2.QuotaFailure.DESCRIPTOR):
            failure = error_details_pb2.QuotaFailure()
            detail.Unpack(failure)
            return [(v.subject, v.description) for v in failure.violations]
    return []


# -- formats, statistics, examples -------------------------------------------------------------


def test_every_format_is_stored_with_exact_statistics(client):
    chat = client.dataset()
    response = client.upload(chat, OPENAI_CHAT, description="marv", labels={"team": "search"})
    version = response.dataset_version
    assert response.created
    sha = hashlib.sha256(OPENAI_CHAT).hexdigest()
    assert version.name == f"{chat}/versions/{sha[:16]}" and version.sha256 == sha
    assert version.size_bytes == len(OPENAI_CHAT) and version.format == pb.DATASET_FORMAT_CHAT
    assert (version.description, dict(version.labels)) == ("marv", {"team": "search"})
    stats = version.statistics
    assert stats.example_count == 2 and stats.duplicate_count == 0
    assert dict(stats.message_count_by_role) == {"assistant": 3, "system": 2, "user": 3}
    assert (stats.turns_per_example.min, stats.turns_per_example.max, stats.turns_per_example.mean) == (3, 5, 4.0)
    assert (stats.turns_per_example.p50, stats.turns_per_example.p95) == (3, 5)
    expected_chars = [len("Marv is a factual chatbot that is also sarcastic.") + len("What's the capital of France?")
                      + len("Paris, as if everyone doesn't know that already.")]
    expected_chars.append(expected_chars[0] + len("Paris") + len("Can you be more sarcastic?"))
    chars = stats.characters_per_example
    assert (chars.min, chars.p50, chars.p95, chars.max) == (expected_chars[0], expected_chars[0], expected_chars[1],
                                                            expected_chars[1])
    assert version.validation_report.summary.valid_example_count == 2
    assert version.content.key == f"dataset/alpha/{chat.split('/')[-1]}/versions/{sha}.jsonl"
    got = client.GetDataset(pb.GetDatasetRequest(name=chat)).dataset
    assert (got.latest_version, got.version_count) == (version.name, 1)

    examples = client.ListDatasetExamples(pb.ListDatasetExamplesRequest(parent=version.name)).examples
    assert [e.line for e in examples] == [1, 2]
    second = examples[1].chat.messages
    assert [(m.role, m.HasField("weight") and m.weight) for m in second] == [
        ("system", False), ("user", False), ("assistant", 0), ("user", False), ("assistant", 1)]

    pc = client.dataset()
    version = client.upload(pc, PROMPT_COMPLETION, format=pb.DATASET_FORMAT_PROMPT_COMPLETION).dataset_version
    assert version.format == pb.DATASET_FORMAT_PROMPT_COMPLETION and version.statistics.example_count == 2
    examples = client.ListDatasetExamples(pb.ListDatasetExamplesRequest(parent=version.name)).examples
    assert [(e.prompt_completion.prompt, e.prompt_completion.completion) for e in examples] == [("2+2=", "4"),
                                                                                                ("", "hello")]
    text = client.dataset()
    version = client.upload(text, TEXT, chunk=5).dataset_version
    assert version.format == pb.DATASET_FORMAT_TEXT and version.statistics.example_count == 2
    examples = client.ListDatasetExamples(pb.ListDatasetExamplesRequest(parent=version.name)).examples
    assert [(e.line, e.text.text) for e in examples] == [(1, "one"), (3, "three")]


def test_same_bytes_return_the_existing_version_without_a_second_object(client):
    dataset = client.dataset()
    first = client.upload(dataset, OPENAI_CHAT)
    request_id = str(uuid.uuid4())
    second = client.upload(dataset, OPENAI_CHAT, request_id=request_id, description="again")
    assert first.created and not second.created
    assert second.dataset_version == first.dataset_version
    replay = client.upload(dataset, OPENAI_CHAT, request_id=request_id, description="again")
    assert not replay.created and replay.dataset_version.name == first.dataset_version.name
    assert client.objects(dataset) == [first.dataset_version.content.key]  # no staging left, one object
    assert client.GetDataset(pb.GetDatasetRequest(name=dataset)).dataset.version_count == 1
    upload = client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=f"{dataset}/uploads/{request_id}")).upload
    assert upload.state == pb.DATASET_UPLOAD_STATE_SUCCEEDED and upload.dataset_version == first.dataset_version.name


# -- rejected uploads ----------------------------------------------------------------------------


BAD = (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
       b'{"messages": [{"role": "user", "content": "hi"}, \n'
       b'{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "x"}]}\n'
       b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": 7}]}\n')


def test_validation_errors_are_reported_with_lines_and_leave_nothing(client):
    dataset = client.dataset()
    request_id = str(uuid.uuid4())
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "DATASET_INVALID") as failure:
        client.upload(dataset, BAD, request_id=request_id, chunk=10)
    fields = [(f, d.split(":")[0]) for f, d in failure[0].violations]
    assert fields == [("line 2", "invalid_json"), ("line 3: messages[1].role", "unknown_role"),
                      ("line 3: messages", "missing_assistant"), ("line 4: messages[1].content", "wrong_type")]
    assert failure[0].metadata["codes"] == "invalid_json,missing_assistant,unknown_role,wrong_type"
    assert client.objects(dataset) == []
    with fails(grpc.StatusCode.NOT_FOUND, "DATASET_UPLOAD_NOT_FOUND"):
        client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=f"{dataset}/uploads/{request_id}"))
    assert client.GetDataset(pb.GetDatasetRequest(name=dataset)).dataset.version_count == 0

    # One kind of error: the issue code is the reason.
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_JSON") as failure:
        client.upload(dataset, b'{"text": "a"}\n{"text": \n')
    assert failure[0].violations[0][0] == "line 2"
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "EMPTY_FILE") as failure:
        client.upload(dataset, b"")
    assert failure[0].violations[0][0] == "file"


def test_validate_dataset_streams_the_offline_report_and_stores_nothing(client):
    data = BAD + b'{"text": "mixed"}\n' + OPENAI_CHAT.splitlines()[0] + b"\n" + OPENAI_CHAT.splitlines()[0]
    before = client.run.service.runtime.objects.list("dataset/")
    responses = client.validate(data)
    offline = validate_bytes(data)
    issues = [r.issue for r in responses[:-1]]
    assert [(i.line, i.byte_offset, i.json_path, i.code, i.message) for i in issues] == [
        (i.line, i.offset, i.path, str(i.code), i.message) for i in offline.issues]
    summary = responses[-1].summary
    assert (summary.error_count, summary.warning_count, dict(summary.issue_counts)) == (
        offline.errors, offline.warnings, offline.issue_counts)
    assert summary.format == pb.DATASET_FORMAT_CHAT and summary.example_count == 7 and summary.valid_example_count == 3
    assert client.run.service.runtime.objects.list("dataset/") == before
    empty = client.validate(b"")
    assert [r.issue.code for r in empty[:-1]] == ["empty_file"]


def test_sha256_mismatch_is_rejected_precisely(client):
    dataset = client.dataset()
    wrong = hashlib.sha256(b"something else").hexdigest()
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "SHA256_MISMATCH") as failure:
        client.upload(dataset, OPENAI_CHAT, expected_sha256=wrong)
    assert failure[0].metadata["actual_sha256"] == hashlib.sha256(OPENAI_CHAT).hexdigest()
    assert failure[0].violations[0][0] == "header.expected_sha256"
    assert client.objects(dataset) == []
    good = client.upload(dataset, OPENAI_CHAT, expected_sha256=hashlib.sha256(OPENAI_CHAT).hexdigest())
    assert good.created


def test_hostile_lines_hit_the_limits_without_side_effects(client):
    dataset = client.dataset()
    deep = b'{"text": "x", "extra": ' + b"[" * 10_000 + b"]" * 10_000 + b"}\n"
    with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "DATASET_LIMIT_EXCEEDED") as failure:
        client.upload(dataset, b'{"text": "ok"}\n' + deep)
    assert (failure[0].metadata["limit"], failure[0].metadata["line"]) == ("max_depth", "2")

    def fifty_megabyte_line() -> Iterator[bytes]:
        yield b'{"text": "ok"}\n{"text": "'
        for _ in range(50):
            yield b"a" * MiB
        yield b'"}\n'
    with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "DATASET_LIMIT_EXCEEDED") as failure:
        client.upload(dataset, fifty_megabyte_line())
    assert (failure[0].metadata["limit"], failure[0].metadata["line"]) == ("max_line_bytes", "2")
    assert "max_line_bytes=1048576" in failure[0].message
    assert client.objects(dataset) == []
    assert client.GetDataset(pb.GetDatasetRequest(name=dataset)).dataset.version_count == 0


def test_file_and_example_limits_and_the_stored_bytes_quota(settings):
    quota = len(OPENAI_CHAT) + 1000
    settings = settings.replace(dataset_max_file_bytes=1500, dataset_max_examples=20, quota_stored_bytes=quota)
    with running("dataset", settings) as run:
        client = Client(run)
        dataset = client.dataset()
        with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "DATASET_LIMIT_EXCEEDED") as failure:
            client.upload(dataset, b'{"text": "a"}\n' * 21)
        assert failure[0].metadata["limit"] == "max_examples"
        with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "DATASET_LIMIT_EXCEEDED") as failure:
            client.upload(dataset, b'{"text": "' + b"a" * 5000 + b'"}\n', chunk=1000)
        assert failure[0].metadata["limit"] == "max_file_bytes"
        client.upload(dataset, OPENAI_CHAT)
        with pytest.raises(grpc.RpcError) as caught:
            client.upload(dataset, b'{"text": "' + b"b" * 1090 + b'"}\n')
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert quota_failure(caught.value) == [("projects/alpha", f"stored bytes quota {quota}")]
        assert client.objects(dataset) == [f"dataset/alpha/{dataset.split('/')[-1]}/versions/"
                                           f"{hashlib.sha256(OPENAI_CHAT).hexdigest()}.jsonl"]
        with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "DATASET_LIMIT_EXCEEDED"):
            client.validate(b'{"text": "a"}\n' * 21)


# -- resumable uploads ---------------------------------------------------------------------------


def domain_service(run) -> DatasetService:
    """The service layer over the running service's database and bucket, to call it in-process."""
    runtime = run.service.runtime
    return DatasetService(runtime.settings, Repository(runtime.db, runtime.objects), runtime.page_tokens,
                          TrainerPeer(runtime.settings))


def _big_file(size: int) -> bytes:
    line = b'{"text": "' + b"x" * 1000 + b'"}\n'
    lines = [line.replace(b"x" * 8, f"{i:08d}".encode(), 1) for i in range(size // len(line))]
    return b"".join(lines)


def _break_after(client: Client, dataset: str, data: bytes, sent: int, request_id: str, segment: int,
                 **header) -> None:
    """Send the header and the first `sent` bytes, wait until the server committed a segment, then cut the
    stream (the client cancels the call as a dying process would)."""
    hold = threading.Event()

    def chunks():
        for i in range(0, sent, MiB):
            yield data[i:min(i + MiB, sent)]
        hold.wait(60)

    call = client.stub.UploadDatasetVersion.future(client.requests(dataset, chunks(), request_id, **header),
                                                   metadata=client.md, timeout=60)
    name = f"{dataset}/uploads/{request_id}"
    deadline = time.monotonic() + 60
    while True:  # poll the observable state: the first segment committed
        try:
            if client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=name)).upload.committed_bytes >= segment:
                break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.NOT_FOUND
        assert time.monotonic() < deadline, "the first segment was never committed"
        time.sleep(0.05)
    call.cancel()
    hold.set()
    with pytest.raises(grpc.FutureCancelledError):
        call.result()


def test_broken_upload_resumes_from_the_committed_offset(settings):
    segment = 5 * MiB
    settings = settings.replace(dataset_upload_segment_bytes=segment)
    data = _big_file(12 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    with running("dataset", settings) as run:
        client = Client(run)
        dataset = client.dataset()
        request_id = str(uuid.uuid4())
        _break_after(client, dataset, data, 8 * MiB, request_id, segment, expected_sha256=sha)
        name = f"{dataset}/uploads/{request_id}"
        upload = client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=name)).upload
        assert (upload.state, upload.committed_bytes) == (pb.DATASET_UPLOAD_STATE_ACTIVE, segment)
        assert upload.expire_time.ToDatetime() > upload.create_time.ToDatetime()
        assert client.GetDataset(pb.GetDatasetRequest(name=dataset)).dataset.version_count == 0

        with fails(grpc.StatusCode.FAILED_PRECONDITION, "UPLOAD_OFFSET_MISMATCH") as failure:
            client.upload(dataset, data[1000:], request_id=request_id, offset=1000, expected_sha256=sha)
        assert failure[0].metadata["committed_bytes"] == str(segment)
        # The resumed stream carries only the bytes after the committed offset.
        response = client.upload(dataset, data[segment:], request_id=request_id, offset=segment,
                                 expected_sha256=sha)
        assert response.created and response.dataset_version.sha256 == sha
        assert response.dataset_version.size_bytes == len(data)
        assert response.dataset_version.statistics.example_count == len(data.splitlines())
        assert client.objects(dataset) == [response.dataset_version.content.key]  # staging removed
        assert hashlib.sha256(client.download(response.dataset_version.name)).hexdigest() == sha
        upload = client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=name)).upload
        assert upload.state == pb.DATASET_UPLOAD_STATE_SUCCEEDED

        # A session nobody resumes expires: its staged bytes are swept.
        abandoned = str(uuid.uuid4())
        _break_after(client, dataset, data, 6 * MiB, abandoned, segment)
        staged = [k for k in client.objects(dataset) if "/uploads/" in k]
        assert len(staged) == 1
        assert domain_service(run).sweep_uploads(datetime.now(timezone.utc) + timedelta(seconds=settings.dataset_upload_ttl_s
                                                                            + 60)) == 2
        assert client.objects(dataset) == [response.dataset_version.content.key]
        with fails(grpc.StatusCode.NOT_FOUND, "DATASET_UPLOAD_NOT_FOUND"):
            client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=f"{dataset}/uploads/{abandoned}"))


@pytest.mark.parametrize("seen", ["at once", "while settling"])
def test_a_cut_stream_that_looked_complete_keeps_its_whole_segments(settings, seen):
    """gRPC can end a cancelled call's request stream as if the client had finished; the cut shows only a
    moment later (here: right after the stream ends, or only while the service settles a rejection — the
    bytes so far do not match expected_sha256). Either way the session stays resumable, and the short tail
    received before the cut is not stored: a short part in the middle of the file could never be composed."""
    segment = 5 * MiB
    settings = settings.replace(dataset_upload_segment_bytes=segment)
    data = _big_file(12 * MiB)
    sha = hashlib.sha256(data).hexdigest()
    with running("dataset", settings) as run:
        client = Client(run)
        dataset = client.dataset()
        request_id = str(uuid.uuid4())
        service = domain_service(run)

        def cut(settle_s: float) -> None:
            if seen == "at once" or settle_s > 0:
                raise Cancelled("the client ended the stream before it was complete; resume it", "STREAM_BROKEN")
        set_principal(Principal("cut-test", "alpha"))  # what the auth interceptor does for a call
        try:
            with pytest.raises(Cancelled):
                service.upload(UploadHeader(dataset=dataset, request_id=request_id, expected_sha256=sha),
                               (data[i:i + MiB] for i in range(0, 7 * MiB, MiB)), cut)
        finally:
            set_principal(None)
        name = f"{dataset}/uploads/{request_id}"
        assert client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=name)).upload.committed_bytes == segment
        assert len([k for k in client.objects(dataset) if "/uploads/" in k]) == 1  # the tail was never stored

        response = client.upload(dataset, data[segment:], request_id=request_id, offset=segment,
                                 expected_sha256=sha)
        assert response.created and response.dataset_version.sha256 == sha
        assert client.objects(dataset) == [response.dataset_version.content.key]  # the stored tail removed too
        assert hashlib.sha256(client.download(response.dataset_version.name)).hexdigest() == sha


def test_a_stream_that_ends_before_the_declared_size_leaves_a_resumable_session(settings):
    segment = 5 * MiB
    settings = settings.replace(dataset_upload_segment_bytes=segment)
    data = _big_file(12 * MiB)
    with running("dataset", settings) as run:
        client = Client(run)
        dataset = client.dataset()
        request_id = str(uuid.uuid4())
        with fails(grpc.StatusCode.FAILED_PRECONDITION, "UPLOAD_INCOMPLETE") as failure:
            client.upload(dataset, data[:7 * MiB], request_id=request_id, size_bytes=len(data))
        assert failure[0].metadata["committed_bytes"] == str(segment)  # the short tail is not committed
        assert f"byte {7 * MiB} of the {len(data)}" in failure[0].message
        name = f"{dataset}/uploads/{request_id}"
        upload = client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=name)).upload
        assert (upload.state, upload.committed_bytes) == (pb.DATASET_UPLOAD_STATE_ACTIVE, segment)

        response = client.upload(dataset, data[segment:], request_id=request_id, offset=segment,
                                 size_bytes=len(data))
        assert response.created and response.dataset_version.size_bytes == len(data)
        assert client.download(response.dataset_version.name) == data

        # More bytes than declared is another file: rejected, nothing kept.
        other = str(uuid.uuid4())
        with fails(grpc.StatusCode.INVALID_ARGUMENT, "UPLOAD_SIZE_MISMATCH") as failure:
            client.upload(dataset, OPENAI_CHAT, request_id=other, size_bytes=len(OPENAI_CHAT) - 1)
        assert failure[0].violations == [("header.size_bytes", f"declares {len(OPENAI_CHAT) - 1} bytes but the "
                                                               f"upload carried {len(OPENAI_CHAT)}")]
        with fails(grpc.StatusCode.NOT_FOUND, "DATASET_UPLOAD_NOT_FOUND"):
            client.GetDatasetUpload(pb.GetDatasetUploadRequest(name=f"{dataset}/uploads/{other}"))
        with fails(grpc.StatusCode.INVALID_ARGUMENT) as failure:
            client.upload(dataset, OPENAI_CHAT, size_bytes=-1)
        assert failure[0].violations == [("header.size_bytes", "must not be negative")]
        assert client.objects(dataset) == [response.dataset_version.content.key]


def test_object_store_down_mid_upload_is_unavailable_and_the_same_upload_succeeds_later(settings, tmp_path):
    store = SeaweedS3(tmp_path / "own-s3").start()
    try:
        settings = settings.replace(s3_endpoint=store.endpoint, s3_access_key=store.access_key,
                                    s3_secret_key=store.secret_key)
        with running("dataset", settings) as run:
            client = Client(run)
            dataset = client.dataset()
            request_id, hold = str(uuid.uuid4()), threading.Event()

            def chunks():
                yield OPENAI_CHAT[:100]
                hold.wait(60)
                yield OPENAI_CHAT[100:]
            call = client.stub.UploadDatasetVersion.future(client.requests(dataset, chunks(), request_id),
                                                           metadata=client.md, timeout=120)
            store.stop()
            hold.set()
            with pytest.raises(grpc.RpcError) as caught:
                call.result()
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
            store.start()
            assert client.GetDataset(pb.GetDatasetRequest(name=dataset)).dataset.version_count == 0
            response = client.upload(dataset, OPENAI_CHAT, request_id=request_id)
            assert response.created and response.dataset_version.sha256 == hashlib.sha256(OPENAI_CHAT).hexdigest()
            assert client.objects(dataset) == [response.dataset_version.content.key]
    finally:
        store.stop()


# -- download, pagination, deletion, authorization -----------------------------------------------


def test_download_round_trip_and_data_loss_on_tampered_bytes(client):
    dataset = client.dataset()
    version = client.upload(dataset, OPENAI_CHAT).dataset_version
    assert client.download(version.name) == OPENAI_CHAT
    client.run.service.runtime.objects.put_bytes(version.content.key, OPENAI_CHAT.replace(b"Paris", b"Lyon!"))
    with fails(grpc.StatusCode.DATA_LOSS, "DATASET_VERSION_CORRUPT"):
        client.download(version.name)
    with fails(grpc.StatusCode.NOT_FOUND, "DATASET_VERSION_NOT_FOUND"):
        client.download(f"{dataset}/versions/0123456789abcdef")


def test_download_urls_read_the_exact_bytes_for_their_project_only(client, settings):
    dataset = client.dataset()
    version = client.upload(dataset, OPENAI_CHAT).dataset_version
    request = pb.GenerateDatasetVersionDownloadUrlRequest(name=version.name)
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "DIRECT_DOWNLOAD_UNAVAILABLE"):  # no public URL set
        client.GenerateDatasetVersionDownloadUrl(request)

    with running("dataset", settings.replace(s3_public_url=f"http://{settings.s3_endpoint}")) as run:
        direct = Client(run)
        dataset = direct.dataset()
        version = direct.upload(dataset, OPENAI_CHAT).dataset_version
        before = datetime.now(timezone.utc)
        response = direct.GenerateDatasetVersionDownloadUrl(
            pb.GenerateDatasetVersionDownloadUrlRequest(name=version.name))
        after = datetime.now(timezone.utc)
        with urllib.request.urlopen(response.url, timeout=30) as body:
            assert body.read() == OPENAI_CHAT
        assert (response.size_bytes, response.sha256) == (len(OPENAI_CHAT), hashlib.sha256(OPENAI_CHAT).hexdigest())
        ttl = timedelta(minutes=15)
        assert before + ttl <= response.expire_time.ToDatetime(timezone.utc) <= after + ttl
        with pytest.raises(urllib.error.HTTPError) as refused:  # the signature covers the key
            urllib.request.urlopen(response.url.replace(version.content.key, version.content.key + "x"), timeout=30)
        assert refused.value.code == 403

        other = Client(run, run.service.runtime.keys.create("beta").secret)
        with fails(grpc.StatusCode.PERMISSION_DENIED, "PROJECT_MISMATCH"):
            other.GenerateDatasetVersionDownloadUrl(pb.GenerateDatasetVersionDownloadUrlRequest(name=version.name))
        with fails(grpc.StatusCode.NOT_FOUND, "DATASET_VERSION_NOT_FOUND"):
            direct.GenerateDatasetVersionDownloadUrl(
                pb.GenerateDatasetVersionDownloadUrlRequest(name=f"{dataset}/versions/0123456789abcdef"))


def test_pagination_walks_everything_once_and_rejects_tampered_tokens(shared):
    client = Client(shared, shared.service.runtime.keys.create("paging").secret)
    parent = "projects/paging"
    ids = [f"p-{i:02d}" for i in range(7)]
    for dataset_id in reversed(ids):
        client.CreateDataset(pb.CreateDatasetRequest(parent=parent, dataset_id=dataset_id))
    seen, token = [], ""
    while True:
        page = client.ListDatasets(pb.ListDatasetsRequest(parent=parent, page_size=3, page_token=token))
        seen += [d.name.split("/")[-1] for d in page.datasets]
        token = page.next_page_token
        if not token:
            break
    assert seen == ids
    first = client.ListDatasets(pb.ListDatasetsRequest(parent=parent, page_size=3))
    tampered = first.next_page_token[:-2] + ("AA" if first.next_page_token[-2:] != "AA" else "BB")
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):
        client.ListDatasets(pb.ListDatasetsRequest(parent=parent, page_size=3, page_token=tampered))

    dataset = f"{parent}/datasets/p-00"
    files = [b'{"text": "%d"}\n' % i for i in range(5)]
    names = [client.upload(dataset, f).dataset_version.name for f in files]
    seen, token = [], ""
    while True:
        page = client.ListDatasetVersions(pb.ListDatasetVersionsRequest(parent=dataset, page_size=2, page_token=token))
        assert all(not v.validation_report.issues for v in page.dataset_versions)
        seen += [v.name for v in page.dataset_versions]
        token = page.next_page_token
        if not token:
            break
    assert seen == names[::-1]  # newest first
    page = client.ListDatasetVersions(pb.ListDatasetVersionsRequest(parent=dataset, page_size=2))
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):  # a token of another query
        client.ListDatasetVersions(pb.ListDatasetVersionsRequest(parent=f"{parent}/datasets/p-01", page_size=2,
                                                                 page_token=page.next_page_token))
    with fails(grpc.StatusCode.INVALID_ARGUMENT):
        client.ListDatasets(pb.ListDatasetsRequest(parent=parent, page_size=-1))

    many = b"".join(b'{"text": "line %d"}\n' % i + (b"\n" if i % 3 == 0 else b"") for i in range(23))
    version = client.upload(f"{parent}/datasets/p-01", many).dataset_version
    texts, lines, token = [], [], ""
    while True:
        page = client.ListDatasetExamples(pb.ListDatasetExamplesRequest(parent=version.name, page_size=4,
                                                                        page_token=token))
        texts += [e.text.text for e in page.examples]
        lines += [e.line for e in page.examples]
        token = page.next_page_token
        if not token:
            break
    assert texts == [f"line {i}" for i in range(23)]
    assert lines == [n + 1 for n, raw in enumerate(many.split(b"\n")) if raw.strip()]


def test_deleting_checks_the_trainer_and_removes_the_bytes(settings):
    with running_stack(settings) as stack:
        client = Client(stack.dataset)
        dataset = client.dataset()
        used = client.upload(dataset, OPENAI_CHAT).dataset_version
        unused = client.upload(dataset, TEXT).dataset_version
        job = trainer_pb2_grpc.TrainerServiceStub(stack.trainer.channel).CreateTrainingJob(
            trainer_pb2.CreateTrainingJobRequest(parent=PROJECT, spec=trainer_pb2.TrainingJobSpec(
                base_model="tiny-llama", training_data=used.name, output_model=f"{PROJECT}/models/m")),
            metadata=stack.trainer.metadata(), timeout=30).training_job
        with fails(grpc.StatusCode.FAILED_PRECONDITION, "DATASET_VERSION_IN_USE") as failure:
            client.DeleteDatasetVersion(pb.DeleteDatasetVersionRequest(name=used.name))
        assert job.name.rsplit("/", 1)[1] in failure[0].message
        client.DeleteDatasetVersion(pb.DeleteDatasetVersionRequest(name=unused.name))
        assert client.objects(dataset) == [used.content.key]
        with fails(grpc.StatusCode.NOT_FOUND, "DATASET_VERSION_NOT_FOUND"):
            client.GetDatasetVersion(pb.GetDatasetVersionRequest(name=unused.name))
        with fails(grpc.StatusCode.FAILED_PRECONDITION, "DATASET_NOT_EMPTY"):
            client.DeleteDataset(pb.DeleteDatasetRequest(name=dataset))
        with fails(grpc.StatusCode.FAILED_PRECONDITION, "DATASET_VERSION_IN_USE"):
            client.DeleteDataset(pb.DeleteDatasetRequest(name=dataset, force=True))
        # A dataset no job used goes with all its bytes.
        spare = client.dataset()
        client.upload(spare, TEXT)
        client.DeleteDataset(pb.DeleteDatasetRequest(name=spare, force=True))
        assert client.objects(spare) == []
        with fails(grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND"):
            client.GetDataset(pb.GetDatasetRequest(name=spare))

    # No trainer to ask: nothing is deleted on a guess.
    with running("dataset", settings.replace(trainer_target=f"127.0.0.1:{free_port()}")) as run:
        client = Client(run)
        dataset = client.dataset()
        version = client.upload(dataset, TEXT).dataset_version
        with fails(grpc.StatusCode.UNAVAILABLE, "TRAINER_UNAVAILABLE"):
            client.DeleteDatasetVersion(pb.DeleteDatasetVersionRequest(name=version.name))
        assert client.objects(dataset) == [version.content.key]


def test_create_dataset_rules(client):
    request_id = str(uuid.uuid4())
    request = pb.CreateDatasetRequest(parent=PROJECT, dataset_id=f"c-{uuid.uuid4().hex[:8]}", request_id=request_id,
                                      dataset=pb.Dataset(description="d", labels={"env": "prod"}))
    first = client.CreateDataset(request).dataset
    assert client.CreateDataset(request).dataset == first  # replay
    request.request_id = str(uuid.uuid4())
    with fails(grpc.StatusCode.ALREADY_EXISTS, "DATASET_EXISTS"):
        client.CreateDataset(request)
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID"):
        client.CreateDataset(pb.CreateDatasetRequest(parent=PROJECT, dataset_id="Bad_Id"))
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as failure:
        client.CreateDataset(pb.CreateDatasetRequest(parent=PROJECT, dataset_id="x-labels",
                                                     dataset=pb.Dataset(labels={"Bad": "x"})))
    assert failure[0].violations[0][0] == "dataset.labels['Bad']"
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"):
        client.GetDatasetVersion(pb.GetDatasetVersionRequest(name=f"{first.name}/versions/../x"))
    with fails(grpc.StatusCode.INVALID_ARGUMENT):
        client.upload(first.name, OPENAI_CHAT, request_id="not-a-uuid")




def test_read_ahead_keeps_order_closes_its_source_and_raises_its_errors():
    from tunery.services.kit.objects import read_ahead

    closed = []

    def source(fail: bool):
        try:
            yield from (b"a", b"b", b"c")
            if fail:
                raise OSError("store gone")
        finally:
            closed.append(fail)

    assert list(read_ahead(source(False))) == [b"a", b"b", b"c"] and closed == [False]
    early = read_ahead(source(False))
    assert next(early) == b"a"
    early.close()  # the caller stopped (a cancelled download): the source is closed too
    assert closed == [False, False]
    with pytest.raises(OSError, match="store gone"):
        list(read_ahead(source(True)))
    assert closed == [False, False, True]
