"""sbatch without a second job: a submission whose answer was lost is looked up by name before it is sent again.

    slurm_id = sbatch(argv, env, outage)     # the Slurm job id
    # ExecutorUnavailable: the request never reached slurmctld (connect failure): nothing to look for
    # AnswerLost: it may have ("Socket timed out on send/recv operation", sbatch killed at our timeout)
    handle = Unconfirmed(name, queue, why, resubmit=..., confirm=...)   # what the attempt watches meanwhile

Slurm's sbatch carries no request id, and slurmctld answers only after it made the job: when the answer is
lost, the job may exist. Submitting again could run the attempt twice (same name, same token). So the
attempt keeps its number, token and Slurm job name, and `Unconfirmed` reads the controller's jobs
(`scontrol show job`, every job it still holds: pending, running, or ended less than MinJobAge ago) for one
of that name. Found: that id is the attempt's, recorded as if sbatch had said it. Not found in a read that
began SETTLE_S after the failure (a controller too slow to answer may still be working on the request):
sbatch again, after the outage backoff. While the controller does not answer, nothing is decided.
"""
from __future__ import annotations

import logging
import re
import subprocess
import threading
import time
from typing import Callable, Mapping, Sequence

from coordinator.supervision.executors import ExecutorUnavailable, Handle
from coordinator.supervision.launcher import Exit
from coordinator.supervision.slurm_outage import Outage, is_controller_down

log = logging.getLogger("gradmesh.slurm")

SBATCH_TIMEOUT_S = 60.0
SETTLE_S = 5.0   # after a lost answer, how long a job of that name may take to show in the controller's reads
LAUNCHER = "the Slurm job"
# sbatch never got its request to a controller that would take it: connect() failed, or a standby said no
_NOT_SENT = re.compile(r"Unable to contact slurm controller|Connection refused|backup controller in standby", re.I)


class AnswerLost(OSError):
    """sbatch failed after its request may have reached slurmctld: the job may exist."""


def sbatch(argv: Sequence[str], env: Mapping[str, str], outage: Outage, timeout_s: float = SBATCH_TIMEOUT_S) -> str:
    """Run sbatch --parsable; the Slurm job id. ExecutorUnavailable: the controller was not reached (its
    outage noted); AnswerLost: it may have been; OSError: Slurm refused the job."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout_s, env=dict(env))
    except subprocess.TimeoutExpired:
        outage.failed(f"sbatch did not answer within {timeout_s:.0f} s")
        raise AnswerLost(f"sbatch did not answer within {timeout_s:.0f} s") from None
    said = done.stderr.strip() or done.stdout.strip()
    if done.returncode != 0 and is_controller_down(said):
        outage.failed(said)
        if _NOT_SENT.search(said):
            raise ExecutorUnavailable(outage.text(), outage.retry_in())
        raise AnswerLost(said.splitlines()[-1][:200])
    if done.returncode != 0:
        raise OSError(f"sbatch refused the job: {said}")
    if outage.recovered():
        log.warning("Slurm's controller answers again (sbatch)")
    return done.stdout.strip().split(";")[0]  # --parsable: "ID" or "ID;CLUSTER"


class Unconfirmed:
    """The handle of an attempt whose sbatch answer was lost, until its Slurm job is known: then every call
    goes to the handle `confirm` made. `queue` is the executor's SlurmQueue (lookup by name, its outage);
    `resubmit()` runs the same sbatch again; `confirm(slurm_id, how, submitted_at)` records the id."""

    def __init__(self, name: str, queue, why: str, *, resubmit: Callable[[], str],
                 confirm: Callable[[str, str, float], Handle], settle_s: float = SETTLE_S):
        self.name, self.queue, self.why = name, queue, why
        self._resubmit, self._confirm, self.settle_s = resubmit, confirm, settle_s
        self._since = time.monotonic()     # the last lost answer
        self._job: Handle | None = None
        self._exit: Exit | None = None
        self._stopping = False             # a stop asked: look, but never submit again
        self._step_ended: int | None = None
        self._lock = threading.Lock()

    def _resolve(self) -> None:
        if self._job is not None or self._exit is not None:
            return
        settled = time.monotonic() >= self._since + self.settle_s
        ok, found = self.queue.lookup(self.name, newer_than=self._since + (self.settle_s if settled else 0.0))
        if ok and found is not None:
            self._adopt(found.id, f"found by its name {self.name} (sbatch's answer was lost): Slurm job", 0.0)
        elif ok and settled and self._stopping:
            self._exit = Exit(-15, LAUNCHER, f"stopped before it reached Slurm: Slurm holds no job {self.name}")
        elif ok and settled and self.queue.outage.retry_in() == 0:
            log.warning("no Slurm job %s after sbatch's answer was lost (%s): submitting it again", self.name, self.why)
            started = time.monotonic()
            try:
                slurm_id = self._resubmit()
            except AnswerLost as lost:
                self.why, self._since = str(lost), time.monotonic()
                return
            except ExecutorUnavailable:
                return  # the request did not reach the controller: again after the outage's backoff
            except OSError as err:
                self._exit = Exit(None, LAUNCHER, f"submitted again after a lost answer, {err}")
                return
            self._adopt(slurm_id, "submitted again after a lost answer as Slurm job", started)

    def _adopt(self, slurm_id: str, how: str, submitted_at: float) -> None:
        self._job = self._confirm(slurm_id, how, submitted_at)
        if self._step_ended is not None and hasattr(self._job, "step_ended"):
            self._job.step_ended(self._step_ended)

    def poll(self) -> Exit | None:
        with self._lock:
            self._resolve()
            job = self._job
        return job.poll() if job is not None else self._exit

    def alive(self) -> bool:
        return self.poll() is None

    def where(self) -> str:
        return self._job.where() if self._job is not None else f"Slurm job {self.name} (its id not known yet)"

    def waiting(self) -> str | None:
        if self._job is not None:
            return self._job.waiting()
        down = self.queue.outage.text()
        return (f"{down + '; ' if down else ''}sbatch's answer was lost ({self.why}); looking for Slurm job "
                f"{self.name} before submitting it again")

    def trouble(self) -> str | None:
        job = self._job
        return getattr(job, "trouble", lambda: None)() if job is not None else self.queue.outage.text() or None

    def step_ended(self, exit_code: int) -> None:
        with self._lock:
            self._step_ended = exit_code
            job = self._job
        if job is not None and hasattr(job, "step_ended"):
            job.step_ended(exit_code)

    def stop(self, grace_s: float = 5.0) -> Exit:
        """Look for the job (never submit it again): stop it if found, else the attempt ends as stopped."""
        self._stopping = True
        while self.poll() is None and self._job is None:
            time.sleep(0.2)
        return self._job.stop(grace_s) if self._job is not None else self._exit  # type: ignore[return-value]
