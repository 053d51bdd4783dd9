"""How an attempt's end is settled: its outcome classified (coordinator.supervision.outcomes) and recorded, the hosts it
blames reported to the fleet, and its job moved on (SUCCEEDED, FAILED, or RESTARTING after a backoff).

    settlement = Settlement(store, signal, restart_after=supervisor_restart_after)
    settled = settlement.settle(run, exit, killed=None, resizing=None, fleet=fleet)   # False: retry at next reap
    settlement.fail("digits-1", "could not start mpirun: ...", attempt=1)

An attempt that ended is settled once. If recording fails (a store error, a bug), the job is still moved
on as a retryable failure, and if even that fails `settle` says False: the supervisor keeps the attempt on
its list and settles it again at the next reap, so no job is left RUNNING without a process.

It holds no state of its own: what the supervisor knew of the attempt (stopped on purpose, resizing) comes
in with each call, and when a restart is due goes back through `restart_after`, so the supervisor's state
stays behind its one lock.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from coordinator.events import ChangeSignal
from coordinator.supervision.launcher import Exit, log_tail
from coordinator.supervision.outcomes import Decision, Outcome, classify, decide
from coordinator.store.records import EXTERNAL, JobRow
from coordinator.supervision.running import Running, fault_policy
from coordinator.states import IllegalTransition, JobState
from coordinator.store.store import Store

if TYPE_CHECKING:
    from coordinator.fleet.fleet import Fleet

log = logging.getLogger("gradmesh.attempts")


class Settlement:
    def __init__(self, store: Store, signal: ChangeSignal, *, restart_after: Callable[[str, float], None]):
        self.store = store
        self.signal = signal
        self._restart_after = restart_after  # (job id, backoff s): when a RESTARTING job may launch again

    def settle(self, run: Running, exit: Exit, killed: tuple[str, str] | None, resizing: tuple[str, str] | None,
               fleet: Fleet | None = None) -> bool:
        """Record how the attempt ended and move its job on; False when even that failed (retried later).
        `killed`: (outcome, why) when the coordinator stopped it; `resizing`: (why, outcome) when it was stopped
        with a checkpoint to be relaunched (an elastic job growing, "resized"; a preemption, "preempted");
        `fleet`, when given, is told which hosts a failure blames."""
        try:
            self._record_end(run, exit, killed, resizing, fleet)
            return True
        except Exception as err:  # noqa: BLE001 - whatever broke, the job must not stay RUNNING
            if run.settle_failures == 0:
                log.exception("recording the end of %s attempt %d failed", run.job_id, run.attempt)
            cause = err
        try:
            self._fail_over(run, exit, cause)
            return True
        except Exception:  # noqa: BLE001
            # e.g. the disk is full: the attempt stays on the list and is settled again at every reap until the
            # store takes it, so the job is never left RUNNING with no process behind it once space is freed
            if run.settle_failures % 100 == 0:
                log.exception("%s attempt %d ended but the job could not be moved on; retrying at every reap",
                              run.job_id, run.attempt)
            run.settle_failures += 1
            return False

    def fail(self, job_id: str, message: str, attempt: int) -> None:
        """Mark the job FAILED (an attempt that could not start, or a run that can no longer be watched)."""
        try:
            self.store.transition(job_id, JobState.FAILED, message, attempt=attempt)
        except IllegalTransition:
            log.warning("could not mark %s FAILED (%s)", job_id, message)
        self.signal.changed()

    def _record_end(self, run: Running, exit: Exit, killed: tuple[str, str] | None, resizing: tuple[str, str] | None,
                    fleet: Fleet | None) -> None:
        job = self.store.get_job(run.job_id)
        attempt = self.store.attempt(run.job_id, run.attempt)
        if job is None or attempt is None:
            return
        ours = [c for c in self.store.checkpoints(job.id) if c.attempt == run.attempt]
        finals = [c.step for c in ours if c.is_final]
        log_path = Path(attempt.log_path)
        outcome = classify(exit, cancel_requested=job.cancel_requested,
                           final_checkpoint_step=max(finals) if finals else None,
                           worker_event=attempt.worker_event, worker_message=attempt.worker_message,
                           failure=attempt.failure, tail=log_tail(log_path), log_name=log_path.name, killed=killed,
                           last_checkpoint_step=max(c.step for c in ours) if ours else None)
        if run.end_note and outcome.state is not JobState.SUCCEEDED:
            outcome = dataclasses.replace(outcome, message=run.end_note + outcome.message)
        resized = resizing is not None and outcome.outcome == "stopped" and not job.cancel_requested
        if resized:  # the stop with a checkpoint we asked for (a resize, a preemption): relaunch it, no restart spent
            why, word = resizing
            saved = f" at step {max(c.step for c in ours)}" if ours else ""
            outcome = Outcome(JobState.FAILED, True, f"{why}; attempt {run.attempt} stopped with a checkpoint"
                                                     f"{saved}", word)
        paused = self._paused_at(job, outcome, ours)
        if paused:  # it stopped where it was told to pause (coordinator.store.pauses): it waits there, held
            outcome = Outcome(JobState.FAILED, True, f"paused at step {paused} with a checkpoint; waiting to be "
                                                     "released", "paused")
        unreachable: list[str] = []
        if outcome.state is JobState.FAILED and not resized and not paused and killed is None and fleet is not None:
            unreachable = fleet.attempt_failed(job.id, run.allocation, attempt.failure, log_tail(log_path, lines=40))
        if unreachable and outcome.retryable:  # it never ran there: relaunch without the host, no restart spent
            outcome = Outcome(JobState.FAILED, True, f"{', '.join(unreachable)} unreachable at launch, quarantined; "
                                                     f"relaunching without it, no restart spent ({outcome.message})",
                              "unreachable")
        self.store.end_attempt(job.id, run.attempt, exit_code=exit.code, outcome=outcome.outcome,
                               message=outcome.message)
        self._move_on(job, run, exit, outcome, resized=resized, free=bool(unreachable) and outcome.retryable,
                      paused=paused)

    def _paused_at(self, job: JobRow, outcome: Outcome, ours: list) -> int:
        """The step at which the attempt paused as its job was told to (0: it did not): it stopped on its own
        (no cancel) and its newest checkpoint is at the pause's step."""
        if outcome.outcome != "stopped" or job.cancel_requested or not ours:
            return 0
        pause = self.store.pause_of(job.id)
        newest = max(c.step for c in ours)
        return newest if pause is not None and pause.at_step and pause.at_step == newest else 0

    def _fail_over(self, run: Running, exit: Exit, cause: Exception) -> None:
        """The job's next state when its attempt's end could not be recorded: a retryable failure."""
        job = self.store.get_job(run.job_id)
        if job is None:
            return
        outcome = Outcome(JobState.FAILED, True, f"the coordinator could not record how attempt {run.attempt} ended "
                                                 f"({type(cause).__name__}: {cause}); {exit.describe()}", "unrecorded")
        self._move_on(job, run, exit, outcome)
        try:
            self.store.end_attempt(job.id, run.attempt, exit_code=exit.code, outcome=outcome.outcome,
                                   message=outcome.message)
        except Exception:  # noqa: BLE001 - the job moved on; the attempt record is secondary
            log.exception("could not record the end of %s attempt %d", job.id, run.attempt)

    def _move_on(self, job: JobRow, run: Running, exit: Exit, outcome: Outcome, resized: bool = False,
                 free: bool = False, paused: int = 0) -> None:
        """`resized`: stopped on purpose to grow; `free`: the launcher could not reach a host. Either way the
        job is relaunched at once without spending a restart. `paused`: held at that step until released."""
        fault = fault_policy(job)
        # a registered run's launcher owns its restarts
        max_restarts = 0 if job.executor == EXTERNAL else fault.get("max_restarts", 2)
        decision = decide(outcome, attempt=run.attempt, restarts=job.restarts,
                          max_restarts=max_restarts, backoff_s=fault.get("backoff_s", 1.0))
        if resized or free:
            decision = Decision(JobState.RESTARTING, outcome.message)
        if paused:  # held until released (the hold in memory first: a release may follow the record at once)
            decision = Decision(JobState.RESTARTING, outcome.message, math.inf)
        if decision.state is JobState.RESTARTING:
            self._restart_after(job.id, decision.delay_s)
            if paused:
                self.store.hold(job.id)
            if run.waiting:  # ended in Slurm's queue, before any rank ran: the job stays QUEUED (RESTARTING)
                self.store.set_message(job.id, decision.message, restarted=True)
                self.signal.changed()
                return
        try:
            self.store.transition(job.id, decision.state, decision.message, attempt=run.attempt,
                                  expect=[JobState.RUNNING, JobState.QUEUED, JobState.RESTARTING],
                                  count_restart=not (resized or free or paused))
        except IllegalTransition:
            log.warning("job %s attempt %d ended (%s) but the job is no longer RUNNING", job.id, run.attempt,
                        exit.describe())
        self.signal.changed()
