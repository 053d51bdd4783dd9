"""The hosts as the scheduler and the supervisor see them: health, placement and elastic resizes together.

    fleet = Fleet(store, signal, HostHealth(pool hosts, failures=2, window_s=600, cooldown_s=300))
    placer = fleet.placer(pool)                  # under the pool's lock: where jobs would go (placement.Placer)
    fleet.tell(pending, waits)                   # why each pending job waits, in its message
    fleet.grow(pool, attempts)                   # elastic jobs below `workers` whose slots came back: resize
    fleet.attempt_failed(job_id, allocation, failure, tail)   # the supervisor, when an attempt failed:
                                                 # → the hosts the launcher could not reach (quarantined at once)
    HostOps(fleet, usage=scheduler.usage, wake=scheduler.wake)   # ListHosts / DrainHost / UndrainHost

The decisions are the pure ones of coordinator.fleet.placement (where, what a failure blames) and
coordinator.fleet.elastic (how many ranks, when to grow); this module holds them to the store: a job that waits
for hosts says so in its message (written once per change, not every round), and a blamed host's failure
counts in coordinator.fleet.health.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Sequence

from coordinator.fleet import elastic, placement
from coordinator.events import ChangeSignal
from coordinator.errors import InvalidArgument, NotFound
from coordinator.fleet.health import HostHealth, HostState, HostStatus, UnknownHost
from coordinator.hosts import Allocation, format_hosts
from coordinator.store.records import JobRow
from coordinator.reports import WorkerFailure
from coordinator.states import JobState
from coordinator.store.store import Store

log = logging.getLogger("gradmesh.fleet")


@dataclass(frozen=True)
class HostView:
    status: HostStatus
    free: int


class Fleet:
    def __init__(self, store: Store, signal: ChangeSignal, health: HostHealth):
        self.store = store
        self.signal = signal
        self.health = health
        self._said: dict[str, str] = {}   # job id → the waiting message last written
        for host in store.drained_hosts():   # an operator's drain outlives a restart
            try:
                health.drain(host)
            except UnknownHost:
                log.warning("host %s was drained but is not in the pool now; the drain stays recorded and "
                            "holds again if it comes back", host)

    # ------------------------------------------------------------------ scheduler side

    def usable(self) -> set[str]:
        return {s.host for s in self.health.status() if s.usable}

    def why_not(self, host: str) -> str:
        for s in self.health.status():
            if s.host == host:
                if s.state is HostState.QUARANTINED:
                    return f"quarantined until {time.strftime('%H:%M:%S', time.localtime(s.returns_at))}"
                return s.state.value
        return "unknown"

    def placer(self, pool) -> placement.Placer:
        """Call under the pool's lock: a placer over the pool's free slots on the usable hosts."""
        return placement.Placer(pool.capacity, pool.free, self.usable(), elastic.job_launch_size, why_not=self.why_not)

    def tell(self, pending: Sequence[JobRow], waits: dict[str, str]) -> None:
        """Write why each pending job waits into its message, once per change (not every round)."""
        for job in pending:
            message = waits.get(job.id)
            if message is None:
                self._said.pop(job.id, None)
            elif self._said.get(job.id) != message:
                self._said[job.id] = message
                if self.store.note(job.id, message, (JobState.QUEUED, JobState.RESTARTING)):
                    self.signal.changed()

    def grow(self, pool, lock, attempts) -> None:
        """Ask every running elastic job below its `workers` to grow back when usable slots make up the rest."""
        running = getattr(attempts, "running_allocations", None)
        if running is None:
            return
        usable = self.usable()
        for job_id, alloc in running().items():
            job = self.store.get_job(job_id)
            if job is None or job.state is not JobState.RUNNING or not elastic.is_elastic(job):
                continue
            ranks = placement.ranks_of(alloc)
            with lock:
                free = placement.usable_slots(pool.free, usable)
            own = sum(k for h, k in alloc if h in usable)
            if elastic.should_grow(ranks, job.workers, free, own):
                attempts.request_resize(job_id, f"growing from {ranks} to {job.workers} ranks: {free} slot(s) "
                                                f"free again on usable hosts")

    # ------------------------------------------------------------------ supervisor side

    def attempt_failed(self, job_id: str, allocation: Allocation, failure: WorkerFailure | None,
                       tail: str) -> list[str]:
        """Count the failure against the hosts it blames. A host the launcher could not reach is quarantined at
        once (returned: the attempt never ran there, so it does not count against the job)."""
        unreachable = [h for h, _ in placement.unreachable_at_launch(allocation, tail)]
        for host, why in placement.blamed_hosts(allocation, failure, tail):
            count = self.health.quarantine if host in unreachable else self.health.failed
            quarantined = count(host, f"{job_id}: {why}")
            log.warning("host %s: failure of %s on %s counted%s: %s", host, job_id, format_hosts(allocation),
                        " (quarantined)" if quarantined else "", why)
            self.signal.changed()
        return [h for h in unreachable if h in self.health.slots]


KIND_HOST = "host"  # a NotFound about a host


class HostOps:
    """The client operations on hosts (ListHosts, DrainHost, UndrainHost), free of gRPC.

        ops = HostOps(fleet, usage=scheduler.usage, wake=scheduler.wake, allow=..., audit=...)
        ops.list()          # [HostView(status, free)]
        ops.drain("b", caller)   # no new ranks on b (running ones stay); NotFound (kind "host") for an unknown host

    `allow(caller, host)` returns the caller or raises PermissionDenied (only administrators drain: the core
    asks coordinator.access.roles); `audit(caller, action, host)` records a drain in the audit trail.
    """

    def __init__(self, fleet: Fleet, usage, wake, allow=lambda caller, host: caller, audit=lambda *a, **k: None):
        self.fleet = fleet
        self.usage = usage   # () → [(host, slots, free)] read under the pool's lock
        self.wake = wake
        self.allow = allow
        self.audit = audit

    def list(self) -> list[HostView]:
        free = {host: max(0, f) for host, _, f in self.usage()}
        return [HostView(s, free.get(s.host, 0)) for s in self.fleet.health.status()]

    def drain(self, host: str, caller=None) -> HostView:
        return self._set(host, drained=True, caller=caller)

    def undrain(self, host: str, caller=None) -> HostView:
        return self._set(host, drained=False, caller=caller)

    def _set(self, host: str, drained: bool, caller=None) -> HostView:
        caller = self.allow(caller, host[:255])
        if not host or len(host) > 255:
            raise InvalidArgument("host", "must name a host of the pool (1..255 characters)")
        if host not in self.fleet.health.slots:
            names = ", ".join(self.fleet.health.slots)
            raise NotFound(f"host {host[:100]!r} is not in this coordinator's pool ({names})", kind=KIND_HOST)
        self.fleet.store.set_drained(host, drained)   # first the record: a drain must survive a restart
        (self.fleet.health.drain if drained else self.fleet.health.undrain)(host)
        log.info("host %s %s by an operator", host, "drained" if drained else "undrained")
        self.audit(caller, "drain" if drained else "undrain", host)
        self.fleet.signal.changed()
        self.wake()
        return next(v for v in self.list() if v.status.host == host)
