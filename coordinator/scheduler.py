"""Worker slots and the queue: which job starts when.

    pool = SlotPool.local_pool(os.cpu_count())        # or SlotPool([("node1", 4), ("node2", 4)])
    sched = Scheduler(store, pool, supervisor)        # supervisor: coordinator.supervision.supervisor.Supervisor
    sched.start()      # background thread: reap ended attempts, start queued jobs that fit
    sched.wake()       # after a submit or cancel, so the loop does not wait for its next tick

Order: higher `priority` first, first submitted first within a priority, strictly — when the job at
the head does not fit in the free slots, nothing behind it starts (no backfill), so a big job is never
starved by a stream of small ones. A job needing more slots than the pool has is refused at submission.

The scheduler knows slots and the queue, not processes or what an exit means: it asks the attempts'
supervisor through the narrow `Attempts` interface below. Pending jobs are QUEUED and RESTARTING ones,
in the same order.
"""
from __future__ import annotations

import logging
import threading
from typing import Protocol, Sequence

from coordinator.hosts import Allocation
from coordinator.states import JobState
from coordinator.store.records import JobRow
from coordinator.store.store import Store

log = logging.getLogger("gradmesh.scheduler")
UNLIMITED_SLOTS = 1 << 30


class Attempts(Protocol):
    """What the scheduler needs of whoever runs attempts."""

    def launch(self, job: JobRow, allocation: Allocation) -> bool:
        """Start an attempt on these slots; False when it did not start (the slots are then free again)."""

    def reap(self) -> list[Allocation]:
        """Settle the attempts that ended; returns the allocations they held."""

    def is_active(self, job_id: str) -> bool:
        """Whether an attempt of the job is running."""

    def ready(self, job: JobRow) -> bool:
        """Whether a pending job may start now (a RESTARTING job waits out its backoff, blocking no one)."""

    def tick(self) -> None:
        """Called every round (stops of cancelled jobs, the hang watch)."""


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

    @classmethod
    def unlimited(cls, name: str = "slurm") -> "SlotPool":
        """No limit of ours: an executor with its own queue (Slurm) decides when and where jobs run."""
        return cls([(name, UNLIMITED_SLOTS)])

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


class Scheduler:
    def __init__(self, store: Store, pool: SlotPool, attempts: Attempts, *, tick_s: float = 0.2, fleet=None):
        self.store = store
        self.pool = pool
        self.attempts = attempts
        self.fleet = fleet  # coordinator.fleet.fleet.Fleet: healthy hosts only, elastic sizes and grows (None: plain FIFO)
        self.tick_s = tick_s
        self._lock = threading.Lock()  # the pool's free slots
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

    def usage(self) -> list[tuple[str, int, int]]:
        """(host, slots, slots free) per host of the pool, read under the pool's lock (for the dashboard)."""
        with self._lock:
            return [(host, n, self.pool.free.get(host, 0)) for host, n in self.pool.capacity.items()]

    def reserve(self, allocation: Allocation) -> None:
        """Hold slots of an attempt that runs already (re-adopted after a coordinator restart)."""
        with self._lock:
            self.pool.reserve(allocation)

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
        for allocation in self.attempts.reap():
            with self._lock:
                self.pool.release(allocation)
        self.attempts.tick()
        self._start_pending()
        if self.fleet is not None:
            self.fleet.grow(self.pool, self._lock, self.attempts)

    def _start_pending(self) -> None:
        pending = scheduling_order(self.store.jobs_in(JobState.QUEUED, JobState.RESTARTING))
        # (a registered run is its user's to launch: never started here, even if a crash left it QUEUED)
        pending = [j for j in pending if not j.executor and not self.attempts.is_active(j.id) and self.attempts.ready(j)]
        if self.fleet is not None:  # the slots are taken in the plan, under the lock
            with self._lock:
                planned = self.fleet.plan(pending, self.pool)
        else:
            with self._lock:
                planned = [(job, self.pool.allocate(job.workers)) for job in plan_starts(pending, self.pool.available)]
        for job, allocation in planned:
            if allocation is None:  # cannot happen with plan_starts, but never launch without slots
                break
            try:
                started = self.attempts.launch(job, allocation)
            except Exception:
                log.exception("launching %s failed", job.id)
                started = False
            if not started:
                with self._lock:
                    self.pool.release(allocation)
