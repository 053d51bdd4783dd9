"""An attempt the supervisor (coordinator.supervision.supervisor) watches, as its collaborators share it: the settlement
reads how it ran, the re-adoption builds one for each attempt an earlier coordinator left behind.

`fault_policy(job)` is the spec's "fault" table (hang timeout, restarts, backoff) that decides how a job's
attempts are watched and moved on; missing keys take the defaults where they are read (`hang_timeout_s(job)`:
the spec's own default). `wire_note(job)`: what a running job's status adds when it left the exact path.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from coordinator.supervision.executors import Handle
from coordinator.hosts import Allocation
from coordinator.store.records import JobRow
from worker.spec import BF16_WIRE_NOTE, FaultSpec


@dataclass
class Running:
    """An attempt whose processes this coordinator watches. `token` is None once it ended (or when it was
    re-adopted: the plain token of an attempt launched by an earlier coordinator is not known)."""
    job_id: str
    attempt: int
    process: Handle
    allocation: Allocation
    token: str | None = None
    waiting: bool = False  # handed to a queue (Slurm) and its ranks have not called yet: the job is not RUNNING
    note: str = ""         # the last waiting message shown
    end_note: str = ""  # put before a failure message (e.g. it ended while no coordinator watched)
    settle_failures: int = 0  # reaps at which its end could not be recorded (a full disk): logged sparingly


def fault_policy(job: JobRow) -> dict:
    return json.loads(job.spec_json).get("fault", {})


def hang_timeout_s(job: JobRow) -> float:
    """How long the job's progress may stall before its attempt counts as hung (the spec's default if unset)."""
    return fault_policy(job).get("hang_timeout_s", FaultSpec.hang_timeout_s)


def wire_note(job: JobRow) -> str:
    """"; bf16 wire: not exact across rank counts" for a job whose spec asks for the bf16 wire (train.wire),
    else "": a running job's status says that it left the exact path."""
    train = json.loads(job.spec_json).get("train", {})
    return f"; {BF16_WIRE_NOTE}" if train.get("wire") == "bf16" else ""
