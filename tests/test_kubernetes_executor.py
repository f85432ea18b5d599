"""The Kubernetes executor without a cluster (none runs on these machines): the Job it renders, checked field
by field and against the Kubernetes schemas; its state mapping, against a recorded sequence of Job and Pod
watch events (tests/data/kubernetes_watch_events.json); and the executor and the scheduler driving it,
against a small fake of the Kubernetes API client (the external boundary) that streams those events."""

from __future__ import annotations

import dataclasses
import json
import threading
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from tunery.services.kit.db import Database
from tunery.services.kit.settings import Settings, load
from tunery.services.trainer.executors import Ended, make_executor
from tunery.services.trainer.kubernetes_executor import (NOT_FOR_WORKERS, SELECTOR, KubernetesExecutor, Outcome,
                                                         Tracker, attempt_key, job_manifest)
from tunery.services.trainer.repository import Job, Repository
from tunery.services.trainer.scheduler import Scheduler
from tunery.services.trainer.servicer import MIGRATIONS
from tunery.trainer.v1 import trainer_pb2 as pb

K8S_VERSION = "1.33.0"  # the schemas tests/test_deploy.py validates the manifests with
EVENTS = json.loads((Path(__file__).parent / "data" / "kubernetes_watch_events.json").read_text())
NAMESPACE = "tunery"
TIMEOUT = 60
A, B, C, D, E, F = (f"job-0{c}0{c}0{c}0{c}0{c}0{c}" for c in "abcdef")
SECRETS = {"TUNERY_DATABASE_URL": "postgresql+psycopg://tunery:db-pw-1x@postgres:5432/tunery",
           "TUNERY_S3_ACCESS_KEY": "access-key-2x", "TUNERY_S3_SECRET_KEY": "secret-key-3x",
           "TUNERY_SERVICE_API_KEY": "tk_servicekey4x"}
SETTINGS = Settings(
    home=Path("/var/lib/tunery"), host="0.0.0.0", port=50052, database_url=SECRETS["TUNERY_DATABASE_URL"],
    s3_endpoint="minio:9000", s3_access_key=SECRETS["TUNERY_S3_ACCESS_KEY"],
    s3_secret_key=SECRETS["TUNERY_S3_SECRET_KEY"], s3_secure=True, service_api_key=SECRETS["TUNERY_SERVICE_API_KEY"],
    page_token_key="page-token-key-5x", bootstrap_admin_key="tk_adminkey6x", dataset_target="tunery-dataset:50051",
    registry_target="tunery-registry:50053", log_format="json", trainer_stop_timeout_s=240,
    trainer_model_cache=Path("/var/lib/tunery/models"), trainer_worker_threads=8, trainer_executor="kubernetes",
    trainer_kubernetes_image="registry.example.com/tunery/trainer:0.1.0",
    trainer_kubernetes_service_account="tunery-worker", trainer_kubernetes_model_cache_claim="tunery-models")


def spec(processes: int = 0) -> pb.TrainingJobSpec:
    return pb.TrainingJobSpec(base_model="tiny-llama", training_data="projects/alpha/datasets/chat",
                              output_model="projects/alpha/models/assistant", num_processes=processes)


def job_of(job_id: str, attempt: int, processes: int = 0) -> Job:
    return Job(job_id=job_id, project="alpha", request_id=None, state="RUNNING",
               spec_bytes=spec(processes).SerializeToString(), plan_bytes=None, progress_bytes=None, error_bytes=None,
               training_version="projects/alpha/datasets/chat/versions/0123456789abcdef",
               validation_version=None, cancel_requested=False, attempt_count=attempt, failure_count=0, lost_steps=0,
               worker_pid=None, model_version=None, last_seq=3, create_us=1, start_us=1, end_us=None)


# ---------------------------------------------------------------------- the Job
def test_the_job_runs_the_worker_under_torchrun_with_its_gpus_and_secrets_by_reference():
    manifest = job_manifest(SETTINGS, job_of(A, 3, processes=2), NAMESPACE)
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    labels = {"app.kubernetes.io/name": "tunery-worker", "app.kubernetes.io/part-of": "tunery",
              "app.kubernetes.io/managed-by": "tunery-trainer", "tunery.io/training-job": A, "tunery.io/attempt": "3"}
    annotations = {"tunery.io/training-job-name": f"projects/alpha/trainingJobs/{A}"}
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["metadata"] == {"name": f"tunery-{A}-3", "namespace": NAMESPACE, "labels": labels,
                                    "annotations": annotations}
    assert attempt_key(manifest) == (A, 3) and SELECTOR == "app.kubernetes.io/managed-by=tunery-trainer"
    job = manifest["spec"]
    assert set(job) == {"backoffLimit", "podReplacementPolicy", "ttlSecondsAfterFinished", "podFailurePolicy",
                        "template"}
    assert (job["backoffLimit"], job["podReplacementPolicy"], job["ttlSecondsAfterFinished"]) == (2, "Failed", 86400)
    assert job["podFailurePolicy"] == {"rules": [
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "FailJob", "onExitCodes": {"containerName": "worker", "operator": "NotIn", "values": [0]}}]}
    assert job["template"]["metadata"] == {"labels": labels, "annotations": annotations}

    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "tunery-worker"
    assert pod["terminationGracePeriodSeconds"] == 240  # the worker's checkpoint-on-SIGTERM budget
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                      "fsGroup": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod["volumes"] == [{"name": "home", "emptyDir": {}}, {"name": "tmp", "emptyDir": {}},
                              {"name": "dshm", "emptyDir": {"medium": "Memory"}},
                              {"name": "models", "persistentVolumeClaim": {"claimName": "tunery-models"}}]
    (container,) = pod["containers"]
    assert container["name"] == "worker" and container["image"] == "registry.example.com/tunery/trainer:0.1.0"
    assert container["command"] == ["python", "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                                    "-m", "tunery.services.trainer.worker", "--job", A, "--attempt", "3"]
    assert container["resources"] == {"requests": {"cpu": "4", "memory": "32Gi", "nvidia.com/gpu": "2"},
                                      "limits": {"memory": "32Gi", "nvidia.com/gpu": "2"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}}
    assert container["volumeMounts"] == [{"name": "home", "mountPath": "/var/lib/tunery"},
                                         {"name": "tmp", "mountPath": "/tmp"},
                                         {"name": "dshm", "mountPath": "/dev/shm"},
                                         {"name": "models", "mountPath": "/var/lib/tunery/models"}]

    # Secrets only by reference; with the Secret's values the worker reads exactly the trainer's settings.
    env = container["env"]
    text = json.dumps(manifest)
    assert not [value for value in (*SECRETS.values(), "page-token-key-5x", "tk_adminkey6x") if value in text]
    references = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in env if "valueFrom" in e}
    assert references == {name: {"name": "tunery-secrets", "key": name} for name in SECRETS}
    environ = {e["name"]: e["value"] for e in env if "value" in e} | SECRETS
    assert environ["OMP_NUM_THREADS"] == "8" and environ["TUNERY_S3_SECURE"] == "true"
    assert not [name for name in environ if name.startswith("TUNERY_TRAINER_KUBERNETES_")]
    worker_settings, _ = load([], environ)
    for f in dataclasses.fields(Settings):
        if f.name not in NOT_FOR_WORKERS and not f.name.startswith("trainer_kubernetes_"):
            assert getattr(worker_settings, f.name) == getattr(SETTINGS, f.name), f.name


def test_a_single_process_cpu_job_has_no_torchrun_and_no_device_request():
    settings = SETTINGS.replace(trainer_kubernetes_gpu_resource="", trainer_kubernetes_service_account="",
                                trainer_kubernetes_model_cache_claim="", trainer_kubernetes_cpu="2",
                                trainer_kubernetes_memory="8Gi")
    manifest = job_manifest(settings, job_of(B, 1), "tunery-dev")
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "tunery.services.trainer.worker", "--job", B, "--attempt", "1"]
    assert container["resources"] == {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}}
    assert "tolerations" not in pod and "serviceAccountName" not in pod
    assert [v["name"] for v in pod["volumes"]] == ["home", "tmp", "dshm"]


def test_settings_the_executor_cannot_run_with_are_named():
    with pytest.raises(ValueError) as refused:
        make_executor(Settings(trainer_executor="kubernetes", database_url="sqlite:///x.db"))
    message = str(refused.value)
    assert "TUNERY_TRAINER_KUBERNETES_IMAGE" in message and "TUNERY_DATABASE_URL" in message
    assert "TUNERY_S3_ENDPOINT" in message
    with pytest.raises(ValueError, match="TUNERY_TRAINER_EXECUTOR='slurm'"):
        make_executor(Settings(trainer_executor="slurm"))


# ---------------------------------------------------------------------- state mapping
def index_of(resource: str, event_type: str, name: str, phase: str | None = None,
             condition: str | None = None) -> int:
    """The position of the first recorded event that matches."""
    for i, event in enumerate(EVENTS):
        obj = event["object"]
        status = obj.get("status") or {}
        if (event["resource"], event["type"], obj["metadata"].get("name")) == (resource, event_type, name) \
                and phase in (None, status.get("phase")) \
                and condition in (None, *(c["type"] for c in status.get("conditions") or [])):
            return i
    raise AssertionError(f"no recorded {resource} {event_type} {name}")


def test_state_mapping_follows_the_recorded_watch_events():
    tracker = Tracker()
    keys = [(A, 1), (A, 2), (B, 1), (C, 1), (D, 1), (E, 1), (F, 1)]
    for key in keys:
        tracker.track(key)
    seen = []
    for i, event in enumerate(EVENTS):
        if event["type"] != "BOOKMARK":
            tracker.observe("Job" if event["resource"] == "jobs" else "Pod", event["type"], event["object"])
        seen += [(i, key, result) for key, result in tracker.ended()]
    assert seen == [
        # Pending (unschedulable), scheduled, Running: nothing; the preempted pod ends the attempt once it has
        # stopped (not when the DisruptionTarget condition appears), without counting a failure.
        (index_of("pods", "MODIFIED", f"tunery-{A}-1-q8x2m", phase="Failed"), (A, 1),
         Outcome(f"its pod tunery-{A}-1-q8x2m was disrupted (PreemptionByScheduler: default-scheduler: preempting "
                 "to accommodate a higher priority pod)", counts=False, delete=True)),
        (index_of("jobs", "MODIFIED", f"tunery-{A}-2", condition="Complete"), (A, 2),
         Outcome("its worker exited with code 0", counts=True, delete=False)),
        # FailureTarget is not the end yet: Failed comes once the pod is gone.
        (index_of("jobs", "MODIFIED", f"tunery-{B}-1", condition="Failed"), (B, 1),
         Outcome(f"its worker exited with code 137 (OOMKilled); its log: kubectl -n tunery logs job/tunery-{B}-1",
                 counts=True, delete=False)),
        (index_of("pods", "MODIFIED", f"tunery-{C}-1-m5c3r"), (C, 1),
         Outcome(f"its pod tunery-{C}-1-m5c3r cannot start (CreateContainerConfigError: couldn't find key "
                 "TUNERY_SERVICE_API_KEY in Secret tunery/tunery-secrets)", counts=True, delete=True)),
        # Cancelled: the Job is gone only after its pod (Foreground).
        (index_of("jobs", "DELETED", f"tunery-{D}-1"), (D, 1),
         Outcome("its Kubernetes Job was deleted", counts=True, delete=False)),
        (index_of("jobs", "MODIFIED", f"tunery-{E}-1", condition="Suspended"), (E, 1),
         Outcome("its Kubernetes Job was suspended (JobSuspended: Job suspended)", counts=False, delete=True)),
    ]
    assert list(tracker.attempts) == [(F, 1)]  # suspended before it ran: waiting to be admitted


def test_a_relist_marks_jobs_that_went_missing_as_deleted():
    tracker = Tracker()
    tracker.track((A, 1), job_manifest(SETTINGS, job_of(A, 1), NAMESPACE))
    tracker.track((B, 1))  # being created: not seen yet, so not missing
    tracker.resync("Job", [])
    assert tracker.ended() == [((A, 1), Outcome("its Kubernetes Job was deleted", counts=True, delete=False))]
    assert list(tracker.attempts) == [(B, 1)]


# ---------------------------------------------------------------------- the executor against a fake client
class FakeWatchResponse:
    """What the client returns for `watch=True, _preload_content=False`: a stream of JSON lines."""

    def __init__(self, lines) -> None:
        self.lines = lines

    def stream(self, amt=None, decode_content=False):
        return self.lines

    def close(self) -> None:
        pass

    def release_conn(self) -> None:
        pass


class FakeKubernetes:
    """The BatchV1Api and CoreV1Api methods the executor calls. Lists answer `listed`; a watch streams the
    recorded events of each Job once that Job has been created, as the cluster would, then waits."""

    def __init__(self, events: list[dict], listed_jobs: list[dict] = (), paused: bool = False) -> None:
        self.events = {kind: [e for e in events if e["resource"] == kind] for kind in ("jobs", "pods")}
        self.listed = {"jobs": list(listed_jobs), "pods": []}
        self.created: list[dict] = []
        self.deleted: list[tuple[str, str]] = []
        self.watches: list[tuple[str, str]] = []  # (resource, resource_version)
        self.calls: set[tuple[str, str, str]] = set()  # (API group, resource, verb), as RBAC names them
        self.sent = {kind: 0 for kind in self.events}  # a new watch goes on from where the last one stopped
        self.handled = {kind: 0 for kind in self.events}  # events the executor has finished with
        self.paused = paused
        self.closed = False
        self.changed = threading.Condition()

    def list_namespaced_job(self, namespace, **kwargs):
        return self._list_or_watch("jobs", namespace, kwargs)

    def list_namespaced_pod(self, namespace, **kwargs):
        return self._list_or_watch("pods", namespace, kwargs)

    def create_namespaced_job(self, namespace, body):
        assert namespace == NAMESPACE
        with self.changed:
            self.calls.add(("batch", "jobs", "create"))
            self.created.append(body)
            self.changed.notify_all()
        return body

    def delete_namespaced_job(self, name, namespace, propagation_policy):
        assert namespace == NAMESPACE
        with self.changed:
            self.calls.add(("batch", "jobs", "delete"))
            self.deleted.append((name, propagation_policy))
            created = [job for job in self.created if job["metadata"]["name"] == name]
            if propagation_policy == "Foreground" and created:  # no recorded pods: the Job goes at once
                gone = dict(created[0], metadata={**created[0]["metadata"], "resourceVersion": "481999"})
                self.events["jobs"].append({"resource": "jobs", "type": "DELETED", "object": gone})
            self.changed.notify_all()

    def resume(self) -> None:
        with self.changed:
            self.paused = False
            self.changed.notify_all()

    def close(self) -> None:
        with self.changed:
            self.closed = True
            self.changed.notify_all()

    def wait_for(self, predicate) -> None:
        with self.changed:
            assert self.changed.wait_for(predicate, TIMEOUT), "the fake cluster did not get there in time"

    def _list_or_watch(self, resource: str, namespace: str, kwargs: dict):
        assert namespace == NAMESPACE and kwargs["label_selector"] == SELECTOR
        with self.changed:
            verb = "watch" if kwargs.get("watch") else "list"
            self.calls.add(("batch" if resource == "jobs" else "", resource, verb))
        if not kwargs.get("watch"):
            return {"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "481000"},
                    "items": self.listed[resource]}
        with self.changed:
            self.watches.append((resource, kwargs["resource_version"]))
            self.changed.notify_all()
        return FakeWatchResponse(self._stream(resource))

    def _released(self, event: dict) -> bool:
        """Events of a Job flow once it exists; events that name no Job (BOOKMARK, ERROR) at once."""
        meta = event["object"].get("metadata", {})
        job = (meta.get("labels") or {}).get("batch.kubernetes.io/job-name") or meta.get("name")
        return job is None or job in {j["metadata"]["name"] for j in self.created}

    def drained(self) -> bool:
        return self.handled == {kind: len(events) for kind, events in self.events.items()}

    def _stream(self, resource: str):
        events = self.events[resource]
        while True:
            with self.changed:
                self.handled[resource] = self.sent[resource]  # asked for more: done with what it got
                self.changed.notify_all()
                self.changed.wait_for(lambda: self.closed or (not self.paused and self.sent[resource] < len(events)
                                                              and self._released(events[self.sent[resource]])))
                if self.closed:
                    return
                event = events[self.sent[resource]]
                self.sent[resource] += 1
            yield (json.dumps({"type": event["type"], "object": event["object"]}) + "\n").encode()


@pytest.fixture
def fake_cluster():
    fakes = []

    def make(*args, **kwargs) -> FakeKubernetes:
        fakes.append(FakeKubernetes(*args, **kwargs))
        return fakes[-1]

    yield make
    for fake in fakes:
        fake.close()


def test_executor_adopts_creates_maps_watched_events_and_cancels(fake_cluster):
    running_elsewhere = job_manifest(SETTINGS, job_of("job-111111111111", 2), NAMESPACE)
    orphan = job_manifest(SETTINGS, job_of("job-222222222222", 1), NAMESPACE)  # its attempt is over
    finished = dict(job_manifest(SETTINGS, job_of("job-333333333333", 1), NAMESPACE),
                    status={"conditions": [{"type": "Complete", "status": "True"}]})
    fake = fake_cluster(EVENTS, listed_jobs=[running_elsewhere, orphan, finished])
    executor = KubernetesExecutor(SETTINGS, fake, fake, NAMESPACE)

    adopted = executor.recover([job_of("job-111111111111", 2), job_of("job-444444444444", 1)])
    assert adopted == {"job-111111111111"}  # the other one's Job is gone: the scheduler re-queues it
    assert fake.deleted == [("tunery-job-222222222222-1", "Background")]  # finished Jobs are left to their TTL

    started = [job_of(A, 1), job_of(A, 2), job_of(B, 1), job_of(C, 1, processes=4), job_of(D, 1), job_of(E, 1),
               job_of(F, 1)]
    for job in started:
        assert executor.start(job) is None  # no process id here
    assert fake.created == [job_manifest(SETTINGS, job, NAMESPACE) for job in started]
    fake.wait_for(lambda: fake.drained() and len(fake.watches) == 2)
    assert sorted(fake.watches) == [("jobs", "481000"), ("pods", "481000")]  # from the list's resourceVersion

    ended = {(e.job_id, e.attempt): e for e in executor.ended()}
    assert set(ended) == {(A, 1), (A, 2), (B, 1), (C, 1), (D, 1), (E, 1)}
    assert ended[(A, 1)] == Ended(A, 1, f"its pod tunery-{A}-1-q8x2m was disrupted (PreemptionByScheduler: "
                                  "default-scheduler: preempting to accommodate a higher priority pod)", counts=False)
    assert ended[(B, 1)].why.startswith("its worker exited with code 137 (OOMKilled)") and ended[(B, 1)].counts
    assert not ended[(E, 1)].counts and ended[(D, 1)].counts
    assert executor.ended() == []  # each once
    # Attempts that are over but whose Job would start another pod are deleted.
    assert fake.deleted[1:] == [(f"tunery-{A}-1", "Background"), (f"tunery-{C}-1", "Background"),
                                (f"tunery-{E}-1", "Background")]
    assert executor.active() == 2  # the adopted attempt and F, which waits to be admitted

    executor.cancel(F, 1)
    executor.cancel(F, 1)  # once is enough
    executor.cancel(B, 1)  # over already: nothing to delete
    assert fake.deleted[4:] == [(f"tunery-{F}-1", "Foreground")]
    fake.wait_for(fake.drained)
    assert executor.ended() == [Ended(F, 1, "its Kubernetes Job was deleted")]
    assert executor.stop(1) == [] and executor.active() == 1  # Jobs outlive the trainer
    # The trainer's Role grants exactly the calls the executor made.
    rbac = Path(__file__).parents[1] / "deploy" / "k8s" / "components" / "kubernetes-executor" / "rbac.yaml"
    (role,) = [doc for doc in yaml.safe_load_all(rbac.read_text()) if doc["kind"] == "Role"]
    assert fake.calls == {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
                          for resource in rule["resources"] for verb in rule["verbs"]}


def test_an_expired_watch_lists_again_and_notices_a_deleted_job(fake_cluster):
    expired = {"resource": "jobs", "type": "ERROR", "object": {
        "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": "Expired", "code": 410,
        "message": "too old resource version: 481000 (481391)"}}
    fake = fake_cluster([expired], listed_jobs=[job_manifest(SETTINGS, job_of(A, 1), NAMESPACE)], paused=True)
    executor = KubernetesExecutor(SETTINGS, fake, fake, NAMESPACE)
    assert executor.recover([job_of(A, 1)]) == {A}
    fake.listed["jobs"] = []  # deleted while the watch was away
    fake.resume()
    fake.wait_for(lambda: [w for w in fake.watches if w[0] == "jobs"] == [("jobs", "481000")] * 2)
    assert executor.ended() == [Ended(A, 1, "its Kubernetes Job was deleted")]
    executor.stop(1)


# ---------------------------------------------------------------------- the scheduler with this executor
def wait_until(done) -> None:
    """Poll the database until `done` holds (the scheduler writes it; nothing to be notified by)."""
    pause = threading.Event()
    for _ in range(TIMEOUT * 20):
        if done():
            return
        pause.wait(0.05)
    raise AssertionError("the scheduler did not get there in time")


def test_scheduler_requeues_a_preempted_attempt_uncounted_and_cancels_by_deleting_the_job(fake_cluster, tmp_path):
    settings = SETTINGS.replace(database_url=f"sqlite:///{tmp_path / 'tunery.db'}", trainer_poll_interval_s=0.02,
                                trainer_max_concurrent_jobs=1)
    db = Database(settings.database_url)
    db.migrate("trainer", MIGRATIONS)
    repo = Repository(db)
    repo.create_job(job_id=A, project="alpha", request_id=None, spec=spec(), quota=0,
                    training_version="projects/alpha/datasets/chat/versions/0123456789abcdef", validation_version=None)
    repo.transition(A, ("VALIDATING",), "QUEUED", "validated")
    fake = fake_cluster([e for e in EVENTS if e["type"] == "BOOKMARK" or attempt_key(e["object"])[0] == A])
    scheduler = Scheduler(settings, repo, peers=None, executor=KubernetesExecutor(settings, fake, fake, NAMESPACE))
    scheduler.start()
    try:
        # Attempt 1 is preempted (not counted); attempt 2's Job completes while the job is still RUNNING
        # (no worker ran here to record an end), which counts; attempt 3's Job never starts a pod.
        fake.wait_for(lambda: len(fake.created) == 3)
        job = repo.get_job(A)
        assert (job.state, job.attempt_count, job.failure_count) == ("RUNNING", 3, 1)
        repo.update_job(A, when_state="RUNNING", cancel_requested=True)  # what CancelTrainingJob does
        scheduler.wake()
        wait_until(lambda: repo.get_job(A).state == "CANCELLED")
    finally:
        scheduler.stop()
    assert fake.deleted == [(f"tunery-{A}-1", "Background"), (f"tunery-{A}-3", "Foreground")]
    messages = [e.state_changed.message for e in repo.list_events(A, 0, 100)
                if e.WhichOneof("event") == "state_changed"]
    assert messages[2:] == [
        "attempt 1 started",
        f"its pod tunery-{A}-1-q8x2m was disrupted (PreemptionByScheduler: default-scheduler: preempting to "
        "accommodate a higher priority pod); re-queued after step 0 (not counted as a failure), resuming from the "
        "latest checkpoint",
        "attempt 2 started",
        "its worker exited with code 0; re-queued (failure 1 of 3) after step 0, resuming from the "
        "latest checkpoint",
        "attempt 3 started",
        "cancelled: its Kubernetes Job was deleted"]
