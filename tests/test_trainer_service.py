"""The trainer service end to end: real dataset and registry services, real worker processes training the
tiny Llama, real S3. Waits are on streamed events or job states, with generous deadlines."""

from __future__ import annotations

import json
import os
import signal
import threading
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import grpc
import pytest
import torch
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from peft import PeftModel
from safetensors.torch import load as load_safetensors
from transformers import AutoModelForCausalLM

from service_fixtures import Running, child_processes, fails, running, wait_until, watch_events
from tunery.dataset.v1 import dataset_pb2, dataset_pb2_grpc
from tunery.registry.v1 import registry_pb2, registry_pb2_grpc
from tunery.services.kit.db import Database
from tunery.services.kit.errors import ResourceExhausted
from tunery.services.trainer import base_models, executors
from tunery.services.trainer.repository import Repository
from tunery.services.trainer.service import job_proto
from tunery.services.trainer.servicer import MIGRATIONS
from tunery.trainer.v1 import trainer_pb2 as pb
from tunery.trainer.v1 import trainer_pb2_grpc

PARENT = "projects/alpha"
TIMEOUT = 180  # deadline of one wait on a job (training is seconds; CI machines are slow and shared)
S = pb.TrainingJobState

PAIRS = [("What is the capital of France?", "The capital of France is Paris."),
         ("What is two plus two?", "Two plus two is four."),
         ("Translate to French: good morning.", "Bonjour."),
         ("Translate to German: thank you very much.", "Vielen Dank."),
         ("I would like to reset my password, please.", "Open the settings page, choose security, and click on "
                                                         "reset password."),
         ("Where is my order?", "The order number is 12345 and it was shipped on Monday."),
         ("How is the weather?", "The weather is sunny and warm."),
         ("My invoice shows the wrong amount.", "I am sorry about that; let me check your account.")]


def chat_examples(count: int) -> list[dict]:
    return [{"messages": [{"role": "system", "content": f"You are assistant number {i}."},
                          {"role": "user", "content": PAIRS[i % len(PAIRS)][0]},
                          {"role": "assistant", "content": PAIRS[i % len(PAIRS)][1]}]} for i in range(count)]


@dataclass
class Stack:
    dataset: Running
    registry: Running
    trainer: Running
    settings: object

    @property
    def md(self) -> list[tuple[str, str]]:
        return self.trainer.metadata()

    @property
    def jobs(self) -> trainer_pb2_grpc.TrainerServiceStub:
        return trainer_pb2_grpc.TrainerServiceStub(self.trainer.channel)

    @property
    def repo(self) -> Repository:
        return Repository(self.trainer.service.runtime.db)

    def upload(self, dataset_id: str, examples: list[dict]) -> dataset_pb2.DatasetVersion:
        stub = dataset_pb2_grpc.DatasetServiceStub(self.dataset.channel)
        stub.CreateDataset(dataset_pb2.CreateDatasetRequest(parent=PARENT, dataset_id=dataset_id),
                           metadata=self.md, timeout=30)
        raw = "".join(json.dumps(e) + "\n" for e in examples).encode()
        header = dataset_pb2.UploadDatasetVersionHeader(dataset=f"{PARENT}/datasets/{dataset_id}",
                                                        request_id=str(uuid.uuid4()))
        messages = iter([dataset_pb2.UploadDatasetVersionRequest(header=header),
                         dataset_pb2.UploadDatasetVersionRequest(chunk=raw)])
        return stub.UploadDatasetVersion(messages, metadata=self.md, timeout=60).dataset_version

    def create(self, spec: pb.TrainingJobSpec, request_id: str = "") -> pb.TrainingJob:
        return self.jobs.CreateTrainingJob(pb.CreateTrainingJobRequest(parent=PARENT, spec=spec,
                                                                       request_id=request_id),
                                           metadata=self.md, timeout=60).training_job

    def get(self, name: str) -> pb.TrainingJob:
        return self.jobs.GetTrainingJob(pb.GetTrainingJobRequest(name=name), metadata=self.md,
                                        timeout=30).training_job

    def watch(self, name: str, after_seq: int = 0,
              until: Callable[[pb.TrainingJobEvent], bool] = lambda e: False) -> list[pb.TrainingJobEvent]:
        return watch_events(self.jobs, self.md, name, after_seq, until, TIMEOUT)


def state_is(*states: int) -> Callable[[pb.TrainingJobEvent], bool]:
    return lambda e: e.WhichOneof("event") == "state_changed" and e.state_changed.state in states


def checkpoint_at_least(step: int) -> Callable[[pb.TrainingJobEvent], bool]:
    return lambda e: e.WhichOneof("event") == "checkpoint_saved" and e.checkpoint_saved.checkpoint.step >= step


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory) -> Path:
    cache = os.environ.get("TUNERY_TEST_MODEL_CACHE")
    return Path(cache) if cache else tmp_path_factory.mktemp("models")


@contextmanager
def trainer_for(settings) -> Iterator[Running]:
    with running("trainer", settings) as trainer:
        yield trainer


@contextmanager
def stack_of(settings, model_cache: Path, **trainer_settings) -> Iterator[Stack]:
    with running("dataset", settings) as dataset, running("registry", settings) as registry:
        service_key = dataset.service.runtime.keys.create("ops", admin=True, description="trainer → peers").secret
        trainer_settings = settings.replace(
            dataset_target=dataset.address, registry_target=registry.address, service_api_key=service_key,
            trainer_model_cache=model_cache, trainer_worker_threads=1, **trainer_settings)
        with trainer_for(trainer_settings) as trainer:
            yield Stack(dataset, registry, trainer, trainer_settings)


@pytest.fixture
def stack(settings, model_cache) -> Iterator[Stack]:
    with stack_of(settings, model_cache) as s:
        yield s


def tiny_spec(training_data: str, **changes) -> pb.TrainingJobSpec:
    spec = pb.TrainingJobSpec(base_model="tiny-llama", training_data=training_data,
                              output_model=f"{PARENT}/models/assistant")
    spec.hyperparameters.epochs = 2
    spec.hyperparameters.batch_size = 4
    spec.lora.rank = 4
    for key, value in changes.items():
        target = spec
        *path, last = key.split("__")
        for part in path:
            target = getattr(target, part)
        if isinstance(value, list):
            getattr(target, last).extend(value)
        else:
            setattr(target, last, value)
    return spec


def download_version(stack: Stack, name: str, folder: Path) -> registry_pb2.ModelVersion:
    stub = registry_pb2_grpc.ModelRegistryServiceStub(stack.registry.channel)
    current = None
    folder.mkdir(parents=True, exist_ok=True)
    for message in stub.DownloadModelVersion(registry_pb2.DownloadModelVersionRequest(name=name),
                                             metadata=stack.md, timeout=60):
        if message.WhichOneof("payload") == "file":
            current = folder / message.file.path
            current.write_bytes(b"")
        else:
            with current.open("ab") as f:
                f.write(message.chunk)
    return stub.GetModelVersion(registry_pb2.GetModelVersionRequest(name=name), metadata=stack.md,
                                timeout=30).model_version


# ---------------------------------------------------------------------- no training
def test_repository_numbers_events_consecutively_and_ignores_stale_attempts(database_url):
    db = Database(database_url)
    db.migrate("trainer", MIGRATIONS)
    repo = Repository(db)
    spec = tiny_spec(f"{PARENT}/datasets/chat")
    version = f"{PARENT}/datasets/chat/versions/0123456789abcdef"
    job, created = repo.create_job(job_id="job-0123456789ab", project="alpha", request_id="r1", spec=spec,
                                   training_version=version, validation_version=None, quota=1)
    assert created and job.state == "VALIDATING" and job.last_seq == 1
    again, created = repo.create_job(job_id="job-ffffffffffff", project="alpha", request_id="r1", spec=spec,
                                     training_version=version, validation_version=None, quota=1)
    assert not created and again.job_id == job.job_id  # replayed, even at the quota
    with pytest.raises(ResourceExhausted):
        repo.create_job(job_id="job-eeeeeeeeeeee", project="alpha", request_id=None, spec=spec,
                        training_version=version, validation_version=None, quota=1)
    assert repo.transition(job.job_id, ("QUEUED",), "RUNNING", "not queued yet") is None
    assert repo.transition(job.job_id, ("VALIDATING",), "QUEUED", "validated") is not None
    assert repo.transition(job.job_id, ("QUEUED",), "RUNNING", "started", attempt=0, attempt_count=1) is not None

    def report(n: int) -> None:
        for _ in range(n):
            assert repo.append_event(job.job_id, pb.TrainingJobEvent(log=pb.LogEvent(code="x")), attempt=1)

    threads = [threading.Thread(target=report, args=(10,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert repo.append_event(job.job_id, pb.TrainingJobEvent(log=pb.LogEvent(code="stale")), attempt=0) is None
    assert repo.transition(job.job_id, ("RUNNING",), "SUCCEEDED", "stale", attempt=0) is None
    assert repo.transition(job.job_id, ("RUNNING",), "SUCCEEDED", "done", attempt=1) is not None
    events = repo.list_events(job.job_id, 0, 1000)
    assert [e.seq for e in events] == list(range(1, 45))
    assert [e.state_changed.state for e in events if e.WhichOneof("event") == "state_changed"] == [
        S.TRAINING_JOB_STATE_VALIDATING, S.TRAINING_JOB_STATE_QUEUED, S.TRAINING_JOB_STATE_RUNNING,
        S.TRAINING_JOB_STATE_SUCCEEDED]
    assert [e.seq for e in repo.list_events(job.job_id, 40, 2)] == [41, 42]
    db.dispose()



def test_job_proto_merges_the_stored_bytes_into_what_the_parsed_job_says(database_url):
    db = Database(database_url)
    db.migrate("trainer", MIGRATIONS)
    repo = Repository(db)
    spec = tiny_spec(f"{PARENT}/datasets/chat")
    job, _ = repo.create_job(job_id="job-0123456789ab", project="alpha", request_id=None, spec=spec,
                             training_version=f"{PARENT}/datasets/chat/versions/0123456789abcdef",
                             validation_version=None, quota=0)
    plan = pb.TrainingPlan(training_example_count=12)
    repo.update_job(job.job_id, plan=plan, progress=pb.TrainingProgress(step=3, loss=1.5),
                    start_us=1_700_000_000_123_456)
    error = pb.TrainingError(code="worker_failed", message="exited with code -9")
    repo.transition(job.job_id, ("VALIDATING",), "FAILED", "failed", error=error)
    got = repo.get_job(job.job_id)  # Database.first
    assert got == repo.list_jobs("alpha", state=None, dataset_version=None, after=None, limit=1)[0]  # a transaction
    assert got.spec == spec and got.plan == plan and got.error == error and got.cancel_requested is False
    expected = pb.TrainingJob(name=got.name, spec=got.spec, state=S.TRAINING_JOB_STATE_FAILED, plan=got.plan,
                              progress=got.progress, error=got.error, attempt_count=0)
    expected.create_time.FromMicroseconds(got.create_us)
    expected.start_time.FromMicroseconds(got.start_us)
    expected.end_time.FromMicroseconds(got.end_us)
    assert job_proto(got) == expected
    response = pb.GetTrainingJobResponse()
    assert job_proto(got, response.training_job) is response.training_job and response.training_job == expected
    db.dispose()


def test_catalog_and_requests_refused_before_anything_is_stored(stack):
    jobs = stack.jobs
    models = jobs.ListBaseModels(pb.ListBaseModelsRequest(parent=PARENT), metadata=stack.md, timeout=60).base_models
    tiny = {m.id: m for m in models}["tiny-llama"]
    assert tiny.has_chat_template and tiny.context_length == 2048 and tiny.parameter_count > 100_000
    assert tiny.source == pb.BASE_MODEL_SOURCE_BUILTIN
    assert [m.id for m in models] == sorted(m.id for m in models)
    first = jobs.ListBaseModels(pb.ListBaseModelsRequest(parent=PARENT, page_size=1), metadata=stack.md, timeout=60)
    assert len(first.base_models) == 1 and (first.next_page_token or len(models) == 1)

    bad = pb.TrainingJobSpec(base_model="tiny-llama", training_data="projects/beta/datasets/chat",
                             validation_fraction=0.9, output_model="not-a-model")
    bad.hyperparameters.learning_rate = 2.0
    bad.lora.dropout = 1.0
    bad.early_stopping.patience = 0
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_SPEC") as failure:
        stack.create(bad)
    fields = {f for f, _ in failure[0].violations}
    assert fields == {"spec.training_data", "spec.validation_fraction", "spec.output_model",
                      "spec.hyperparameters.learning_rate", "spec.lora.dropout", "spec.early_stopping.patience"}
    with fails(grpc.StatusCode.NOT_FOUND, "BASE_MODEL_NOT_FOUND"):
        stack.create(tiny_spec(f"{PARENT}/datasets/chat", base_model="no-such-model"))
    with fails(grpc.StatusCode.NOT_FOUND, "DATASET_NOT_FOUND"):
        stack.create(tiny_spec(f"{PARENT}/datasets/missing"))
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST_ID"):
        stack.create(tiny_spec(f"{PARENT}/datasets/missing"), request_id="not-a-uuid")
    with fails(grpc.StatusCode.NOT_FOUND, "TRAINING_JOB_NOT_FOUND"):
        stack.get(f"{PARENT}/trainingJobs/job-000000000000")
    with fails(grpc.StatusCode.PERMISSION_DENIED, "PROJECT_MISMATCH"):
        stack.get("projects/beta/trainingJobs/job-000000000000")
    assert not jobs.ListTrainingJobs(pb.ListTrainingJobsRequest(parent=PARENT), metadata=stack.md,
                                     timeout=30).training_jobs


# ---------------------------------------------------------------------- a job from upload to registry
def test_job_trains_streams_events_across_a_reconnect_and_registers_the_adapter(stack, model_cache, tmp_path):
    version = stack.upload("chat", chat_examples(24))
    spec = tiny_spec(f"{PARENT}/datasets/chat", validation_fraction=0.25, sample_prompts=["What is two plus two?"])

    plan = stack.jobs.PlanTrainingJob(pb.PlanTrainingJobRequest(parent=PARENT, spec=spec), metadata=stack.md,
                                      timeout=120).plan
    assert plan.training_data.name == version.name and plan.training_data.sha256 == version.sha256
    assert (plan.training_example_count, plan.validation_example_count) == (18, 6)
    assert (plan.steps_per_epoch, plan.total_steps) == (5, 10)
    assert plan.supervised_tokens < plan.total_tokens and plan.over_length_example_count == 0
    assert plan.resolved.reasons["epochs"] == "set by the user"
    assert plan.resolved.reasons["learning_rate"].startswith("2e-4")
    assert plan.resolved.hyperparameters.learning_rate == pytest.approx(2e-4)
    assert "q_proj" in plan.resolved.lora.target_modules and "lm_head" not in plan.resolved.lora.target_modules
    assert plan.estimated_duration.ToMilliseconds() > 0 and plan.estimated_peak_memory_bytes > 0
    assert plan.device == "cpu"

    request_id = str(uuid.uuid4())
    job = stack.create(spec, request_id)
    assert job.name.startswith(f"{PARENT}/trainingJobs/job-") and job.state == S.TRAINING_JOB_STATE_VALIDATING
    assert stack.create(spec, request_id).name == job.name  # a retried create returns the same job

    # Watch until the first checkpoint, drop the stream, reconnect with the last seq seen.
    first = stack.watch(job.name, until=checkpoint_at_least(1))
    rest = stack.watch(job.name, after_seq=first[-1].seq)
    seen = first + rest
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))  # nothing lost, nothing twice
    states = [e.state_changed.state for e in seen if e.WhichOneof("event") == "state_changed"]
    assert states == [S.TRAINING_JOB_STATE_VALIDATING, S.TRAINING_JOB_STATE_QUEUED, S.TRAINING_JOB_STATE_RUNNING,
                      S.TRAINING_JOB_STATE_SUCCEEDED]
    steps = [e.step_metrics for e in seen if e.WhichOneof("event") == "step_metrics"]
    assert [m.step for m in steps] == list(range(1, 11)) and all(m.total_steps == 10 for m in steps)
    assert steps[-1].trained_tokens > 0 and steps[-1].loss > 0
    evaluations = [e.evaluation for e in seen if e.WhichOneof("event") == "evaluation"]
    assert evaluations and evaluations[-1].step == 10 and 0 <= evaluations[-1].token_accuracy <= 1
    samples = [e.sample_generations for e in seen if e.WhichOneof("event") == "sample_generations"]
    assert samples and samples[0].samples[0].prompt == "What is two plus two?"
    # Replaying the history gives the same events; ListTrainingJobEvents pages it.
    assert stack.watch(job.name) == seen
    page = stack.jobs.ListTrainingJobEvents(pb.ListTrainingJobEventsRequest(parent=job.name, page_size=5),
                                            metadata=stack.md, timeout=30)
    assert list(page.events) == seen[:5] and page.next_page_token

    done = stack.get(job.name)
    assert done.state == S.TRAINING_JOB_STATE_SUCCEEDED and done.attempt_count == 1 and done.lost_steps == 0
    assert done.progress.step == 10 and done.progress.trained_tokens == steps[-1].trained_tokens
    assert done.plan.total_steps == 10 and done.end_time.seconds >= done.start_time.seconds > 0
    checkpoints = stack.jobs.ListCheckpoints(pb.ListCheckpointsRequest(parent=job.name), metadata=stack.md,
                                             timeout=30).checkpoints
    assert [c.step for c in checkpoints] == list(range(1, 11))  # auto interval: total / 10
    assert checkpoints[-1].location.key.endswith(f"{job.name}/checkpoints/10/")
    assert stack.trainer.service.runtime.objects.exists(checkpoints[-1].location.key + "adapter.safetensors")

    listed = stack.jobs.ListTrainingJobs(pb.ListTrainingJobsRequest(parent=PARENT, dataset_version=version.name),
                                         metadata=stack.md, timeout=30).training_jobs
    assert [j.name for j in listed] == [job.name]

    # The registry holds the adapter with full lineage, and it loads with peft.
    registered = download_version(stack, done.model_version, tmp_path / "adapter")
    lineage = registered.lineage
    assert lineage.training_job == job.name and lineage.training_data == plan.training_data
    assert lineage.base_model.id == "tiny-llama" and lineage.base_model.weights_sha256 == plan.base_model.weights_sha256
    assert lineage.seed == plan.resolved.hyperparameters.seed
    assert lineage.hyperparameters["hyperparameters"]["epochs"] == 2
    assert set(lineage.library_versions) >= {"torch", "transformers", "peft"} and "validation_loss" in lineage.metrics
    base = AutoModelForCausalLM.from_pretrained(base_models.resolve_base_model("tiny-llama", model_cache))
    model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # trained: B starts at zero


def test_data_problems_fail_the_job_with_a_structured_error(stack):
    stack.upload("chat", chat_examples(8))
    spec = tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__max_sequence_length=4096)
    with fails(grpc.StatusCode.INVALID_ARGUMENT, "SEQUENCE_TOO_LONG") as failure:
        stack.jobs.PlanTrainingJob(pb.PlanTrainingJobRequest(parent=PARENT, spec=spec), metadata=stack.md,
                                   timeout=120)
    assert failure[0].violations[0][0] == "spec.hyperparameters.max_sequence_length"
    job = stack.create(spec)
    events = stack.watch(job.name)
    assert [e.state_changed.state for e in events] == [S.TRAINING_JOB_STATE_VALIDATING, S.TRAINING_JOB_STATE_FAILED]
    failed = stack.get(job.name)
    assert failed.state == S.TRAINING_JOB_STATE_FAILED and failed.error == events[-1].state_changed.error
    assert failed.error.code == "sequence_too_long" and failed.error.field == "hyperparameters.max_sequence_length"
    assert "2048" in failed.error.message and not failed.HasField("plan")
    with fails(grpc.StatusCode.FAILED_PRECONDITION, "TRAINING_JOB_TERMINAL"):
        stack.jobs.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name), metadata=stack.md, timeout=30)


def test_cancel_queue_and_quota(settings, model_cache):
    with stack_of(settings.replace(quota_concurrent_jobs=2), model_cache, trainer_max_concurrent_jobs=1) as stack:
        stack.upload("chat", chat_examples(8))
        long = tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__epochs=1000, checkpoint_interval_steps=0)
        running_job, queued_job = stack.create(long), stack.create(long)
        with pytest.raises(grpc.RpcError) as caught:
            stack.create(long)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        details = rpc_status.from_call(caught.value).details
        quota = error_details_pb2.QuotaFailure()
        assert any(d.Unpack(quota) for d in details if d.Is(quota.DESCRIPTOR))
        assert quota.violations[0].subject == PARENT

        stack.watch(running_job.name, until=lambda e: e.WhichOneof("event") == "step_metrics")
        assert stack.get(queued_job.name).state == S.TRAINING_JOB_STATE_QUEUED  # one slot only
        cancelled = stack.jobs.CancelTrainingJob(pb.CancelTrainingJobRequest(name=queued_job.name),
                                                 metadata=stack.md, timeout=30).training_job
        assert cancelled.state == S.TRAINING_JOB_STATE_CANCELLED  # at once
        stopping = stack.jobs.CancelTrainingJob(pb.CancelTrainingJobRequest(name=running_job.name),
                                                metadata=stack.md, timeout=30).training_job
        # Flagged, not stopped by the call itself; a tiny-model step is so short that the worker may already
        # have stopped at its next step boundary by the time the reply is read.
        assert stopping.cancel_requested
        assert stopping.state in (S.TRAINING_JOB_STATE_RUNNING, S.TRAINING_JOB_STATE_CANCELLED)
        events = stack.watch(running_job.name)
        assert state_is(S.TRAINING_JOB_STATE_CANCELLED)(events[-1])
        final = stack.get(running_job.name)
        assert final.state == S.TRAINING_JOB_STATE_CANCELLED and 0 < final.progress.step < final.plan.total_steps
        with fails(grpc.StatusCode.FAILED_PRECONDITION, "TRAINING_JOB_TERMINAL"):
            stack.jobs.CancelTrainingJob(pb.CancelTrainingJobRequest(name=running_job.name), metadata=stack.md,
                                         timeout=30)

        stack.create(long)  # the quota counts unfinished jobs only
        listing = [stack.jobs.ListTrainingJobs(pb.ListTrainingJobsRequest(parent=PARENT, page_size=1),
                                               metadata=stack.md, timeout=30)]
        while listing[-1].next_page_token:
            listing.append(stack.jobs.ListTrainingJobs(pb.ListTrainingJobsRequest(
                parent=PARENT, page_size=1, page_token=listing[-1].next_page_token), metadata=stack.md, timeout=30))
        names = [page.training_jobs[0].name for page in listing]
        assert len(names) == 3 and names[1:] == [queued_job.name, running_job.name]  # newest first
        only = stack.jobs.ListTrainingJobs(pb.ListTrainingJobsRequest(
            parent=PARENT, state=S.TRAINING_JOB_STATE_CANCELLED), metadata=stack.md, timeout=30).training_jobs
        assert {j.name for j in only} == {queued_job.name, running_job.name}


def standby_worker() -> int | None:
    """The standby worker (`worker --standby`) of the trainer service running in this process."""
    return next((pid for pid, cmd in child_processes(os.getpid()).items() if cmd.endswith(b" --standby")), None)


def test_workers_are_forked_by_a_standby_that_ends_with_the_service(settings, model_cache):
    with stack_of(settings, model_cache) as stack:
        standby = wait_until(standby_worker, "the standby worker to start", 60)  # with the service, before any job
        stack.upload("chat", chat_examples(8))
        job = stack.create(tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__epochs=1000))
        job_id = job.name.rsplit("/", 1)[1]
        stack.watch(job.name, until=lambda e: e.WhichOneof("event") == "step_metrics")
        worker = stack.repo.get_job(job_id).worker_pid
        assert worker in child_processes(standby)  # forked, not started as a new process
        # Its command line names its job, so a restarted service can adopt it; the standby's names none.
        assert executors._is_worker_of(worker, job_id) and not executors._is_worker_of(standby, job_id)
        assert not executors._is_worker_of(worker, "another-job")
        stack.jobs.CancelTrainingJob(pb.CancelTrainingJobRequest(name=job.name), metadata=stack.md, timeout=30)
        assert state_is(S.TRAINING_JOB_STATE_CANCELLED)(stack.watch(job.name)[-1])
        wait_until(lambda: worker not in child_processes(standby), "the cancelled worker to be reaped", 60)

        again = stack.create(tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__epochs=1))
        assert state_is(S.TRAINING_JOB_STATE_SUCCEEDED)(stack.watch(again.name)[-1])
        assert standby_worker() == standby  # one standby serves every job
    assert not Path(f"/proc/{standby}").exists()  # stopped and reaped with the service
    assert not [cmd for cmd in child_processes(os.getpid()).values() if b"tunery.services.trainer.worker" in cmd]


def test_without_its_standby_the_service_starts_workers_as_new_processes(stack):
    os.kill(wait_until(standby_worker, "the standby worker to start", 60), signal.SIGKILL)
    stack.upload("chat", chat_examples(8))
    job = stack.create(tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__epochs=1))
    assert state_is(S.TRAINING_JOB_STATE_SUCCEEDED)(stack.watch(job.name)[-1]), stack.get(job.name).error


def test_a_hung_standby_is_ended_and_the_worker_starts_as_a_new_process(settings, model_cache):
    with stack_of(settings.replace(trainer_standby_fork_timeout_s=3.0), model_cache) as stack:
        standby = wait_until(standby_worker, "the standby worker to start", 60)
        os.kill(standby, signal.SIGSTOP)  # alive, but answers nothing
        stack.upload("chat", chat_examples(8))
        job = stack.create(tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__epochs=1))
        assert state_is(S.TRAINING_JOB_STATE_SUCCEEDED)(stack.watch(job.name)[-1]), stack.get(job.name).error
        assert not Path(f"/proc/{standby}").exists()  # killed and reaped, not left stopped
        assert stack.repo.get_job(job.name.rsplit("/", 1)[1]).attempt_count == 1  # no attempt was lost


def test_two_processes_train_under_torchrun(stack):
    stack.upload("chat", chat_examples(16))
    job = stack.create(tiny_spec(f"{PARENT}/datasets/chat", num_processes=2))
    events = stack.watch(job.name)
    assert state_is(S.TRAINING_JOB_STATE_SUCCEEDED)(events[-1]), stack.get(job.name).error
    steps = [e.step_metrics.step for e in events if e.WhichOneof("event") == "step_metrics"]
    assert steps == list(range(1, 9))  # rank 0 alone reports


# ---------------------------------------------------------------------- fault tolerance
def adapter_tensors(stack: Stack, version: str, folder: Path) -> dict[str, torch.Tensor]:
    download_version(stack, version, folder)
    return load_safetensors((folder / "adapter_model.safetensors").read_bytes())


def test_killed_worker_resumes_from_its_checkpoint_exactly(stack, tmp_path):
    stack.upload("chat", chat_examples(16))
    spec = tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__epochs=30, checkpoint_interval_steps=4)
    reference, interrupted = stack.create(spec), stack.create(spec)  # one worker slot: they run in turn
    stack.watch(reference.name)

    stack.watch(interrupted.name, until=checkpoint_at_least(4))
    pid = stack.repo.get_job(interrupted.name.rsplit("/", 1)[1]).worker_pid
    os.kill(pid, signal.SIGKILL)
    events = stack.watch(interrupted.name)
    messages = [e.state_changed.message for e in events if e.WhichOneof("event") == "state_changed"]
    assert any("exited with code -9" in m for m in messages)
    assert any(e.WhichOneof("event") == "log" and e.log.code == "resumed" for e in events)
    done = stack.get(interrupted.name)
    assert done.state == S.TRAINING_JOB_STATE_SUCCEEDED and done.attempt_count == 2

    expected = adapter_tensors(stack, stack.get(reference.name).model_version, tmp_path / "reference")
    resumed = adapter_tensors(stack, done.model_version, tmp_path / "resumed")
    assert expected.keys() == resumed.keys()
    assert max(float((expected[k] - resumed[k]).abs().max()) for k in expected) <= 1e-6


def test_a_job_whose_worker_keeps_dying_fails_with_a_clear_error(settings, model_cache):
    with stack_of(settings, model_cache, trainer_max_attempts=1) as stack:
        stack.upload("chat", chat_examples(8))
        job = stack.create(tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__epochs=1000))
        stack.watch(job.name, until=lambda e: e.WhichOneof("event") == "step_metrics")
        os.kill(stack.repo.get_job(job.name.rsplit("/", 1)[1]).worker_pid, signal.SIGKILL)
        events = stack.watch(job.name)
        assert state_is(S.TRAINING_JOB_STATE_FAILED)(events[-1])
        failed = stack.get(job.name)
        assert failed.error.code == "worker_failed" and "exited with code -9" in failed.error.message
        assert failed.attempt_count == 1 and failed.error == events[-1].state_changed.error


def test_service_stop_suspends_the_job_and_a_new_service_resumes_it(settings, model_cache):
    with stack_of(settings, model_cache) as stack:
        stack.upload("chat", chat_examples(16))
        job = stack.create(tiny_spec(f"{PARENT}/datasets/chat", hyperparameters__epochs=40,
                                     checkpoint_interval_steps=1000))
        stack.watch(job.name, until=lambda e: e.WhichOneof("event") == "step_metrics")
        stack.trainer.service.stop(0)  # SIGTERM to the worker: it checkpoints and re-queues its job
        suspended = stack.repo.get_job(job.name.rsplit("/", 1)[1])
        assert suspended.state == "QUEUED" and suspended.attempt_count == 1
        steps = suspended.progress.step
        assert 0 < steps < suspended.plan.total_steps
        assert stack.repo.latest_checkpoint(suspended.job_id).step == steps

        with trainer_for(stack.settings) as again:
            stack.trainer = again
            events = stack.watch(job.name)
            assert state_is(S.TRAINING_JOB_STATE_SUCCEEDED)(events[-1])
            done = stack.get(job.name)
            assert done.attempt_count == 2 and done.lost_steps == 0
            resumed = [e for e in stack.watch(job.name) if e.WhichOneof("event") == "log" and e.log.code == "resumed"]
            assert f"step {steps}" in resumed[0].log.message
