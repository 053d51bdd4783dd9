"""The coordinator's hang detector: a running attempt that makes no progress for `hang_timeout_s` is hung.

    watch = ProgressWatch()
    watch.started("job-1", timeout_s=60)           # at launch (or re-adoption)
    watch.progress("job-1", step=120)              # from every ReportProgress
    for job_id, message in watch.overdue(): ...    # kill its process group, restart it

Progress means the step advanced or rank 0 reported an event ("started", ...). A heartbeat with the same
step is NOT progress: rank 0's reporting thread keeps beating while its training thread is stuck in a
collective waiting for a stopped rank, and that is exactly the hang to catch. Each job is reported once.

Start-up: until its first real step (a step past the first one it reported: rank 0 reports the step it
starts or resumes at right after fetching the spec, before loading data and building the model), a job is
measured against a bounded start-up allowance from its launch, `max(startup_s, hang_timeout_s)`, not
against `hang_timeout_s` from its last report. Starting Python and MPI and loading data on a busy machine
takes longer than a short hang_timeout_s, and a job must not spend its restarts before it ever trained.
A `grace` lets the ranks' own collective watchdog, which names the silent ranks and so the host to blame,
speak first: this watch is the backstop.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Callable

STARTUP_S = 60.0  # the start-up allowance: from launch to the first real step


@dataclass
class _Watched:
    timeout_s: float
    started: float          # when the attempt was launched (or re-adopted)
    last: float             # the last progress
    step: int = -1          # the highest step reported; -1 before any report
    first: int | None = None  # the first step reported (where training starts or resumes)
    reported: bool = False

    @property
    def starting(self) -> bool:
        return self.first is None or self.step <= self.first


class ProgressWatch:
    def __init__(self, clock=time.monotonic, startup_s: float = STARTUP_S,
                 grace: Callable[[float], float] = lambda t: 0.0):
        self._clock = clock
        self.startup_s = startup_s
        self._grace = grace  # seconds added to a job's timeout before it counts as overdue
        self._lock = threading.Lock()
        self._jobs: dict[str, _Watched] = {}

    def started(self, job_id: str, timeout_s: float) -> None:
        now = self._clock()
        with self._lock:
            self._jobs[job_id] = _Watched(timeout_s, now, now)

    def progress(self, job_id: str, step: int, event: bool = False) -> None:
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is None:
                return
            if entry.first is None:
                entry.first = step
            if step > entry.step or event:
                entry.last, entry.step = self._clock(), max(step, entry.step)

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def overdue(self) -> list[tuple[str, str]]:
        now = self._clock()
        found = []
        with self._lock:
            for job_id, entry in self._jobs.items():
                if entry.reported:
                    continue
                grace = self._grace(entry.timeout_s)
                if entry.starting:
                    allowance = max(entry.timeout_s, self.startup_s)
                    if now - entry.started > allowance + grace:
                        entry.reported = True
                        where = (f"at step {entry.step}" if entry.step >= 0 else "and no report") + \
                            f" before its first step (start-up allowance {allowance:g} s)"
                        found.append((job_id, f"no step for {now - entry.started:.0f} s {where}; its process "
                                              f"group was killed"))
                elif now - entry.last > entry.timeout_s + grace:
                    entry.reported = True
                    found.append((job_id, f"no progress for {now - entry.last:.0f} s at step {entry.step} "
                                          f"(hang_timeout_s = {entry.timeout_s:g}); its process group was killed"))
        return found
