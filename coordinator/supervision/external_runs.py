"""Runs their users launched with `mpirun` themselves and registered (executor "external", worker.register):
this coordinator never launches, restarts or kills them, but watches their progress, and a run that stops
making progress for its hang timeout (at least EXTERNAL_SILENCE_S) ends FAILED.

    external = ExternalRuns(store, settlement, settle=supervisor_settle)
    external.track(job)                   # registered (or found RUNNING after a coordinator restart)
    external.watch.progress(job.id, step) # from every ReportProgress
    external.end(job.id, attempt, exit)   # its rank 0 said it exits (or a rank reported a failure)
    external.fail_silent()                # each scheduler round

Its end goes through the supervisor's own settling (`settle`), as a launched attempt's does, so a cancel
asked of it is cleared from the supervisor's state the same way.
"""
from __future__ import annotations

from typing import Callable

from coordinator.supervision.executors import Ended
from coordinator.supervision.launcher import Exit
from coordinator.store.records import JobRow
from coordinator.supervision.running import Running, hang_timeout_s
from coordinator.supervision.settlement import Settlement
from coordinator.states import JobState
from coordinator.store.store import Store
from coordinator.supervision.watchdog import ProgressWatch

EXTERNAL_SILENCE_S = 120.0  # a registered run that makes no progress this long (or its hang_timeout_s) is FAILED


class ExternalRuns:
    def __init__(self, store: Store, settlement: Settlement, *, settle: Callable[[Running, Exit], bool]):
        self.store = store
        self.settlement = settlement
        self._settle = settle
        self.watch = ProgressWatch()

    def track(self, job: JobRow) -> None:
        """Watch a registered run's progress from now on."""
        self.watch.started(job.id, max(hang_timeout_s(job), EXTERNAL_SILENCE_S))

    def end(self, job_id: str, attempt: int, exit: Exit) -> None:
        """Settle a registered run: its rank 0 said it exits (or a rank reported a failure)."""
        self.watch.forget(job_id)
        self._settle(Running(job_id, attempt, Ended(exit), []), exit)

    def fail_silent(self) -> None:
        """Mark FAILED every RUNNING registered run that has been silent too long."""
        for job_id, why in self.watch.overdue():
            job = self.store.get_job(job_id)
            if job is None or job.state is not JobState.RUNNING:
                continue
            message = (why.replace("its process group was killed", "marked FAILED: its launcher owns its processes")
                       + " (a run registered from outside the coordinator)")
            self.store.end_attempt(job_id, job.attempts, exit_code=None, outcome="lost", message=message)
            self.settlement.fail(job_id, message, job.attempts)
