"""Training workers as Kubernetes Jobs (settings.trainer_executor = "kubernetes").

Each attempt of a training job is one batch/v1 Job, `tunery-{job id}-{attempt}`. It runs the local
executor's worker entrypoint, under torchrun when the job asks for several processes, and:

- podFailurePolicy: a disrupted pod (preemption, eviction, node drain or shutdown; pod condition
  DisruptionTarget) is ignored, not counted. Any non-zero exit of the worker fails the Job at once, and the
  scheduler decides about another attempt, as it does for local workers. backoffLimit only covers pods that
  fail before the worker runs (a node refusing the pod).
- terminationGracePeriodSeconds = settings.trainer_stop_timeout_s: on SIGTERM the worker checkpoints and
  re-queues its job, as a local worker does when the service stops.
- the trainer's settings as env, secret ones by secretKeyRef to settings.trainer_kubernetes_secret;
  resources, image and ServiceAccount from settings; a pod that meets the `restricted` Pod Security Standard.

The executor lists, then watches from the list's resourceVersion, the Jobs and pods it labelled, and
`outcome` maps what it saw to the end of an attempt. Jobs outlive the trainer: a new trainer process adopts
them. Cancelling deletes the Job (Foreground: it is gone only once its pod is).
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterable

import structlog
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from tunery.services.kit.settings import Settings
from tunery.services.trainer.executors import Ended, ExecutorError, worker_argv
from tunery.services.trainer.repository import Job

log = structlog.get_logger("tunery.trainer.kubernetes")

MANAGED_BY = "tunery-trainer"
SELECTOR = f"app.kubernetes.io/managed-by={MANAGED_BY}"
JOB_LABEL, ATTEMPT_LABEL = "tunery.io/training-job", "tunery.io/attempt"
CONTAINER = "worker"
WORKER_UID = 10001  # the user of the Tunery images
JOB_TTL_S = 24 * 3600  # finished Jobs (and their pods' logs) stay a day
BACKOFF_LIMIT = 2
WATCH_TIMEOUT_S = 300  # the API server ends a watch after this; the executor watches again from there
RETRY_S = 5.0  # wait after a failed list or watch before listing again
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
# Settings that hold credentials: workers get them by secretKeyRef, never as values.
SECRET_SETTINGS = {"database_url", "s3_access_key", "s3_secret_key", "service_api_key"}
# Settings workers do not use: serving, admin and page-token secrets, this executor's own.
NOT_FOR_WORKERS = {"host", "port", "bootstrap_admin_key", "page_token_key", "trainer_executor"}
# Waiting reasons of a worker container that will not start until someone changes the configuration.
STUCK = {"CreateContainerConfigError", "InvalidImageName", "ErrImageNeverPull"}


def check_settings(settings: Settings) -> None:
    """Refuse settings worker pods cannot run with, naming each variable to set."""
    problems = []
    if not settings.trainer_kubernetes_image:
        problems.append("TUNERY_TRAINER_KUBERNETES_IMAGE must name the worker image (the trainer's image)")
    if not settings.database_url or settings.database_url.startswith("sqlite"):
        problems.append("TUNERY_DATABASE_URL must name a database worker pods reach (PostgreSQL), not SQLite")
    if not settings.s3_endpoint:
        problems.append("TUNERY_S3_ENDPOINT must be set")
    if settings.tls_cert_file or settings.tls_key_file or settings.tls_ca_file:
        problems.append("TUNERY_TLS_* files are not mounted into worker pods; the Kubernetes executor cannot use "
                        "them yet")
    if problems:
        raise ValueError("TUNERY_TRAINER_EXECUTOR=kubernetes: " + "; ".join(problems))


def job_name(job_id: str, attempt: int) -> str:
    return f"tunery-{job_id}-{attempt}"


def worker_env(settings: Settings) -> list[dict[str, Any]]:
    """The trainer's settings that differ from the defaults, as the worker container's env."""
    defaults = Settings()
    env: list[dict[str, Any]] = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if (f.name in NOT_FOR_WORKERS or f.name.startswith("trainer_kubernetes_") or value is None
                or value == getattr(defaults, f.name)):
            continue
        name = f"TUNERY_{f.name.upper()}"
        if f.name in SECRET_SETTINGS:
            env.append({"name": name, "valueFrom": {"secretKeyRef": {"name": settings.trainer_kubernetes_secret,
                                                                      "key": name}}})
        else:
            env.append({"name": name, "value": str(value).lower() if isinstance(value, bool) else str(value)})
    if settings.trainer_worker_threads:
        env.append({"name": "OMP_NUM_THREADS", "value": str(settings.trainer_worker_threads)})
    return env


def job_manifest(settings: Settings, job: Job, namespace: str) -> dict[str, Any]:
    """The batch/v1 Job that runs the job's current attempt."""
    processes = max(1, job.spec.num_processes)
    labels = {"app.kubernetes.io/name": "tunery-worker", "app.kubernetes.io/part-of": "tunery",
              "app.kubernetes.io/managed-by": MANAGED_BY, JOB_LABEL: job.job_id,
              ATTEMPT_LABEL: str(job.attempt_count)}
    annotations = {"tunery.io/training-job-name": job.name}
    requests = {"cpu": settings.trainer_kubernetes_cpu, "memory": settings.trainer_kubernetes_memory}
    limits = {"memory": settings.trainer_kubernetes_memory}
    gpu = settings.trainer_kubernetes_gpu_resource
    if gpu:  # one device per process; extended resources need requests == limits
        requests[gpu] = limits[gpu] = str(processes)
    mounts = [{"name": "home", "mountPath": str(settings.home)}, {"name": "tmp", "mountPath": "/tmp"},
              {"name": "dshm", "mountPath": "/dev/shm"}]  # torchrun, NCCL and data loaders need shared memory
    volumes: list[dict[str, Any]] = [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                                     {"name": "dshm", "emptyDir": {"medium": "Memory"}}]
    if settings.trainer_kubernetes_model_cache_claim:
        mounts.append({"name": "models", "mountPath": str(settings.model_cache())})
        volumes.append({"name": "models", "persistentVolumeClaim": {
            "claimName": settings.trainer_kubernetes_model_cache_claim}})
    container = {
        "name": CONTAINER, "image": settings.trainer_kubernetes_image,
        "command": ["python", *worker_argv(job)], "env": worker_env(settings),
        "resources": {"requests": requests, "limits": limits},
        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": mounts}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",  # podFailurePolicy requires it; the Job makes new pods
        "automountServiceAccountToken": False,  # workers do not call the Kubernetes API
        "terminationGracePeriodSeconds": math.ceil(settings.trainer_stop_timeout_s),
        "securityContext": {"runAsNonRoot": True, "runAsUser": WORKER_UID, "runAsGroup": WORKER_UID,
                            "fsGroup": WORKER_UID, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [container], "volumes": volumes}
    if settings.trainer_kubernetes_service_account:
        pod["serviceAccountName"] = settings.trainer_kubernetes_service_account
    if gpu:  # GPU nodes are often tainted with the resource name
        pod["tolerations"] = [{"key": gpu, "operator": "Exists", "effect": "NoSchedule"}]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": job_name(job.job_id, job.attempt_count), "namespace": namespace, "labels": labels,
                     "annotations": annotations},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "podReplacementPolicy": "Failed",  # never two pods of one attempt at once
            "ttlSecondsAfterFinished": JOB_TTL_S,
            "podFailurePolicy": {"rules": [
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
                {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn",
                                                      "values": [0]}}]},
            "template": {"metadata": {"labels": labels, "annotations": annotations}, "spec": pod}}}


# ---------------------------------------------------------------------- from watched objects to outcomes
@dataclass(frozen=True)
class Outcome:
    why: str  # completes "the job's worker ended: …"
    counts: bool  # a failed attempt (False: preempted or suspended; re-queued without counting)
    delete: bool  # the Job must be deleted (it would start another pod for an attempt that is over)


def attempt_key(obj: dict) -> tuple[str, int] | None:
    """(job id, attempt) from a Job's or pod's labels; None for objects that are not ours."""
    labels = obj.get("metadata", {}).get("labels") or {}
    job_id, attempt = labels.get(JOB_LABEL), labels.get(ATTEMPT_LABEL, "")
    return (job_id, int(attempt)) if job_id and attempt.isdigit() else None


def _conditions(obj: dict) -> dict[str, dict]:
    return {c["type"]: c for c in (obj.get("status") or {}).get("conditions") or [] if c.get("status") == "True"}


def _explain(condition: dict) -> str:
    return f"{condition.get('reason', '')}: {condition.get('message', '')}".strip(": ")


def _terminated(pod: dict) -> dict | None:
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status["name"] == CONTAINER and "terminated" in (status.get("state") or {}):
            return status["state"]["terminated"]
    return None


def _worker_failure(pods: Iterable[dict]) -> str | None:
    """How the worker failed in a pod that was not disrupted, once that pod's state has been seen."""
    for pod in pods:
        ended = _terminated(pod)
        if ended is not None and ended["exitCode"] != 0 and "DisruptionTarget" not in _conditions(pod):
            reason = f" ({ended['reason']})" if ended.get("reason") else ""
            return f"its worker exited with code {ended['exitCode']}{reason}"
    return None


def outcome(job: dict | None, pods: list[dict], gone: bool) -> Outcome | None:
    """Whether an attempt has ended, from its Job (None until seen), its pods, and whether the Job is gone."""
    conditions = _conditions(job or {})
    meta = (job or {}).get("metadata", {})
    if "Complete" in conditions:
        return Outcome("its worker exited with code 0", True, False)
    if "Failed" in conditions:
        why = _worker_failure(pods) or f"its Kubernetes Job failed ({_explain(conditions['Failed'])})"
        return Outcome(f"{why}; its log: kubectl -n {meta.get('namespace')} logs job/{meta.get('name')}", True, False)
    ran = any((p.get("status") or {}).get("phase") in ("Running", "Succeeded", "Failed") for p in pods)
    if "Suspended" in conditions and ran:  # before it ran, a queue (such as Kueue) is only holding it back
        return Outcome(f"its Kubernetes Job was suspended ({_explain(conditions['Suspended'])})", False, True)
    for pod in pods:
        disruption = _conditions(pod).get("DisruptionTarget")
        if disruption and (pod.get("status") or {}).get("phase") == "Failed":
            return Outcome(f"its pod {pod['metadata']['name']} was disrupted ({_explain(disruption)})", False, True)
    for pod in pods:
        for status in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (status.get("state") or {}).get("waiting") or {}
            if status["name"] == CONTAINER and waiting.get("reason") in STUCK:
                return Outcome(f"its pod {pod['metadata']['name']} cannot start ({_explain(waiting)})", True, True)
    if gone:
        return Outcome("its Kubernetes Job was deleted", True, False)
    return None


@dataclass
class _Attempt:
    job: dict | None = None  # the latest Job object seen
    pods: dict[str, dict] = field(default_factory=dict)  # pod name → latest object (a deleted pod's last one)
    gone: bool = False
    cancelling: bool = False


class Tracker:
    """What the watches showed of each attempt the executor runs. Not thread-safe: the executor locks."""

    def __init__(self) -> None:
        self.attempts: dict[tuple[str, int], _Attempt] = {}

    def track(self, key: tuple[str, int], job: dict | None = None) -> None:
        attempt = self.attempts.setdefault(key, _Attempt())
        if attempt.job is None:
            attempt.job = job

    def observe(self, kind: str, event_type: str, obj: dict) -> None:
        """One watch event (ADDED, MODIFIED, DELETED) of a Job or Pod; objects of untracked attempts are ignored."""
        attempt = self.attempts.get(attempt_key(obj))
        if attempt is None:
            return
        if kind == "Job":
            attempt.job = obj
            attempt.gone = attempt.gone or event_type == "DELETED"
        else:
            attempt.pods[obj["metadata"]["name"]] = obj

    def resync(self, kind: str, items: list[dict]) -> None:
        """A fresh list: it replaces what the watch showed; a Job seen before and not listed is gone."""
        listed: dict[tuple[str, int] | None, list[dict]] = {}
        for obj in items:
            listed.setdefault(attempt_key(obj), []).append(obj)
        for key, attempt in self.attempts.items():
            found = listed.get(key, [])
            if kind == "Job":
                if found:
                    attempt.job = found[0]
                elif attempt.job is not None:
                    attempt.gone = True
            else:
                attempt.pods = {pod["metadata"]["name"]: pod for pod in found}

    def ended(self) -> list[tuple[tuple[str, int], Outcome]]:
        """Attempts that have ended since the last call; they are no longer tracked."""
        done = [(key, result) for key, attempt in self.attempts.items()
                if (result := outcome(attempt.job, list(attempt.pods.values()), attempt.gone)) is not None]
        for key, _ in done:
            del self.attempts[key]
        return done


# ---------------------------------------------------------------------- the executor
class KubernetesExecutor:
    """Runs attempts as Jobs through `batch` (a BatchV1Api) and watches their pods through `core` (CoreV1Api)."""

    def __init__(self, settings: Settings, batch: Any, core: Any, namespace: str) -> None:
        self.settings, self.batch, self.core, self.namespace = settings, batch, core, namespace
        self.tracker = Tracker()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._serializer = client.ApiClient()  # model objects → the API's JSON dicts (dicts pass through)

    # ------------------------------------------------------------------ Executor
    def recover(self, jobs: list[Job]) -> set[str]:
        """Adopt the Jobs of the RUNNING jobs' current attempts, delete active Jobs of attempts that are over,
        and start watching."""
        job_items, job_version = self._list(self.batch.list_namespaced_job)
        pod_items, pod_version = self._list(self.core.list_namespaced_pod)
        running = {(job.job_id, job.attempt_count) for job in jobs}
        orphans = []
        with self._lock:
            for obj in job_items:
                key = attempt_key(obj)
                if key in running:
                    self.tracker.track(key, obj)
                    log.info("worker.adopted", job=key[0], attempt=key[1], kubernetes_job=obj["metadata"]["name"])
                elif not {"Complete", "Failed"} & set(_conditions(obj)):
                    orphans.append(obj["metadata"]["name"])
            self.tracker.resync("Pod", pod_items)
            adopted = {job_id for job_id, _ in self.tracker.attempts}
        for name in orphans:  # e.g. the trainer stopped between a preemption and deleting the Job
            log.warning("kubernetes.orphan_deleted", kubernetes_job=name)
            self._delete(name, "Background")
        for kind, list_fn, version in (("Job", self.batch.list_namespaced_job, job_version),
                                       ("Pod", self.core.list_namespaced_pod, pod_version)):
            threading.Thread(target=self._watch, args=(kind, list_fn, version), name=f"trainer-watch-{kind}",
                             daemon=True).start()
        return adopted

    def start(self, job: Job) -> int | None:
        key = (job.job_id, job.attempt_count)
        manifest = job_manifest(self.settings, job, self.namespace)
        with self._lock:
            self.tracker.track(key)  # before creating it: the watch may report it at once
        try:
            created = self.batch.create_namespaced_job(self.namespace, manifest)
        except ApiException as e:
            with self._lock:
                self.tracker.attempts.pop(key, None)
            raise ExecutorError(f"could not create Kubernetes Job {manifest['metadata']['name']}: {e.status} "
                                f"{e.reason}: {e.body or ''}".strip()) from e
        with self._lock:
            self.tracker.track(key, self._serializer.sanitize_for_serialization(created))
        return None

    def ended(self) -> list[Ended]:
        with self._lock:
            done = self.tracker.ended()
        for (job_id, attempt), result in done:
            log.info("worker.ended", job=job_id, attempt=attempt, why=result.why, counts=result.counts)
            if result.delete:
                self._delete(job_name(job_id, attempt), "Background")
        return [Ended(job_id, attempt, result.why, result.counts) for (job_id, attempt), result in done]

    def active(self) -> int:
        with self._lock:
            return len(self.tracker.attempts)

    def cancel(self, job_id: str, attempt: int) -> None:
        """Delete the attempt's Job, once. Its pod gets SIGTERM and the worker ends the job CANCELLED; a pod
        that never started simply goes. Foreground: the Job disappears only after its pod."""
        with self._lock:
            tracked = self.tracker.attempts.get((job_id, attempt))
            if tracked is None or tracked.cancelling:
                return
            tracked.cancelling = True
        log.info("worker.cancelling", job=job_id, attempt=attempt)
        self._delete(job_name(job_id, attempt), "Foreground")

    def stop(self, timeout_s: float) -> list[tuple[str, int]]:
        """Stop watching. Jobs keep running: the next trainer process adopts them."""
        self._stopping.set()
        return []

    # ------------------------------------------------------------------ API calls
    def _list(self, list_fn: Callable[..., Any]) -> tuple[list[dict], str]:
        listed = self._serializer.sanitize_for_serialization(list_fn(self.namespace, label_selector=SELECTOR))
        return listed.get("items") or [], listed["metadata"]["resourceVersion"]

    def _delete(self, name: str, propagation: str) -> None:
        try:
            self.batch.delete_namespaced_job(name, self.namespace, propagation_policy=propagation)
        except ApiException as e:
            if e.status != 404:  # already gone is what we wanted
                log.warning("kubernetes.delete_failed", kubernetes_job=name, status=e.status, reason=e.reason)

    def _watch(self, kind: str, list_fn: Callable[..., Any], version: str | None) -> None:
        """Watch `kind` from `version`; list again (and resync) after 410 Gone or any failure."""
        while not self._stopping.is_set():
            try:
                if version is None:
                    items, version = self._list(list_fn)
                    with self._lock:
                        self.tracker.resync(kind, items)
                for event in watch.Watch().stream(list_fn, self.namespace, label_selector=SELECTOR,
                                                  resource_version=version, allow_watch_bookmarks=True,
                                                  timeout_seconds=WATCH_TIMEOUT_S):
                    obj = event["raw_object"]
                    version = obj["metadata"]["resourceVersion"]
                    if event["type"] != "BOOKMARK":
                        with self._lock:
                            self.tracker.observe(kind, event["type"], obj)
                    if self._stopping.is_set():
                        return
            except ApiException as e:
                if e.status != 410:  # 410 Gone: the version is too old, list again at once
                    log.warning("kubernetes.watch_failed", kind=kind, status=e.status, reason=e.reason)
                    self._stopping.wait(RETRY_S)
                version = None
            except Exception as e:  # noqa: BLE001 - connection reset, API server restart: list again
                log.warning("kubernetes.watch_failed", kind=kind, error=repr(e))
                self._stopping.wait(RETRY_S)
                version = None


def from_settings(settings: Settings) -> KubernetesExecutor:
    """The executor with in-cluster credentials (the trainer's ServiceAccount), else the local kubeconfig."""
    check_settings(settings)
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    namespace = settings.trainer_kubernetes_namespace
    if not namespace:
        try:
            namespace = NAMESPACE_FILE.read_text().strip()
        except OSError:
            raise ValueError("TUNERY_TRAINER_KUBERNETES_NAMESPACE must be set when the trainer does not run in a "
                             "pod") from None
    api = client.ApiClient()
    return KubernetesExecutor(settings, client.BatchV1Api(api), client.CoreV1Api(api), namespace)
