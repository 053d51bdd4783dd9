"""What ranks tell the coordinator about their attempt: the event, and why it fails.

    WorkerEvent.STARTED / FINISHED / STOPPED / FAILING (UNSPECIFIED is a plain heartbeat)
    WorkerFailure(FailureCause.RANK_ERROR, rank=1, host="node7", exception_type="ValueError", message="boom")
    failure.headline()   → "rank 1 on node7: ValueError: boom"
    failure.retryable    → True only for RANK_ERROR and HANG

Names and numbers match gradmesh.v1.WorkerEvent / FailureCause (without their prefixes); a test checks it.
Ranks from before the typed fields sent a string `event`; `from_legacy` is the one translation of it.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass

from coordinator.errors import InvalidArgument


class WorkerEvent(enum.IntEnum):
    UNSPECIFIED = 0   # a heartbeat: progress only
    STARTED = 1
    FINISHED = 2
    STOPPED = 3
    FAILING = 4


class FailureCause(enum.IntEnum):
    UNSPECIFIED = 0
    NAN = 1
    BAD_SPEC = 2
    BAD_DATA = 3
    BAD_CHECKPOINT = 4
    RANK_ERROR = 5
    HANG = 6
    OUT_OF_MEMORY = 7


# Another attempt can help only when the cause may be transient; the others would fail the same way again.
RETRIED_CAUSES = frozenset({FailureCause.RANK_ERROR, FailureCause.HANG})


@dataclass(frozen=True)
class WorkerFailure:
    cause: FailureCause
    message: str
    rank: int | None = None      # None: not said (a report from before typed failures)
    host: str = ""
    exception_type: str = ""
    step: int = 0

    @property
    def retryable(self) -> bool:
        return self.cause in RETRIED_CAUSES

    def headline(self) -> str:
        """"rank R on HOST: ExcType: message". A NaN loss is the allreduced loss of all ranks, so no rank is
        named for it; a report without a rank is its message alone."""
        what = f"{self.exception_type}: {self.message}" if self.exception_type else self.message
        if self.rank is None or self.cause is FailureCause.NAN:
            return what
        where = f"rank {self.rank} on {self.host}" if self.host else f"rank {self.rank}"
        return f"{where}: {what}"


_LEGACY: dict[str, tuple[WorkerEvent, FailureCause | None]] = {
    "": (WorkerEvent.UNSPECIFIED, None),
    "started": (WorkerEvent.STARTED, None),
    "finished": (WorkerEvent.FINISHED, None),
    "stopped": (WorkerEvent.STOPPED, None),
    "nan": (WorkerEvent.FAILING, FailureCause.NAN),
    "spec": (WorkerEvent.FAILING, FailureCause.BAD_SPEC),
    "data": (WorkerEvent.FAILING, FailureCause.BAD_DATA),
    "error": (WorkerEvent.FAILING, FailureCause.RANK_ERROR),
}


def from_legacy(event: str, message: str) -> tuple[WorkerEvent, WorkerFailure | None]:
    """The typed form of a string `event` (the deprecated ReportProgressRequest.event, or an old store row)."""
    try:
        kind, cause = _LEGACY[event]
    except KeyError:
        known = ", ".join(sorted(name for name in _LEGACY if name))
        raise InvalidArgument("event", f"{event[:40]!r} is not one of {known}") from None
    return kind, (WorkerFailure(cause, message) if cause is not None else None)
