"""The Python SDK against real services (in-process, real ports, real S3 and SQLite): every sub-API, the
typed errors, upload resume, watch reconnect across a service restart, and verified downloads."""

from __future__ import annotations

import hashlib
import importlib
import io
import json
import os
import threading
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Iterator

import grpc
import pytest
from minio import Minio

from service_fixtures import SERVICER_MODULES, running
from tunery.client import (Aborted, AlreadyExists, Client, FailedPrecondition, InvalidArgument,
                           NotFound, PermissionDenied, ResourceExhausted, TuneryError, Unauthenticated)
from tunery.client.datasets import Datasets
from tunery.dataset.v1 import dataset_pb2
from tunery.services.kit import logs
from tunery.services.kit.seaweed import free_port
from tunery.services.kit.server import Service
from tunery.services.kit.settings import Settings
from tunery.trainer.v1 import trainer_pb2

DEMO_DATA = Path(__file__).parents[1] / "clients/python/src/tunery/client/demo_data"
TRAIN = DEMO_DATA / "support_train.jsonl"
HELDOUT = DEMO_DATA / "support_heldout.jsonl"


def model_cache() -> Path:
    return Path(os.environ.get("TUNERY_TEST_MODEL_CACHE") or Path.home() / ".cache" / "tunery-test-models")


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The shared settings, with the model cache that survives between tests (tiny-llama builds once)."""
    return settings.replace(trainer_model_cache=model_cache())


def public_url(settings: Settings, url: str | None = None) -> Settings:
    """Settings under which the services hand out presigned URLs for downloads (of the test S3 server)."""
    return settings.replace(s3_public_url=url or f"http://{settings.s3_endpoint}")


def client_for(key: str, project: str = "alpha", **targets: str) -> Client:
    return Client(targets=targets, api_key=key, project=project, timeout_s=60)


@contextmanager
def stack(settings: Settings, *names: str) -> Iterator[tuple[Client, dict]]:
    """The named services in this process, wired to each other, and a client of project "alpha"."""
    with ExitStack() as stack:
        services: dict = {}
        for name in ("dataset", "registry", "trainer"):
            if name not in names:
                continue
            if name == "trainer":
                settings = settings.replace(dataset_target=services["dataset"].address,
                                            registry_target=services["registry"].address,
                                            service_api_key=_admin_key(services))
            services[name] = stack.enter_context(running(name, settings))
        key = next(iter(services.values())).key  # every service shares the database, so one key serves all
        client = client_for(key, **{name: s.address for name, s in services.items()})
        stack.callback(client.close)
        yield client, services


def _admin_key(services: dict) -> str:
    return services["dataset"].service.runtime.keys.create("default", admin=True, description="trainer").secret


def restart(service: Service) -> Service:
    """Stop an in-process service and start a fresh one on the same port (same database and bucket)."""
    settings = service.settings.replace(port=service.port)
    service.stop(0)
    module = importlib.import_module(SERVICER_MODULES[service.name])
    return Service(service.name, settings, module.MIGRATIONS, module.setup).start()


# -- the model registry ------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def tiny_adapter(tmp_path_factory) -> Path:
    """A real LoRA adapter on tiny-llama, as peft saves it, naming the catalog id as its base model."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tunery.services.trainer.base_models import resolve_base_model

    base = resolve_base_model("tiny-llama", model_cache())
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    out = tmp_path_factory.mktemp("adapter")
    model.save_pretrained(out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = "tiny-llama"
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


def test_models_upload_alias_history_and_download_loads_with_peft(settings, tiny_adapter, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tunery.services.trainer.base_models import resolve_base_model

    with stack(settings, "registry") as (client, _):
        request_id = str(uuid.uuid4())
        model = client.models.create("bot", base_model="tiny-llama", request_id=request_id)
        assert client.models.create("bot", base_model="tiny-llama", request_id=request_id).name == model.name
        v1 = client.models.upload("bot", tiny_adapter, description="first")
        v2 = client.models.upload("bot", tiny_adapter, description="second")
        assert [v1.name.rsplit("/", 1)[1], v2.name.rsplit("/", 1)[1]] == ["1", "2"]
        assert client.models.get_version("bot").name == v2.name  # a bare model means its latest version
        assert client.models.get_version("bot@1").description == "first"
        assert [v.name for v in client.models.versions("bot")] == [v2.name, v1.name]
        assert [v.name for v in client.models.versions("-", page_size=1)] == [v2.name, v1.name]

        moved = client.models.alias("bot@1", "production")
        assert moved.aliases["production"] == v1.name
        client.models.alias("bot@2", "production", etag=moved.etag)
        with pytest.raises(Aborted):
            client.models.alias("bot@1", "production", etag=moved.etag)  # stale etag
        history = list(client.models.history("bot", alias="production"))
        assert [(e.from_version, e.to_version) for e in history] == [(v1.name, v2.name), ("", v1.name)]
        with pytest.raises(FailedPrecondition):
            client.models.delete_version("bot@2")  # production points at it

        target = tmp_path / "adapter"
        client.models.download("bot:production", target)
        manifest = {f.path: f.sha256 for f in v2.manifest.files}
        assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in target.iterdir()} == manifest
        base = AutoModelForCausalLM.from_pretrained(resolve_base_model("tiny-llama", model_cache()))
        loaded = PeftModel.from_pretrained(base, target)
        assert any("lora_A" in name for name, _ in loaded.named_parameters())


def test_models_list_pages_and_typed_errors(settings, tiny_adapter, tmp_path):
    with stack(settings, "registry") as (client, services):
        for model_id in ("m-a", "m-b", "m-c"):
            client.models.create(model_id, base_model="tiny-llama")
        assert [m.name.rsplit("/", 1)[1] for m in client.models.list(page_size=2)] == ["m-a", "m-b", "m-c"]
        with pytest.raises(AlreadyExists):
            client.models.create("m-a", base_model="tiny-llama")
        with pytest.raises(NotFound) as missing:
            client.models.get("nope")
        assert missing.value.code == grpc.StatusCode.NOT_FOUND and "nope" in missing.value.message
        with pytest.raises(NotFound):
            client.models.get_version("m-a")  # no versions yet
        pickled = tmp_path / "pickled"
        pickled.mkdir()
        (pickled / "adapter_config.json").write_bytes((tiny_adapter / "adapter_config.json").read_bytes())
        (pickled / "adapter_model.bin").write_bytes(b"\x80\x04not really a pickle")
        with pytest.raises(InvalidArgument) as invalid:
            client.models.upload("m-a", pickled)
        assert any("adapter_model.bin" in v.field or "adapter_model.bin" in v.description
                   for v in invalid.value.field_violations) or "adapter_model.bin" in invalid.value.message
        assert list(client.models.versions("m-a")) == []
        with client_for("tk_" + "x" * 43, registry=services["registry"].address) as stranger:
            with pytest.raises(Unauthenticated):
                stranger.models.get("m-a")
        with client_for(services["registry"].key, project="beta", registry=services["registry"].address) as other:
            with pytest.raises(PermissionDenied):
                list(other.models.list())
        with pytest.raises(ValueError, match="model"):
            client.models.get("Not A Name")


@pytest.mark.parametrize("direct", [False, True], ids=["streamed", "direct"])
def test_download_of_corrupted_files_fails_and_writes_nothing(settings, tiny_adapter, tmp_path, direct):
    with stack(public_url(settings) if direct else settings, "registry") as (client, _):
        client.models.create("bot", base_model="tiny-llama")
        client.models.upload("bot", tiny_adapter)
        s3 = Minio(settings.s3_endpoint, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                   secure=False)
        weights = [o.object_name for o in s3.list_objects(settings.s3_bucket, recursive=True)
                   if o.object_name.endswith("adapter_model.safetensors")]
        assert weights
        for key in weights:  # same size, one byte flipped near the end (the tensor data)
            data = bytearray(s3.get_object(settings.s3_bucket, key).read())
            data[-1] ^= 0xFF
            s3.put_object(settings.s3_bucket, key, io.BytesIO(bytes(data)), len(data))
        target = tmp_path / "adapter"
        with pytest.raises(TuneryError) as failure:
            client.models.download("bot@1", target)
        assert failure.value.code in (grpc.StatusCode.DATA_LOSS,)
        assert list(target.iterdir()) == []  # nothing half-written, no staging folder left


@pytest.mark.parametrize("reachable", [True, False], ids=["direct", "fallback"])
def test_downloads_read_presigned_urls_and_stream_when_those_cannot_be_read(settings, tiny_adapter, tmp_path,
                                                                             reachable):
    """With TUNERY_S3_PUBLIC_URL the SDK reads the bytes straight from the object store; when that address
    cannot be reached from the client it streams them through the services instead, with the same result."""
    url = None if reachable else f"http://127.0.0.1:{free_port()}"  # nothing listens there
    calls = io.StringIO()
    logs.configure("json", "info", calls)
    try:
        with stack(public_url(settings, url), "dataset", "registry") as (client, _):
            version = client.datasets.upload(HELDOUT, dataset="held").dataset_version
            done: list[int] = []
            path = client.datasets.download(version.name, tmp_path / "held.jsonl",
                                            progress=lambda n, total: done.append(n))
            assert path.read_bytes() == HELDOUT.read_bytes() and done[-1] == version.size_bytes
            client.models.create("bot", base_model="tiny-llama")
            model_version = client.models.upload("bot", tiny_adapter)
            folder = client.models.download("bot", tmp_path / "adapter")
            assert {p.name: p.read_bytes() for p in folder.iterdir()} == \
                {p.name: p.read_bytes() for p in tiny_adapter.iterdir()}
            assert len(model_version.manifest.files) == len(list(folder.iterdir()))
    finally:
        logs.configure()
    rpcs = [json.loads(line).get("rpc", "").rsplit("/", 1)[-1] for line in calls.getvalue().splitlines()
            if '"rpc.finished"' in line]
    assert {"GenerateDatasetVersionDownloadUrl", "GenerateModelVersionDownloadUrls"} <= set(rpcs)
    streamed = {"DownloadDatasetVersion", "DownloadModelVersion"} & set(rpcs)
    assert streamed == (set() if reachable else {"DownloadDatasetVersion", "DownloadModelVersion"})


# -- datasets ------------------------------------------------------------------------------------------------
def big_chat_file(path: Path, min_bytes: int) -> Path:
    """A valid chat JSONL file of at least `min_bytes`, every line distinct."""
    lines = TRAIN.read_text().splitlines()
    with open(path, "w") as f:
        n = 0
        while f.tell() < min_bytes:
            row = json.loads(lines[n % len(lines)])
            row["messages"][1]["content"] += f" (ticket {n})"
            f.write(json.dumps(row) + "\n")
            n += 1
    return path


def test_datasets_create_upload_read_download(settings, tmp_path):
    with stack(settings, "dataset") as (client, _):
        client.datasets.create("support", description="replies")
        client.datasets.create("zz-other")
        assert [d.name.rsplit("/", 1)[1] for d in client.datasets.list(page_size=1)] == ["support", "zz-other"]
        seen: list[tuple[int, int]] = []
        result = client.datasets.upload(TRAIN, dataset="support", format="chat", progress=lambda d, t: seen.append((d, t)))
        version = result.dataset_version
        assert result.created and seen[-1] == (TRAIN.stat().st_size, TRAIN.stat().st_size)
        assert version.sha256 == hashlib.sha256(TRAIN.read_bytes()).hexdigest()
        assert version.statistics.example_count == 78 and version.format == dataset_pb2.DATASET_FORMAT_CHAT
        again = client.datasets.upload(TRAIN, dataset="support")  # the same bytes: the same version
        assert not again.created and again.dataset_version.name == version.name
        ref = f"support@{version.name.rsplit('/', 1)[1]}"
        assert client.datasets.get_version(ref).name == version.name
        assert client.datasets.get_version("support").name == version.name  # latest
        assert client.datasets.get("support").version_count == 1
        assert [v.name for v in client.datasets.versions("support")] == [version.name]
        examples = list(client.datasets.examples(ref, page_size=50))
        assert len(examples) == 78 and examples[0].line == 1 and examples[0].chat.messages[2].role == "assistant"
        # a dataset that does not exist yet is created by upload
        held = client.datasets.upload(HELDOUT, dataset="held-out").dataset_version
        assert held.statistics.example_count == 20
        out = client.datasets.download(ref, tmp_path / "copy.jsonl")
        assert out.read_bytes() == TRAIN.read_bytes()
        with pytest.raises(FailedPrecondition):
            client.datasets.delete("support")  # it has versions
        client.datasets.delete("zz-other")
        with pytest.raises(NotFound):
            client.datasets.get("zz-other")


def test_dataset_errors_are_typed_with_line_numbers(settings, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(TRAIN.read_text().splitlines()[0] + "\n" + '{"messages": [{"role": "bot", "content": "hi"}]}\n')
    offline = Datasets.validate_file(bad)
    assert not offline.ok and offline.issues[0].line == 2
    with stack(settings.replace(dataset_max_examples=10), "dataset") as (client, _):
        with pytest.raises(InvalidArgument) as invalid:
            client.datasets.upload(bad, dataset="support")
        assert [v.field for v in invalid.value.field_violations][0].startswith("line 2: messages[0].role")
        assert client.datasets.get("support").version_count == 0  # no partial state
        with pytest.raises(ResourceExhausted) as limited:
            client.datasets.upload(TRAIN, dataset="support")
        assert "example" in limited.value.message
        with pytest.raises(NotFound):
            client.datasets.get_version("support@0123456789abcdef")
        with pytest.raises(NotFound, match="no versions"):
            client.datasets.download("support", tmp_path / "x")  # a bare name means the latest version
        assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("direct", [False, True], ids=["streamed", "direct"])
def test_dataset_download_of_corrupted_bytes_fails_and_writes_nothing(settings, tmp_path, direct):
    with stack(public_url(settings) if direct else settings, "dataset") as (client, _):
        version = client.datasets.upload(HELDOUT, dataset="held").dataset_version
        s3 = Minio(settings.s3_endpoint, access_key=settings.s3_access_key, secret_key=settings.s3_secret_key,
                   secure=False)
        key = version.content.key
        data = bytearray(s3.get_object(version.content.bucket, key).read())
        data[10] ^= 0x01
        s3.put_object(version.content.bucket, key, io.BytesIO(bytes(data)), len(data))
        with pytest.raises(TuneryError) as failure:
            client.datasets.download(f"held@{version.name.rsplit('/', 1)[1]}", tmp_path / "out" / "held.jsonl")
        assert failure.value.code == grpc.StatusCode.DATA_LOSS
        assert list((tmp_path / "out").iterdir()) == []


SEGMENT = 5 * 1024 * 1024  # the dataset service's smallest committed segment


def test_upload_resumes_a_broken_upload_from_the_committed_offset(settings, tmp_path):
    path = big_chat_file(tmp_path / "big.jsonl", 2 * SEGMENT + 1024 * 1024)
    data = path.read_bytes()
    request_id = str(uuid.uuid4())
    with stack(settings.replace(dataset_upload_segment_bytes=SEGMENT), "dataset") as (client, services):
        client.datasets.create("big")
        name = "projects/alpha/datasets/big"
        stub = client._transport.stub("dataset")
        release = threading.Event()

        def first_attempt():
            yield dataset_pb2.UploadDatasetVersionRequest(header=dataset_pb2.UploadDatasetVersionHeader(
                dataset=name, request_id=request_id, expected_sha256=hashlib.sha256(data).hexdigest()))
            for start in range(0, SEGMENT + 1024 * 1024, 1024 * 1024):
                yield dataset_pb2.UploadDatasetVersionRequest(chunk=data[start:start + 1024 * 1024])
            release.wait(120)  # hold the stream open until the test breaks it

        call = stub.UploadDatasetVersion.future(first_attempt(), metadata=services["dataset"].metadata())
        upload_name = f"{name}/uploads/{request_id}"
        committed = _wait_committed(client, upload_name)
        call.cancel()
        release.set()
        assert committed == SEGMENT

        starts: list[int] = []
        result = client.datasets.upload(path, dataset="big", request_id=request_id,
                                        progress=lambda done, total: starts.append(done))
        assert starts[0] == SEGMENT  # resumed, the first segment was not sent again
        assert result.created and result.dataset_version.sha256 == hashlib.sha256(data).hexdigest()
        assert result.dataset_version.size_bytes == len(data)


def _wait_committed(client: Client, upload_name: str) -> int:
    """Poll GetDatasetUpload until a segment is committed (bounded by a generous deadline)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            upload = client._transport.call("dataset", "GetDatasetUpload",
                                            dataset_pb2.GetDatasetUploadRequest(name=upload_name))
            if upload.upload.committed_bytes:
                return upload.upload.committed_bytes
        except NotFound:
            pass
        time.sleep(0.1)
    raise AssertionError("no segment was committed")


def test_upload_survives_a_service_restart_mid_stream(settings, tmp_path):
    path = big_chat_file(tmp_path / "big.jsonl", 2 * SEGMENT + 1024 * 1024)
    with stack(settings.replace(dataset_upload_segment_bytes=SEGMENT), "dataset") as (client, services):
        client.datasets.create("big")
        replaced: list[Service] = []
        progress: list[int] = []
        committed: list[int] = []
        request_ids = [str(uuid.uuid4())]

        def on_progress(done: int, total: int) -> None:
            progress.append(done)
            if done >= SEGMENT + 2 * 1024 * 1024 and not replaced:
                # once the first segment is committed, restart the service under the stream
                committed.append(_wait_committed(client, f"projects/alpha/datasets/big/uploads/{request_ids[0]}"))
                replaced.append(restart(services["dataset"].service))

        try:
            result = client.datasets.upload(path, dataset="big", progress=on_progress, request_id=request_ids[0])
        finally:
            for service in replaced:
                service.stop(0)
        assert replaced, "the service was never restarted"
        assert result.dataset_version.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        restarts = [b for a, b in zip(progress, progress[1:]) if b < a]
        # A second stream finished the upload. It starts at the committed offset, or at 0 when the stopping
        # server ended the old stream as if complete and so dropped the session (reported to the dataset
        # service); the exact resume is pinned by test_upload_resumes_a_broken_upload_from_the_committed_offset.
        assert len(restarts) == 1 and restarts[0] in (0, *committed), (restarts, committed)


# -- training jobs -------------------------------------------------------------------------------------------
TERMINAL = {trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED, trainer_pb2.TRAINING_JOB_STATE_FAILED,
            trainer_pb2.TRAINING_JOB_STATE_CANCELLED}


def test_jobs_plan_create_watch_across_a_trainer_restart_and_download(settings, tmp_path):
    settings = settings.replace(trainer_worker_threads=1)
    with stack(settings, "dataset", "registry", "trainer") as (client, services):
        assert "tiny-llama" in [m.id for m in client.jobs.base_models()]
        train = client.datasets.upload(TRAIN, dataset="support").dataset_version
        client.datasets.upload(HELDOUT, dataset="held")
        spec = client.jobs.spec("tiny-llama", "support", "bot", validation_dataset="held",
                                hyperparameters={"epochs": 2, "batch_size": 2, "seed": 3},
                                lora={"rank": 4}, checkpoint_interval_steps=5)
        plan = client.jobs.plan(spec)
        assert plan.training_data.name == train.name and plan.training_example_count == 78
        assert plan.resolved.hyperparameters.epochs == 2 and "user" in plan.resolved.reasons["epochs"]
        request_id = str(uuid.uuid4())
        job = client.jobs.create(spec, request_id=request_id)
        assert client.jobs.create(spec, request_id=request_id).name == job.name  # a retry: the same job
        assert [j.name for j in client.jobs.list()] == [job.name]

        seqs, restarted_while = [], []
        trainer = services["trainer"].service
        try:
            for event in client.jobs.watch(job):
                seqs.append(event.seq)
                if event.WhichOneof("event") == "step_metrics" and not restarted_while:
                    restarted_while.append(client.jobs.get(job).state)
                    trainer = restart(trainer)
            final = client.jobs.get(job)
        finally:
            trainer.stop(0)
            trainer = restart(trainer)  # the stack's own teardown stops this one
            services["trainer"].service = trainer
        assert seqs == list(range(1, len(seqs) + 1))  # nothing missed, nothing twice
        assert final.state == trainer_pb2.TRAINING_JOB_STATE_SUCCEEDED, final.error
        assert [e.seq for e in client.jobs.events(job, page_size=7)] == seqs
        if restarted_while == [trainer_pb2.TRAINING_JOB_STATE_RUNNING]:
            assert final.attempt_count >= 2
        assert list(client.jobs.checkpoints(job))
        assert list(client.models.versions("bot", training_job=job.name.rsplit("/", 1)[1]))[0].name == \
            final.model_version
        folder = client.models.download(final.model_version, tmp_path / "adapter")
        assert (folder / "adapter_config.json").exists() and (folder / "adapter_model.safetensors").exists()
        with pytest.raises(FailedPrecondition):
            client.jobs.cancel(job)  # already terminal


def test_jobs_cancel_and_wait(settings):
    settings = settings.replace(trainer_worker_threads=1)
    with stack(settings, "dataset", "registry", "trainer") as (client, _):
        client.datasets.upload(TRAIN, dataset="support")
        job = client.jobs.create(base_model="tiny-llama", dataset="support", model="bot",
                                 hyperparameters={"epochs": 50, "batch_size": 1})
        with pytest.raises(InvalidArgument) as invalid:
            client.jobs.create(base_model="tiny-llama", dataset="support", model="bot",
                               hyperparameters={"epochs": -1})
        assert any("epochs" in v.field for v in invalid.value.field_violations)
        with pytest.raises(NotFound):
            client.jobs.get("job-000000000000")
        cancelled = client.jobs.cancel(job)
        assert cancelled.state == trainer_pb2.TRAINING_JOB_STATE_CANCELLED or cancelled.cancel_requested
        events = []
        final = client.jobs.wait(job, on_event=events.append)
        assert final.state == trainer_pb2.TRAINING_JOB_STATE_CANCELLED
        assert events[-1].state_changed.state == trainer_pb2.TRAINING_JOB_STATE_CANCELLED


def test_the_sdk_and_cli_import_without_torch_or_server_code(tmp_path):
    """The tunery-client distribution must work where torch, transformers, peft and the services are absent."""
    import subprocess
    import sys
    import tomllib

    pyproject = tomllib.loads((Path(__file__).parents[1] / "clients/python/pyproject.toml").read_text())
    assert not [d for d in pyproject["project"]["dependencies"] if d.split("[")[0].split(">")[0].split("=")[0]
                in ("torch", "transformers", "peft", "tunery")]
    script = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers", "peft") or name.startswith("tunery.services"):
            raise ImportError(f"blocked: {name}")
sys.meta_path.insert(0, Block())
from tunery.client import Client, NotFound
from tunery.client import cli, commands, datasets, jobs, models, demo
cli.build_parser().parse_args(["jobs", "create", "--base-model", "b", "--dataset", "d", "--model", "m"])
report = datasets.Datasets.validate_file(sys.argv[1])
assert report.ok
print("ok", report.stats.examples)
"""
    done = subprocess.run([sys.executable, "-c", script, str(HELDOUT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["ok", "20"]


def test_a_clean_install_of_the_sdk_pulls_no_torch_or_server_code(tmp_path):
    """pip resolves the SDK's distribution alone, as on a machine with nothing installed."""
    import subprocess
    import sys
    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                    "--report", str(report), str(Path(__file__).parents[1] / "clients" / "python")],
                   check=True, timeout=600, capture_output=True)
    names = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert {"tunery-client", "grpcio", "protobuf"} <= names
    assert not names & {"torch", "transformers", "peft", "tunery", "sqlalchemy", "minio"}
