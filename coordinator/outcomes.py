"""What the end of an attempt means for its job: a pure decision, unit-tested without processes.

    outcome = classify(Exit(3), cancel_requested=False, final_checkpoint=None,
                       worker_event="nan", worker_message="loss became NaN at step 41", tail="...")
    outcome.state      # JobState.FAILED
    outcome.retryable  # False: it would diverge again

Exit codes of `python -m worker` (and so of mpirun): 0 succeeded, 2 bad spec or data, 3 loss became
NaN/inf, 4 stopped early on request (SIGTERM or a cancel) after writing a checkpoint, anything else (1,
signals) a failure worth retrying. The worker also reports
the event over gRPC before exiting (`worker_event`), which wins when the exit code was lost (a coordinator
restart re-adopting a group it did not start) or blurred by mpirun.

`retryable` is where restarts plug in: the caller moves a retryable failure to RESTARTING while the job
has restarts left (issue 5), and to FAILED otherwise.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from coordinator.launcher import Exit
from coordinator.states import JobState

FAILURE_EVENTS = {"nan", "spec", "data", "error"}  # events whose message explains a failure

_WATCHDOG = re.compile(r"(rank \d+ on \S+: collective .* did not complete within .*)")
_RANK_ERROR = re.compile(r"^\[rank (\d+) on ([^\]]+)\] ((?:[\w.]+(?:Error|Exception|Interrupt)|[\w.]+Exit)\b.*)$")
_HYDRA_PID = re.compile(r"PID (\d+) RUNNING AT (\S+)")
_HYDRA_EXIT = re.compile(r"EXIT STRING: (.+)$")


def headline(tail: str) -> str:
    """The one log line that says which rank failed and why, when the log has one:
    the hang watchdog's verdict, a rank's uncaught exception, or hydra's report of a killed rank."""
    lines = tail.splitlines()
    for line in lines:
        found = _WATCHDOG.search(line)
        if found:
            return found.group(1)
    for line in reversed(lines):
        found = _RANK_ERROR.match(line.strip())
        if found:
            rank, host, error = found.groups()
            return f"rank {rank} on {host}: {error}"
    pid = next((m for m in map(_HYDRA_PID.search, lines) if m), None)
    how = next((m for m in map(_HYDRA_EXIT.search, lines) if m), None)
    if pid:
        return f"a rank (pid {pid.group(1)}) on {pid.group(2)} ended: {how.group(1) if how else 'bad termination'}"
    return ""


@dataclass(frozen=True)
class Outcome:
    state: JobState
    retryable: bool
    message: str
    outcome: str  # short word for the attempt record: succeeded | cancelled | failed | nan | bad-input | lost


def classify(exit: Exit, *, cancel_requested: bool, final_checkpoint_step: int | None, worker_event: str,
             worker_message: str, tail: str, log_name: str = "the log", killed: tuple[str, str] | None = None,
             last_checkpoint_step: int | None = None) -> Outcome:
    finished = worker_event == "finished"
    if worker_event not in FAILURE_EVENTS:
        worker_message = ""  # e.g. the "started" event's "2 rank(s)" explains nothing
    tail_text = f"\nlast lines of {log_name}:\n{tail}" if tail else ""
    code = exit.code

    if (code == 0 or code is None) and finished and final_checkpoint_step is not None:
        return Outcome(JobState.SUCCEEDED, False, f"finished at step {final_checkpoint_step}", "succeeded")
    if cancel_requested:
        saved = f"; last checkpoint at step {last_checkpoint_step}" if last_checkpoint_step is not None else ""
        return Outcome(JobState.CANCELLED, False, f"cancelled on request ({exit.describe()}){saved}", "cancelled")
    if killed is not None:  # the coordinator itself stopped this attempt: (outcome word, why)
        cause = headline(tail)
        said = f"; {cause}" if cause else ""
        return Outcome(JobState.FAILED, True, f"{killed[1]} ({exit.describe()}){said}{tail_text}", killed[0])
    if worker_event == "nan" or code == 3:
        what = worker_message or "loss became NaN or infinite"
        return Outcome(JobState.FAILED, False, f"{what} ({exit.describe()}); not retried{tail_text}", "nan")
    if worker_event in ("spec", "data") or code == 2:
        what = worker_message or "bad spec or data"
        return Outcome(JobState.FAILED, False, f"{what} ({exit.describe()}); not retried{tail_text}", "bad-input")
    if code == 4 or worker_event == "stopped":
        return Outcome(JobState.FAILED, True, f"workers stopped early without a cancel request ({exit.describe()}; "
                                              f"a SIGTERM from outside the coordinator?){tail_text}", "stopped")
    if code == 0:
        return Outcome(JobState.FAILED, True,
                       f"workers exited with exit code 0 but no final checkpoint was uploaded{tail_text}", "failed")
    if code is None:
        said = f"; rank 0 last reported: {worker_event} {worker_message}".rstrip() if worker_event else ""
        return Outcome(JobState.FAILED, True, f"workers ended while not supervised ({exit.describe()}){said}{tail_text}",
                       "lost")
    cause = worker_message or headline(tail)
    said = f": {cause}" if cause else ""
    return Outcome(JobState.FAILED, True, f"mpirun failed with {exit.describe()}{said}{tail_text}", "failed")


@dataclass(frozen=True)
class Decision:
    """What the job does after an attempt: its next state, the message, and when to relaunch (RESTARTING)."""
    state: JobState
    message: str
    delay_s: float = 0.0


def decide(outcome: Outcome, *, attempt: int, restarts: int, max_restarts: int, backoff_s: float) -> Decision:
    """The restart policy: a retryable failure restarts while restarts are left, waiting backoff_s·2^restarts;
    past max_restarts (or not retryable) the job is FAILED with the last cause."""
    if outcome.state is not JobState.FAILED:
        return Decision(outcome.state, outcome.message)
    if outcome.retryable and restarts < max_restarts:
        delay = backoff_s * 2 ** restarts
        return Decision(JobState.RESTARTING,
                        f"attempt {attempt} failed, restart {restarts + 1} of {max_restarts} in {delay:.1f} s: "
                        f"{outcome.message}", delay)
    if outcome.retryable and restarts:
        return Decision(JobState.FAILED, f"attempt {attempt} failed and no restarts are left (max_restarts = "
                                         f"{max_restarts}): {outcome.message}")
    return Decision(JobState.FAILED, outcome.message)
