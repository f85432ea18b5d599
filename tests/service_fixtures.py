"""Helpers every service test uses: start a real service on a real port, call it with a key, check errors."""

from __future__ import annotations

import importlib
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tunery.services.kit.seaweed import free_port
from tunery.services.kit.server import Service
from tunery.services.kit.settings import Settings
from tunery.trainer.v1 import trainer_pb2

SERVICER_MODULES = {"dataset": "tunery.services.dataset.servicer", "trainer": "tunery.services.trainer.servicer",
                    "registry": "tunery.services.registry.servicer"}


@dataclass
class Running:
    service: Service
    channel: grpc.Channel
    key: str  # an API key of project "alpha"

    @property
    def address(self) -> str:
        return self.service.address

    def metadata(self, key: str | None = None) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {key or self.key}")]


@contextmanager
def running(name: str, settings: Settings) -> Iterator[Running]:
    """One Tunery service in this process, listening on a free port, stopped afterwards."""
    module = importlib.import_module(SERVICER_MODULES[name])
    service = Service(name, settings, module.MIGRATIONS, module.setup).start()
    channel = grpc.insecure_channel(service.address)
    run = Running(service, channel, service.runtime.keys.create("alpha").secret)
    try:
        yield run
    finally:
        channel.close()
        run.service.stop(0)  # a test may have replaced it with a restarted one


@dataclass
class Failure:
    code: grpc.StatusCode
    message: str
    reason: str
    metadata: dict
    violations: list[tuple[str, str]]


@contextmanager
def fails(code: grpc.StatusCode, reason: str | None = None) -> Iterator[list[Failure]]:
    """Asserts the block raises an RpcError with `code` (and ErrorInfo `reason`); yields the decoded failure."""
    box: list[Failure] = []
    with pytest.raises(grpc.RpcError) as caught:
        yield box
    error = caught.value
    assert error.code() == code, f"expected {code.name}, got {error.code().name}: {error.details()}"
    info, violations = error_details_pb2.ErrorInfo(), []
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        if detail.Is(info.DESCRIPTOR):
            detail.Unpack(info)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            violations = [(v.field, v.description) for v in bad.field_violations]
    if reason is not None:
        assert info.reason == reason, f"expected reason {reason}, got {info.reason}: {error.details()}"
    box.append(Failure(error.code(), error.details(), info.reason, dict(info.metadata), violations))


@dataclass
class Stack:
    dataset: Running
    registry: Running
    trainer: Running
    settings: Settings  # as the trainer sees them (targets and service key filled in)

    @property
    def key(self) -> str:
        return self.dataset.key


@contextmanager
def running_stack(settings: Settings) -> Iterator[Stack]:
    """All three services in this process on free ports, sharing one database and bucket; the trainer
    reaches the other two with an admin service key, as in the real stack."""
    trainer_port = free_port()  # known up front: the dataset service asks the trainer before deletes
    settings = settings.replace(trainer_target=f"127.0.0.1:{trainer_port}")
    with running("dataset", settings) as dataset, running("registry", settings) as registry:
        service_key = dataset.service.runtime.keys.create("default", admin=True, description="service").secret
        trainer_settings = settings.replace(dataset_target=dataset.address, registry_target=registry.address,
                                            service_api_key=service_key, port=trainer_port)
        with running("trainer", trainer_settings) as trainer:
            # One key of project alpha for all three (they share the keys table).
            trainer.key = dataset.key
            registry.key = dataset.key
            yield Stack(dataset, registry, trainer, trainer_settings)


T = TypeVar("T")


def wait_until(condition: Callable[[], T], what: str, timeout_s: float = 180.0, every_s: float = 0.2) -> T:
    """Poll `condition` until it returns something truthy (returned); fail naming `what` after the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {timeout_s:.0f}s waiting for {what}"
        time.sleep(every_s)


def child_processes(parent: int) -> dict[int, bytes]:
    """Live (not zombie) child processes of `parent`: pid → command line, arguments space-separated."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, ppid = stat.read_text().rsplit(")", 1)[1].split()[:2]
            cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").strip()
        except (OSError, ValueError):
            continue
        if int(ppid) == parent and state != "Z":
            found[int(stat.parent.name)] = cmdline
    return found


def watch_events(jobs, md, name: str, after_seq: int = 0,
                 until: Callable[[trainer_pb2.TrainingJobEvent], bool] = lambda e: False,
                 timeout: float = 300) -> list[trainer_pb2.TrainingJobEvent]:
    """A training job's events after `after_seq` until `until` holds (the stream is then dropped) or the
    stream ends (after the job's terminal event)."""
    seen = []
    stream = jobs.WatchTrainingJob(trainer_pb2.WatchTrainingJobRequest(name=name, after_seq=after_seq),
                                   metadata=md, timeout=timeout)
    for message in stream:
        seen.append(message.event)
        if until(message.event):
            stream.cancel()
            break
    return seen
