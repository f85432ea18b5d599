"""The local stack behind `tunery up`, `tunery down` and `tunery status`: an S3 server (unless one is
configured), then the three services as separate processes on their default ports, an API key for
project `default`, and a client config file so the SDK and CLI work with zero flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tunery.services.kit import auth
from tunery.services.kit.db import Database
from tunery.services.kit.seaweed import SeaweedS3
from tunery.services.kit.settings import DEFAULT_PORTS, SERVICES, Settings

LOCAL_S3_PORT = 50050
HEALTH_NAMES = {"dataset": "tunery.dataset.v1.DatasetService", "trainer": "tunery.trainer.v1.TrainerService",
                "registry": "tunery.registry.v1.ModelRegistryService"}


@dataclass
class Component:
    name: str
    address: str
    pid: int | None
    log: str


def state_file(settings: Settings) -> Path:
    return settings.home / "stack.json"


def client_config_file(settings: Settings) -> Path:
    return settings.home / "client.json"


def _port_free(port: int, host: str) -> bool:
    import socket
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a port in TIME_WAIT after `down` is free
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def up(settings: Settings, progress=print) -> list[Component]:
    """Start everything and wait until each service reports SERVING. Raises if a part fails to start."""
    if state_file(settings).exists() and any(_alive(c.pid) for c in read_state(settings)):
        raise RuntimeError(f"a stack is already running from {settings.home}; run `tunery down` first")
    settings.home.mkdir(parents=True, exist_ok=True)
    (settings.home / "logs").mkdir(exist_ok=True)
    components: list[Component] = []
    try:
        if not settings.s3_endpoint:
            if not _port_free(LOCAL_S3_PORT, settings.host):
                raise RuntimeError(f"port {LOCAL_S3_PORT} (local S3) is taken by another program")
            s3 = SeaweedS3(settings.home / "s3", port=LOCAL_S3_PORT, access_key=settings.s3_access_key,
                           secret_key=settings.s3_secret_key, host=settings.host)
            progress(f"starting object store (SeaweedFS) on {settings.host}:{LOCAL_S3_PORT}")
            s3.start()
            components.append(Component("object_store", s3.endpoint, s3.process.pid, str(s3.data_dir / "weed.log")))
            # Clients run on this machine too: they read downloads straight from it.
            settings = settings.replace(s3_endpoint=s3.endpoint, s3_public_url=f"http://{s3.endpoint}")
        db = Database(settings.database())
        db.migrate("auth", auth.MIGRATIONS)
        keys = auth.ApiKeyStore(db)
        service_key = keys.create("default", admin=True, description="local stack: trainer → peers").secret
        user_key = _client_key(settings, keys)
        db.dispose()
        env = os.environ | _environment(settings) | {"TUNERY_SERVICE_API_KEY": service_key}
        for name in SERVICES:
            port = DEFAULT_PORTS[name]
            if not _port_free(port, settings.host):
                raise RuntimeError(f"port {port} ({name} service) is taken by another program")
            log = settings.home / "logs" / f"{name}.log"
            with open(log, "ab") as out:
                process = subprocess.Popen([sys.executable, "-m", "tunery.services", name], env=env, stdout=out,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
            components.append(Component(name, f"{settings.host}:{port}", process.pid, str(log)))
            progress(f"starting {name} service on {settings.host}:{port}")
        write_state(settings, components)
        for c in components[-len(SERVICES):]:
            _wait_serving(c, timeout_s=180)
        _write_client_config(settings, user_key)
        return components
    except BaseException:
        stop(components)
        state_file(settings).unlink(missing_ok=True)
        raise


def _client_key(settings: Settings, keys: auth.ApiKeyStore) -> str:
    """The key in the existing client config if it still works, else a new one for project `default`."""
    path = client_config_file(settings)
    if path.exists():
        try:
            key = json.loads(path.read_text())["api_key"]
            keys.authenticate(key)
            return key
        except Exception:  # noqa: BLE001 - unreadable, revoked or from another database: make a new one
            pass
    return keys.create("default", admin=True, description="local stack: client").secret


def _environment(settings: Settings) -> dict[str, str]:
    """The settings the service processes need, as TUNERY_* variables."""
    values = {"home": settings.home, "database_url": settings.database(), "s3_endpoint": settings.s3_endpoint,
              "s3_access_key": settings.s3_access_key, "s3_secret_key": settings.s3_secret_key,
              "s3_secure": str(settings.s3_secure).lower(), "s3_bucket": settings.s3_bucket,
              "s3_public_url": settings.s3_public_url, "host": settings.host,
              "log_format": settings.log_format, "log_level": settings.log_level}
    return {f"TUNERY_{k.upper()}": str(v) for k, v in values.items()}


def _write_client_config(settings: Settings, key: str) -> None:
    path = client_config_file(settings)
    targets = {name: f"{settings.host}:{DEFAULT_PORTS[name]}" for name in SERVICES}
    path.write_text(json.dumps({"targets": targets, "api_key": key, "project": "default"}, indent=2))
    path.chmod(0o600)


def write_state(settings: Settings, components: list[Component]) -> None:
    state_file(settings).write_text(json.dumps([c.__dict__ for c in components], indent=2))


def read_state(settings: Settings) -> list[Component]:
    path = state_file(settings)
    return [Component(**c) for c in json.loads(path.read_text())] if path.exists() else []


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child (exited, not yet reaped) is not alive either.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def _wait_serving(component: Component, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while health(component) != "SERVING":
        if not _alive(component.pid):
            raise RuntimeError(f"the {component.name} service exited during start; see {component.log}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the {component.name} service did not report SERVING in {timeout_s:.0f}s; "
                               f"see {component.log}")
        time.sleep(0.3)


def health(component: Component) -> str:
    """SERVING / NOT_SERVING / UNREACHABLE for a service; for the object store, whether its port answers."""
    if component.name == "object_store":
        import socket
        host, port = component.address.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=2).close()
            return "SERVING"
        except OSError:
            return "UNREACHABLE"
    with grpc.insecure_channel(component.address) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=HEALTH_NAMES[component.name]), timeout=3)
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError:
            return "UNREACHABLE"


def stop(components: list[Component], timeout_s: float = 60.0) -> None:
    """SIGTERM the services (each drains its calls), then the object store; SIGKILL what will not go."""
    services = [c for c in components if c.name != "object_store"]
    stores = [c for c in components if c.name == "object_store"]
    for group in (services, stores):
        for c in group:
            if _alive(c.pid):
                os.killpg(c.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for c in group:
            while _alive(c.pid) and time.monotonic() < deadline:
                _reap(c.pid)
                time.sleep(0.1)
            if _alive(c.pid):
                os.killpg(c.pid, signal.SIGKILL)
            _reap(c.pid)


def _reap(pid: int | None) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except (ChildProcessError, TypeError):
        pass  # not our child (started by another `tunery up --detach`)


def down(settings: Settings) -> list[Component]:
    components = read_state(settings)
    stop(components)
    state_file(settings).unlink(missing_ok=True)
    return components


def status(settings: Settings) -> list[dict]:
    components = read_state(settings)
    if not components:
        components = [Component(name, f"{settings.host}:{port}", None, "") for name, port in DEFAULT_PORTS.items()]
    return [{"component": c.name, "address": c.address, "pid": c.pid, "health": health(c)} for c in components]


def run_foreground(settings: Settings, progress=print) -> None:
    """`tunery up`: start, then stay until Ctrl-C or SIGTERM, then stop everything cleanly."""
    components = up(settings, progress)
    stop_event = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop_event.set())
    progress("Tunery is up; press Ctrl-C to stop")
    stop_event.wait()
    progress("stopping…")
    stop(components)
    state_file(settings).unlink(missing_ok=True)
