"""gRPC clients the trainer uses to reach the dataset service and the model registry.

Every call carries the trainer's own API key (settings.service_api_key, an admin key: the trainer acts for
every project) and a deadline; UNAVAILABLE is retried by the channel's service config (every call made
here is idempotent: reads, or creates with a request_id).
"""

from __future__ import annotations

import hashlib
import json
import threading

import grpc

from tunery.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from tunery.registry.v1 import registry_pb2, registry_pb2_grpc
from tunery.services.kit.server import peer_channel
from tunery.services.kit.settings import Settings

METADATA_DEADLINE_S = 15.0
TRANSFER_DEADLINE_S = 600.0

_RETRY = json.dumps({"methodConfig": [{
    "name": [{"service": "tunery.dataset.v1.DatasetService"}, {"service": "tunery.registry.v1.ModelRegistryService"}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.2s", "maxBackoff": "2s", "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


class DigestMismatch(Exception):
    """Downloaded bytes do not hash to the digest their version records."""


class Peers:
    """Lazily opened channels to the dataset service and the registry."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}

    def _channel(self, target: str) -> grpc.Channel:
        with self._lock:
            if target not in self._channels:
                self._channels[target] = peer_channel(self.settings, target, [("grpc.service_config", _RETRY),
                                                                              ("grpc.enable_retries", 1)])
            return self._channels[target]

    @property
    def _metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.settings.service_api_key}")]

    @property
    def datasets(self) -> dataset_pb2_grpc.DatasetServiceStub:
        return dataset_pb2_grpc.DatasetServiceStub(self._channel(self.settings.dataset_target))

    @property
    def registry(self) -> registry_pb2_grpc.ModelRegistryServiceStub:
        return registry_pb2_grpc.ModelRegistryServiceStub(self._channel(self.settings.registry_target))

    # ------------------------------------------------------------------ datasets
    def get_dataset(self, name: str) -> dataset_pb2.Dataset:
        return self.datasets.GetDataset(dataset_pb2.GetDatasetRequest(name=name), timeout=METADATA_DEADLINE_S,
                                        metadata=self._metadata).dataset

    def get_dataset_version(self, name: str) -> dataset_pb2.DatasetVersion:
        return self.datasets.GetDatasetVersion(dataset_pb2.GetDatasetVersionRequest(name=name),
                                               timeout=METADATA_DEADLINE_S, metadata=self._metadata).dataset_version

    def download_dataset_version(self, name: str, sha256: str) -> bytes:
        """The exact bytes of a version, verified against `sha256` (DigestMismatch otherwise)."""
        digest, parts = hashlib.sha256(), []
        for message in self.datasets.DownloadDatasetVersion(dataset_pb2.DownloadDatasetVersionRequest(name=name),
                                                            timeout=TRANSFER_DEADLINE_S, metadata=self._metadata):
            digest.update(message.chunk)
            parts.append(message.chunk)
        if digest.hexdigest() != sha256:
            raise DigestMismatch(f"the bytes of {name} hash to {digest.hexdigest()}, not {sha256}")
        return b"".join(parts)

    # ------------------------------------------------------------------ registry
    def get_model(self, name: str) -> registry_pb2.Model:
        return self.registry.GetModel(registry_pb2.GetModelRequest(name=name), timeout=METADATA_DEADLINE_S,
                                      metadata=self._metadata).model

    def create_model(self, parent: str, model_id: str, base_model: str, request_id: str) -> registry_pb2.Model:
        request = registry_pb2.CreateModelRequest(parent=parent, model_id=model_id, request_id=request_id,
                                                  model=registry_pb2.Model(base_model=base_model))
        return self.registry.CreateModel(request, timeout=METADATA_DEADLINE_S, metadata=self._metadata).model

    def create_model_version(self, request: registry_pb2.CreateModelVersionRequest) -> registry_pb2.ModelVersion:
        return self.registry.CreateModelVersion(request, timeout=TRANSFER_DEADLINE_S,
                                                metadata=self._metadata).model_version

    def close(self) -> None:
        with self._lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()
