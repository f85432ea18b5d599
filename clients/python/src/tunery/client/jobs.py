"""`client.jobs`: plan, create, follow and cancel LoRA fine-tuning jobs."""

from __future__ import annotations

import time
from typing import Any, Callable, Iterator, Mapping

from tunery.client._base import SubApi, new_request_id, with_backoff
from tunery.client.datasets import Datasets
from tunery.client.errors import Cancelled, Unavailable
from tunery.trainer.v1 import trainer_pb2 as pb

TERMINAL_STATES = frozenset({pb.TRAINING_JOB_STATE_SUCCEEDED, pb.TRAINING_JOB_STATE_FAILED,
                             pb.TRAINING_JOB_STATE_CANCELLED})
_ENUMS = {
    "scheduler": ("LEARNING_RATE_SCHEDULER_", pb.LearningRateScheduler),
    "precision": ("PRECISION_", pb.Precision),
}


def state_label(state: int) -> str:
    """"running", "succeeded", … for a TrainingJobState value."""
    return pb.TrainingJobState.Name(state).removeprefix("TRAINING_JOB_STATE_").lower()


def _enum(field: str, value: Any) -> int:
    prefix, enum = _ENUMS[field]
    if isinstance(value, int):
        return value
    try:
        return enum.Value(prefix + str(value).upper())
    except ValueError:
        choices = [n.removeprefix(prefix).lower() for n in enum.keys() if not n.endswith("UNSPECIFIED")]
        raise ValueError(f"{field} {value!r} is not one of {', '.join(choices)}") from None


def to_hyperparameters(values: Mapping[str, Any] | pb.Hyperparameters | None) -> pb.Hyperparameters:
    """Hyperparameters from a dict such as {"epochs": 3, "learning_rate": 2e-4, "scheduler": "cosine"};
    keys left out (or None) stay unset, meaning auto."""
    if isinstance(values, pb.Hyperparameters):
        return values
    message = pb.Hyperparameters()
    for key, value in (values or {}).items():
        if value is None:
            continue
        if key in _ENUMS:
            value = _enum(key, value)
        setattr(message, key, value)
    return message


def to_lora(values: Mapping[str, Any] | pb.LoraConfig | None) -> pb.LoraConfig:
    """LoraConfig from a dict such as {"rank": 8, "target_modules": ["q_proj", "v_proj"]}."""
    if isinstance(values, pb.LoraConfig):
        return values
    message = pb.LoraConfig()
    for key, value in (values or {}).items():
        if value is None:
            continue
        if key == "target_modules":
            message.target_modules.extend(value)
        else:
            setattr(message, key, value)
    return message


class Jobs(SubApi):
    """Training jobs: plans, creation (idempotent), progress events, cancellation."""

    _service = "trainer"

    def __init__(self, transport, datasets: Datasets) -> None:
        super().__init__(transport)
        self._datasets = datasets

    def job_name(self, job: str | pb.TrainingJob) -> str:
        """projects/{p}/trainingJobs/{id} for a job id, a full name or a TrainingJob."""
        if isinstance(job, pb.TrainingJob):
            return job.name
        return job if job.startswith("projects/") else f"{self.parent}/trainingJobs/{job}"

    def spec(self, base_model: str, dataset: str, model: str, *, validation_dataset: str | None = None,
             validation_fraction: float | None = None,
             hyperparameters: Mapping[str, Any] | pb.Hyperparameters | None = None,
             lora: Mapping[str, Any] | pb.LoraConfig | None = None, sample_prompts: tuple[str, ...] | list[str] = (),
             eval_interval_steps: int | None = None, checkpoint_interval_steps: int | None = None,
             early_stopping: pb.EarlyStopping | None = None, num_processes: int = 0) -> pb.TrainingJobSpec:
        """A TrainingJobSpec from plain values. `dataset` / `validation_dataset` are "name" (its latest
        version) or "name@version"; `model` is the registry model id receiving the adapter."""
        spec = pb.TrainingJobSpec(base_model=base_model, training_data=self._datasets.data_name(dataset),
                                  output_model=model if model.startswith("projects/")
                                  else f"{self.parent}/models/{model}",
                                  hyperparameters=to_hyperparameters(hyperparameters),
                                  lora=to_lora(lora), sample_prompts=list(sample_prompts),
                                  num_processes=num_processes)
        if validation_dataset is not None:
            spec.validation_data = self._datasets.data_name(validation_dataset)
        elif validation_fraction is not None:
            spec.validation_fraction = validation_fraction
        if eval_interval_steps is not None:
            spec.eval_interval_steps = eval_interval_steps
        if checkpoint_interval_steps is not None:
            spec.checkpoint_interval_steps = checkpoint_interval_steps
        if early_stopping is not None:
            spec.early_stopping.CopyFrom(early_stopping)
        return spec

    def plan(self, spec: pb.TrainingJobSpec | None = None, **values: Any) -> pb.TrainingPlan:
        """What a job would train on and with (resolved hyperparameters with reasons, token counts,
        estimates), without running or storing anything. Pass a spec or the arguments of `spec()`."""
        spec = spec or self.spec(**values)
        return self._call("PlanTrainingJob", pb.PlanTrainingJobRequest(parent=self.parent, spec=spec)).plan

    def create(self, spec: pb.TrainingJobSpec | None = None, request_id: str | None = None,
               **values: Any) -> pb.TrainingJob:
        """Create and queue a job (state VALIDATING). Pass a spec or the arguments of `spec()`. The
        request_id (generated when not given) makes retries return the same job instead of a second one."""
        spec = spec or self.spec(**values)
        request = pb.CreateTrainingJobRequest(parent=self.parent, spec=spec, request_id=request_id or new_request_id())
        return self._call("CreateTrainingJob", request).training_job

    def get(self, job: str | pb.TrainingJob) -> pb.TrainingJob:
        """One job with its state, plan and progress."""
        return self._call("GetTrainingJob", pb.GetTrainingJobRequest(name=self.job_name(job))).training_job

    def list(self, state: str | int | None = None, dataset_version: str = "",
             page_size: int = 0) -> Iterator[pb.TrainingJob]:
        """Every job of the project, newest first; optionally only those in `state` ("running", …) or
        using a dataset version ("d@v")."""
        if isinstance(state, str):
            state = pb.TrainingJobState.Value("TRAINING_JOB_STATE_" + state.upper())
        request = pb.ListTrainingJobsRequest(
            parent=self.parent, page_size=page_size, state=state or 0,
            dataset_version=self._datasets.version_name(dataset_version) if dataset_version else "")
        return self._pages("ListTrainingJobs", request, "training_jobs")

    def cancel(self, job: str | pb.TrainingJob) -> pb.TrainingJob:
        """Ask a job to stop: a queued job is cancelled at once, a running one at its next step."""
        return self._call("CancelTrainingJob", pb.CancelTrainingJobRequest(name=self.job_name(job))).training_job

    def events(self, job: str | pb.TrainingJob, page_size: int = 0) -> Iterator[pb.TrainingJobEvent]:
        """The recorded events of a job so far, in seq order."""
        request = pb.ListTrainingJobEventsRequest(parent=self.job_name(job), page_size=page_size)
        return self._pages("ListTrainingJobEvents", request, "events")

    def checkpoints(self, job: str | pb.TrainingJob) -> Iterator[pb.Checkpoint]:
        """The checkpoints of a job in step order."""
        return self._pages("ListCheckpoints", pb.ListCheckpointsRequest(parent=self.job_name(job)), "checkpoints")

    def base_models(self) -> Iterator[pb.BaseModel]:
        """The server's base model catalog, ordered by id."""
        return self._pages("ListBaseModels", pb.ListBaseModelsRequest(parent=self.parent), "base_models")

    def watch(self, job: str | pb.TrainingJob, after_seq: int = 0,
              give_up_after_s: float = 300.0) -> Iterator[pb.TrainingJobEvent]:
        """Every event of a job with seq > after_seq, history first, then live, ending after the event that
        makes the job terminal. When the connection breaks, it reconnects with the last seq it yielded, so
        nothing is missed or repeated; it gives up when the service stays unreachable for
        `give_up_after_s` seconds."""
        name = self.job_name(job)
        last, attempt, down_since = after_seq, 0, None
        while True:
            try:
                for response in self._stream("WatchTrainingJob", pb.WatchTrainingJobRequest(name=name,
                                                                                            after_seq=last)):
                    event = response.event
                    if event.seq <= last:
                        continue  # never yield an event twice, whatever the server replays
                    last, attempt, down_since = event.seq, 0, None
                    yield event
                    if event.WhichOneof("event") == "state_changed" and event.state_changed.state in TERMINAL_STATES:
                        return
                # The stream ended without a terminal event (e.g. the service is shutting down): ask again.
                if self.get(name).state in TERMINAL_STATES and not self._more_events(name, last):
                    return
            except (Unavailable, Cancelled):
                down_since = down_since or time.monotonic()
                if time.monotonic() - down_since > give_up_after_s:
                    raise
            attempt += 1
            with_backoff(attempt)

    def _more_events(self, name: str, after_seq: int) -> bool:
        return any(e.seq > after_seq for e in self.events(name))

    def wait(self, job: str | pb.TrainingJob, on_event: Callable[[pb.TrainingJobEvent], None] | None = None,
             give_up_after_s: float = 300.0) -> pb.TrainingJob:
        """Follow a job until it is terminal and return it (check `.state`; `.error` says why it failed).
        `on_event` sees every event as it happens."""
        for event in self.watch(job, give_up_after_s=give_up_after_s):
            if on_event:
                on_event(event)
        return self.get(job)
