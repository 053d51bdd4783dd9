"""Job states and the only transitions allowed between them.

    QUEUED → RUNNING → (RESTARTING → RUNNING)* → SUCCEEDED | FAILED | CANCELLED

A QUEUED job may also be CANCELLED (or FAILED, e.g. when it can never be launched) before it runs.
Terminal states are final. `check_transition(old, new)` raises `IllegalTransition` for anything else,
so a bug in the scheduler shows up as an error instead of a job record that lies.

The names and numbers match `gradmesh.v1.JobState` in the proto.
"""
from __future__ import annotations

import enum


class JobState(enum.IntEnum):
    QUEUED = 1
    RUNNING = 2
    RESTARTING = 3
    SUCCEEDED = 4
    FAILED = 5
    CANCELLED = 6

    def is_terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})

_LEGAL: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED, JobState.FAILED}),
    JobState.RUNNING: frozenset({JobState.RESTARTING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
    JobState.RESTARTING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


class IllegalTransition(RuntimeError):
    def __init__(self, old: JobState, new: JobState):
        super().__init__(f"illegal job state transition {old.name} → {new.name}")
        self.old = old
        self.new = new


def is_legal(old: JobState, new: JobState) -> bool:
    return new in _LEGAL[old]


def check_transition(old: JobState, new: JobState) -> None:
    if not is_legal(old, new):
        raise IllegalTransition(old, new)
