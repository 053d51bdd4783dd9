from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class JobState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    JOB_STATE_UNSPECIFIED: _ClassVar[JobState]
    QUEUED: _ClassVar[JobState]
    RUNNING: _ClassVar[JobState]
    RESTARTING: _ClassVar[JobState]
    SUCCEEDED: _ClassVar[JobState]
    FAILED: _ClassVar[JobState]
    CANCELLED: _ClassVar[JobState]

class HostState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_STATE_UNSPECIFIED: _ClassVar[HostState]
    HOST_HEALTHY: _ClassVar[HostState]
    HOST_SUSPECT: _ClassVar[HostState]
    HOST_QUARANTINED: _ClassVar[HostState]
    HOST_DRAINED: _ClassVar[HostState]

class WorkerEvent(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WORKER_EVENT_UNSPECIFIED: _ClassVar[WorkerEvent]
    WORKER_EVENT_STARTED: _ClassVar[WorkerEvent]
    WORKER_EVENT_FINISHED: _ClassVar[WorkerEvent]
    WORKER_EVENT_STOPPED: _ClassVar[WorkerEvent]
    WORKER_EVENT_FAILING: _ClassVar[WorkerEvent]

class FailureCause(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FAILURE_CAUSE_UNSPECIFIED: _ClassVar[FailureCause]
    FAILURE_CAUSE_NAN: _ClassVar[FailureCause]
    FAILURE_CAUSE_BAD_SPEC: _ClassVar[FailureCause]
    FAILURE_CAUSE_BAD_DATA: _ClassVar[FailureCause]
    FAILURE_CAUSE_BAD_CHECKPOINT: _ClassVar[FailureCause]
    FAILURE_CAUSE_RANK_ERROR: _ClassVar[FailureCause]
    FAILURE_CAUSE_HANG: _ClassVar[FailureCause]
    FAILURE_CAUSE_OUT_OF_MEMORY: _ClassVar[FailureCause]

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_ADMIN: _ClassVar[Role]
    ROLE_MEMBER: _ClassVar[Role]
    ROLE_VIEWER: _ClassVar[Role]
JOB_STATE_UNSPECIFIED: JobState
QUEUED: JobState
RUNNING: JobState
RESTARTING: JobState
SUCCEEDED: JobState
FAILED: JobState
CANCELLED: JobState
HOST_STATE_UNSPECIFIED: HostState
HOST_HEALTHY: HostState
HOST_SUSPECT: HostState
HOST_QUARANTINED: HostState
HOST_DRAINED: HostState
WORKER_EVENT_UNSPECIFIED: WorkerEvent
WORKER_EVENT_STARTED: WorkerEvent
WORKER_EVENT_FINISHED: WorkerEvent
WORKER_EVENT_STOPPED: WorkerEvent
WORKER_EVENT_FAILING: WorkerEvent
FAILURE_CAUSE_UNSPECIFIED: FailureCause
FAILURE_CAUSE_NAN: FailureCause
FAILURE_CAUSE_BAD_SPEC: FailureCause
FAILURE_CAUSE_BAD_DATA: FailureCause
FAILURE_CAUSE_BAD_CHECKPOINT: FailureCause
FAILURE_CAUSE_RANK_ERROR: FailureCause
FAILURE_CAUSE_HANG: FailureCause
FAILURE_CAUSE_OUT_OF_MEMORY: FailureCause
ROLE_UNSPECIFIED: Role
ROLE_ADMIN: Role
ROLE_MEMBER: Role
ROLE_VIEWER: Role

class MetricPoint(_message.Message):
    __slots__ = ("step", "epoch", "train_loss", "val_loss", "val_accuracy", "samples_per_second", "lr", "time_unix", "attempt")
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    TRAIN_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    LR_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    step: int
    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    samples_per_second: float
    lr: float
    time_unix: float
    attempt: int
    def __init__(self, step: _Optional[int] = ..., epoch: _Optional[int] = ..., train_loss: _Optional[float] = ..., val_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., samples_per_second: _Optional[float] = ..., lr: _Optional[float] = ..., time_unix: _Optional[float] = ..., attempt: _Optional[int] = ...) -> None: ...

class StateChange(_message.Message):
    __slots__ = ("state", "message", "time_unix", "attempt", "transition_id")
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_ID_FIELD_NUMBER: _ClassVar[int]
    state: JobState
    message: str
    time_unix: float
    attempt: int
    transition_id: int
    def __init__(self, state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ..., time_unix: _Optional[float] = ..., attempt: _Optional[int] = ..., transition_id: _Optional[int] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("id", "name", "spec_json", "state", "message", "workers", "priority", "labels", "step", "total_steps", "epoch", "latest", "best", "samples_per_second", "eta_seconds", "attempts", "restarts", "created_unix", "started_unix", "ended_unix", "history", "executor", "attempt_history", "owner")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    ETA_SECONDS_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    EXECUTOR_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_HISTORY_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    spec_json: str
    state: JobState
    message: str
    workers: int
    priority: int
    labels: _containers.ScalarMap[str, str]
    step: int
    total_steps: int
    epoch: int
    latest: MetricPoint
    best: MetricPoint
    samples_per_second: float
    eta_seconds: float
    attempts: int
    restarts: int
    created_unix: float
    started_unix: float
    ended_unix: float
    history: _containers.RepeatedCompositeFieldContainer[StateChange]
    executor: str
    attempt_history: _containers.RepeatedCompositeFieldContainer[AttemptSummary]
    owner: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., spec_json: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ..., workers: _Optional[int] = ..., priority: _Optional[int] = ..., labels: _Optional[_Mapping[str, str]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., latest: _Optional[_Union[MetricPoint, _Mapping]] = ..., best: _Optional[_Union[MetricPoint, _Mapping]] = ..., samples_per_second: _Optional[float] = ..., eta_seconds: _Optional[float] = ..., attempts: _Optional[int] = ..., restarts: _Optional[int] = ..., created_unix: _Optional[float] = ..., started_unix: _Optional[float] = ..., ended_unix: _Optional[float] = ..., history: _Optional[_Iterable[_Union[StateChange, _Mapping]]] = ..., executor: _Optional[str] = ..., attempt_history: _Optional[_Iterable[_Union[AttemptSummary, _Mapping]]] = ..., owner: _Optional[str] = ...) -> None: ...

class AttemptSummary(_message.Message):
    __slots__ = ("attempt", "ranks", "hosts", "outcome", "message", "started_unix", "ended_unix", "mpi_args", "slurm_job")
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RANKS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_FIELD_NUMBER: _ClassVar[int]
    MPI_ARGS_FIELD_NUMBER: _ClassVar[int]
    SLURM_JOB_FIELD_NUMBER: _ClassVar[int]
    attempt: int
    ranks: int
    hosts: str
    outcome: str
    message: str
    started_unix: float
    ended_unix: float
    mpi_args: _containers.RepeatedScalarFieldContainer[str]
    slurm_job: str
    def __init__(self, attempt: _Optional[int] = ..., ranks: _Optional[int] = ..., hosts: _Optional[str] = ..., outcome: _Optional[str] = ..., message: _Optional[str] = ..., started_unix: _Optional[float] = ..., ended_unix: _Optional[float] = ..., mpi_args: _Optional[_Iterable[str]] = ..., slurm_job: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "job_id", "labels", "workers")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    spec: str
    job_id: str
    labels: _containers.ScalarMap[str, str]
    workers: int
    def __init__(self, spec: _Optional[str] = ..., job_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., workers: _Optional[int] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job", "created")
    JOB_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    job: Job
    created: bool
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("states", "page_size", "page_token", "owner")
    STATES_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    states: _containers.RepeatedScalarFieldContainer[JobState]
    page_size: int
    page_token: str
    owner: str
    def __init__(self, states: _Optional[_Iterable[_Union[JobState, str]]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelJobRequest(_message.Message):
    __slots__ = ("job_id", "checkpoint")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    checkpoint: bool
    def __init__(self, job_id: _Optional[str] = ..., checkpoint: _Optional[bool] = ...) -> None: ...

class ResumeJobRequest(_message.Message):
    __slots__ = ("job_id", "workers")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    workers: int
    def __init__(self, job_id: _Optional[str] = ..., workers: _Optional[int] = ...) -> None: ...

class DeleteJobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class DeleteJobResponse(_message.Message):
    __slots__ = ("job_id", "checkpoints", "files", "bytes_freed")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    checkpoints: int
    files: int
    bytes_freed: int
    def __init__(self, job_id: _Optional[str] = ..., checkpoints: _Optional[int] = ..., files: _Optional[int] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class WatchJobRequest(_message.Message):
    __slots__ = ("job_id", "from_step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_step: int
    def __init__(self, job_id: _Optional[str] = ..., from_step: _Optional[int] = ...) -> None: ...

class WatchJobEvent(_message.Message):
    __slots__ = ("snapshot", "state", "metric")
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    snapshot: Job
    state: StateChange
    metric: MetricPoint
    def __init__(self, snapshot: _Optional[_Union[Job, _Mapping]] = ..., state: _Optional[_Union[StateChange, _Mapping]] = ..., metric: _Optional[_Union[MetricPoint, _Mapping]] = ...) -> None: ...

class GetMetricsRequest(_message.Message):
    __slots__ = ("job_id", "from_step", "page_size", "page_token")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_step: int
    page_size: int
    page_token: str
    def __init__(self, job_id: _Optional[str] = ..., from_step: _Optional[int] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class GetMetricsResponse(_message.Message):
    __slots__ = ("points", "next_page_token")
    POINTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    next_page_token: str
    def __init__(self, points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class StreamLogsRequest(_message.Message):
    __slots__ = ("job_id", "follow", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    follow: bool
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., follow: _Optional[bool] = ..., attempt: _Optional[int] = ...) -> None: ...

class LogChunk(_message.Message):
    __slots__ = ("data", "attempt")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    attempt: int
    def __init__(self, data: _Optional[bytes] = ..., attempt: _Optional[int] = ...) -> None: ...

class CheckpointInfo(_message.Message):
    __slots__ = ("step", "epoch", "size_bytes", "sha256", "val_loss", "val_accuracy", "is_final", "created_unix", "attempt")
    STEP_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    VAL_LOSS_FIELD_NUMBER: _ClassVar[int]
    VAL_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    IS_FINAL_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    step: int
    epoch: int
    size_bytes: int
    sha256: str
    val_loss: float
    val_accuracy: float
    is_final: bool
    created_unix: float
    attempt: int
    def __init__(self, step: _Optional[int] = ..., epoch: _Optional[int] = ..., size_bytes: _Optional[int] = ..., sha256: _Optional[str] = ..., val_loss: _Optional[float] = ..., val_accuracy: _Optional[float] = ..., is_final: _Optional[bool] = ..., created_unix: _Optional[float] = ..., attempt: _Optional[int] = ...) -> None: ...

class ListCheckpointsRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class ListCheckpointsResponse(_message.Message):
    __slots__ = ("checkpoints",)
    CHECKPOINTS_FIELD_NUMBER: _ClassVar[int]
    checkpoints: _containers.RepeatedCompositeFieldContainer[CheckpointInfo]
    def __init__(self, checkpoints: _Optional[_Iterable[_Union[CheckpointInfo, _Mapping]]] = ...) -> None: ...

class DownloadCheckpointRequest(_message.Message):
    __slots__ = ("job_id", "step", "latest", "best")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    LATEST_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    latest: bool
    best: bool
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ..., latest: _Optional[bool] = ..., best: _Optional[bool] = ...) -> None: ...

class CheckpointChunk(_message.Message):
    __slots__ = ("info", "data")
    INFO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    info: CheckpointInfo
    data: bytes
    def __init__(self, info: _Optional[_Union[CheckpointInfo, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class RegisterRunRequest(_message.Message):
    __slots__ = ("spec", "job_id", "labels", "workers", "hosts")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SPEC_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    spec: str
    job_id: str
    labels: _containers.ScalarMap[str, str]
    workers: int
    hosts: str
    def __init__(self, spec: _Optional[str] = ..., job_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., workers: _Optional[int] = ..., hosts: _Optional[str] = ...) -> None: ...

class RegisterRunResponse(_message.Message):
    __slots__ = ("job", "worker_token", "attempt")
    JOB_FIELD_NUMBER: _ClassVar[int]
    WORKER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job: Job
    worker_token: str
    attempt: int
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., worker_token: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class Host(_message.Message):
    __slots__ = ("name", "slots", "free_slots", "state", "failures", "last_failure", "last_failure_unix", "returns_unix")
    NAME_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    FREE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_FIELD_NUMBER: _ClassVar[int]
    LAST_FAILURE_UNIX_FIELD_NUMBER: _ClassVar[int]
    RETURNS_UNIX_FIELD_NUMBER: _ClassVar[int]
    name: str
    slots: int
    free_slots: int
    state: HostState
    failures: int
    last_failure: str
    last_failure_unix: float
    returns_unix: float
    def __init__(self, name: _Optional[str] = ..., slots: _Optional[int] = ..., free_slots: _Optional[int] = ..., state: _Optional[_Union[HostState, str]] = ..., failures: _Optional[int] = ..., last_failure: _Optional[str] = ..., last_failure_unix: _Optional[float] = ..., returns_unix: _Optional[float] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts",)
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[Host]
    def __init__(self, hosts: _Optional[_Iterable[_Union[Host, _Mapping]]] = ...) -> None: ...

class DrainHostRequest(_message.Message):
    __slots__ = ("host",)
    HOST_FIELD_NUMBER: _ClassVar[int]
    host: str
    def __init__(self, host: _Optional[str] = ...) -> None: ...

class WorkerFailure(_message.Message):
    __slots__ = ("cause", "rank", "host", "exception_type", "message", "step")
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    EXCEPTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    cause: FailureCause
    rank: int
    host: str
    exception_type: str
    message: str
    step: int
    def __init__(self, cause: _Optional[_Union[FailureCause, str]] = ..., rank: _Optional[int] = ..., host: _Optional[str] = ..., exception_type: _Optional[str] = ..., message: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class FetchJobRequest(_message.Message):
    __slots__ = ("job_id", "attempt")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ...) -> None: ...

class FetchJobResponse(_message.Message):
    __slots__ = ("spec_json", "attempt", "resume_from", "pause_at_step")
    SPEC_JSON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    RESUME_FROM_FIELD_NUMBER: _ClassVar[int]
    PAUSE_AT_STEP_FIELD_NUMBER: _ClassVar[int]
    spec_json: str
    attempt: int
    resume_from: CheckpointInfo
    pause_at_step: int
    def __init__(self, spec_json: _Optional[str] = ..., attempt: _Optional[int] = ..., resume_from: _Optional[_Union[CheckpointInfo, _Mapping]] = ..., pause_at_step: _Optional[int] = ...) -> None: ...

class ReportProgressRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "points", "step", "total_steps", "epoch", "event", "message", "worker_event", "failure", "rank", "exiting", "exit_code")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    POINTS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    WORKER_EVENT_FIELD_NUMBER: _ClassVar[int]
    FAILURE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    EXITING_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    points: _containers.RepeatedCompositeFieldContainer[MetricPoint]
    step: int
    total_steps: int
    epoch: int
    event: str
    message: str
    worker_event: WorkerEvent
    failure: WorkerFailure
    rank: int
    exiting: bool
    exit_code: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., points: _Optional[_Iterable[_Union[MetricPoint, _Mapping]]] = ..., step: _Optional[int] = ..., total_steps: _Optional[int] = ..., epoch: _Optional[int] = ..., event: _Optional[str] = ..., message: _Optional[str] = ..., worker_event: _Optional[_Union[WorkerEvent, str]] = ..., failure: _Optional[_Union[WorkerFailure, _Mapping]] = ..., rank: _Optional[int] = ..., exiting: _Optional[bool] = ..., exit_code: _Optional[int] = ...) -> None: ...

class ReportProgressResponse(_message.Message):
    __slots__ = ("cancel_requested", "checkpoint_requested")
    CANCEL_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    cancel_requested: bool
    checkpoint_requested: bool
    def __init__(self, cancel_requested: _Optional[bool] = ..., checkpoint_requested: _Optional[bool] = ...) -> None: ...

class UploadCheckpointRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "info", "data")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    INFO_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    info: CheckpointInfo
    data: bytes
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., info: _Optional[_Union[CheckpointInfo, _Mapping]] = ..., data: _Optional[bytes] = ...) -> None: ...

class UploadCheckpointResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: CheckpointInfo
    def __init__(self, stored: _Optional[_Union[CheckpointInfo, _Mapping]] = ...) -> None: ...

class FetchCheckpointRequest(_message.Message):
    __slots__ = ("job_id", "step")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    step: int
    def __init__(self, job_id: _Optional[str] = ..., step: _Optional[int] = ...) -> None: ...

class User(_message.Message):
    __slots__ = ("name", "role", "max_slots", "created_unix", "token_created_unix", "expires_unix", "slots_in_use", "share")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_SLOTS_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    TOKEN_CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_UNIX_FIELD_NUMBER: _ClassVar[int]
    SLOTS_IN_USE_FIELD_NUMBER: _ClassVar[int]
    SHARE_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    max_slots: int
    created_unix: float
    token_created_unix: float
    expires_unix: float
    slots_in_use: int
    share: float
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., max_slots: _Optional[int] = ..., created_unix: _Optional[float] = ..., token_created_unix: _Optional[float] = ..., expires_unix: _Optional[float] = ..., slots_in_use: _Optional[int] = ..., share: _Optional[float] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AddUserRequest(_message.Message):
    __slots__ = ("name", "role", "max_slots", "token_expires_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_SLOTS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    max_slots: int
    token_expires_s: float
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., max_slots: _Optional[int] = ..., token_expires_s: _Optional[float] = ...) -> None: ...

class UserToken(_message.Message):
    __slots__ = ("user", "token")
    USER_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    user: User
    token: str
    def __init__(self, user: _Optional[_Union[User, _Mapping]] = ..., token: _Optional[str] = ...) -> None: ...

class ListUsersRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListUsersResponse(_message.Message):
    __slots__ = ("users",)
    USERS_FIELD_NUMBER: _ClassVar[int]
    users: _containers.RepeatedCompositeFieldContainer[User]
    def __init__(self, users: _Optional[_Iterable[_Union[User, _Mapping]]] = ...) -> None: ...

class UpdateUserRequest(_message.Message):
    __slots__ = ("name", "role", "max_slots")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    MAX_SLOTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    role: Role
    max_slots: int
    def __init__(self, name: _Optional[str] = ..., role: _Optional[_Union[Role, str]] = ..., max_slots: _Optional[int] = ...) -> None: ...

class RemoveUserRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RotateTokenRequest(_message.Message):
    __slots__ = ("name", "token_expires_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_EXPIRES_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    token_expires_s: float
    def __init__(self, name: _Optional[str] = ..., token_expires_s: _Optional[float] = ...) -> None: ...

class AuditEntry(_message.Message):
    __slots__ = ("id", "time_unix", "user", "action", "target", "address", "outcome", "detail")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    id: int
    time_unix: float
    user: str
    action: str
    target: str
    address: str
    outcome: str
    detail: str
    def __init__(self, id: _Optional[int] = ..., time_unix: _Optional[float] = ..., user: _Optional[str] = ..., action: _Optional[str] = ..., target: _Optional[str] = ..., address: _Optional[str] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("user", "since_unix", "page_size", "page_token")
    USER_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    user: str
    since_unix: float
    page_size: int
    page_token: str
    def __init__(self, user: _Optional[str] = ..., since_unix: _Optional[float] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[AuditEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[AuditEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class AppendLogRequest(_message.Message):
    __slots__ = ("job_id", "attempt", "offset", "data", "ended", "exit_code")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENDED_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    attempt: int
    offset: int
    data: bytes
    ended: bool
    exit_code: int
    def __init__(self, job_id: _Optional[str] = ..., attempt: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., ended: _Optional[bool] = ..., exit_code: _Optional[int] = ...) -> None: ...

class AppendLogResponse(_message.Message):
    __slots__ = ("offset",)
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    offset: int
    def __init__(self, offset: _Optional[int] = ...) -> None: ...

class SubmitSweepRequest(_message.Message):
    __slots__ = ("text", "sweep_id")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    text: str
    sweep_id: str
    def __init__(self, text: _Optional[str] = ..., sweep_id: _Optional[str] = ...) -> None: ...

class SubmitSweepResponse(_message.Message):
    __slots__ = ("sweep", "created")
    SWEEP_FIELD_NUMBER: _ClassVar[int]
    CREATED_FIELD_NUMBER: _ClassVar[int]
    sweep: Sweep
    created: bool
    def __init__(self, sweep: _Optional[_Union[Sweep, _Mapping]] = ..., created: _Optional[bool] = ...) -> None: ...

class GetSweepRequest(_message.Message):
    __slots__ = ("sweep_id",)
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    def __init__(self, sweep_id: _Optional[str] = ...) -> None: ...

class ListSweepsRequest(_message.Message):
    __slots__ = ("page_size", "page_token", "owner")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    owner: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ListSweepsResponse(_message.Message):
    __slots__ = ("sweeps", "next_page_token")
    SWEEPS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    sweeps: _containers.RepeatedCompositeFieldContainer[Sweep]
    next_page_token: str
    def __init__(self, sweeps: _Optional[_Iterable[_Union[Sweep, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelSweepRequest(_message.Message):
    __slots__ = ("sweep_id",)
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    def __init__(self, sweep_id: _Optional[str] = ...) -> None: ...

class DeleteSweepRequest(_message.Message):
    __slots__ = ("sweep_id",)
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    def __init__(self, sweep_id: _Optional[str] = ...) -> None: ...

class DeleteSweepResponse(_message.Message):
    __slots__ = ("sweep_id", "trials", "files", "bytes_freed")
    SWEEP_ID_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    BYTES_FREED_FIELD_NUMBER: _ClassVar[int]
    sweep_id: str
    trials: int
    files: int
    bytes_freed: int
    def __init__(self, sweep_id: _Optional[str] = ..., trials: _Optional[int] = ..., files: _Optional[int] = ..., bytes_freed: _Optional[int] = ...) -> None: ...

class RungValue(_message.Message):
    __slots__ = ("rung", "step", "value")
    RUNG_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    rung: int
    step: int
    value: float
    def __init__(self, rung: _Optional[int] = ..., step: _Optional[int] = ..., value: _Optional[float] = ...) -> None: ...

class SweepTrial(_message.Message):
    __slots__ = ("trial", "job_id", "params", "status", "rung", "values", "job_state", "step")
    class ParamsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TRIAL_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    RUNG_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    JOB_STATE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    trial: int
    job_id: str
    params: _containers.ScalarMap[str, str]
    status: str
    rung: int
    values: _containers.RepeatedCompositeFieldContainer[RungValue]
    job_state: JobState
    step: int
    def __init__(self, trial: _Optional[int] = ..., job_id: _Optional[str] = ..., params: _Optional[_Mapping[str, str]] = ..., status: _Optional[str] = ..., rung: _Optional[int] = ..., values: _Optional[_Iterable[_Union[RungValue, _Mapping]]] = ..., job_state: _Optional[_Union[JobState, str]] = ..., step: _Optional[int] = ...) -> None: ...

class Promotions(_message.Message):
    __slots__ = ("trials",)
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    trials: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, trials: _Optional[_Iterable[int]] = ...) -> None: ...

class Sweep(_message.Message):
    __slots__ = ("id", "name", "state", "message", "method", "metric", "goal", "trials_total", "max_concurrent", "rungs", "trials", "promotions", "best_trial", "best_job_id", "best_value", "created_unix", "ended_unix", "text", "owner")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    GOAL_FIELD_NUMBER: _ClassVar[int]
    TRIALS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENT_FIELD_NUMBER: _ClassVar[int]
    RUNGS_FIELD_NUMBER: _ClassVar[int]
    TRIALS_FIELD_NUMBER: _ClassVar[int]
    PROMOTIONS_FIELD_NUMBER: _ClassVar[int]
    BEST_TRIAL_FIELD_NUMBER: _ClassVar[int]
    BEST_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BEST_VALUE_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_FIELD_NUMBER: _ClassVar[int]
    ENDED_UNIX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    state: JobState
    message: str
    method: str
    metric: str
    goal: str
    trials_total: int
    max_concurrent: int
    rungs: _containers.RepeatedScalarFieldContainer[int]
    trials: _containers.RepeatedCompositeFieldContainer[SweepTrial]
    promotions: _containers.RepeatedCompositeFieldContainer[Promotions]
    best_trial: int
    best_job_id: str
    best_value: float
    created_unix: float
    ended_unix: float
    text: str
    owner: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., state: _Optional[_Union[JobState, str]] = ..., message: _Optional[str] = ..., method: _Optional[str] = ..., metric: _Optional[str] = ..., goal: _Optional[str] = ..., trials_total: _Optional[int] = ..., max_concurrent: _Optional[int] = ..., rungs: _Optional[_Iterable[int]] = ..., trials: _Optional[_Iterable[_Union[SweepTrial, _Mapping]]] = ..., promotions: _Optional[_Iterable[_Union[Promotions, _Mapping]]] = ..., best_trial: _Optional[int] = ..., best_job_id: _Optional[str] = ..., best_value: _Optional[float] = ..., created_unix: _Optional[float] = ..., ended_unix: _Optional[float] = ..., text: _Optional[str] = ..., owner: _Optional[str] = ...) -> None: ...

class ForkJobRequest(_message.Message):
    __slots__ = ("job_id", "from_step", "settings", "new_job_id", "workers")
    class SettingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FROM_STEP_FIELD_NUMBER: _ClassVar[int]
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    NEW_JOB_ID_FIELD_NUMBER: _ClassVar[int]
    WORKERS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    from_step: int
    settings: _containers.ScalarMap[str, str]
    new_job_id: str
    workers: int
    def __init__(self, job_id: _Optional[str] = ..., from_step: _Optional[int] = ..., settings: _Optional[_Mapping[str, str]] = ..., new_job_id: _Optional[str] = ..., workers: _Optional[int] = ...) -> None: ...
