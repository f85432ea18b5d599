"""Running a service: the runtime it gets (settings, database, object store, keys), the gRPC server
with health, reflection and the interceptor, the health monitor, and a graceful stop on SIGTERM/SIGINT."""

from __future__ import annotations

import signal
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from tunery.services.kit import auth, keys_service, logs
from tunery.services.kit.db import Database
from tunery.services.kit.interceptor import ServerInterceptor
from tunery.services.kit.objects import ObjectStore
from tunery.services.kit.paging import PageTokens
from tunery.services.kit.settings import Settings

log = structlog.get_logger("tunery.server")


def channel_options(settings: Settings) -> list[tuple[str, int]]:
    """Message-size and keepalive options, shared by servers and the channels services open to each other."""
    return [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and with tls_client_auth, mutual TLS) from certificate files; None means plaintext."""
    if bool(settings.tls_cert_file) != bool(settings.tls_key_file):
        raise ValueError("TUNERY_TLS_CERT_FILE and TUNERY_TLS_KEY_FILE must be set together")
    if settings.tls_client_auth and not (settings.tls_ca_file and settings.tls_cert_file):
        raise ValueError("TUNERY_TLS_CLIENT_AUTH needs TUNERY_TLS_CA_FILE and a server certificate")
    if not settings.tls_cert_file:
        return None
    identity = (settings.tls_key_file.read_bytes(), settings.tls_cert_file.read_bytes())
    client_ca = settings.tls_ca_file.read_bytes() if settings.tls_client_auth else None
    return grpc.ssl_server_credentials([identity], root_certificates=client_ca,
                                       require_client_auth=settings.tls_client_auth)


def peer_channel(settings: Settings, target: str, extra_options: list[tuple[str, object]] = ()) -> grpc.Channel:
    """A channel from one Tunery service to another, with TLS when a CA is configured."""
    options = [*channel_options(settings), *extra_options]
    if not settings.tls_ca_file:
        return grpc.insecure_channel(target, options)
    key = settings.tls_key_file.read_bytes() if settings.tls_client_auth else None
    cert = settings.tls_cert_file.read_bytes() if settings.tls_client_auth else None
    credentials = grpc.ssl_channel_credentials(settings.tls_ca_file.read_bytes(), key, cert)
    return grpc.secure_channel(target, credentials, options)


@dataclass
class Runtime:
    """What a service's code is given: one of each, shared by its handlers."""

    name: str
    settings: Settings
    db: Database
    objects: ObjectStore
    keys: auth.ApiKeyStore
    page_tokens: PageTokens
    # Called (in order) after the server stopped taking calls, e.g. to stop background threads.
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    # Set when the service starts stopping: long-lived streams end (clients reconnect elsewhere).
    stopping: threading.Event = field(default_factory=threading.Event)


# A service's setup: adds its servicers to the server and returns their full names (for health).
Setup = Callable[[Runtime, grpc.Server], list[str]]


class Service:
    """One running Tunery service process (or an in-process instance in tests)."""

    def __init__(self, name: str, settings: Settings, migrations: Path, setup: Setup) -> None:
        self.name = name
        self.settings = settings
        db = Database(settings.database())
        db.migrate("auth", auth.MIGRATIONS)
        db.migrate(name, migrations)
        objects = ObjectStore(settings)
        _retry_until(objects.ensure_bucket, 30.0)
        keys = auth.ApiKeyStore(db)
        if settings.bootstrap_admin_key:
            keys.ensure(settings.bootstrap_admin_key, "admin", True, "bootstrap admin key (TUNERY_BOOTSTRAP_ADMIN_KEY)")
        self.runtime = Runtime(name, settings, db, objects, keys,
                               PageTokens(settings.page_token_key or settings.database()))
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=64),
                                  interceptors=[ServerInterceptor(self.runtime.keys)],
                                  options=channel_options(settings))
        names = [*setup(self.runtime, self.server),
                 keys_service.add_to_server(self.server, self.runtime.keys, self.runtime.page_tokens)]
        self.health = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.service_names = ["", *names]
        reflection.enable_server_reflection([*names, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        address = f"{settings.host}:{settings.port_for(name)}"
        credentials = server_credentials(settings)
        self.port = (self.server.add_secure_port(address, credentials) if credentials
                     else self.server.add_insecure_port(address))
        self._stopping = threading.Event()
        self._monitor = threading.Thread(target=self._watch_dependencies, name="health-monitor", daemon=True)

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.port}"

    def start(self) -> "Service":
        self._check_dependencies()
        self.server.start()
        self._monitor.start()
        log.info("service.started", service=self.name, address=self.address)
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """NOT_SERVING first (so balancers drain us), then let in-flight calls finish within the grace."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.runtime.stopping.set()
        self.health.enter_graceful_shutdown()
        self.server.stop(self.settings.shutdown_grace_s if grace_s is None else grace_s).wait()
        for callback in self.runtime.on_stop:
            callback()
        self.runtime.db.dispose()
        log.info("service.stopped", service=self.name)

    def _check_dependencies(self) -> None:
        problems = []
        for part, probe in (("database", self.runtime.db.ping), ("object_store", self.runtime.objects.ping)):
            try:
                probe()
            except Exception as error:  # noqa: BLE001 - any failure means not serving
                problems.append(f"{part}: {type(error).__name__}")
        if problems == getattr(self, "_last_problems", None):
            return  # health Watch streams hear only changes
        status = health_pb2.HealthCheckResponse.NOT_SERVING if problems else health_pb2.HealthCheckResponse.SERVING
        for name in self.service_names:
            self.health.set(name, status)
        (log.warning if problems else log.info)("service.health", serving=not problems, problems=problems)
        self._last_problems = problems

    def _watch_dependencies(self) -> None:
        while not self._stopping.wait(self.settings.health_interval_s):
            self._check_dependencies()


def _retry_until(action: Callable[[], None], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return action()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def serve(name: str, settings: Settings, migrations: Path, setup: Setup) -> None:
    """Run a service until SIGTERM/SIGINT, then stop gracefully and return (exit code 0)."""
    logs.configure(settings.log_format, settings.log_level)
    service = Service(name, settings, migrations, setup).start()
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    service.stop()
