"""Slurm's controller away for a while: not a job failure. What gradmesh does while slurmctld does not answer.

    outage = Outage()
    outage.failed("sbatch: error: ... Unable to contact slurm controller (connect failure)")
    outage.down                # True until a Slurm command answers again
    outage.text()              # "Slurm controller unreachable since 12:31:05 (sbatch: ...); retrying"
    outage.retry_in()          # seconds until the next try: 1, 2, 4 ... 30, for as long as it is away
    outage.recovered()         # a command answered: True if it was down (the outage is over)
    is_controller_down("slurm_load_jobs error: Unable to contact slurm controller")   → True

Under an outage (measured on Debian's Slurm 22.05: every command fails after about 9 s with "Unable to
contact slurm controller (connect failure)"):
- a submission (sbatch) is not a launch failure: the job stays QUEUED (RESTARTING) without spending a
  restart, its message says since when the controller is away, and sbatch is tried again with this
  backoff (doubling from 1 s up to 30 s) for as long as it takes; when sbatch's request may have reached
  the controller (its answer lost), the attempt stays and its job is looked up by name before sbatch is run
  again (coordinator.supervision.slurm_submit);
- a running attempt is taken to run on (its ranks need no controller to train and report), and its message
  says the controller is away; an attempt that ended meanwhile is settled at the first answer after it;
- a stop (scancel) is retried until the controller takes it.
What the controller alone can do waits for it: Slurm records a job's end only through slurmctld, and srun's
--kill-on-bad-exit asks slurmctld to end a step whose rank died. So gradmesh's batch step ends the step
itself when srun says a rank died (worker/slurm_step.py), and the ranks' hang watchdog stays the backstop.
"""
from __future__ import annotations

import re
import threading
import time

# What Slurm's commands say when slurmctld is not there (or not answering), as opposed to a refusal.
_DOWN = re.compile(r"Unable to contact slurm controller|Socket timed out on send/recv|Zero Bytes were transmitted"
                   r"|Communication connection failure|Slurm backup controller in standby mode|Connection refused"
                   r"|did not answer within", re.I)

FIRST_RETRY_S = 1.0
MAX_RETRY_S = 30.0


def is_controller_down(text: str) -> bool:
    return bool(_DOWN.search(text))


class Outage:
    """Whether Slurm's controller answers, since when it does not, and when to try again. Thread-safe."""

    def __init__(self, wall=time.time, clock=time.monotonic, first_s: float = FIRST_RETRY_S,
                 cap_s: float = MAX_RETRY_S):
        self._wall, self._clock = wall, clock
        self.first_s, self.cap_s = first_s, cap_s
        self._lock = threading.Lock()
        self.since = 0.0          # unix time of the first failure of this outage; 0 while the controller answers
        self.why = ""
        self._tries = 0
        self._next = 0.0          # monotonic time of the next try

    @property
    def down(self) -> bool:
        return self.since > 0

    def failed(self, why: str) -> None:
        with self._lock:
            if not self.since:
                self.since = self._wall()
            self.why = why.strip().splitlines()[-1][:200] if why.strip() else "no answer"
            self._tries += 1
            self._next = self._clock() + min(self.first_s * 2 ** min(self._tries - 1, 30), self.cap_s)

    def recovered(self) -> bool:
        with self._lock:
            was = self.since > 0
            self.since, self.why, self._tries, self._next = 0.0, "", 0, 0.0
            return was

    def retry_in(self) -> float:
        """Seconds until the next try is due (0 when the controller answers, or the wait is over)."""
        with self._lock:
            return max(0.0, self._next - self._clock()) if self.since else 0.0

    def text(self) -> str:
        with self._lock:
            if not self.since:
                return ""
            when = time.strftime("%H:%M:%S", time.localtime(self.since))
            return f"Slurm controller unreachable since {when} ({self.why}); retrying"
