"""Worker slots and the queue: which job starts when.

    pool = SlotPool.local_pool(os.cpu_count())        # or SlotPool([("node1", 4), ("node2", 4)])
    sched = Scheduler(store, pool, supervisor)        # supervisor: coordinator.supervision.supervisor.Supervisor
    sched.start()      # background thread: reap ended attempts, start queued jobs that fit
    sched.wake()       # after a submit or cancel, so the loop does not wait for its next tick

Order: higher `priority` first; within a priority, fair share between the jobs' owners, each user's
`max_slots` never exceeded, and backfill: a job that does not fit does not block smaller ones behind it,
until it has waited `reserve_after_s` — then it holds a reservation and nothing behind it starts until it
has (coordinator.team.fairshare decides, coordinator.fleet.placement places). With `preempt`, a job that
does not fit may stop running jobs of lower priority at a step boundary with a checkpoint; they requeue
(RESTARTING, no restart spent) and continue from it. A job needing more slots than the pool has is refused
at submission.

The scheduler knows slots and the queue, not processes or what an exit means: it asks the attempts'
supervisor through the narrow `Attempts` interface below. Pending jobs are QUEUED and RESTARTING ones.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Protocol, Sequence

from coordinator.fleet import placement
from coordinator.hosts import Allocation
from coordinator.states import JobState
from coordinator.store.records import JobRow
from coordinator.store.store import Store
from coordinator.team import fairshare
from coordinator.team.policy import TeamPolicy

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

    def running_allocations(self) -> dict[str, Allocation]:
        """The slots every running attempt holds, by job id."""

    def request_resize(self, job_id: str, why: str, wait_s: float = 60.0, outcome: str = "resized") -> bool:
        """Stop a job with a checkpoint and requeue it without spending a restart (a preemption here)."""

    def stopping(self) -> set[str]:
        """The jobs being stopped that way."""


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


def scheduling_order(jobs: Sequence[JobRow]) -> list[JobRow]:
    """Priority, then submission: the order of the queue before fair share reorders it within a priority."""
    return sorted(jobs, key=lambda j: (-j.priority, j.seq))


def _whole_pool(job: JobRow, capacity: int) -> int | None:
    return job.workers if capacity >= job.workers else None


class Scheduler:
    def __init__(self, store: Store, pool: SlotPool, attempts: Attempts, *, tick_s: float = 0.2, fleet=None,
                 policy: TeamPolicy = TeamPolicy(), max_slots=lambda: {}):
        self.store = store
        self.pool = pool
        self.attempts = attempts
        self.fleet = fleet  # coordinator.fleet.fleet.Fleet: healthy hosts only, elastic sizes and grows (None: every host)
        self.policy = policy
        self.max_slots = max_slots  # () -> {user: cap}: the users' --max-slots (coordinator.team.accounts)
        self.tick_s = tick_s
        self._lock = threading.Lock()  # the pool's free slots
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._preempting: dict[str, str] = {}  # job stopped to make room -> the job it makes room for
        self._past: dict[str, float] = {}      # user -> recent slot-seconds, decayed (fair share's tie-break)
        self._past_at = time.monotonic()

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
        running = self._running()
        self._account(running)
        stopping = self.attempts.stopping()
        self._preempting = {v: for_job for v, for_job in self._preempting.items() if v in stopping}
        with self._lock:  # the slots are taken in the plan, under the lock
            placer = (self.fleet.placer(self.pool) if self.fleet is not None else
                      placement.Placer(self.pool.capacity, self.pool.free, set(self.pool.capacity), _whole_pool))
            decision, waits, candidates = self._decide(pending, running, placer)
            planned = [(job, placer.taken[job.id]) for job in pending if job.id in decision.started]
            for _, allocation in planned:
                self.pool.reserve(allocation)
            free = placement.usable_slots(self.pool.free, placer.usable)
        if self.fleet is not None:
            self.fleet.tell(pending, waits)
        planned.sort(key=lambda pair: decision.started.index(pair[0].id))
        for job, allocation in planned:
            try:
                started = self.attempts.launch(job, allocation)
            except Exception:
                log.exception("launching %s failed", job.id)
                started = False
            if not started:
                with self._lock:
                    self.pool.release(allocation)
        if self.policy.preempt and not self._preempting:
            self._preempt(decision, candidates, running, free)

    def slots_by_user(self) -> dict[str, int]:
        """The slots each user's running jobs hold now (ListUsers shows them)."""
        used: dict[str, int] = {}
        for job, slots in self._running():
            used[job.owner] = used.get(job.owner, 0) + slots
        return used

    def _running(self) -> list[tuple[JobRow, int]]:
        """The jobs whose attempts hold slots, with how many."""
        held = {job_id: sum(n for _, n in alloc) for job_id, alloc in self.attempts.running_allocations().items()}
        if not held:
            return []
        rows = self.store.jobs_in(JobState.RUNNING, JobState.QUEUED, JobState.RESTARTING)
        return [(j, held[j.id]) for j in rows if j.id in held]

    def _account(self, running: Sequence[tuple[JobRow, int]]) -> None:
        """Add the slot-seconds since the last round to each user's recent usage, after decaying it (kept in
        memory: a restarted coordinator starts everyone afresh)."""
        now = time.monotonic()
        dt, self._past_at = now - self._past_at, now
        decay = 0.5 ** (dt / self.policy.usage_half_life_s)
        self._past = {user: v * decay for user, v in self._past.items() if v * decay > 1e-3}
        for job, slots in running:
            self._past[job.owner] = self._past.get(job.owner, 0.0) + slots * dt

    def _decide(self, pending: Sequence[JobRow], running, placer: placement.Placer):
        used: dict[str, int] = {}
        for job, slots in running:
            used[job.owner] = used.get(job.owner, 0) + slots
        waits: dict[str, str] = {}
        candidates: dict[str, tuple[JobRow, fairshare.Candidate]] = {}
        for job in pending:
            size = placer.size(job)
            lacking = placer.lacking(job, size)
            if lacking is not None and size is None:
                waits[job.id] = lacking   # not a matter of waiting for other jobs: the usable hosts cannot hold it
                continue
            candidates[job.id] = (job, fairshare.Candidate(job.id, job.owner, job.priority, job.seq, size,
                                                           job.created))
        decision = fairshare.plan([c for _, c in candidates.values()], used, shares=self.policy.share,
                                  max_slots=self.max_slots(), reserve_after_s=self.policy.reserve_after_s,
                                  now=time.time(), place=lambda c: placer.take(candidates[c.job_id][0], c.slots),
                                  reserved=set(self._preempting.values()), past=self._past)
        for job_id in decision.unplaced:
            job, c = candidates[job_id]
            lacking = placer.lacking(job, c.slots)
            if lacking is not None:
                waits[job_id] = lacking
        return decision, {**decision.waits, **waits}, candidates

    def _preempt(self, decision: fairshare.Decision, candidates, running, free: int) -> None:
        """Make room for the first job that did not fit by stopping running jobs of lower priority."""
        for job_id in decision.unplaced:
            job, c = candidates[job_id]
            others = [fairshare.RunningJob(j.id, j.owner, j.priority, n, j.started) for j, n in running
                      if j.state is JobState.RUNNING]
            chosen = fairshare.victims(c, free, others)
            if not chosen:
                continue
            for victim in chosen:
                why = f"preempted by job {job.id} (priority {job.priority})"
                if self.attempts.request_resize(victim, why, outcome="preempted"):
                    self._preempting[victim] = job.id
            return
