"""The model registry through a real gRPC server, real S3 (SeaweedFS) and a real LoRA adapter built with peft."""

from __future__ import annotations

import hashlib
import json
import pickle
import struct
import urllib.request
from datetime import datetime, timedelta, timezone

import grpc
import pytest
import torch
from google.protobuf import field_mask_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from service_fixtures import fails, running
from tunery.common.v1 import common_pb2
from tunery.registry.v1 import registry_pb2 as pb
from tunery.registry.v1 import registry_pb2_grpc as pb_grpc

BASE = "tiny-llama"
MODEL = "projects/alpha/models/chat"
JOB = "projects/alpha/trainingJobs/job-0123456789ab"
DATA_SHA = "ab" * 32
TIMEOUT = 30
INPUT_IDS = torch.tensor([[1, 5, 9, 200, 17, 3]])


def tiny_base() -> LlamaForCausalLM:
    """The same tiny Llama every time (seeded), built from a config: no download."""
    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=4, vocab_size=256)
    return LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> tuple[dict[str, bytes], torch.Tensor]:
    """A saved LoRA adapter (file name → bytes) and the logits it gives on INPUT_IDS."""
    folder = tmp_path_factory.mktemp("adapter")
    torch.manual_seed(1)
    model = get_peft_model(tiny_base(), LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                   init_lora_weights=False))
    model.eval()
    with torch.no_grad():
        logits = model(INPUT_IDS).logits
    model.save_pretrained(folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = BASE  # the registry's model names its base model
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}, logits


@pytest.fixture
def registry(settings):
    with running("registry", settings) as service:
        yield service


def stub_of(service) -> pb_grpc.ModelRegistryServiceStub:
    return pb_grpc.ModelRegistryServiceStub(service.channel)


def create_model(service, model_id: str = "chat") -> pb.Model:
    return stub_of(service).CreateModel(pb.CreateModelRequest(
        parent="projects/alpha", model_id=model_id, model=pb.Model(base_model=BASE)),
        metadata=service.metadata(), timeout=TIMEOUT).model


def upload_messages(files: dict[str, bytes], parent: str = MODEL, labels: dict | None = None,
                    request_id: str = "", digests: dict[str, str] | None = None, sizes: dict[str, int] | None = None):
    yield pb.UploadModelVersionRequest(header=pb.UploadModelVersionHeader(
        parent=parent, request_id=request_id,
        model_version=pb.ModelVersion(description="uploaded", labels=labels or {},
                                      lineage=pb.Lineage(seed=7, metrics={"loss": 1.25}))))
    for path, data in files.items():
        yield pb.UploadModelVersionRequest(file=pb.ManifestFile(
            path=path, size_bytes=(sizes or {}).get(path, len(data)),
            sha256=(digests or {}).get(path, hashlib.sha256(data).hexdigest())))
        for start in range(0, len(data), 4096):  # several chunks per file
            yield pb.UploadModelVersionRequest(chunk=data[start:start + 4096])


def upload(service, files: dict[str, bytes], key: str | None = None, **options) -> pb.ModelVersion:
    return stub_of(service).UploadModelVersion(upload_messages(files, **options), metadata=service.metadata(key),
                                               timeout=TIMEOUT).model_version


def download(service, name: str) -> tuple[list[pb.ManifestFile], dict[str, bytes]]:
    entries, files, current = [], {}, None
    for message in stub_of(service).DownloadModelVersion(pb.DownloadModelVersionRequest(name=name),
                                                         metadata=service.metadata(), timeout=TIMEOUT):
        if message.WhichOneof("payload") == "file":
            entries.append(message.file)
            current = message.file.path
            files[current] = b""
        else:
            files[current] += message.chunk
    for entry in entries:  # clients verify too
        assert hashlib.sha256(files[entry.path]).hexdigest() == entry.sha256
    return entries, files


def registry_objects(service) -> list[str]:
    return service.service.runtime.objects.list("registry/")


def test_upload_download_and_load_with_stock_peft(registry, adapter, tmp_path):
    files, logits = adapter
    create_model(registry)
    version = upload(registry, files, labels={"stage": "dev"})
    assert version.name == f"{MODEL}/versions/1"
    assert [f.path for f in version.manifest.files] == sorted(files)
    for entry in version.manifest.files:
        assert entry.size_bytes == len(files[entry.path])
        assert entry.sha256 == hashlib.sha256(files[entry.path]).hexdigest()
    media = {f.path: f.media_type for f in version.manifest.files}
    assert media == {"README.md": "text/markdown", "adapter_config.json": "application/json",
                     "adapter_model.safetensors": "application/octet-stream"}
    assert version.lineage.base_model.id == BASE and version.lineage.seed == 7
    assert version.lineage.metrics["loss"] == 1.25

    entries, downloaded = download(registry, version.name)
    assert downloaded == files and [e.path for e in entries] == sorted(files)
    folder = tmp_path / "downloaded"
    folder.mkdir()
    for path, data in downloaded.items():
        (folder / path).write_bytes(data)
    loaded = PeftModel.from_pretrained(tiny_base(), folder).eval()
    with torch.no_grad():
        assert torch.allclose(loaded(INPUT_IDS).logits, logits, atol=1e-6)

    model = stub_of(registry).GetModel(pb.GetModelRequest(name=MODEL), metadata=registry.metadata(),
                                       timeout=TIMEOUT).model
    assert model.latest_version == version.name and model.version_count == 1


def test_trainer_registration_from_staged_objects_and_lineage_filters(registry, adapter):
    files, _ = adapter
    create_model(registry)
    objects = registry.service.runtime.objects
    staged_prefix = "trainer/projects/alpha/trainingJobs/job-0123456789ab/final/"
    for path, data in files.items():
        objects.put_bytes(staged_prefix + path, data)
    bucket = registry.service.settings.s3_bucket

    def staged(**changes) -> list[pb.StagedFile]:
        result = [pb.StagedFile(path=p, object=common_pb2.ObjectReference(bucket=bucket, key=staged_prefix + p),
                                size_bytes=len(d), sha256=hashlib.sha256(d).hexdigest()) for p, d in files.items()]
        for field, value in changes.items():
            target = result[2]  # README.md, adapter_config.json, adapter_model.safetensors
            if field in ("bucket", "key"):
                setattr(target.object, field, value)
            else:
                setattr(target, field, value)
        return result

    lineage = pb.Lineage(
        training_job=JOB, seed=42, metrics={"loss": 0.5},
        training_data=common_pb2.DatasetVersionRef(name="projects/alpha/datasets/chats/versions/0123456789abcdef",
                                                   sha256=DATA_SHA),
        base_model=common_pb2.BaseModelRef(id=BASE, weights_sha256="cd" * 32),
        library_versions={"torch": torch.__version__})
    lineage.hyperparameters.update({"learning_rate": 0.0002, "lora": {"r": 4}})
    stub, md = stub_of(registry), registry.metadata()

    def create(files_, lineage_=lineage):
        return stub.CreateModelVersion(pb.CreateModelVersionRequest(
            parent=MODEL, model_version=pb.ModelVersion(lineage=lineage_, labels={"run": "nightly"}),
            files=files_), metadata=md, timeout=TIMEOUT).model_version

    # Hostile or broken references: nothing is copied, no version appears.
    for changes, code, reason in [
            ({"key": "dataset/projects/alpha/secret.jsonl"}, grpc.StatusCode.INVALID_ARGUMENT, "FOREIGN_OBJECT"),
            ({"key": "trainer/projects/beta/job/adapter_model.safetensors"}, grpc.StatusCode.INVALID_ARGUMENT,
             "FOREIGN_OBJECT"),
            ({"key": "trainer/projects/alpha/../beta/adapter_model.safetensors"}, grpc.StatusCode.INVALID_ARGUMENT,
             "FOREIGN_OBJECT"),
            ({"bucket": "someone-elses"}, grpc.StatusCode.INVALID_ARGUMENT, "FOREIGN_OBJECT"),
            ({"sha256": "0" * 64}, grpc.StatusCode.INVALID_ARGUMENT, "DIGEST_MISMATCH"),
            ({"size_bytes": 12}, grpc.StatusCode.INVALID_ARGUMENT, "SIZE_MISMATCH"),
            ({"key": staged_prefix + "missing.safetensors"}, grpc.StatusCode.NOT_FOUND, "STAGED_OBJECT_NOT_FOUND")]:
        with fails(code, reason) as failure:
            create(staged(**changes))
        assert failure[0].reason == reason
        assert registry_objects(registry) == []
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "BASE_MODEL_MISMATCH") as failure:
        create(staged(), pb.Lineage(base_model=common_pb2.BaseModelRef(id="other-model")))
    assert failure[0].violations[0][0] == "model_version.lineage.base_model.id"

    version = create(staged())
    assert version.name == f"{MODEL}/versions/1"
    assert version.lineage == lineage
    keys = registry_objects(registry)
    assert sorted(k.rsplit("/", 1)[1] for k in keys) == sorted(files)
    assert all(k.startswith("registry/projects/alpha/models/chat/") for k in keys)
    assert download(registry, version.name)[1] == files

    upload(registry, files)  # version 2: an upload without lineage
    every = "projects/alpha/models/-"
    listing = stub.ListModelVersions(pb.ListModelVersionsRequest(parent=every, dataset_version_sha256=DATA_SHA),
                                     metadata=md, timeout=TIMEOUT)
    assert [v.name for v in listing.model_versions] == [version.name]
    listing = stub.ListModelVersions(pb.ListModelVersionsRequest(parent=MODEL, training_job=JOB), metadata=md,
                                     timeout=TIMEOUT)
    assert [v.name for v in listing.model_versions] == [version.name]
    listing = stub.ListModelVersions(pb.ListModelVersionsRequest(parent=MODEL, labels={"run": "nightly"}),
                                     metadata=md, timeout=TIMEOUT)
    assert [v.name for v in listing.model_versions] == [version.name]
    listing = stub.ListModelVersions(pb.ListModelVersionsRequest(parent=MODEL), metadata=md, timeout=TIMEOUT)
    assert [v.name for v in listing.model_versions] == [f"{MODEL}/versions/2", version.name]


def test_aliases_move_atomically_with_history_and_rollback(registry, adapter):
    files, _ = adapter
    create_model(registry)
    stub, md = stub_of(registry), registry.metadata()
    v1, v2 = upload(registry, files), upload(registry, files)
    model = stub.SetAlias(pb.SetAliasRequest(model=MODEL, alias="production", version=v1.name), metadata=md,
                          timeout=TIMEOUT).model
    stale = model.etag
    model = stub.SetAlias(pb.SetAliasRequest(model=MODEL, alias="production", version=v2.name, etag=model.etag),
                          metadata=md, timeout=TIMEOUT).model
    assert model.aliases["production"] == v2.name and model.etag != stale
    with fails(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):  # a concurrent mover read the old etag
        stub.SetAlias(pb.SetAliasRequest(model=MODEL, alias="production", version=v1.name, etag=stale),
                      metadata=md, timeout=TIMEOUT)

    # The alias works wherever a version name does.
    by_alias = stub.GetModelVersion(pb.GetModelVersionRequest(name=f"{MODEL}/versions/production"), metadata=md,
                                    timeout=TIMEOUT).model_version
    assert by_alias.name == v2.name and list(by_alias.aliases) == ["production"]
    assert download(registry, f"{MODEL}/versions/production")[1] == files

    # Roll back: move the alias to where the last move came from.
    history = stub.ListAliasHistory(pb.ListAliasHistoryRequest(parent=MODEL), metadata=md, timeout=TIMEOUT).events
    key_id = registry.service.runtime.keys.authenticate(registry.key).key_id
    assert [(e.from_version, e.to_version) for e in history] == [(v1.name, v2.name), ("", v1.name)]
    assert all(e.actor == f"projects/alpha/apiKeys/{key_id}" for e in history)
    stub.SetAlias(pb.SetAliasRequest(model=MODEL, alias="production", version=history[0].from_version),
                  metadata=md, timeout=TIMEOUT)
    assert stub.GetModelVersion(pb.GetModelVersionRequest(name=f"{MODEL}/versions/production"), metadata=md,
                                timeout=TIMEOUT).model_version.name == v1.name

    # Delete guards: an aliased version cannot go; a deleted number is never handed out again.
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "VERSION_HAS_ALIASES") as failure:
        stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name=v1.name), metadata=md, timeout=TIMEOUT)
    assert "production" in failure[0].message
    stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name=v2.name), metadata=md, timeout=TIMEOUT)
    assert upload(registry, files).name == f"{MODEL}/versions/3"
    stub.DeleteAlias(pb.DeleteAliasRequest(model=MODEL, alias="production"), metadata=md, timeout=TIMEOUT)
    history = stub.ListAliasHistory(pb.ListAliasHistoryRequest(parent=MODEL, alias="production"), metadata=md,
                                    timeout=TIMEOUT).events
    assert (history[0].from_version, history[0].to_version) == (v1.name, "")
    with fails(grpc.StatusCode.NOT_FOUND, "ALIAS_NOT_FOUND"):
        stub.GetModelVersion(pb.GetModelVersionRequest(name=f"{MODEL}/versions/production"), metadata=md,
                             timeout=TIMEOUT)
    stub.DeleteModelVersion(pb.DeleteModelVersionRequest(name=v1.name), metadata=md, timeout=TIMEOUT)


def test_model_crud_etags_and_delete_guard(registry, adapter):
    files, _ = adapter
    stub, md = stub_of(registry), registry.metadata()
    request = pb.CreateModelRequest(parent="projects/alpha", model_id="chat", request_id="0f3c1d2e-7a4b-4c5d-9e6f-"
                                    "8a7b6c5d4e3f", model=pb.Model(base_model=BASE, labels={"team": "support"}))
    created = stub.CreateModel(request, metadata=md, timeout=TIMEOUT).model
    assert stub.CreateModel(request, metadata=md, timeout=TIMEOUT).model.name == created.name  # a retry
    with fails(grpc.StatusCode.ALREADY_EXISTS, "MODEL_EXISTS"):
        create_model(registry)
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ID"):
        create_model(registry, "Bad_Id")

    mask = field_mask_pb2.FieldMask(paths=["description"])
    updated = stub.UpdateModel(pb.UpdateModelRequest(model=pb.Model(name=MODEL, description="v2", etag=created.etag),
                                                     update_mask=mask), metadata=md, timeout=TIMEOUT).model
    assert updated.description == "v2" and updated.labels == {"team": "support"} and updated.etag != created.etag
    with fails(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):
        stub.UpdateModel(pb.UpdateModelRequest(model=pb.Model(name=MODEL, description="v3", etag=created.etag),
                                               update_mask=mask), metadata=md, timeout=TIMEOUT)
    with fails(grpc.StatusCode.INVALID_ARGUMENT) as failure:
        stub.UpdateModel(pb.UpdateModelRequest(model=pb.Model(name=MODEL, base_model="x"),
                                               update_mask=field_mask_pb2.FieldMask(paths=["base_model"])),
                         metadata=md, timeout=TIMEOUT)
    assert failure[0].violations[0][0] == "update_mask.paths"

    version = upload(registry, files)
    updated_version = stub.UpdateModelVersion(pb.UpdateModelVersionRequest(
        model_version=pb.ModelVersion(name=version.name, labels={"approved": "yes"}, etag=version.etag),
        update_mask=field_mask_pb2.FieldMask(paths=["labels"])), metadata=md, timeout=TIMEOUT).model_version
    assert updated_version.labels == {"approved": "yes"} and updated_version.manifest == version.manifest
    with fails(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):
        stub.UpdateModelVersion(pb.UpdateModelVersionRequest(
            model_version=pb.ModelVersion(name=version.name, description="x", etag=version.etag),
            update_mask=field_mask_pb2.FieldMask(paths=["description"])), metadata=md, timeout=TIMEOUT)

    with fails(grpc.StatusCode.FAILED_PRECONDITION, "MODEL_HAS_VERSIONS"):
        stub.DeleteModel(pb.DeleteModelRequest(name=MODEL), metadata=md, timeout=TIMEOUT)
    assert registry_objects(registry)
    stub.DeleteModel(pb.DeleteModelRequest(name=MODEL, force=True), metadata=md, timeout=TIMEOUT)
    assert registry_objects(registry) == []
    with fails(grpc.StatusCode.NOT_FOUND, "MODEL_NOT_FOUND"):
        stub.GetModel(pb.GetModelRequest(name=MODEL), metadata=md, timeout=TIMEOUT)


def _safetensors(header: dict, data: bytes = b"") -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def test_hostile_files_are_rejected_without_a_trace(registry, adapter):
    files, _ = adapter
    create_model(registry)
    config = json.loads(files["adapter_config.json"])
    weights = files["adapter_model.safetensors"]
    payload = pickle.dumps({"weights": [1, 2, 3]})  # bytes only: never loaded

    def with_config(**changes) -> dict[str, bytes]:
        return {**files, "adapter_config.json": json.dumps({**config, **changes}).encode()}

    cases = [
        ({**files, "adapter_model.bin": payload}, "UNSAFE_FILE_FORMAT", "files[3].path"),
        ({"adapter_config.json": files["adapter_config.json"], "weights.pt": payload}, "UNSAFE_FILE_FORMAT",
         "files[1].path"),
        ({**files, "adapter_model.safetensors": payload}, "UNSAFE_FILE_FORMAT", "files[2]"),
        ({**files, "tokenizer.model": payload}, "UNSAFE_FILE_FORMAT", "files[3]"),
        ({**files, "../escape.json": b"{}"}, "INVALID_FILE_PATH", "files[3].path"),
        ({**files, "/etc/passwd.txt": b"x"}, "INVALID_FILE_PATH", "files[3].path"),
        ({**files, "nul\x00.json": b"{}"}, "INVALID_FILE_PATH", "files[3].path"),
        ({**files, "a/b/c.json": b"{}"}, "INVALID_FILE_PATH", "files[3].path"),
        ({**files, "adapter_model.safetensors": struct.pack("<Q", 100 * 10 ** 9) + b"{}"},
         "SAFETENSORS_HEADER_TOO_LARGE", "files[2]"),
        ({**files, "adapter_model.safetensors": _safetensors(
            {"x.lora_A.weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 64]}}, b"\0" * 8)},
         "INVALID_SAFETENSORS", "files[2]"),
        (with_config(peft_type="PREFIX_TUNING"), "INVALID_ADAPTER_CONFIG", "files[1]"),
        (with_config(base_model_name_or_path="someone/else"), "BASE_MODEL_MISMATCH", "files[1]"),
        (with_config(target_modules=["k_proj"]), "TENSOR_MISMATCH", "files[2]"),
        ({**files, "adapter_config.json": b"{not json"}, "INVALID_FILE_CONTENT", "files[1]"),
        ({**files, "adapter_config.json": b"[" * 10_000 + b"]" * 10_000}, "INVALID_FILE_CONTENT", "files[1]"),
        ({**files, "README.md": b"\xff\xfe not utf-8"}, "INVALID_FILE_CONTENT", "files[0]"),
        ({"adapter_model.safetensors": weights}, "MISSING_FILE", "files"),
    ]
    for case, reason, field in cases:
        with fails(grpc.StatusCode.INVALID_ARGUMENT, reason) as failure:
            upload(registry, case)
        assert failure[0].violations[0][0] == field, (reason, failure[0].violations)
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "DIGEST_MISMATCH") as failure:
        upload(registry, files, digests={"adapter_model.safetensors": "0" * 64})
    assert failure[0].violations[0][0] == "files[2].sha256"
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "SIZE_MISMATCH"):
        upload(registry, files, sizes={"README.md": len(files["README.md"]) + 10})
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "SIZE_MISMATCH"):
        upload(registry, files, sizes={"README.md": 3})

    assert registry_objects(registry) == []
    model = stub_of(registry).GetModel(pb.GetModelRequest(name=MODEL), metadata=registry.metadata(),
                                       timeout=TIMEOUT).model
    assert model.version_count == 0
    assert upload(registry, files).name == f"{MODEL}/versions/1"  # failures consumed no numbers


def test_quota_limits_and_no_partial_state(settings, adapter):
    files, _ = adapter
    size = sum(len(d) for d in files.values())
    with running("registry", settings.replace(quota_stored_bytes=size + size // 2)) as registry:
        create_model(registry)
        first = upload(registry, files)
        with pytest.raises(grpc.RpcError) as caught:
            upload(registry, files)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        quota = error_details_pb2.QuotaFailure()
        details = [d for d in rpc_status.from_call(caught.value).details if d.Is(quota.DESCRIPTOR)]
        details[0].Unpack(quota)
        assert quota.violations[0].subject == "projects/alpha"
        keys = registry_objects(registry)
        assert len(keys) == len(files) and all("/files/" in k for k in keys)
        stub_of(registry).DeleteModelVersion(pb.DeleteModelVersionRequest(name=first.name),
                                             metadata=registry.metadata(), timeout=TIMEOUT)
        assert registry_objects(registry) == []
        upload(registry, files)  # freed space is usable again

    smaller = settings.replace(registry_max_version_bytes=size - 1, s3_bucket=settings.s3_bucket + "-small",
                               database_url=settings.database_url.replace("tunery.db", "small.db"))
    with running("registry", smaller) as registry:
        create_model(registry)
        with fails(grpc.StatusCode.RESOURCE_EXHAUSTED, "VERSION_TOO_LARGE"):
            upload(registry, files)
        assert registry_objects(registry) == []


def test_pagination_newest_first_and_tampered_tokens(registry, adapter):
    files, _ = adapter
    stub, md = stub_of(registry), registry.metadata()
    for model_id in ("chat", "code", "math"):
        create_model(registry, model_id)
    page = stub.ListModels(pb.ListModelsRequest(parent="projects/alpha", page_size=2), metadata=md, timeout=TIMEOUT)
    assert [m.name.rsplit("/", 1)[1] for m in page.models] == ["chat", "code"]
    rest = stub.ListModels(pb.ListModelsRequest(parent="projects/alpha", page_size=2, page_token=page.next_page_token),
                           metadata=md, timeout=TIMEOUT)
    assert [m.name.rsplit("/", 1)[1] for m in rest.models] == ["math"] and rest.next_page_token == ""

    for _ in range(3):
        upload(registry, files)
    first = stub.ListModelVersions(pb.ListModelVersionsRequest(parent=MODEL, page_size=2), metadata=md,
                                   timeout=TIMEOUT)
    assert [v.name[-1] for v in first.model_versions] == ["3", "2"]
    second = stub.ListModelVersions(pb.ListModelVersionsRequest(parent=MODEL, page_size=2,
                                                                page_token=first.next_page_token),
                                    metadata=md, timeout=TIMEOUT)
    assert [v.name[-1] for v in second.model_versions] == ["1"] and second.next_page_token == ""

    token = first.next_page_token
    tampered = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    for request in (pb.ListModelVersionsRequest(parent=MODEL, page_size=2, page_token=tampered),
                    pb.ListModelVersionsRequest(parent=MODEL, page_size=2, page_token=token, labels={"a": "b"}),
                    pb.ListModelVersionsRequest(parent="projects/alpha/models/code", page_size=2, page_token=token)):
        with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):
            stub.ListModelVersions(request, metadata=md, timeout=TIMEOUT)


def test_download_urls_name_every_manifest_file_in_order(registry, settings, adapter):
    files, _ = adapter
    create_model(registry)
    version = upload(registry, files)
    request = pb.GenerateModelVersionDownloadUrlsRequest(name=version.name)
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "DIRECT_DOWNLOAD_UNAVAILABLE"):  # no public URL set
        stub_of(registry).GenerateModelVersionDownloadUrls(request, metadata=registry.metadata(), timeout=TIMEOUT)

    with running("registry", settings.replace(s3_public_url=f"http://{settings.s3_endpoint}")) as direct:
        stub_of(direct).SetAlias(pb.SetAliasRequest(model=MODEL, alias="production", version=version.name),
                                 metadata=direct.metadata(), timeout=TIMEOUT)
        response = stub_of(direct).GenerateModelVersionDownloadUrls(
            pb.GenerateModelVersionDownloadUrlsRequest(name=f"{MODEL}/versions/production"),
            metadata=direct.metadata(), timeout=TIMEOUT)
    assert [f.file for f in response.files] == list(version.manifest.files)
    for item in response.files:
        with urllib.request.urlopen(item.url, timeout=30) as body:
            assert body.read() == files[item.file.path]
    assert response.expire_time.ToDatetime(timezone.utc) > datetime.now(timezone.utc) + timedelta(minutes=14)


def test_other_projects_keys_are_denied_and_corruption_is_detected(registry, adapter):
    files, _ = adapter
    create_model(registry)
    version = upload(registry, files)
    stub = stub_of(registry)
    other = registry.metadata(registry.service.runtime.keys.create("beta").secret)
    calls = [
        lambda: stub.GetModel(pb.GetModelRequest(name=MODEL), metadata=other, timeout=TIMEOUT),
        lambda: stub.GetModelVersion(pb.GetModelVersionRequest(name=version.name), metadata=other, timeout=TIMEOUT),
        lambda: list(stub.DownloadModelVersion(pb.DownloadModelVersionRequest(name=version.name), metadata=other,
                                               timeout=TIMEOUT)),
        lambda: stub.GenerateModelVersionDownloadUrls(pb.GenerateModelVersionDownloadUrlsRequest(name=version.name),
                                                      metadata=other, timeout=TIMEOUT),
        lambda: stub.SetAlias(pb.SetAliasRequest(model=MODEL, alias="production", version=version.name),
                              metadata=other, timeout=TIMEOUT),
        lambda: stub.UploadModelVersion(upload_messages(files), metadata=other, timeout=TIMEOUT),
        lambda: stub.ListModelVersions(pb.ListModelVersionsRequest(parent="projects/alpha/models/-"),
                                       metadata=other, timeout=TIMEOUT),
    ]
    for call in calls:
        with fails(grpc.StatusCode.PERMISSION_DENIED, "PROJECT_MISMATCH"):
            call()
    assert len(registry_objects(registry)) == len(files)

    # Bytes changed behind the registry's back: the download ends with DATA_LOSS.
    key = next(k for k in registry_objects(registry) if k.endswith("adapter_model.safetensors"))
    original = registry.service.runtime.objects.get_bytes(key)
    registry.service.runtime.objects.put_bytes(key, original[:-1] + bytes([original[-1] ^ 1]))
    with fails(grpc.StatusCode.DATA_LOSS, "DIGEST_MISMATCH"):
        download(registry, version.name)
