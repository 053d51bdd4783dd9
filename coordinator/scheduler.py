"""Worker slots and the queue: which job starts when, and noticing when a running attempt ends.

    pool = SlotPool.local(os.cpu_count())            # or SlotPool([("node1", 4), ("node2", 4)])
    sched = Scheduler(store, pool, launch=core.launch_attempt, finish=core.finish_attempt)
    sched.start()      # background thread: reap finished attempts, start queued jobs that fit
    sched.wake()       # after a submit or cancel, so the loop does not wait for its next tick

Order: higher `priority` first, first submitted first within a priority, strictly — when the job at
the head does not fit in the free slots, nothing behind it starts (no backfill), so a big job is never
starved by a stream of small ones. A job needing more slots than the pool has is refused at submission.

The scheduler knows slots and processes, not what an exit means: `launch(job, allocation)` starts an
attempt and returns its `Running`; `finish(running, exit)` records the outcome; `ready(job)` says whether a
pending job may start now (a RESTARTING job waits out its backoff without blocking the queue); `on_tick()`
runs every round (cancel grace periods, the hang watchdog). All four are the core's (coordinator.jobs).
Pending jobs are QUEUED and RESTARTING ones, in the same order.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

from coordinator.launcher import Exit, WorkerProcess
from coordinator.states import JobState
from coordinator.store import JobRow, Store

log = logging.getLogger("gradmesh.scheduler")

Allocation = list[tuple[str, int]]


class SlotPool:
    """Free slots per host. `local` pools run every rank on this machine (mpirun gets no host list)."""

    def __init__(self, hosts: Sequence[tuple[str, int]], local: bool = False):
        if not hosts or any(n < 1 for _, n in hosts):
            raise ValueError("a slot pool needs at least one host with at least one slot")
        self.capacity = {h: n for h, n in hosts}
        self.free = dict(self.capacity)
        self.local = local

    @classmethod
    def local_pool(cls, slots: int) -> "SlotPool":
        return cls([("localhost", slots)], local=True)

    @property
    def total(self) -> int:
        return sum(self.capacity.values())

    @property
    def available(self) -> int:
        return sum(self.free.values())

    def allocate(self, n: int) -> Allocation | None:
        """Take n slots, filling hosts in their listed order; None (nothing taken) when they do not fit."""
        if n > self.available:
            return None
        alloc: Allocation = []
        for host, free in self.free.items():
            take = min(free, n - sum(k for _, k in alloc))
            if take > 0:
                alloc.append((host, take))
        for host, k in alloc:
            self.free[host] -= k
        return alloc

    def reserve(self, alloc: Allocation) -> None:
        """Take exactly these slots (re-adopting a running job after a restart); may overcommit."""
        for host, k in alloc:
            self.free[host] = self.free.get(host, 0) - k

    def release(self, alloc: Allocation) -> None:
        for host, k in alloc:
            self.free[host] = self.free.get(host, 0) + k


def plan_starts(pending: Sequence[JobRow], free_slots: int) -> list[JobRow]:
    """The jobs to start now, given `pending` already in scheduling order: a prefix that fits."""
    chosen = []
    for job in pending:
        if job.workers > free_slots:
            break
        chosen.append(job)
        free_slots -= job.workers
    return chosen


def scheduling_order(jobs: Sequence[JobRow]) -> list[JobRow]:
    return sorted(jobs, key=lambda j: (-j.priority, j.seq))


@dataclass
class Running:
    job_id: str
    attempt: int
    process: WorkerProcess
    allocation: Allocation


class Scheduler:
    def __init__(self, store: Store, pool: SlotPool, *,
                 launch: Callable[[JobRow, Allocation], Running | None],
                 finish: Callable[[Running, Exit], None], on_tick: Callable[[], None] | None = None,
                 ready: Callable[[JobRow], bool] = lambda job: True, tick_s: float = 0.2):
        self.store = store
        self.pool = pool
        self._launch = launch
        self._finish = finish
        self._on_tick = on_tick  # e.g. signalling cancelled jobs whose grace period is over
        self._ready = ready      # e.g. a RESTARTING job waits out its backoff (and blocks no one meanwhile)
        self.tick_s = tick_s
        self.running: dict[str, Running] = {}
        self._lock = threading.RLock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gradmesh-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def wake(self) -> None:
        self._wake.set()

    def adopt(self, running: Running) -> None:
        with self._lock:
            self.pool.reserve(running.allocation)
            self.running[running.job_id] = running

    def get_running(self, job_id: str) -> Running | None:
        with self._lock:
            return self.running.get(job_id)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:  # a bug must not stop the scheduler; it is logged and the loop goes on
                log.exception("scheduler step failed")
            self._wake.wait(self.tick_s)
            self._wake.clear()

    def step(self) -> None:
        """One round: reap ended attempts (freeing slots), then start what fits."""
        self._reap()
        if self._on_tick is not None:
            self._on_tick()
        self._start_pending()

    def _reap(self) -> None:
        with self._lock:
            items = list(self.running.values())
        for run in items:
            exit = run.process.poll()
            if exit is None:
                continue
            try:
                self._finish(run, exit)
            finally:
                with self._lock:
                    self.running.pop(run.job_id, None)
                    self.pool.release(run.allocation)

    def _start_pending(self) -> None:
        pending = scheduling_order(self.store.jobs_in(JobState.QUEUED, JobState.RESTARTING))
        with self._lock:
            pending = [j for j in pending if j.id not in self.running and self._ready(j)]
            chosen = plan_starts(pending, self.pool.available)
        for job in chosen:
            with self._lock:
                alloc = self.pool.allocate(job.workers)
            if alloc is None:  # cannot happen with plan_starts, but never launch without slots
                break
            try:
                run = self._launch(job, alloc)
            except Exception:
                log.exception("launching %s failed", job.id)
                run = None
            with self._lock:
                if run is None:
                    self.pool.release(alloc)
                else:
                    self.running[job.id] = run
