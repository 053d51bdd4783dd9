"""Ended jobs deleted once they are old enough: `gradmesh serve --delete-ended-after 30d` (off by default).

    retention = Retention(jobs, store, keep_s=30 * 86400)   # jobs: coordinator.jobs.operations.Jobs
    retention.start()        # a thread: every `period_s`, delete what ended more than keep_s ago
    retention.sweep()        # one pass now; the ids it deleted
    retention.stop()

A shared coordinator keeps every job's metrics, logs and checkpoints until someone deletes them; with a
retention set, a job SUCCEEDED, FAILED or CANCELLED longer ago than that goes the way `gradmesh delete`
takes it (Jobs.delete: records and files, crash-safely). Jobs that have not ended are never touched.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from coordinator.errors import GradmeshError

log = logging.getLogger("gradmesh.retention")
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """Seconds from "90", "90s", "45m", "12h" or "30d"; ValueError naming what is accepted."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in UNITS else (raw, "s")
    try:
        seconds = float(number) * UNITS[unit]
    except ValueError:
        seconds = float("nan")
    if not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"{text!r} is not a duration: a positive number of seconds, or of minutes, hours or "
                         "days written 45m, 12h, 30d")
    return seconds


class Retention:
    def __init__(self, jobs, store, keep_s: float, *, period_s: float | None = None,
                 clock: Callable[[], float] = time.time):
        if not keep_s > 0:
            raise ValueError("jobs must be kept for a positive time")
        self.jobs, self.store, self.keep_s, self._clock = jobs, store, keep_s, clock
        # often enough that a job outlives its term by at most a tenth of it, and never more than a minute
        self.period_s = period_s if period_s is not None else min(60.0, keep_s / 10)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sweep(self) -> list[str]:
        deleted = []
        now = self._clock()
        for job_id, ended in self.store.ended_before(now - self.keep_s):
            try:
                gone = self.jobs.delete(job_id)
            except GradmeshError as err:  # resumed or deleted meanwhile, or its ranks still stopping: next pass
                log.info("job %s not deleted by retention yet: %s", job_id, err)
                continue
            deleted.append(job_id)
            log.info("deleted job %s, ended %.1f h ago (retention %.1f h): %d checkpoint(s), %d file(s), "
                     "%.1f MiB freed", job_id, (now - ended) / 3600, self.keep_s / 3600, gone.checkpoints,
                     gone.files, gone.bytes_freed / (1 << 20))
        return deleted

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gradmesh-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:  # a bug (or a full disk) must not end retention for good: logged, tried again
                log.exception("retention sweep failed")
            self._stop.wait(self.period_s)
