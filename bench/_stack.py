"""A local Tunery stack for the service benchmarks, started the way the tests start it: a SeaweedFS S3
server, and the dataset, registry and trainer services in this process on free ports, sharing one SQLite
file (so one API key works everywhere)."""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import grpc

from tunery.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from tunery.services.dataset import servicer as dataset_servicer
from tunery.services.kit import logs
from tunery.services.kit.seaweed import SeaweedS3
from tunery.services.kit.server import Service
from tunery.services.kit.settings import Settings
from tunery.services.registry import servicer as registry_servicer
from tunery.services.trainer import servicer as trainer_servicer
from tunery.trainer.v1 import trainer_pb2 as pb
from tunery.trainer.v1 import trainer_pb2_grpc

PARENT = "projects/bench"
TERMINAL = {pb.TRAINING_JOB_STATE_SUCCEEDED, pb.TRAINING_JOB_STATE_FAILED, pb.TRAINING_JOB_STATE_CANCELLED}


@dataclass
class Stack:
    s3: SeaweedS3
    settings: Settings
    services: dict[str, Service]
    channels: dict[str, grpc.Channel]
    key: str  # an API key of project "bench"

    @property
    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.key}")]

    @property
    def jobs(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self.channels["trainer"])

    def upload_chat(self, dataset_id: str, examples: list[dict]) -> str:
        """Create a dataset and upload one JSONL version; returns the version's name."""
        stub = dataset_pb2_grpc.DatasetServiceStub(self.channels["dataset"])
        stub.CreateDataset(dataset_pb2.CreateDatasetRequest(parent=PARENT, dataset_id=dataset_id),
                           metadata=self.metadata, timeout=30)
        raw = "".join(json.dumps(e) + "\n" for e in examples).encode()
        header = dataset_pb2.UploadDatasetVersionHeader(dataset=f"{PARENT}/datasets/{dataset_id}",
                                                        request_id=str(uuid.uuid4()))
        requests = iter([dataset_pb2.UploadDatasetVersionRequest(header=header),
                         dataset_pb2.UploadDatasetVersionRequest(chunk=raw)])
        return stub.UploadDatasetVersion(requests, metadata=self.metadata, timeout=60).dataset_version.name

    def tiny_job(self, training_data: str, model: str = "assistant") -> pb.TrainingJob:
        spec = pb.TrainingJobSpec(base_model="tiny-llama", training_data=training_data,
                                  output_model=f"{PARENT}/models/{model}")
        spec.hyperparameters.epochs = 1
        spec.hyperparameters.batch_size = 4
        return self.jobs.CreateTrainingJob(pb.CreateTrainingJobRequest(parent=PARENT, spec=spec),
                                           metadata=self.metadata, timeout=60).training_job

    def wait_done(self, name: str, timeout_s: float = 300) -> pb.TrainingJob:
        deadline = time.monotonic() + timeout_s
        for message in self.jobs.WatchTrainingJob(pb.WatchTrainingJobRequest(name=name), metadata=self.metadata,
                                                  timeout=timeout_s):
            event = message.event
            if event.WhichOneof("event") == "state_changed" and event.state_changed.state in TERMINAL:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(name)
        return self.jobs.GetTrainingJob(pb.GetTrainingJobRequest(name=name), metadata=self.metadata,
                                        timeout=30).training_job


def chat_examples(count: int) -> list[dict]:
    pairs = [("Where is my order?", "It was shipped on Monday and arrives within three days."),
             ("My invoice shows the wrong amount.", "I am sorry about that; the difference will be refunded."),
             ("How do I reset my password?", "Open the settings page, choose security, then reset password.")]
    return [{"messages": [{"role": "user", "content": pairs[i % 3][0]}, {"role": "assistant", "content": pairs[i % 3][1]}]}
            for i in range(count)]


@contextmanager
def local_stack(root: Path, model_cache: Path, names: tuple[str, ...] = ("dataset", "registry", "trainer"),
                **changes: Any) -> Iterator[Stack]:
    """Start S3 and the named services (the trainer needs the other two), with settings `changes`; stop
    everything afterwards."""
    modules = {"dataset": dataset_servicer, "registry": registry_servicer, "trainer": trainer_servicer}
    s3 = SeaweedS3(root / "seaweed").start()
    with ExitStack() as stop:
        stop.callback(s3.stop)
        settings = Settings(home=root / "home", port=0, database_url=f"sqlite:///{root / 'tunery.db'}",
                            s3_endpoint=s3.endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
                            s3_bucket="bench", trainer_model_cache=model_cache, shutdown_grace_s=5.0, **changes)
        # Services log as deployed (JSON, info: one line per RPC), into a file rather than over the table.
        log_file = stop.enter_context(open(root / "services.log", "w"))
        logs.configure("json", settings.log_level, stream=log_file)
        services: dict[str, Service] = {}
        channels: dict[str, grpc.Channel] = {}
        for name in names:
            service_settings = settings
            if name == "trainer":
                peer_key = services["dataset"].runtime.keys.create("ops", admin=True, description="trainer → peers").secret
                service_settings = settings.replace(dataset_target=services["dataset"].address,
                                                    registry_target=services["registry"].address,
                                                    service_api_key=peer_key)
            module = modules[name]
            services[name] = Service(name, service_settings, module.MIGRATIONS, module.setup).start()
            stop.callback(services[name].stop, 0)
            channels[name] = grpc.insecure_channel(services[name].address)
            stop.callback(channels[name].close)
        key = next(iter(services.values())).runtime.keys.create("bench").secret
        yield Stack(s3, settings, services, channels, key)
