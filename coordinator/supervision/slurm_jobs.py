"""What Slurm says about a job: `scontrol show job --oneliner` parsed, and what gradmesh makes of a job's
state (an attempt's Exit, or why it still waits).

    jobs = parse_scontrol(text)                   # job id -> SlurmJobInfo(id, name, state, reason, exit code, ...)
    slurm_exit("42", jobs.get("42"))              # None while Slurm runs or queues it, else the attempt's Exit
    waiting_text("42", jobs.get("42"))            # "waiting in Slurm's queue: job 42 PENDING, reason ..." or None

Pure functions over Slurm's text: tests/test_slurm_unit.py checks them without a Slurm.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from coordinator.supervision.launcher import Exit
from coordinator.supervision.slurm_submit import LAUNCHER

# Slurm job states in which nothing of the job runs any more (squeue(1) "JOB STATE CODES").
ENDED = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                   "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "REVOKED"})
# Ended by Slurm itself: the ranks were killed, whatever exit code the batch step shows.
KILLED_BY_SLURM = frozenset({"TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY"})


@dataclass(frozen=True)
class SlurmJobInfo:
    """One job as `scontrol show job --oneliner` shows it."""
    id: str
    name: str = ""
    state: str = ""
    reason: str = ""
    exit_code: int = 0
    signal: int = 0
    nodes: str = ""


_FIELD = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=(\S*)")


def parse_scontrol(text: str) -> dict[str, SlurmJobInfo]:
    """`scontrol show job --oneliner` output → job id → info (lines without a JobId are skipped)."""
    jobs = {}
    for line in text.splitlines():
        fields = dict(_FIELD.findall(line))
        if "JobId" not in fields:
            continue
        code, _, sig = fields.get("ExitCode", "0:0").partition(":")
        state = fields.get("JobState", "")
        jobs[fields["JobId"]] = SlurmJobInfo(
            id=fields["JobId"], name=fields.get("JobName", ""), state=state.split("+")[0],
            reason=fields.get("Reason", ""), exit_code=int(code) if is_count(code) else 0,
            signal=int(sig) if is_count(sig) else 0, nodes=fields.get("NodeList", ""))
    return jobs


def _reason(info: SlurmJobInfo) -> str:
    return f", reason {info.reason}" if info.reason and info.reason not in ("None", "(null)") else ""


def slurm_exit(slurm_id: str, info: SlurmJobInfo | None) -> Exit | None:
    """The Exit of an attempt from its Slurm job: None while Slurm still runs (or queues) it. The exit code is
    the batch step's (srun's: the ranks' highest), a signal is negative; a job Slurm ended itself (time limit,
    node failure, out of memory, preemption) without a code counts as killed (SIGKILL), a cancelled one
    without a code as SIGTERM'd. `info` None: Slurm no longer knows the job (purged after MinJobAge)."""
    if info is None:
        return Exit(None, LAUNCHER, f"Slurm no longer knows job {slurm_id} (it ended over MinJobAge ago, or was "
                                    "purged)")
    if info.state not in ENDED:
        return None
    code = -info.signal if info.signal else info.exit_code
    if code == 0 and info.state in KILLED_BY_SLURM:
        code = -9
    elif code == 0 and info.state == "CANCELLED":
        code = -15
    return Exit(code, LAUNCHER, f"Slurm job {slurm_id} ended {info.state}{_reason(info)}")


def waiting_text(slurm_id: str, info: SlurmJobInfo | None) -> str | None:
    """What a job message says while the attempt waits for its ranks: Slurm's pending reason, or that the
    job started and its ranks are starting. None once it ended."""
    if info is None or info.state in ENDED:
        return None
    if info.state == "PENDING":
        return f"waiting in Slurm's queue: job {slurm_id} PENDING{_reason(info)}"
    where = f" on {info.nodes}" if info.nodes and info.nodes != "(null)" else ""
    return f"Slurm job {slurm_id} {info.state}{where}; waiting for its ranks to start"


def is_count(text: str) -> bool:
    """Whether Slurm's text is a number int() may read: ASCII digits, not too many."""
    return text.isascii() and text.isdigit() and len(text) < 19
