"""One settings object per process, read once from `TUNERY_*` environment variables and flags.

Every field `foo_bar` is set by `TUNERY_FOO_BAR` or `--foo-bar`; a flag wins over the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Sequence

SERVICES = ("dataset", "trainer", "registry")
DEFAULT_PORTS = {"dataset": 50051, "trainer": 50052, "registry": 50053}


@dataclass(frozen=True)
class Settings:
    # Where a local installation keeps its database, object data, logs and caches.
    home: Path = Path.home() / ".tunery"
    host: str = "127.0.0.1"
    # The port of the service this process runs; 0 picks a free one (tests). Unset: DEFAULT_PORTS.
    port: int | None = None
    # SQLAlchemy URL. Unset: a SQLite file under `home`.
    database_url: str = ""
    # S3 endpoint host:port and credentials (SeaweedFS locally, MinIO in production).
    s3_endpoint: str = ""
    s3_access_key: str = "tunery"
    s3_secret_key: str = "tunery-secret"
    s3_secure: bool = False
    s3_region: str = ""
    s3_bucket: str = "tunery"
    # Where clients reach the object store, e.g. https://files.example.com: the services then hand out
    # short-lived presigned URLs for direct downloads. Empty: downloads stream through the services.
    s3_public_url: str = ""
    # Addresses other services use to reach each service (host:port).
    dataset_target: str = f"127.0.0.1:{DEFAULT_PORTS['dataset']}"
    trainer_target: str = f"127.0.0.1:{DEFAULT_PORTS['trainer']}"
    registry_target: str = f"127.0.0.1:{DEFAULT_PORTS['registry']}"
    # The API key the trainer presents to the dataset service and the registry.
    service_api_key: str = ""
    # An admin key (tk_…) installed at start, so a fresh deployment can create its first keys.
    bootstrap_admin_key: str = ""
    # Key that signs page tokens; replicas of a service must share it. Unset: derived from database_url.
    page_token_key: str = ""
    # TLS: this service's certificate and key (also presented to peers when they require client certs),
    # the CA that signed the services' certificates, and whether clients must present one (mutual TLS).
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    tls_ca_file: Path | None = None
    tls_client_auth: bool = False
    log_format: str = "console"  # console | json
    log_level: str = "info"
    # Seconds in-flight calls get to finish after SIGTERM.
    shutdown_grace_s: float = 10.0
    # Seconds between health probes of the database and the object store.
    health_interval_s: float = 2.0
    max_message_bytes: int = 16 * 1024 * 1024
    # Dataset limits, enforced while streaming.
    dataset_max_line_bytes: int = 1024 * 1024
    dataset_max_file_bytes: int = 1024 ** 3
    dataset_max_examples: int = 1_000_000
    dataset_max_depth: int = 32
    dataset_upload_ttl_s: float = 24 * 3600.0
    # Upload bytes are staged in segments of this size (at least 5 MiB, the S3 compose minimum); a broken
    # stream resumes from the last whole segment.
    dataset_upload_segment_bytes: int = 16 * 1024 ** 2
    # Seconds between sweeps that discard expired upload sessions and their staged bytes.
    dataset_upload_sweep_interval_s: float = 300.0
    # Trainer: concurrent jobs on this machine and where base models are cached.
    trainer_max_concurrent_jobs: int = 1
    trainer_model_cache: Path | None = None
    # Worker attempts that may fail (crash, kill) before a job ends FAILED.
    trainer_max_attempts: int = 3
    # OMP/torch threads per worker process; 0 leaves torch's default.
    trainer_worker_threads: int = 0
    # Seconds workers get to checkpoint and exit after SIGTERM when the service stops.
    trainer_stop_timeout_s: float = 60.0
    # Local executor: a standby process, started with the service, imports torch & co. once and forks workers.
    trainer_standby_worker: bool = True
    # Seconds a job waits for the standby to fork its worker; past that the standby is ended (it hangs) and
    # workers start as new processes.
    trainer_standby_fork_timeout_s: float = 120.0
    # Seconds between database polls of the scheduler and of WatchTrainingJob streams.
    trainer_poll_interval_s: float = 0.25
    # Where workers run: "local" (processes of this machine) or "kubernetes" (one batch/v1 Job per attempt).
    trainer_executor: str = "local"
    # Kubernetes executor: the Jobs' namespace (unset: the trainer pod's own), the worker image (required),
    # the workers' ServiceAccount (unset: the namespace's default one).
    trainer_kubernetes_namespace: str = ""
    trainer_kubernetes_image: str = ""
    trainer_kubernetes_service_account: str = ""
    # The Secret whose TUNERY_* keys hold the secret settings; workers get them by secretKeyRef, never as values.
    trainer_kubernetes_secret: str = "tunery-secrets"
    # Per worker pod: CPU request, memory request and limit, and the device resource requested once per
    # process (unset: train on CPU).
    trainer_kubernetes_cpu: str = "4"
    trainer_kubernetes_memory: str = "32Gi"
    trainer_kubernetes_gpu_resource: str = "nvidia.com/gpu"
    # A PersistentVolumeClaim mounted at the model cache, so workers share base models (unset: an emptyDir).
    trainer_kubernetes_model_cache_claim: str = ""
    # Registry limits per model version: files, total bytes, safetensors header, any JSON file.
    registry_max_files: int = 64
    registry_max_version_bytes: int = 4 * 1024 ** 3
    registry_max_header_bytes: int = 16 * 1024 ** 2
    registry_max_json_bytes: int = 64 * 1024 ** 2
    # Seconds after which the objects of an upload that never finished (crash, store down) are swept.
    registry_upload_ttl_s: float = 3600.0
    # Per-project quotas (0 = unlimited).
    quota_concurrent_jobs: int = 0
    quota_stored_bytes: int = 0

    def port_for(self, service: str) -> int:
        return DEFAULT_PORTS[service] if self.port is None else self.port

    def database(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'tunery.db'}"

    def model_cache(self) -> Path:
        return self.trainer_model_cache or self.home / "models"

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _convert(name: str, kind: Any, raw: str) -> Any:
    kind = str(kind)
    try:
        if "bool" in kind:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(raw)
        if "Path" in kind:
            return Path(raw).expanduser() if raw else None
        if "int" in kind:
            return int(raw) if raw else None
        if "float" in kind:
            return float(raw)
    except ValueError:
        raise ValueError(f"setting {name}: cannot read {raw!r} as {kind}") from None
    return raw


def load(argv: Sequence[str] | None = None, environ: dict[str, str] | None = None,
         parser: argparse.ArgumentParser | None = None) -> tuple[Settings, argparse.Namespace]:
    """Settings from the environment, overridden by flags; also returns the parsed flags."""
    environ = os.environ if environ is None else environ
    parser = parser or argparse.ArgumentParser()
    for f in fields(Settings):
        parser.add_argument(f"--{f.name.replace('_', '-')}", dest=f.name, default=None,
                            help=f"(env TUNERY_{f.name.upper()})")
    args = parser.parse_args(argv)
    values: dict[str, Any] = {}
    for f in fields(Settings):
        raw = getattr(args, f.name)
        if raw is None:
            raw = environ.get(f"TUNERY_{f.name.upper()}")
        if raw is not None:
            values[f.name] = _convert(f.name, f.type, raw)
    return Settings(**values), args
