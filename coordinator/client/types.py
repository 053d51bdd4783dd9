"""What the client returns: frozen dataclasses made from gradmesh.v1 messages, never the messages themselves.

`JobState` is the coordinator's own (`coordinator.states`, an IntEnum numbered like the proto); results
serialise its *name* (`to_dict()` → {"state": "RUNNING"}). A float the proto leaves NaN ("not measured")
becomes None, so `to_dict()` output is plain JSON (null).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from coordinator.errors import Internal, InvalidArgument
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.states import JobState

STATE_NAMES = ", ".join(s.name for s in JobState)


def parse_state(value: "str | JobState") -> JobState:
    """A JobState from its name, any case ("running", "RUNNING"); InvalidArgument("state", ...) otherwise."""
    if isinstance(value, JobState):
        return value
    try:
        return JobState[str(value).strip().upper()]
    except KeyError:
        raise InvalidArgument("state", f"unknown state {value!r} (one of {STATE_NAMES})") from None


_STATES = {int(s): s for s in JobState}   # a dict lookup: calling the enum costs a microsecond per reply


def state_from_pb(value: int) -> JobState:
    state = _STATES.get(value)
    if state is None:  # JOB_STATE_UNSPECIFIED or a state this client does not know
        raise Internal(f"the coordinator sent an unknown job state {value}")
    return state


def _frozen(cls, values: dict[str, Any]):
    """An instance of the frozen dataclass `cls` holding `values`, one for each of its fields.

    A frozen dataclass's __init__ sets every field through object.__setattr__, which made converting one
    GetJob reply cost 45 µs of a ~0.8 ms call; filling the instance's __dict__ at once costs a fifth of that.
    The result is the same object (tests/test_client_types.py compares it with the __init__'s, field by field)."""
    obj = object.__new__(cls)
    obj.__dict__.update(values)
    return obj


def _opt(value: float) -> float | None:
    """NaN (not measured) becomes None, so results serialise to JSON as null."""
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class MetricPoint:
    step: int
    epoch: int                      # as the worker reports it: the epoch this step belongs to
    train_loss: float | None
    val_loss: float | None          # None when not evaluated at this step (or no validation set)
    val_accuracy: float | None      # None when not evaluated (or for mse)
    samples_per_second: float
    lr: float
    time_unix: float
    attempt: int

    @classmethod
    def from_pb(cls, m: pb.MetricPoint) -> "MetricPoint":
        return _frozen(cls, {"step": m.step, "epoch": m.epoch, "train_loss": _opt(m.train_loss),
                             "val_loss": _opt(m.val_loss), "val_accuracy": _opt(m.val_accuracy),
                             "samples_per_second": m.samples_per_second, "lr": m.lr, "time_unix": m.time_unix,
                             "attempt": m.attempt})

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StateChange:
    state: JobState
    message: str
    time_unix: float
    attempt: int
    transition_id: int = 0          # the store's id of this transition: unique, increasing

    @classmethod
    def from_pb(cls, s: pb.StateChange) -> "StateChange":
        return _frozen(cls, {"state": state_from_pb(s.state), "message": s.message, "time_unix": s.time_unix,
                             "attempt": s.attempt, "transition_id": s.transition_id})

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.name, "message": self.message, "time_unix": self.time_unix,
                "attempt": self.attempt, "transition_id": self.transition_id}


@dataclass(frozen=True)
class AttemptInfo:
    """One launch of a job: its rank count and hosts (an elastic job's resizes are attempts of other sizes)."""
    attempt: int
    ranks: int
    hosts: str                      # "host:ranks,host:ranks"
    outcome: str                    # "" while running; succeeded, failed, hung, resized, cancelled, ...
    message: str
    started_unix: float
    ended_unix: float | None        # None while running
    mpi_args: tuple[str, ...] = ()
    slurm_job: str = ""             # Slurm's job id when it ran through sbatch ("" otherwise)

    @classmethod
    def from_pb(cls, a: pb.AttemptSummary) -> "AttemptInfo":
        return _frozen(cls, {"attempt": a.attempt, "ranks": a.ranks, "hosts": a.hosts, "outcome": a.outcome,
                             "message": a.message, "started_unix": a.started_unix, "ended_unix": a.ended_unix or None,
                             "mpi_args": tuple(a.mpi_args), "slurm_job": a.slurm_job})

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "mpi_args": list(self.mpi_args)}


HOST_STATE_NAMES = {pb.HOST_HEALTHY: "healthy", pb.HOST_SUSPECT: "suspect", pb.HOST_QUARANTINED: "quarantined",
                    pb.HOST_DRAINED: "drained"}


@dataclass(frozen=True)
class HostInfo:
    """A host of the coordinator's pool: its slots and health (`gradmesh hosts`)."""
    name: str
    slots: int
    free_slots: int
    state: str                      # healthy | suspect | quarantined | drained
    failures: int                   # attributed to it in the current window
    last_failure: str
    last_failure_unix: float | None
    returns_unix: float | None      # when its quarantine ends; None when not quarantined

    @classmethod
    def from_pb(cls, h: pb.Host) -> "HostInfo":
        return cls(name=h.name, slots=h.slots, free_slots=h.free_slots, state=HOST_STATE_NAMES.get(h.state, "unknown"),
                   failures=h.failures, last_failure=h.last_failure, last_failure_unix=h.last_failure_unix or None,
                   returns_unix=h.returns_unix or None)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class JobInfo:
    id: str
    name: str
    spec_json: str
    state: JobState
    message: str
    workers: int
    priority: int
    labels: Mapping[str, str]
    step: int
    total_steps: int
    epoch: int
    latest: MetricPoint | None
    best: MetricPoint | None        # the coordinator's choice: the point with the lowest validation loss
    samples_per_second: float
    eta_seconds: float | None       # the coordinator's estimate; None when unknown
    attempts: int
    restarts: int
    created_unix: float
    started_unix: float | None      # None until it first runs
    ended_unix: float | None        # None until terminal
    history: tuple[StateChange, ...] = field(default=())
    attempt_history: tuple[AttemptInfo, ...] = field(default=())   # every launch: ranks and hosts of each
    owner: str = ""                 # the user who submitted it

    @classmethod
    def from_pb(cls, j: pb.Job) -> "JobInfo":
        return _frozen(cls, {
            "id": j.id, "name": j.name, "spec_json": j.spec_json, "state": state_from_pb(j.state),
            "message": j.message, "workers": j.workers, "priority": j.priority, "labels": dict(j.labels),
            "step": j.step, "total_steps": j.total_steps, "epoch": j.epoch,
            "latest": MetricPoint.from_pb(j.latest) if j.HasField("latest") else None,
            "best": MetricPoint.from_pb(j.best) if j.HasField("best") else None,
            "samples_per_second": j.samples_per_second,
            "eta_seconds": j.eta_seconds if j.eta_seconds >= 0 else None,
            "attempts": j.attempts, "restarts": j.restarts, "created_unix": j.created_unix,
            "started_unix": j.started_unix or None, "ended_unix": j.ended_unix or None,
            "history": tuple(StateChange.from_pb(s) for s in j.history),
            "attempt_history": tuple(AttemptInfo.from_pb(a) for a in j.attempt_history), "owner": j.owner})

    @property
    def spec(self) -> dict[str, Any]:
        try:
            spec = json.loads(self.spec_json) if self.spec_json else {}
        except ValueError:  # a stored spec the coordinator cannot read back either: none to show
            return {}
        return spec if isinstance(spec, dict) else {}

    def is_terminal(self) -> bool:
        return self.state.is_terminal()

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("spec_json", "history")}
        out["state"] = self.state.name
        out["labels"] = dict(self.labels)
        out["latest"] = self.latest.to_dict() if self.latest else None
        out["best"] = self.best.to_dict() if self.best else None
        out["spec"] = self.spec
        out["history"] = [s.to_dict() for s in self.history]
        out["attempt_history"] = [a.to_dict() for a in self.attempt_history]
        return out


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    epoch: int
    size_bytes: int
    sha256: str
    val_loss: float | None
    val_accuracy: float | None
    is_final: bool
    created_unix: float
    attempt: int

    @classmethod
    def from_pb(cls, c: pb.CheckpointInfo) -> "CheckpointInfo":
        return cls(step=c.step, epoch=c.epoch, size_bytes=c.size_bytes, sha256=c.sha256,
                   val_loss=_opt(c.val_loss), val_accuracy=_opt(c.val_accuracy), is_final=c.is_final,
                   created_unix=c.created_unix, attempt=c.attempt)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DeletedJob:
    """What DeleteJob removed: checkpoint records, files of every kind, and the bytes that freed."""
    job_id: str
    checkpoints: int
    files: int
    bytes_freed: int

    @classmethod
    def from_pb(cls, d: pb.DeleteJobResponse) -> "DeletedJob":
        return cls(job_id=d.job_id, checkpoints=d.checkpoints, files=d.files, bytes_freed=d.bytes_freed)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Download:
    """A checkpoint written to `path`, whose bytes matched `info.sha256` and `info.size_bytes`."""
    path: Path
    info: CheckpointInfo
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "checkpoint": self.info.to_dict(), "seconds": self.seconds}


class WatchEvent:
    """Base of what `Client.watch()` yields."""


@dataclass(frozen=True)
class JobSnapshot(WatchEvent):
    """The job as it is now: first event of the stream, and again after every reconnect."""
    job: JobInfo


@dataclass(frozen=True)
class JobStateChanged(WatchEvent):
    change: StateChange


@dataclass(frozen=True)
class MetricReported(WatchEvent):
    point: MetricPoint


ROLE_NAMES = {pb.ROLE_ADMIN: "admin", pb.ROLE_MEMBER: "member", pb.ROLE_VIEWER: "viewer"}
ROLE_VALUES = {v: k for k, v in ROLE_NAMES.items()}


def role_to_pb(role: str) -> int:
    """The proto value of "admin", "member" or "viewer" (any case); InvalidArgument("role", ...) otherwise."""
    value = ROLE_VALUES.get(str(role).strip().lower())
    if value is None:
        raise InvalidArgument("role", f"unknown role {role!r} (admin, member or viewer)")
    return value


@dataclass(frozen=True)
class UserInfo:
    """A user of the coordinator: role, slot cap, token dates, and the slots their jobs hold now."""
    name: str
    role: str                       # admin | member | viewer
    max_slots: int                  # 0 = no cap
    created_unix: float
    token_created_unix: float
    expires_unix: float | None      # None = the token never expires
    slots_in_use: int
    share: float                    # the user's weight in the fair share

    @classmethod
    def from_pb(cls, u: pb.User) -> "UserInfo":
        return cls(name=u.name, role=ROLE_NAMES.get(u.role, "unknown"), max_slots=u.max_slots,
                   created_unix=u.created_unix, token_created_unix=u.token_created_unix,
                   expires_unix=u.expires_unix or None, slots_in_use=u.slots_in_use, share=u.share)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit trail: who did what to which job, host or user, when, from where, and whether it
    was allowed ("ok") or refused ("denied")."""
    id: int
    time_unix: float
    user: str
    action: str
    target: str
    address: str
    outcome: str
    detail: str

    @classmethod
    def from_pb(cls, a: pb.AuditEntry) -> "AuditEntry":
        return cls(id=a.id, time_unix=a.time_unix, user=a.user, action=a.action, target=a.target, address=a.address,
                   outcome=a.outcome, detail=a.detail)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)
