"""Hardening: property-based fuzzing of resource names and page tokens, no secrets or example text in any
log, and the whole stack (dataset, registry, trainer and the SDK) over mutual TLS."""

from __future__ import annotations

import base64
import io
import json
import re
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, assume, given, settings as hypothesis_settings, strategies as st

from conftest import fresh_postgres_schema
from service_fixtures import fails, running_stack, wait_until
from tls_certs import make_certs
from tunery.client import Client, FailedPrecondition, Unavailable
from tunery.dataset.v1 import dataset_pb2 as dpb
from tunery.dataset.v1 import dataset_pb2_grpc
from tunery.registry.v1 import registry_pb2 as rpb
from tunery.registry.v1 import registry_pb2_grpc
from tunery.services.kit import logs, names
from tunery.services.kit.errors import InvalidArgument
from tunery.services.kit.paging import MAX_PAGE_SIZE, PageTokens, page_size
from tunery.trainer.v1 import trainer_pb2 as tpb
from tunery.trainer.v1 import trainer_pb2_grpc

FUZZ = hypothesis_settings(deadline=None, max_examples=300, suppress_health_check=[HealthCheck.too_slow])
ID = re.compile(names.ID)
PATTERNS = ["projects/{project}", "projects/{project}/datasets/{dataset}",
            "projects/{project}/datasets/{dataset}/versions/{version}",
            "projects/{project}/models/{model}/versions/{version}"]

# ---------------------------------------------------------------------- resource names
ids = st.from_regex(r"\A[a-z][a-z0-9-]{0,62}\Z")
# Pieces an attacker would try: traversal, separators, NUL, case, unicode look-alikes, wildcards.
hostile_pieces = st.sampled_from(["..", ".", "/", "//", "\x00", "%2e%2e", "%2F", "A", "É", "ａ", "-", "*", "\n", " ",
                                  "\\", "projects", "versions", "{project}", "$", "'", "\u202e"])


def _segments(pattern: str) -> list[str]:
    return re.findall(r"\{(\w+)\}", pattern)


def _build(pattern: str, values: dict[str, str]) -> str:
    return re.sub(r"\{(\w+)\}", lambda m: values[m.group(1)], pattern)


@FUZZ
@given(name=st.one_of(st.text(), st.binary().map(lambda b: b.decode("latin-1"))), pattern=st.sampled_from(PATTERNS))
def test_name_parser_never_crashes_and_only_accepts_valid_ids(name, pattern):
    try:
        parsed = names.parse(name, pattern, field="name")
    except InvalidArgument as error:
        assert error.violations[0][0] == "name" and error.reason == "INVALID_NAME"
        return
    assert set(parsed) == set(_segments(pattern))
    assert all(ID.fullmatch(value) for value in parsed.values())
    assert _build(pattern, parsed) == name


@FUZZ
@given(pattern=st.sampled_from(PATTERNS), data=st.data())
def test_valid_names_round_trip_and_any_hostile_edit_is_refused(pattern, data):
    values = {segment: data.draw(ids, label=segment) for segment in _segments(pattern)}
    name = _build(pattern, values)
    assert names.parse(name, pattern) == values
    # Insert a hostile piece anywhere: the result is refused, or parses to ids that are still valid (a
    # piece such as "-" can form another valid name, never a path outside the pattern).
    position = data.draw(st.integers(0, len(name)), label="position")
    edited = name[:position] + data.draw(hostile_pieces, label="piece") + name[position:]
    try:
        parsed = names.parse(edited, pattern)
    except InvalidArgument:
        return
    assert all(ID.fullmatch(v) for v in parsed.values()) and _build(pattern, parsed) == edited


@FUZZ
@given(value=st.text(), version=st.text())
def test_ids_and_custom_id_patterns_never_crash(value, version):
    try:
        assert ID.fullmatch(names.check_id(value, "dataset_id"))
    except InvalidArgument as error:
        assert error.reason == "INVALID_ID" and error.violations[0][0] == "dataset_id"
    name = f"projects/alpha/models/m/versions/{version}"
    try:
        parsed = names.parse(name, "projects/{project}/models/{model}/versions/{version}", version=r"[0-9]+")
    except InvalidArgument:
        return
    assert parsed["version"].isascii() and parsed["version"].isdigit()


# ---------------------------------------------------------------------- page tokens
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12)
queries = st.dictionaries(st.sampled_from(["rpc", "parent", "filter", "state"]), st.text(max_size=30), min_size=1)
TOKENS = PageTokens("fuzzing-key")


def _raw(token: str) -> bytes:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))


def _token(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@FUZZ
@given(position=json_values, query=queries)
def test_page_tokens_round_trip_and_are_bound_to_their_query_and_key(position, query):
    token = TOKENS.encode(position, query)
    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert TOKENS.decode(token, query) == position
    other = dict(query, parent=query.get("parent", "") + "x")
    with pytest.raises(InvalidArgument, match="different query"):
        TOKENS.decode(token, other)
    with pytest.raises(InvalidArgument, match="not a token this server issued"):
        PageTokens("another-key").decode(token, query)


@FUZZ
@given(token=st.one_of(st.text(), st.from_regex(r"\A[A-Za-z0-9_=-]{0,200}\Z")), query=queries)
def test_arbitrary_tokens_never_crash_the_decoder(token, query):
    try:
        position = TOKENS.decode(token, query)
    except InvalidArgument as error:
        assert error.reason == "INVALID_PAGE_TOKEN" and error.violations[0][0] == "page_token"
        return
    assert token == "" and position is None  # only the empty token (the first page) decodes


@FUZZ
@given(position=json_values, query=queries, data=st.data())
def test_tampered_tokens_never_decode(position, query, data):
    token = TOKENS.encode(position, query)
    raw = _raw(token)
    kind = data.draw(st.sampled_from(["flip", "truncate", "extend", "replace_body", "forge_mac", "text_edit"]))
    if kind == "flip":
        index = data.draw(st.integers(0, len(raw) - 1))
        bit = data.draw(st.integers(0, 7))
        tampered = _token(raw[:index] + bytes([raw[index] ^ (1 << bit)]) + raw[index + 1:])
    elif kind == "truncate":  # (to nothing at all would be the empty token: the first page, by design)
        tampered = _token(raw[:data.draw(st.integers(1, len(raw) - 1))])
    elif kind == "extend":
        tampered = _token(raw + data.draw(st.binary(min_size=1, max_size=32)))
    elif kind == "replace_body":  # keep the MAC, change what it should cover (e.g. jump to another position)
        body = json.dumps({"p": data.draw(json_values), "q": json.loads(raw[16:])["q"]}, separators=(",", ":"))
        assume(body.encode() != raw[16:])
        tampered = _token(raw[:16] + body.encode())
    elif kind == "forge_mac":  # a well-formed body for this very query with a guessed MAC
        mac = data.draw(st.binary(min_size=16, max_size=16))
        assume(mac != raw[:16])
        tampered = _token(mac + raw[16:])
    else:  # edit the text: if it still decodes, it must be the very same bytes
        position_in_text = data.draw(st.integers(0, len(token)))
        tampered = token[:position_in_text] + data.draw(st.text(min_size=1, max_size=3)) + token[position_in_text:]
        try:
            TOKENS.decode(tampered, query)
        except InvalidArgument:
            return
        assert _raw(tampered) == raw
        return
    with pytest.raises(InvalidArgument):
        TOKENS.decode(tampered, query)


@FUZZ
@given(requested=st.integers(min_value=-(2 ** 63), max_value=2 ** 63 - 1))
def test_page_size_is_bounded_or_refused(requested):
    try:
        size = page_size(requested)
    except InvalidArgument as error:
        assert requested < 0 and error.violations[0][0] == "page_size"
        return
    assert 1 <= size <= MAX_PAGE_SIZE


# ---------------------------------------------------------------------- nothing secret in the logs
PARENT = "projects/alpha"
TERMINAL = {tpb.TRAINING_JOB_STATE_SUCCEEDED, tpb.TRAINING_JOB_STATE_FAILED, tpb.TRAINING_JOB_STATE_CANCELLED}


def _marker(word: str) -> str:
    """Example text no log line could contain by chance."""
    return f"{word}-{uuid.uuid4().hex[:12]}"


def chat_lines(texts: list[str], count: int) -> bytes:
    """`count` chat examples whose user and assistant turns carry the given texts."""
    rows = [{"messages": [{"role": "user", "content": f"Question {i}: {texts[i % len(texts)]}?"},
                          {"role": "assistant", "content": f"Answer {i}: {texts[(i + 1) % len(texts)]}."}]}
            for i in range(count)]
    return "".join(json.dumps(row) + "\n" for row in rows).encode()


def upload_requests(dataset: str, data: bytes, chunk: int = 64 * 1024):
    yield dpb.UploadDatasetVersionRequest(header=dpb.UploadDatasetVersionHeader(dataset=dataset,
                                                                                request_id=str(uuid.uuid4())))
    for start in range(0, len(data), chunk):
        yield dpb.UploadDatasetVersionRequest(chunk=data[start:start + chunk])




def test_secrets_keys_and_example_text_never_reach_the_logs(settings, postgres_url, tmp_path, capfd):
    password = _marker("dbpassword")
    database_url = fresh_postgres_schema(postgres_url).replace("postgres@", f"postgres:{password}@", 1)
    assert password in database_url  # trust auth accepts it; a careless log of the URL would show it
    bootstrap = "tk_" + _marker("bootstrap").replace("-", "")
    page_key = _marker("pagekey")
    texts = [_marker("Zephyrine"), _marker("marmalade"), _marker("quokka")]
    prompt = _marker("obelisk")
    settings = settings.replace(database_url=database_url, bootstrap_admin_key=bootstrap, page_token_key=page_key,
                                log_format="json", log_level="debug", dataset_max_line_bytes=4096,
                                trainer_worker_threads=1)
    stream = io.StringIO()
    logs.configure("json", "debug", stream)
    try:
        with running_stack(settings) as stack:
            secrets = [bootstrap, page_key, password, settings.s3_secret_key, stack.key,
                       stack.settings.service_api_key]
            beta_key = stack.dataset.service.runtime.keys.create("beta").secret
            revoked = stack.dataset.service.runtime.keys.create("alpha")
            stack.dataset.service.runtime.keys.revoke(revoked.key_id)
            secrets += [beta_key, revoked.secret]
            md = [("authorization", f"Bearer {stack.key}")]
            datasets = dataset_pb2_grpc.DatasetServiceStub(stack.dataset.channel)
            dataset = datasets.CreateDataset(dpb.CreateDatasetRequest(parent=PARENT, dataset_id="secret-chat"),
                                             metadata=md, timeout=30).dataset.name
            version = datasets.UploadDatasetVersion(upload_requests(dataset, chat_lines(texts, 12)), metadata=md,
                                                    timeout=60).dataset_version
            examples = datasets.ListDatasetExamples(dpb.ListDatasetExamplesRequest(parent=version.name),
                                                    metadata=md, timeout=30).examples
            assert texts[0] in examples[0].chat.messages[0].content  # the text is there to leak
            # Rejected uploads whose error messages may quote the example text back to the caller.
            broken = [f'{{"messages": [{{"role": "user", "content": "{texts[1]}"'.encode() + b"\n",
                      json.dumps({"messages": [{"role": texts[2], "content": texts[0]}]}).encode() + b"\n",
                      json.dumps({"text": (texts[1] + " ") * 400}).encode() + b"\n"]
            for data, code in zip(broken, [grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT,
                                           grpc.StatusCode.RESOURCE_EXHAUSTED]):
                with fails(code):
                    datasets.UploadDatasetVersion(upload_requests(dataset, data), metadata=md, timeout=60)
            validated = list(datasets.ValidateDataset(iter([
                dpb.ValidateDatasetRequest(header=dpb.ValidateDatasetHeader(parent=PARENT)),
                dpb.ValidateDatasetRequest(chunk=broken[0] + broken[1])]), metadata=md, timeout=30))
            assert validated[-1].summary.error_count >= 2
            # Calls with bad keys: unknown, malformed, revoked, another project's.
            get = dpb.GetDatasetRequest(name=dataset)
            for key, code in ((f"tk_{_marker('unknown')}", grpc.StatusCode.UNAUTHENTICATED),
                              (_marker("malformed"), grpc.StatusCode.UNAUTHENTICATED),
                              (revoked.secret, grpc.StatusCode.UNAUTHENTICATED),
                              (beta_key, grpc.StatusCode.PERMISSION_DENIED)):
                secrets.append(key)
                with fails(code):
                    datasets.GetDataset(get, metadata=[("authorization", f"Bearer {key}")], timeout=30)
            with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN"):
                datasets.ListDatasets(dpb.ListDatasetsRequest(parent=PARENT, page_token=page_key), metadata=md,
                                      timeout=30)
            models = registry_pb2_grpc.ModelRegistryServiceStub(stack.registry.channel)
            model = models.CreateModel(rpb.CreateModelRequest(parent=PARENT, model_id="secret-bot",
                                                              model=rpb.Model(base_model="tiny-llama")),
                                       metadata=[("authorization", f"Bearer {bootstrap}")], timeout=30).model
            with fails(grpc.StatusCode.ABORTED, "ETAG_MISMATCH"):
                models.UpdateModel(rpb.UpdateModelRequest(model=rpb.Model(name=model.name, etag="stale"),
                                                          update_mask={"paths": ["description"]}),
                                   metadata=md, timeout=30)

            # A training job on the marked examples, with a marked sample prompt: the worker logs too.
            jobs = trainer_pb2_grpc.TrainerServiceStub(stack.trainer.channel)
            spec = tpb.TrainingJobSpec(base_model="tiny-llama", training_data=version.name, output_model=model.name,
                                       sample_prompts=[f"Question: {prompt}?"], validation_fraction=0.25)
            spec.hyperparameters.epochs = 1
            spec.hyperparameters.batch_size = 3
            job = jobs.CreateTrainingJob(tpb.CreateTrainingJobRequest(parent=PARENT, spec=spec), metadata=md,
                                         timeout=60).training_job
            # Its data cannot be deleted from under it, even before it starts.
            with fails(grpc.StatusCode.FAILED_PRECONDITION, "DATASET_VERSION_IN_USE"):
                datasets.DeleteDatasetVersion(dpb.DeleteDatasetVersionRequest(name=version.name), metadata=md,
                                              timeout=30)
            done = wait_until(lambda: (j := jobs.GetTrainingJob(tpb.GetTrainingJobRequest(name=job.name),
                                                                metadata=md, timeout=30).training_job).state
                              in TERMINAL and j, "the training job to end")
            assert done.state == tpb.TRAINING_JOB_STATE_SUCCEEDED, done.error
            events = jobs.ListTrainingJobEvents(tpb.ListTrainingJobEventsRequest(parent=job.name, page_size=1000),
                                                metadata=md, timeout=30).events
            assert any(prompt in s.prompt for e in events if e.WhichOneof("event") == "sample_generations"
                       for s in e.sample_generations.samples)
    finally:
        logs.configure()
    captured = capfd.readouterr()
    service_logs = stream.getvalue()
    worker_logs = "".join(p.read_text(errors="replace") for p in sorted((settings.home / "trainer").rglob("*.log")))
    assert worker_logs, "the worker wrote no log"
    lines = [json.loads(line) for line in service_logs.splitlines()]  # every line is JSON
    codes = {line.get("code") for line in lines if line["event"] == "rpc.finished"}
    assert {"OK", "UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "RESOURCE_EXHAUSTED",
            "ABORTED"} <= codes
    assert {"dataset_version.created", "training_job.created"} <= {line["event"] for line in lines}
    everything = {"service logs": service_logs, "worker logs": worker_logs, "stdout": captured.out,
                  "stderr": captured.err}
    for where, text in everything.items():
        for secret in secrets:
            assert secret[-20:] not in text, f"a secret ending {secret[-6:]} is in the {where}"
        for example in [*texts, prompt]:
            assert example not in text, f"example text {example!r} is in the {where}"


# ---------------------------------------------------------------------- the stack over mutual TLS
def test_the_whole_stack_and_the_sdk_over_mutual_tls(settings, tmp_path):
    certs = make_certs(tmp_path / "certs")
    settings = settings.replace(tls_cert_file=certs.server_cert, tls_key_file=certs.server_key, tls_ca_file=certs.ca,
                                tls_client_auth=True, trainer_worker_threads=1)
    data = tmp_path / "chat.jsonl"
    data.write_bytes(chat_lines(["hello over TLS", "the weather is sunny", "two plus two is four"], 12))
    with running_stack(settings) as stack:
        targets = {"dataset": stack.dataset.address, "trainer": stack.trainer.address,
                   "registry": stack.registry.address}
        tls = {"tls_ca_file": str(certs.ca), "tls_cert_file": str(certs.client_cert),
               "tls_key_file": str(certs.client_key)}
        with Client(targets=targets, api_key=stack.key, project="alpha", timeout_s=60, **tls) as client:
            version = client.datasets.upload(data, dataset="tls-chat").dataset_version
            job = client.jobs.create(base_model="tiny-llama", dataset="tls-chat", model="tls-bot",
                                     hyperparameters={"epochs": 1, "batch_size": 4})
            # The trainer plans the job by calling the dataset service: over TLS, with its certificate.
            planned = wait_until(lambda: (j := client.jobs.get(job)).state != tpb.TRAINING_JOB_STATE_VALIDATING
                                 and j, "the trainer to plan the job through the dataset service", timeout_s=120)
            assert planned.state != tpb.TRAINING_JOB_STATE_FAILED, planned.error
            done = client.jobs.wait(job)
            assert done.state == tpb.TRAINING_JOB_STATE_SUCCEEDED, done.error
            folder = client.models.download(done.model_version, tmp_path / "adapter")
            assert (folder / "adapter_model.safetensors").stat().st_size > 0
            assert client.models.get_version(done.model_version).lineage.training_data.sha256 == version.sha256
            # The dataset service asks the trainer (over TLS) whether a job used the version before deleting it.
            with pytest.raises(FailedPrecondition) as in_use:
                client.datasets.delete_version(version.name)
            assert in_use.value.reason == "DATASET_VERSION_IN_USE"
        # Without a client certificate, or in plaintext, nothing gets through.
        with Client(targets=targets, api_key=stack.key, project="alpha", timeout_s=5,
                    tls_ca_file=str(certs.ca)) as no_cert:
            with pytest.raises(Unavailable):
                no_cert.datasets.get("tls-chat")
        for address in targets.values():
            with grpc.insecure_channel(address) as plaintext:
                with pytest.raises(grpc.RpcError) as refused:
                    health_pb2_grpc.HealthStub(plaintext).Check(health_pb2.HealthCheckRequest(), timeout=5)
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
