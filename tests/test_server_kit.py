"""The shared server kit, exercised through a real gRPC server on a real port with a probe service."""

from __future__ import annotations

import io
import json
import threading

import grpc
import pytest
import sqlalchemy as sa
import structlog
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from service_fixtures import wait_until
from tunery.services.kit import auth, errors, logs
from tunery.services.kit.db import Database
from tunery.services.kit.interceptor import as_domain_error
from tunery.services.kit.objects import ObjectStore
from tunery.services.kit.paging import PageTokens, page_size
from tunery.services.kit.seaweed import SeaweedS3
from tunery.services.kit.server import Service
from tunery.services.kit.settings import load

PROBE = "tunery.test.v1.ProbeService"
RAISES = {
    "invalid": errors.InvalidArgument("bad field", "BAD_FIELD", [("spec.epochs", "must be positive")]),
    "not_found": errors.NotFound("no such thing", "THING_NOT_FOUND"),
    "exists": errors.AlreadyExists("exists", "THING_EXISTS"),
    "precondition": errors.FailedPrecondition("not now", "THING_BUSY"),
    "aborted": errors.Aborted("stale etag"),
    "exhausted": errors.ResourceExhausted("too many", "QUOTA_EXCEEDED", [("project:alpha", "2 jobs max")]),
    "unavailable": errors.Unavailable("down"),
    "denied": errors.PermissionDenied("no"),
}
CODES = {"invalid": grpc.StatusCode.INVALID_ARGUMENT, "not_found": grpc.StatusCode.NOT_FOUND,
         "exists": grpc.StatusCode.ALREADY_EXISTS, "precondition": grpc.StatusCode.FAILED_PRECONDITION,
         "aborted": grpc.StatusCode.ABORTED, "exhausted": grpc.StatusCode.RESOURCE_EXHAUSTED,
         "unavailable": grpc.StatusCode.UNAVAILABLE, "denied": grpc.StatusCode.PERMISSION_DENIED}


def _probe_setup(release: threading.Event, entered: threading.Event):
    """A service whose one method does what its request (a UTF-8 word) says."""

    def call(request: bytes, context) -> bytes:
        word = request.decode()
        if word in RAISES:
            raise RAISES[word]
        if word == "crash":
            raise RuntimeError("secret internal detail")
        if word == "slow":
            entered.set()
            release.wait(10)
        if word.startswith("project:"):
            auth.authorize(word.split(":", 1)[1])
        return b"ok:" + auth.current_principal().project.encode()

    def setup(runtime, server) -> list[str]:
        handler = grpc.unary_unary_rpc_method_handler(call)  # raw bytes in and out
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(PROBE, {"Call": handler})])
        return [PROBE]
    return setup


@pytest.fixture
def probe(settings, tmp_path):
    release, entered = threading.Event(), threading.Event()
    (tmp_path / "probe-migrations").mkdir()
    service = Service("probe", settings, tmp_path / "probe-migrations", _probe_setup(release, entered)).start()
    key = service.runtime.keys.create("alpha")
    channel = grpc.insecure_channel(service.address)
    call = channel.unary_unary(f"/{PROBE}/Call")
    yield service, key.secret, call, channel, (release, entered)
    release.set()
    channel.close()
    service.stop(0)


def _call(call, word: str, key: str | None, **metadata: str):
    md = [(k.replace("_", "-"), v) for k, v in metadata.items()]
    if key:
        md.append(("authorization", f"Bearer {key}"))
    return call.with_call(word.encode(), metadata=md, timeout=10)


@pytest.mark.parametrize("word", sorted(RAISES))
def test_each_domain_error_maps_to_its_code_and_error_info(probe, word):
    _, key, call, *_ = probe
    with pytest.raises(grpc.RpcError) as caught:
        _call(call, word, key)
    assert caught.value.code() == CODES[word]
    status = rpc_status.from_call(caught.value)
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert info.reason == RAISES[word].reason and info.domain == errors.DOMAIN
    if word == "invalid":
        bad = error_details_pb2.BadRequest()
        next(d for d in status.details if d.Is(bad.DESCRIPTOR)).Unpack(bad)
        assert [(v.field, v.description) for v in bad.field_violations] == [("spec.epochs", "must be positive")]
    if word == "exhausted":
        quota = error_details_pb2.QuotaFailure()
        next(d for d in status.details if d.Is(quota.DESCRIPTOR)).Unpack(quota)
        assert quota.violations[0].subject == "project:alpha"


def test_unexpected_exception_is_internal_with_generic_message_and_traceback_only_in_logs(probe):
    _, key, call, *_ = probe
    stream = io.StringIO()
    logs.configure("json", "info", stream)
    try:
        with pytest.raises(grpc.RpcError) as caught:
            _call(call, "crash", key, x_request_id="req-crash-1")
    finally:
        logs.configure()
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "secret internal detail" not in caught.value.details()
    assert "req-crash-1" in caught.value.details()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    crash = next(line for line in lines if line["event"] == "rpc.internal_error")
    assert crash["request_id"] == "req-crash-1" and "secret internal detail" in crash["exception"]
    assert key not in stream.getvalue()


def test_loggers_cached_on_first_use_follow_a_later_configure():
    log = structlog.get_logger("tunery.test")
    log.info("before.configure")  # caches this logger
    first, second = io.StringIO(), io.StringIO()
    try:
        logs.configure("json", "warning", first)
        log.info("dropped")
        log.warning("kept", n=1)
        logs.configure("json", "info", second)
        log.info("now.kept")
    finally:
        logs.configure()
    [kept] = [json.loads(line) for line in first.getvalue().splitlines()]
    assert kept["event"] == "kept" and kept["level"] == "warning" and kept["n"] == 1 and "timestamp" in kept
    assert [json.loads(line)["event"] for line in second.getvalue().splitlines()] == ["now.kept"]


def test_request_id_is_echoed_or_generated(probe):
    _, key, call, *_ = probe
    _, given = _call(call, "hello", key, x_request_id="abc-123")
    assert dict(given.initial_metadata())["x-request-id"] == "abc-123"
    _, generated = _call(call, "hello", key)
    assert len(dict(generated.initial_metadata())["x-request-id"]) == 32


def test_auth_no_key_wrong_key_and_other_projects_key(probe):
    service, key, call, *_ = probe
    assert _call(call, "hello", key)[0] == b"ok:alpha"
    for bad_key, reason in ((None, "API_KEY_MISSING"), ("tk_abcdefabcdefabcdefabcdef", "API_KEY_INVALID"),
                            ("nonsense", "API_KEY_MALFORMED")):
        with pytest.raises(grpc.RpcError) as caught:
            _call(call, "hello", bad_key)
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        info = error_details_pb2.ErrorInfo()
        rpc_status.from_call(caught.value).details[0].Unpack(info)
        assert info.reason == reason
    assert _call(call, "project:alpha", key)[0] == b"ok:alpha"
    with pytest.raises(grpc.RpcError) as caught:
        _call(call, "project:beta", key)
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    admin = service.runtime.keys.create("ops", admin=True).secret
    assert _call(call, "project:beta", admin)[0] == b"ok:ops"


def test_health_and_reflection_need_no_key(probe):
    _, _, _, channel, _ = probe
    stub = health_pb2_grpc.HealthStub(channel)
    assert stub.Check(health_pb2.HealthCheckRequest(service=PROBE), timeout=5).status == \
        health_pb2.HealthCheckResponse.SERVING
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
    reply = next(reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5))
    assert PROBE in {s.name for s in reply.list_services_response.service}


def test_stop_lets_the_call_in_flight_finish(probe):
    service, key, call, channel, (release, entered) = probe
    future = call.future(b"slow", metadata=[("authorization", f"Bearer {key}")], timeout=20)
    assert entered.wait(10)
    stopper = threading.Thread(target=service.stop, args=(10,))
    stopper.start()
    stub = health_pb2_grpc.HealthStub(channel)
    release.set()
    assert future.result() == b"ok:alpha"
    stopper.join(20)
    assert not stopper.is_alive()
    with pytest.raises(grpc.RpcError):
        stub.Check(health_pb2.HealthCheckRequest(), timeout=2)


def test_health_follows_the_object_store(settings, tmp_path):
    own = SeaweedS3(tmp_path / "own-s3").start()
    settings = settings.replace(s3_endpoint=own.endpoint)
    (tmp_path / "m").mkdir()
    service = Service("probe", settings, tmp_path / "m", _probe_setup(threading.Event(), threading.Event())).start()
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(service.address))
    status = lambda: stub.Check(health_pb2.HealthCheckRequest(service=PROBE), timeout=5).status  # noqa: E731
    try:
        assert status() == health_pb2.HealthCheckResponse.SERVING
        own.stop()
        wait_until(lambda: status() == health_pb2.HealthCheckResponse.NOT_SERVING, "NOT_SERVING", 30)
        own.start()  # same port, same data
        wait_until(lambda: status() == health_pb2.HealthCheckResponse.SERVING, "SERVING", 30)
    finally:
        try:
            service.stop(0)
        finally:
            own.stop()




def test_api_keys_on_sqlite_and_postgresql(database_url):
    db = Database(database_url)
    db.migrate("auth", auth.MIGRATIONS)
    db.migrate("auth", auth.MIGRATIONS)  # a second start migrates nothing
    keys = auth.ApiKeyStore(db, cache_ttl_s=0)
    created = keys.create("alpha", description="ci")
    assert keys.authenticate(created.secret) == auth.Principal(created.key_id, "alpha", False)
    stored = keys.list("alpha")
    assert [k.key_id for k in stored] == [created.key_id]
    assert created.secret not in json.dumps([dict(k._mapping) for k in stored], default=str)
    assert keys.create("alpha", request_id="r-1").secret and keys.create("alpha", request_id="r-1").secret == ""
    assert keys.revoke(created.key_id).revoked_at is not None
    with pytest.raises(errors.Unauthenticated):
        keys.authenticate(created.secret)
    db.dispose()


def test_database_first_reads_what_a_transaction_reads_on_sqlite_and_postgresql(database_url):
    """Database.first skips SQLAlchemy's Connection and Result: same values and types, and its errors."""
    db = Database(database_url)
    table = sa.Table("kit_first", sa.MetaData(), sa.Column("id", sa.String(16), primary_key=True),
                     sa.Column("flag", sa.Boolean, nullable=False), sa.Column("blob", sa.LargeBinary),
                     sa.Column("big", sa.BigInteger), sa.Column("note", sa.String(40)))
    by_id = sa.select(table).where(table.c.id == sa.bindparam("id"))
    with pytest.raises(sa.exc.DBAPIError):  # no table yet: a SQLAlchemy error, as any other read raises
        db.first(by_id, {"id": "a"})
    with db.write() as conn:
        table.create(conn)
        conn.execute(table.insert(), [{"id": "a", "flag": True, "blob": b"\x00\xff", "big": 2**62, "note": None},
                                      {"id": "b", "flag": False, "blob": None, "big": None, "note": "n"}])
    for key in ("a", "b"):
        with db.read() as conn:
            expected = dict(conn.execute(by_id, {"id": key}).one()._mapping)
        got = db.first(by_id, {"id": key})
        assert got == expected and [type(v) for v in got.values()] == [type(v) for v in expected.values()]
    assert db.first(by_id, {"id": "missing"}) is None
    assert db.first(by_id, {"id": "a"}) == db.first(by_id, {"id": "a"})  # compiled once, reused
    db.dispose()


def test_database_first_on_an_unreachable_database_is_unavailable():
    db = Database("postgresql+psycopg://postgres@127.0.0.1:1/test")  # nothing listens on port 1
    table = sa.Table("kit_first", sa.MetaData(), sa.Column("id", sa.String(16), primary_key=True))
    with pytest.raises(sa.exc.OperationalError) as caught:
        db.first(sa.select(table).where(table.c.id == sa.bindparam("id")), {"id": "a"})
    assert isinstance(as_domain_error(caught.value), errors.Unavailable)
    db.dispose()


def test_key_cache_is_bounded_and_revocation_clears_it(tmp_path):
    db = Database(f"sqlite:///{tmp_path / 'keys.db'}")
    db.migrate("auth", auth.MIGRATIONS)
    keys = auth.ApiKeyStore(db, cache_ttl_s=60, cache_size=2)
    created = [keys.create("alpha") for _ in range(3)]
    for c in created:
        assert keys.authenticate(c.secret).key_id == c.key_id
    assert list(keys._cache) == [created[1].secret, created[2].secret]
    keys.revoke(created[2].key_id)
    with pytest.raises(errors.Unauthenticated):
        keys.authenticate(created[2].secret)


def test_settings_from_environment_and_flags(tmp_path):
    config, _ = load(["--port", "0", "--s3-secure", "true"],
                     {"TUNERY_PORT": "7000", "TUNERY_DATABASE_URL": "sqlite:///x.db", "TUNERY_HOME": str(tmp_path)})
    assert (config.port, config.s3_secure, config.database(), config.home) == (0, True, "sqlite:///x.db", tmp_path)
    with pytest.raises(ValueError, match="shutdown_grace_s"):
        load([], {"TUNERY_SHUTDOWN_GRACE_S": "soon"})


def test_page_tokens_reject_tampering_and_other_queries():
    tokens = PageTokens("k")
    token = tokens.encode({"after": 10}, {"parent": "projects/a"})
    assert tokens.decode(token, {"parent": "projects/a"}) == {"after": 10}
    for bad in (token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1], "!!", "abc"):
        with pytest.raises(errors.InvalidArgument):
            tokens.decode(bad, {"parent": "projects/a"})
    with pytest.raises(errors.InvalidArgument, match="different query"):
        tokens.decode(token, {"parent": "projects/b"})
    assert page_size(0) == 50 and page_size(5000) == 1000


def test_api_key_service_needs_an_admin_key_and_never_returns_secrets(probe):
    from tunery.auth.v1 import auth_pb2, auth_pb2_grpc
    from service_fixtures import fails
    service, key, _, channel, _ = probe
    stub = auth_pb2_grpc.ApiKeyServiceStub(channel)
    admin = [("authorization", f"Bearer {service.runtime.keys.create('ops', admin=True).secret}")]
    with fails(grpc.StatusCode.PERMISSION_DENIED, "ADMIN_KEY_REQUIRED"):
        stub.ListApiKeys(auth_pb2.ListApiKeysRequest(parent="projects/alpha"),
                         metadata=[("authorization", f"Bearer {key}")], timeout=5)
    created = stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(parent="projects/beta", request_id="r1",
                                                             api_key=auth_pb2.ApiKey(description="ci")),
                                metadata=admin, timeout=5)
    assert created.secret.startswith("tk_") and created.api_key.name.startswith("projects/beta/apiKeys/key-")
    replay = stub.CreateApiKey(auth_pb2.CreateApiKeyRequest(parent="projects/beta", request_id="r1"),
                               metadata=admin, timeout=5)
    assert replay.api_key.name == created.api_key.name and replay.secret == ""
    listed = stub.ListApiKeys(auth_pb2.ListApiKeysRequest(parent="projects/-", page_size=1), metadata=admin, timeout=5)
    assert len(listed.api_keys) == 1 and listed.next_page_token
    assert created.secret not in str(listed)
    stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(name=created.api_key.name), metadata=admin, timeout=5)
    service.runtime.keys._cache.clear()
    with fails(grpc.StatusCode.UNAUTHENTICATED, "API_KEY_INVALID"):
        stub.ListApiKeys(auth_pb2.ListApiKeysRequest(parent="projects/beta"),
                         metadata=[("authorization", f"Bearer {created.secret}")], timeout=5)
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_NAME"):
        stub.RevokeApiKey(auth_pb2.RevokeApiKeyRequest(name="projects/beta/apiKeys/../x"), metadata=admin, timeout=5)


def test_mutual_tls_accepts_a_client_certificate_and_refuses_none(settings, tmp_path):
    from tls_certs import make_certs
    certs = make_certs(tmp_path / "certs")
    settings = settings.replace(tls_cert_file=certs.server_cert, tls_key_file=certs.server_key,
                                tls_ca_file=certs.ca, tls_client_auth=True)
    (tmp_path / "m").mkdir()
    service = Service("probe", settings, tmp_path / "m", _probe_setup(threading.Event(), threading.Event())).start()
    key = service.runtime.keys.create("alpha").secret
    ca = certs.ca.read_bytes()
    try:
        with_cert = grpc.ssl_channel_credentials(ca, certs.client_key.read_bytes(), certs.client_cert.read_bytes())
        with grpc.secure_channel(service.address, with_cert) as channel:
            assert _call(channel.unary_unary(f"/{PROBE}/Call"), "hi", key)[0] == b"ok:alpha"
        with grpc.secure_channel(service.address, grpc.ssl_channel_credentials(ca)) as channel:
            with pytest.raises(grpc.RpcError) as refused:
                _call(channel.unary_unary(f"/{PROBE}/Call"), "hi", key)
            assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        with grpc.insecure_channel(service.address) as channel:
            with pytest.raises(grpc.RpcError):
                _call(channel.unary_unary(f"/{PROBE}/Call"), "hi", key)
    finally:
        service.stop(0)


@pytest.mark.parametrize("url", ["127.0.0.1:9000", "ftp://files.example.com", "https://files.example.com/bucket",
                                 "https://files.example.com?x=1", "https://"])
def test_a_public_object_store_url_must_be_a_bare_http_address(settings, url):
    with pytest.raises(ValueError, match="TUNERY_S3_PUBLIC_URL"):
        ObjectStore(settings.replace(s3_public_url=url))
    assert ObjectStore(settings.replace(s3_public_url="https://files.example.com:8443/")).public is not None
