"""The coordinator's hang detector: a running attempt that makes no progress for `hang_timeout_s` is hung.

    watch = ProgressWatch()
    watch.started("job-1", timeout_s=60)           # at launch (or re-adoption)
    watch.progress("job-1", step=120)              # from every ReportProgress
    for job_id, message in watch.overdue(): ...    # kill its process group, restart it

Progress means the step advanced or rank 0 reported an event ("started", ...). A heartbeat with the same
step is NOT progress: rank 0's reporting thread keeps beating while its training thread is stuck in a
collective waiting for a stopped rank, and that is exactly the hang to catch. Each job is reported once.
Until its first progress a job gets at least `startup_s` (starting Python, MPI and loading data on a busy
machine can take longer than a short hang_timeout_s). A `grace` lets the ranks' own collective watchdog,
which names the silent ranks and so the host to blame, speak first: this watch is the backstop.
"""
from __future__ import annotations

import threading
import time
from typing import Callable


class ProgressWatch:
    def __init__(self, clock=time.monotonic, startup_s: float = 30.0, grace: Callable[[float], float] = lambda t: 0.0):
        self._clock = clock
        self.startup_s = startup_s
        self._grace = grace  # seconds added to a job's timeout before it counts as overdue
        self._lock = threading.Lock()
        self._jobs: dict[str, list] = {}  # job id → [timeout_s, last progress time, step, reported]

    def started(self, job_id: str, timeout_s: float) -> None:
        with self._lock:
            self._jobs[job_id] = [timeout_s, self._clock(), -1, False]

    def progress(self, job_id: str, step: int, event: bool = False) -> None:
        with self._lock:
            entry = self._jobs.get(job_id)
            if entry is not None and (step > entry[2] or event):
                entry[1], entry[2] = self._clock(), max(step, entry[2])

    def forget(self, job_id: str) -> None:
        with self._lock:
            self._jobs.pop(job_id, None)

    def overdue(self) -> list[tuple[str, str]]:
        now = self._clock()
        found = []
        with self._lock:
            for job_id, entry in self._jobs.items():
                timeout_s, last, step, reported = entry
                limit = (timeout_s if step >= 0 else max(timeout_s, self.startup_s)) + self._grace(timeout_s)
                if not reported and now - last > limit:
                    entry[3] = True
                    where = f"at step {step}" if step >= 0 else "before its first report"
                    found.append((job_id, f"no progress for {now - last:.0f} s {where} (hang_timeout_s = "
                                          f"{timeout_s:g}); its process group was killed"))
        return found
