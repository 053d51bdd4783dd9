"""The coordinator's records, as the store reads and writes them: one frozen dataclass per table row.

Floats that were not measured (a metric point without a validation loss) are NaN here and NULL in SQLite;
`nan_from_sql` / `sql_from_nan` convert at the store's boundary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from coordinator.hosts import parse_formatted_hosts
from coordinator.reports import WorkerEvent, WorkerFailure
from coordinator.states import JobState


def nan_from_sql(value: float | None) -> float:
    return math.nan if value is None else float(value)


def sql_from_nan(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


@dataclass(frozen=True)
class JobRow:
    id: str
    name: str
    spec_json: str
    state: JobState
    workers: int
    priority: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    message: str = ""
    created: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    attempts: int = 0
    restarts: int = 0
    cancel_requested: bool = False
    checkpoint_requested: bool = False
    token_hash: str = ""
    seq: int = 0
    executor: str = ""  # "" = this coordinator's executor; EXTERNAL = launched by its user, only tracked here
    owner: str = "admin"  # the user who submitted it (jobs older than users: the first administrator)


EXTERNAL = "external"


@dataclass(frozen=True)
class AttemptRow:
    job_id: str
    attempt: int
    log_path: str
    workdir: str
    started: float
    hosts: str = ""
    pid: int = 0
    pgid: int = 0
    start_ticks: int = 0   # mpirun's start time and boot (processes.Identity); 0 and "" when not recorded
    boot_id: str = ""
    slurm_job: str = ""    # the Slurm job id of an attempt submitted with sbatch ('' = mpirun here)
    ended: float = 0.0
    exit_code: int | None = None
    outcome: str = ""
    message: str = ""
    worker_event: WorkerEvent = WorkerEvent.UNSPECIFIED
    worker_message: str = ""
    failure: WorkerFailure | None = None
    mpi_args: tuple[str, ...] = ()   # what `gradmesh serve --mpirun-arg` gave this attempt's mpirun

    @property
    def ranks(self) -> int:
        """The attempt's rank count (its hosts "a:2,b:2" add up to it)."""
        return sum(n for _, n in parse_formatted_hosts(self.hosts))


@dataclass(frozen=True)
class TransitionRow:
    id: int
    job_id: str
    state: JobState
    message: str
    time: float
    attempt: int


@dataclass(frozen=True)
class MetricRow:
    step: int
    epoch: int = 0
    train_loss: float = math.nan
    val_loss: float = math.nan
    val_accuracy: float = math.nan
    samples_per_second: float = math.nan
    lr: float = math.nan
    time_unix: float = 0.0
    attempt: int = 0


@dataclass(frozen=True)
class CheckpointRow:
    job_id: str
    step: int
    epoch: int
    size: int
    sha256: str
    val_loss: float
    val_accuracy: float
    is_final: bool
    created: float
    attempt: int
    path: str


@dataclass(frozen=True)
class UserRow:
    name: str
    role: str                # admin | member | viewer (coordinator.access.roles.Role)
    token_hash: str
    max_slots: int = 0       # worker slots its jobs may hold at once; 0 = no cap of its own
    created: float = 0.0
    token_created: float = 0.0
    expires: float = 0.0     # when its token stops working; 0 = never


@dataclass(frozen=True)
class AuditRow:
    id: int
    time: float
    user: str
    action: str
    target: str = ""
    address: str = ""
    outcome: str = "ok"      # ok | denied
    detail: str = ""
