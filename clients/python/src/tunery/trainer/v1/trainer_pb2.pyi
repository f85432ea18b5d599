import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from tunery.common.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrainingJobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_JOB_STATE_UNSPECIFIED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_VALIDATING: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_QUEUED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_RUNNING: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_SUCCEEDED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_FAILED: _ClassVar[TrainingJobState]
    TRAINING_JOB_STATE_CANCELLED: _ClassVar[TrainingJobState]

class TrainingMethod(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRAINING_METHOD_UNSPECIFIED: _ClassVar[TrainingMethod]
    TRAINING_METHOD_SFT: _ClassVar[TrainingMethod]

class LearningRateScheduler(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LEARNING_RATE_SCHEDULER_UNSPECIFIED: _ClassVar[LearningRateScheduler]
    LEARNING_RATE_SCHEDULER_LINEAR: _ClassVar[LearningRateScheduler]
    LEARNING_RATE_SCHEDULER_COSINE: _ClassVar[LearningRateScheduler]
    LEARNING_RATE_SCHEDULER_CONSTANT: _ClassVar[LearningRateScheduler]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_UNSPECIFIED: _ClassVar[Precision]
    PRECISION_FP32: _ClassVar[Precision]
    PRECISION_BF16: _ClassVar[Precision]

class EarlyStoppingMetric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EARLY_STOPPING_METRIC_UNSPECIFIED: _ClassVar[EarlyStoppingMetric]
    EARLY_STOPPING_METRIC_VALIDATION_LOSS: _ClassVar[EarlyStoppingMetric]
    EARLY_STOPPING_METRIC_VALIDATION_TOKEN_ACCURACY: _ClassVar[EarlyStoppingMetric]

class LogSeverity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LOG_SEVERITY_UNSPECIFIED: _ClassVar[LogSeverity]
    LOG_SEVERITY_INFO: _ClassVar[LogSeverity]
    LOG_SEVERITY_WARNING: _ClassVar[LogSeverity]

class BaseModelSource(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BASE_MODEL_SOURCE_UNSPECIFIED: _ClassVar[BaseModelSource]
    BASE_MODEL_SOURCE_BUILTIN: _ClassVar[BaseModelSource]
    BASE_MODEL_SOURCE_LOCAL_FOLDER: _ClassVar[BaseModelSource]
    BASE_MODEL_SOURCE_HUB_CACHE: _ClassVar[BaseModelSource]
TRAINING_JOB_STATE_UNSPECIFIED: TrainingJobState
TRAINING_JOB_STATE_VALIDATING: TrainingJobState
TRAINING_JOB_STATE_QUEUED: TrainingJobState
TRAINING_JOB_STATE_RUNNING: TrainingJobState
TRAINING_JOB_STATE_SUCCEEDED: TrainingJobState
TRAINING_JOB_STATE_FAILED: TrainingJobState
TRAINING_JOB_STATE_CANCELLED: TrainingJobState
TRAINING_METHOD_UNSPECIFIED: TrainingMethod
TRAINING_METHOD_SFT: TrainingMethod
LEARNING_RATE_SCHEDULER_UNSPECIFIED: LearningRateScheduler
LEARNING_RATE_SCHEDULER_LINEAR: LearningRateScheduler
LEARNING_RATE_SCHEDULER_COSINE: LearningRateScheduler
LEARNING_RATE_SCHEDULER_CONSTANT: LearningRateScheduler
PRECISION_UNSPECIFIED: Precision
PRECISION_FP32: Precision
PRECISION_BF16: Precision
EARLY_STOPPING_METRIC_UNSPECIFIED: EarlyStoppingMetric
EARLY_STOPPING_METRIC_VALIDATION_LOSS: EarlyStoppingMetric
EARLY_STOPPING_METRIC_VALIDATION_TOKEN_ACCURACY: EarlyStoppingMetric
LOG_SEVERITY_UNSPECIFIED: LogSeverity
LOG_SEVERITY_INFO: LogSeverity
LOG_SEVERITY_WARNING: LogSeverity
BASE_MODEL_SOURCE_UNSPECIFIED: BaseModelSource
BASE_MODEL_SOURCE_BUILTIN: BaseModelSource
BASE_MODEL_SOURCE_LOCAL_FOLDER: BaseModelSource
BASE_MODEL_SOURCE_HUB_CACHE: BaseModelSource

class TrainingJobSpec(_message.Message):
    __slots__ = ("base_model", "training_data", "validation_data", "validation_fraction", "method", "hyperparameters", "lora", "output_model", "eval_interval_steps", "checkpoint_interval_steps", "sample_prompts", "early_stopping", "num_processes")
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATA_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_FRACTION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MODEL_FIELD_NUMBER: _ClassVar[int]
    EVAL_INTERVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_INTERVAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_PROMPTS_FIELD_NUMBER: _ClassVar[int]
    EARLY_STOPPING_FIELD_NUMBER: _ClassVar[int]
    NUM_PROCESSES_FIELD_NUMBER: _ClassVar[int]
    base_model: str
    training_data: str
    validation_data: str
    validation_fraction: float
    method: TrainingMethod
    hyperparameters: Hyperparameters
    lora: LoraConfig
    output_model: str
    eval_interval_steps: int
    checkpoint_interval_steps: int
    sample_prompts: _containers.RepeatedScalarFieldContainer[str]
    early_stopping: EarlyStopping
    num_processes: int
    def __init__(self, base_model: _Optional[str] = ..., training_data: _Optional[str] = ..., validation_data: _Optional[str] = ..., validation_fraction: _Optional[float] = ..., method: _Optional[_Union[TrainingMethod, str]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., lora: _Optional[_Union[LoraConfig, _Mapping]] = ..., output_model: _Optional[str] = ..., eval_interval_steps: _Optional[int] = ..., checkpoint_interval_steps: _Optional[int] = ..., sample_prompts: _Optional[_Iterable[str]] = ..., early_stopping: _Optional[_Union[EarlyStopping, _Mapping]] = ..., num_processes: _Optional[int] = ...) -> None: ...

class Hyperparameters(_message.Message):
    __slots__ = ("epochs", "batch_size", "learning_rate", "scheduler", "warmup_ratio", "weight_decay", "max_grad_norm", "max_sequence_length", "gradient_accumulation_steps", "seed", "packing", "precision")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULER_FIELD_NUMBER: _ClassVar[int]
    WARMUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    MAX_SEQUENCE_LENGTH_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_ACCUMULATION_STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    PACKING_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    learning_rate: float
    scheduler: LearningRateScheduler
    warmup_ratio: float
    weight_decay: float
    max_grad_norm: float
    max_sequence_length: int
    gradient_accumulation_steps: int
    seed: int
    packing: bool
    precision: Precision
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., scheduler: _Optional[_Union[LearningRateScheduler, str]] = ..., warmup_ratio: _Optional[float] = ..., weight_decay: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., max_sequence_length: _Optional[int] = ..., gradient_accumulation_steps: _Optional[int] = ..., seed: _Optional[int] = ..., packing: _Optional[bool] = ..., precision: _Optional[_Union[Precision, str]] = ...) -> None: ...

class LoraConfig(_message.Message):
    __slots__ = ("rank", "alpha", "dropout", "target_modules")
    RANK_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    DROPOUT_FIELD_NUMBER: _ClassVar[int]
    TARGET_MODULES_FIELD_NUMBER: _ClassVar[int]
    rank: int
    alpha: int
    dropout: float
    target_modules: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, rank: _Optional[int] = ..., alpha: _Optional[int] = ..., dropout: _Optional[float] = ..., target_modules: _Optional[_Iterable[str]] = ...) -> None: ...

class EarlyStopping(_message.Message):
    __slots__ = ("metric", "patience", "min_delta")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    MIN_DELTA_FIELD_NUMBER: _ClassVar[int]
    metric: EarlyStoppingMetric
    patience: int
    min_delta: float
    def __init__(self, metric: _Optional[_Union[EarlyStoppingMetric, str]] = ..., patience: _Optional[int] = ..., min_delta: _Optional[float] = ...) -> None: ...

class ResolvedHyperparameters(_message.Message):
    __slots__ = ("hyperparameters", "lora", "reasons")
    class ReasonsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    LORA_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    hyperparameters: Hyperparameters
    lora: LoraConfig
    reasons: _containers.ScalarMap[str, str]
    def __init__(self, hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., lora: _Optional[_Union[LoraConfig, _Mapping]] = ..., reasons: _Optional[_Mapping[str, str]] = ...) -> None: ...

class TrainingPlan(_message.Message):
    __slots__ = ("resolved", "training_data", "validation_data", "base_model", "training_example_count", "validation_example_count", "total_tokens", "supervised_tokens", "over_length_example_count", "over_length_lines", "steps_per_epoch", "total_steps", "estimated_duration", "estimated_peak_memory_bytes", "device")
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    TRAINING_DATA_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_DATA_FIELD_NUMBER: _ClassVar[int]
    BASE_MODEL_FIELD_NUMBER: _ClassVar[int]
    TRAINING_EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUPERVISED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OVER_LENGTH_EXAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    OVER_LENGTH_LINES_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_EPOCH_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_DURATION_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_PEAK_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    resolved: ResolvedHyperparameters
    training_data: _common_pb2.DatasetVersionRef
    validation_data: _common_pb2.DatasetVersionRef
    base_model: _common_pb2.BaseModelRef
    training_example_count: int
    validation_example_count: int
    total_tokens: int
    supervised_tokens: int
    over_length_example_count: int
    over_length_lines: _containers.RepeatedScalarFieldContainer[int]
    steps_per_epoch: int
    total_steps: int
    estimated_duration: _duration_pb2.Duration
    estimated_peak_memory_bytes: int
    device: str
    def __init__(self, resolved: _Optional[_Union[ResolvedHyperparameters, _Mapping]] = ..., training_data: _Optional[_Union[_common_pb2.DatasetVersionRef, _Mapping]] = ..., validation_data: _Optional[_Union[_common_pb2.DatasetVersionRef, _Mapping]] = ..., base_model: _Optional[_Union[_common_pb2.BaseModelRef, _Mapping]] = ..., training_example_count: _Optional[int] = ..., validation_example_count: _Optional[int] = ..., total_tokens: _Optional[int] = ..., supervised_tokens: _Optional[int] = ..., over_length_example_count: _Optional[int] = ..., over_length_lines: _Optional[_Iterable[int]] = ..., steps_per_epoch: _Optional[int] = ..., total_steps: _Optional[int] = ..., estimated_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., estimated_peak_memory_bytes: _Optional[int] = ..., device: _Optional[str] = ...) -> None: ...

class TrainingError(_message.Message):
    __slots__ = ("code", "message", "field", "dataset_version", "line")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    field: str
    dataset_version: str
    line: int
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ..., field: _Optional[str] = ..., dataset_version: _Optional[str] = ..., line: _Optional[int] = ...) -> None: ...

class TrainingProgress(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "trained_tokens", "loss", "best_validation_loss", "estimated_finish_time")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    BEST_VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    ESTIMATED_FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: float
    trained_tokens: int
    loss: float
    best_validation_loss: float
    estimated_finish_time: _timestamp_pb2.Timestamp
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[float] = ..., trained_tokens: _Optional[int] = ..., loss: _Optional[float] = ..., best_validation_loss: _Optional[float] = ..., estimated_finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainingJob(_message.Message):
    __slots__ = ("name", "spec", "state", "plan", "progress", "error", "cancel_requested", "attempt_count", "lost_steps", "model_version", "create_time", "start_time", "end_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOST_STEPS_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    spec: TrainingJobSpec
    state: TrainingJobState
    plan: TrainingPlan
    progress: TrainingProgress
    error: TrainingError
    cancel_requested: bool
    attempt_count: int
    lost_steps: int
    model_version: str
    create_time: _timestamp_pb2.Timestamp
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., spec: _Optional[_Union[TrainingJobSpec, _Mapping]] = ..., state: _Optional[_Union[TrainingJobState, str]] = ..., plan: _Optional[_Union[TrainingPlan, _Mapping]] = ..., progress: _Optional[_Union[TrainingProgress, _Mapping]] = ..., error: _Optional[_Union[TrainingError, _Mapping]] = ..., cancel_requested: _Optional[bool] = ..., attempt_count: _Optional[int] = ..., lost_steps: _Optional[int] = ..., model_version: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainingJobEvent(_message.Message):
    __slots__ = ("seq", "event_time", "state_changed", "step_metrics", "evaluation", "checkpoint_saved", "sample_generations", "log")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_CHANGED_FIELD_NUMBER: _ClassVar[int]
    STEP_METRICS_FIELD_NUMBER: _ClassVar[int]
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_SAVED_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_GENERATIONS_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    seq: int
    event_time: _timestamp_pb2.Timestamp
    state_changed: StateChangedEvent
    step_metrics: StepMetricsEvent
    evaluation: EvaluationEvent
    checkpoint_saved: CheckpointSavedEvent
    sample_generations: SampleGenerationsEvent
    log: LogEvent
    def __init__(self, seq: _Optional[int] = ..., event_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state_changed: _Optional[_Union[StateChangedEvent, _Mapping]] = ..., step_metrics: _Optional[_Union[StepMetricsEvent, _Mapping]] = ..., evaluation: _Optional[_Union[EvaluationEvent, _Mapping]] = ..., checkpoint_saved: _Optional[_Union[CheckpointSavedEvent, _Mapping]] = ..., sample_generations: _Optional[_Union[SampleGenerationsEvent, _Mapping]] = ..., log: _Optional[_Union[LogEvent, _Mapping]] = ...) -> None: ...

class StateChangedEvent(_message.Message):
    __slots__ = ("previous_state", "state", "message", "error")
    PREVIOUS_STATE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    previous_state: TrainingJobState
    state: TrainingJobState
    message: str
    error: TrainingError
    def __init__(self, previous_state: _Optional[_Union[TrainingJobState, str]] = ..., state: _Optional[_Union[TrainingJobState, str]] = ..., message: _Optional[str] = ..., error: _Optional[_Union[TrainingError, _Mapping]] = ...) -> None: ...

class StepMetricsEvent(_message.Message):
    __slots__ = ("step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "trained_tokens", "eta")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TRAINED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    epoch: float
    loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    trained_tokens: int
    eta: _duration_pb2.Duration
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[float] = ..., loss: _Optional[float] = ..., learning_rate: _Optional[float] = ..., grad_norm: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., trained_tokens: _Optional[int] = ..., eta: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class EvaluationEvent(_message.Message):
    __slots__ = ("step", "validation_loss", "token_accuracy", "best")
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALIDATION_LOSS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    step: int
    validation_loss: float
    token_accuracy: float
    best: bool
    def __init__(self, step: _Optional[int] = ..., validation_loss: _Optional[float] = ..., token_accuracy: _Optional[float] = ..., best: _Optional[bool] = ...) -> None: ...

class CheckpointSavedEvent(_message.Message):
    __slots__ = ("checkpoint",)
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    checkpoint: Checkpoint
    def __init__(self, checkpoint: _Optional[_Union[Checkpoint, _Mapping]] = ...) -> None: ...

class SampleGenerationsEvent(_message.Message):
    __slots__ = ("step", "samples")
    STEP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    step: int
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    def __init__(self, step: _Optional[int] = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("prompt", "completion")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    completion: str
    def __init__(self, prompt: _Optional[str] = ..., completion: _Optional[str] = ...) -> None: ...

class LogEvent(_message.Message):
    __slots__ = ("severity", "code", "message")
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    severity: LogSeverity
    code: str
    message: str
    def __init__(self, severity: _Optional[_Union[LogSeverity, str]] = ..., code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Checkpoint(_message.Message):
    __slots__ = ("name", "step", "metrics", "location", "best", "create_time")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    step: int
    metrics: _containers.ScalarMap[str, float]
    location: _common_pb2.ObjectReference
    best: bool
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., step: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., location: _Optional[_Union[_common_pb2.ObjectReference, _Mapping]] = ..., best: _Optional[bool] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class BaseModel(_message.Message):
    __slots__ = ("id", "description", "source", "parameter_count", "context_length", "has_chat_template", "weights_sha256")
    ID_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    HAS_CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_SHA256_FIELD_NUMBER: _ClassVar[int]
    id: str
    description: str
    source: BaseModelSource
    parameter_count: int
    context_length: int
    has_chat_template: bool
    weights_sha256: str
    def __init__(self, id: _Optional[str] = ..., description: _Optional[str] = ..., source: _Optional[_Union[BaseModelSource, str]] = ..., parameter_count: _Optional[int] = ..., context_length: _Optional[int] = ..., has_chat_template: _Optional[bool] = ..., weights_sha256: _Optional[str] = ...) -> None: ...

class CreateTrainingJobRequest(_message.Message):
    __slots__ = ("parent", "spec", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    spec: TrainingJobSpec
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., spec: _Optional[_Union[TrainingJobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateTrainingJobResponse(_message.Message):
    __slots__ = ("training_job",)
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    training_job: TrainingJob
    def __init__(self, training_job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class PlanTrainingJobRequest(_message.Message):
    __slots__ = ("parent", "spec")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    parent: str
    spec: TrainingJobSpec
    def __init__(self, parent: _Optional[str] = ..., spec: _Optional[_Union[TrainingJobSpec, _Mapping]] = ...) -> None: ...

class PlanTrainingJobResponse(_message.Message):
    __slots__ = ("plan",)
    PLAN_FIELD_NUMBER: _ClassVar[int]
    plan: TrainingPlan
    def __init__(self, plan: _Optional[_Union[TrainingPlan, _Mapping]] = ...) -> None: ...

class GetTrainingJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetTrainingJobResponse(_message.Message):
    __slots__ = ("training_job",)
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    training_job: TrainingJob
    def __init__(self, training_job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class ListTrainingJobsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token", "state", "dataset_version")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    state: TrainingJobState
    dataset_version: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., state: _Optional[_Union[TrainingJobState, str]] = ..., dataset_version: _Optional[str] = ...) -> None: ...

class ListTrainingJobsResponse(_message.Message):
    __slots__ = ("training_jobs", "next_page_token")
    TRAINING_JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    training_jobs: _containers.RepeatedCompositeFieldContainer[TrainingJob]
    next_page_token: str
    def __init__(self, training_jobs: _Optional[_Iterable[_Union[TrainingJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelTrainingJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelTrainingJobResponse(_message.Message):
    __slots__ = ("training_job",)
    TRAINING_JOB_FIELD_NUMBER: _ClassVar[int]
    training_job: TrainingJob
    def __init__(self, training_job: _Optional[_Union[TrainingJob, _Mapping]] = ...) -> None: ...

class WatchTrainingJobRequest(_message.Message):
    __slots__ = ("name", "after_seq")
    NAME_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    name: str
    after_seq: int
    def __init__(self, name: _Optional[str] = ..., after_seq: _Optional[int] = ...) -> None: ...

class WatchTrainingJobResponse(_message.Message):
    __slots__ = ("event",)
    EVENT_FIELD_NUMBER: _ClassVar[int]
    event: TrainingJobEvent
    def __init__(self, event: _Optional[_Union[TrainingJobEvent, _Mapping]] = ...) -> None: ...

class ListTrainingJobEventsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTrainingJobEventsResponse(_message.Message):
    __slots__ = ("events", "next_page_token")
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[TrainingJobEvent]
    next_page_token: str
    def __init__(self, events: _Optional[_Iterable[_Union[TrainingJobEvent, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints", "next_page_token")
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[Checkpoint]
    next_page_token: str
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[Checkpoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListBaseModelsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListBaseModelsResponse(_message.Message):
    __slots__ = ("base_models", "next_page_token")
    BASE_MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    base_models: _containers.RepeatedCompositeFieldContainer[BaseModel]
    next_page_token: str
    def __init__(self, base_models: _Optional[_Iterable[_Union[BaseModel, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
