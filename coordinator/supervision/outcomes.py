"""What the end of an attempt means for its job: a pure decision, unit-tested without processes.

    outcome = classify(Exit(3), cancel_requested=False, final_checkpoint_step=None,
                       worker_event=WorkerEvent.FAILING,
                       failure=WorkerFailure(FailureCause.NAN, "loss became NaN at step 41"), tail="...")
    outcome.state      # JobState.FAILED
    outcome.retryable  # False: it would diverge again

Why an attempt failed comes first from the ranks themselves: the first rank that fails reports a typed
`WorkerFailure` (cause, rank, host, exception type, message) before it aborts, and its cause decides
whether another attempt can help (reports.RETRIED_CAUSES). Only when no rank said anything (a rank
killed by a signal, a whole group that died) does the log tail speak, through `headline`'s regexes.
Exit codes of `python -m worker` (and so of mpirun) are the last resort: 0 succeeded, 2 bad spec or data,
3 loss became NaN/inf, 4 stopped early on request after writing a checkpoint, anything else (1, signals)
a failure worth retrying.

`decide` turns the outcome into the job's next state: a retryable failure goes to RESTARTING while the
job has restarts left, and to FAILED otherwise.
"""
from __future__ import annotations

import re
import signal
from dataclasses import dataclass

from coordinator.supervision.launcher import Exit
from coordinator.reports import FailureCause, WorkerEvent, WorkerFailure
from coordinator.states import JobState

# the attempt record's outcome word for a failure a rank reported
_OUTCOME_OF_CAUSE = {
    FailureCause.NAN: "nan",
    FailureCause.BAD_SPEC: "bad-input",
    FailureCause.BAD_DATA: "bad-input",
    FailureCause.BAD_CHECKPOINT: "bad-input",
    FailureCause.OUT_OF_MEMORY: "out-of-memory",
    FailureCause.HANG: "hung",
}

_WATCHDOG = re.compile(r"(rank \d+ on \S+: collective .* did not complete within .*)")
_RANK_ERROR = re.compile(r"^\[rank ([0-9]{1,9}) on ([^\]]+)\] ((?:[\w.]+(?:Error|Exception|Interrupt)|[\w.]+Exit)\b.*)$")
_HYDRA_PID = re.compile(r"PID ([0-9]{1,10}) RUNNING AT (\S+)")
_HYDRA_EXIT = re.compile(r"EXIT STRING: (.+)$")
_HYDRA_CODE = re.compile(r"EXIT CODE: (\d+)")


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
    code = next((m for m in map(_HYDRA_CODE.search, lines) if m), None)
    if pid and not how and code:  # a rank on another host: its proxy reports the signal as the exit code
        number = int(code.group(1))
        number = number - 128 if number > 128 else number
        killed = f" (signal {signal.Signals(number).name}?)" if number in (6, 7, 9, 11, 15) else ""
        return f"a rank (pid {pid.group(1)}) on {pid.group(2)} ended: exit code {code.group(1)}{killed}"
    if pid:
        return f"a rank (pid {pid.group(1)}) on {pid.group(2)} ended: {how.group(1) if how else 'bad termination'}"
    return ""


@dataclass(frozen=True)
class Outcome:
    state: JobState
    retryable: bool
    message: str
    outcome: str  # the attempt record's word: succeeded, cancelled, failed, nan, bad-input, out-of-memory, hung, lost, ...


def classify(exit: Exit, *, cancel_requested: bool, final_checkpoint_step: int | None,
             worker_event: WorkerEvent, failure: WorkerFailure | None, tail: str, worker_message: str = "",
             log_name: str = "the log", killed: tuple[str, str] | None = None,
             last_checkpoint_step: int | None = None) -> Outcome:
    """`worker_event`/`worker_message`: rank 0's last event; `failure`: the first failure a rank reported;
    `tail`: the end of the attempt's log; `killed`: (outcome word, why) when the coordinator stopped it."""
    tail_text = f"\nlast lines of {log_name}:\n{tail}" if tail else ""
    code = exit.code

    if (code == 0 or code is None) and worker_event is WorkerEvent.FINISHED and final_checkpoint_step is not None:
        return Outcome(JobState.SUCCEEDED, False, f"finished at step {final_checkpoint_step}", "succeeded")
    if cancel_requested:
        saved = f"; last checkpoint at step {last_checkpoint_step}" if last_checkpoint_step is not None else ""
        return Outcome(JobState.CANCELLED, False, f"cancelled on request ({exit.describe()}){saved}", "cancelled")
    cause = failure.headline() if failure is not None else headline(tail)
    if killed is not None:  # the coordinator itself stopped this attempt
        said = f"; {cause}" if cause else ""
        return Outcome(JobState.FAILED, True, f"{killed[1]} ({exit.describe()}){said}{tail_text}", killed[0])
    if failure is not None:
        word = _OUTCOME_OF_CAUSE.get(failure.cause, "failed")
        cause = cause or failure.cause.name.lower().replace("_", " ")
        if not failure.retryable:
            return Outcome(JobState.FAILED, False, f"{cause} ({exit.describe()}); not retried{tail_text}", word)
        if failure.rank is None:  # a report from before typed failures: its message names no rank
            return Outcome(JobState.FAILED, True, f"{exit.launcher} failed with {exit.describe()}: {cause}{tail_text}", word)
        return Outcome(JobState.FAILED, True, f"{cause} ({exit.describe()}){tail_text}", word)
    if code == 3:
        return Outcome(JobState.FAILED, False, f"loss became NaN or infinite ({exit.describe()}); not retried"
                                               f"{tail_text}", "nan")
    if code == 2:
        return Outcome(JobState.FAILED, False, f"bad spec or data ({exit.describe()}); not retried{tail_text}",
                       "bad-input")
    if code == 4 or worker_event is WorkerEvent.STOPPED:
        return Outcome(JobState.FAILED, True, f"workers stopped early without a cancel request ({exit.describe()}; "
                                              f"a SIGTERM from outside the coordinator?){tail_text}", "stopped")
    if code == 0:
        return Outcome(JobState.FAILED, True,
                       f"workers exited with exit code 0 but no final checkpoint was uploaded{tail_text}", "failed")
    if code is None:
        said = (f"; rank 0 last reported: {worker_event.name.lower()} {worker_message}".rstrip()
                if worker_event is not WorkerEvent.UNSPECIFIED else "")
        return Outcome(JobState.FAILED, True, f"workers ended while not supervised ({exit.describe()}){said}{tail_text}",
                       "lost")
    said = f": {cause}" if cause else ""
    return Outcome(JobState.FAILED, True, f"{exit.launcher} failed with {exit.describe()}{said}{tail_text}", "failed")


@dataclass(frozen=True)
class Decision:
    """What the job does after an attempt: its next state, the message, and when to relaunch (RESTARTING)."""
    state: JobState
    message: str
    delay_s: float = 0.0


MAX_RESTART_DELAY_S = 3600.0  # the doubling stops here: an hour between relaunches at most


def restart_delay(backoff_s: float, restarts: int) -> float:
    """backoff_s·2^restarts, at most MAX_RESTART_DELAY_S, for any restarts (2.0 ** 1100 would overflow)."""
    if backoff_s <= 0:
        return 0.0
    return min(MAX_RESTART_DELAY_S, backoff_s * 2.0 ** min(restarts, 64))


def decide(outcome: Outcome, *, attempt: int, restarts: int, max_restarts: int, backoff_s: float) -> Decision:
    """The restart policy: a retryable failure restarts while restarts are left, waiting backoff_s·2^restarts;
    past max_restarts (or not retryable) the job is FAILED with the last cause.
    The delay doubles up to MAX_RESTART_DELAY_S."""
    if outcome.state is not JobState.FAILED:
        return Decision(outcome.state, outcome.message)
    if outcome.retryable and restarts < max_restarts:
        delay = restart_delay(backoff_s, restarts)
        return Decision(JobState.RESTARTING,
                        f"attempt {attempt} failed, restart {restarts + 1} of {max_restarts} in {delay:.1f} s: "
                        f"{outcome.message}", delay)
    if outcome.retryable and restarts:
        return Decision(JobState.FAILED, f"attempt {attempt} failed and no restarts are left (max_restarts = "
                                         f"{max_restarts}): {outcome.message}")
    return Decision(JobState.FAILED, outcome.message)
