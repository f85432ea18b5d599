"""The Tunery Python SDK.

    from tunery.client import Client

    client = Client()                      # the local stack started by `tunery up`
    version = client.datasets.upload("support.jsonl", dataset="support").dataset_version
    job = client.jobs.create(base_model="smollm2-135m-instruct", dataset="support", model="support-bot")
    job = client.jobs.wait(job)
    client.models.download("support-bot@1", "adapter/")

Every failed call raises a typed `TuneryError` subclass (`NotFound`, `InvalidArgument` with its
`field_violations`, …), never a raw grpc.RpcError.
"""

from __future__ import annotations

from typing import Any

from tunery.client.datasets import Datasets
from tunery.client.errors import (Aborted, AlreadyExists, Cancelled, DataLoss, DeadlineExceeded, FailedPrecondition,
                                  FieldViolation, Internal, InvalidArgument, NotFound, PermissionDenied,
                                  ResourceExhausted, TuneryError, Unauthenticated, Unavailable)
from tunery.client.jobs import Jobs
from tunery.client.keys import Keys
from tunery.client.models import Models
from tunery.client.transport import ClientConfig, Transport

__all__ = [
    "Aborted", "AlreadyExists", "Cancelled", "Client", "ClientConfig", "DataLoss", "DeadlineExceeded",
    "FailedPrecondition", "FieldViolation", "Internal", "InvalidArgument", "NotFound", "PermissionDenied",
    "ResourceExhausted", "TuneryError", "Unauthenticated", "Unavailable",
]


class Client:
    """A connection to the Tunery services.

    With no arguments it uses the local stack's config (written by `tunery up` to $TUNERY_HOME/client.json),
    overridden by TUNERY_TARGET / TUNERY_API_KEY / TUNERY_PROJECT. Otherwise pass `target` (one address
    for every service, e.g. a gateway) or `targets` ({"dataset": ..., "trainer": ..., "registry": ...}),
    `api_key`, `project`, `timeout_s` (the default deadline of each call) and TLS files
    (`tls_ca_file`, and `tls_cert_file` / `tls_key_file` for mutual TLS)."""

    def __init__(self, target: str | None = None, *, targets: dict[str, str] | None = None,
                 api_key: str | None = None, project: str | None = None, timeout_s: float | None = None,
                 tls_ca_file: str | None = None, tls_cert_file: str | None = None, tls_key_file: str | None = None,
                 config: ClientConfig | None = None) -> None:
        if config is None:
            options: dict[str, Any] = {k: v for k, v in (("timeout_s", timeout_s), ("tls_ca_file", tls_ca_file),
                                                         ("tls_cert_file", tls_cert_file),
                                                         ("tls_key_file", tls_key_file)) if v is not None}
            config = ClientConfig.discover(target=target, targets=targets, api_key=api_key, project=project,
                                           **options)
        self.config = config
        self._transport = Transport(config)
        self.datasets = Datasets(self._transport)
        self.jobs = Jobs(self._transport, self.datasets)
        self.models = Models(self._transport)
        self.keys = Keys(self._transport)

    @property
    def project(self) -> str:
        """The project every call acts on."""
        return self.config.project

    def close(self) -> None:
        """Close the connections."""
        self._transport.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
