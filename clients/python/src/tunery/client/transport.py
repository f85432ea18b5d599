"""Channels, credentials, deadlines, retries and error conversion: everything between the SDK and the wire."""

from __future__ import annotations

import importlib
import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import grpc

from tunery.client.errors import from_rpc_error

SERVICES = {
    "dataset": ("tunery.dataset.v1", "DatasetService"),
    "trainer": ("tunery.trainer.v1", "TrainerService"),
    "registry": ("tunery.registry.v1", "ModelRegistryService"),
    "auth": ("tunery.auth.v1", "ApiKeyService"),  # served by every endpoint; reached through the dataset one
}
DEFAULT_TARGETS = {"dataset": "127.0.0.1:50051", "trainer": "127.0.0.1:50052", "registry": "127.0.0.1:50053"}
# Calls that are safe to repeat: reads, and creates/cancels made idempotent by request_id or state.
_IDEMPOTENT_PREFIXES = ("Get", "List", "Watch", "Download", "Plan", "Validate", "Create", "Cancel")
MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def home() -> Path:
    return Path(os.environ.get("TUNERY_HOME") or Path.home() / ".tunery").expanduser()


@dataclass
class ClientConfig:
    """Where the services are and how to authenticate. `Client()` with no arguments reads the local
    stack's config file (written by `tunery up`), then TUNERY_TARGET / TUNERY_API_KEY override it."""

    targets: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_TARGETS))
    api_key: str = ""
    project: str = "default"
    timeout_s: float = 30.0
    tls_ca_file: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""

    @classmethod
    def discover(cls, target: str | None = None, targets: dict[str, str] | None = None,
                 api_key: str | None = None, project: str | None = None, **options: Any) -> "ClientConfig":
        config = cls()
        path = home() / "client.json"
        if path.exists():
            saved = json.loads(path.read_text())
            config.targets.update(saved.get("targets", {}))
            config.api_key = saved.get("api_key", "")
            config.project = saved.get("project", config.project)
        target = target or os.environ.get("TUNERY_TARGET")
        if target:  # one address for all services (e.g. behind one gateway)
            config.targets = {name: target for name in SERVICES}
        config.targets.update(targets or {})
        config.api_key = api_key or os.environ.get("TUNERY_API_KEY") or config.api_key
        config.project = project or os.environ.get("TUNERY_PROJECT") or config.project
        for name, value in options.items():
            setattr(config, name, value)
        return config


def _service_config(service: str) -> str:
    package, name = SERVICES[service]
    descriptor = importlib.import_module(f"{package}.{service}_pb2").DESCRIPTOR.services_by_name[name]
    methods = [{"service": f"{package}.{name}", "method": m.name} for m in descriptor.methods
               if m.name.startswith(_IDEMPOTENT_PREFIXES) and not m.client_streaming]
    return json.dumps({"methodConfig": [{
        "name": methods,
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.2s", "maxBackoff": "5s", "backoffMultiplier": 2,
                        "retryableStatusCodes": ["UNAVAILABLE"]},
    }]})


class Transport:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, Any] = {}

    def _channel(self, service: str) -> grpc.Channel:
        if service not in self._channels:
            options = [("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                       ("grpc.enable_retries", 1), ("grpc.service_config", _service_config(service)),
                       ("grpc.keepalive_time_ms", 30_000)]
            target = self.config.targets.get(service) or self.config.targets["dataset"]
            if self.config.tls_ca_file or self.config.tls_cert_file:
                read = lambda p: Path(p).read_bytes() if p else None  # noqa: E731
                credentials = grpc.ssl_channel_credentials(read(self.config.tls_ca_file),
                                                           read(self.config.tls_key_file),
                                                           read(self.config.tls_cert_file))
                self._channels[service] = grpc.secure_channel(target, credentials, options)
            else:
                self._channels[service] = grpc.insecure_channel(target, options)
        return self._channels[service]

    def stub(self, service: str) -> Any:
        if service not in self._stubs:
            package, name = SERVICES[service]
            module = importlib.import_module(f"{package}.{service}_pb2_grpc")
            self._stubs[service] = getattr(module, f"{name}Stub")(self._channel(service))
        return self._stubs[service]

    def metadata(self) -> list[tuple[str, str]]:
        md = [("x-request-id", uuid.uuid4().hex)]
        if self.config.api_key:
            md.append(("authorization", f"Bearer {self.config.api_key}"))
        return md

    def call(self, service: str, rpc: str, request: Any, timeout_s: float | None = None) -> Any:
        """One unary (or client-streaming, when `request` is an iterator) call with deadline and typed errors."""
        try:
            return getattr(self.stub(service), rpc)(request, metadata=self.metadata(),
                                                     timeout=timeout_s or self.config.timeout_s)
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None

    def stream(self, service: str, rpc: str, request: Any, timeout_s: float | None = None) -> Iterator[Any]:
        """A server stream; `timeout_s=None` means no deadline (watches may run for hours)."""
        responses = getattr(self.stub(service), rpc)(request, metadata=self.metadata(), timeout=timeout_s)
        try:
            yield from responses
        except grpc.RpcError as error:
            raise from_rpc_error(error) from None
        finally:
            responses.cancel()

    def close(self) -> None:
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        self._stubs.clear()
