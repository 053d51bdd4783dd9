"""Where ranks go and which host an attempt's failure is blamed on: pure functions, tested without processes.

    rank_hosts([("a", 2), ("b", 2)])                 → ["a", "a", "b", "b"]   (hydra fills hosts in order)
    allocate(3, free={"a": 2, "b": 2}, usable={"b"}) → None  (only 2 usable slots)
    Placer(capacity, free, usable, size_of).take(job, n)   → True, slots taken for it (placer.taken[job.id])
    blamed_hosts([("a", 2), ("b", 2)], failure, tail) → [("b", "ranks 2, 3 silent to the hang watchdog ...")]

Placement never puts two jobs' ranks on one slot (it takes only free slots, and the caller takes them under
the pool's lock) and never starts a job on a host that is not usable (quarantined or drained: see
coordinator.fleet.health). Order is the scheduler's (coordinator.team.fairshare); a job the usable hosts cannot
hold at all waits with a message naming the missing slots.

A failed attempt is blamed on a host only when its end says so: ranks that the hang watchdog found silent
and that make up all of a host's ranks (its link cut, the machine gone), a rank killed by a signal there
(hydra's "RUNNING AT host"), or the launcher unable to reach it ("ssh: connect to host H ..."). A rank's
own exception is the job's problem, not the host's.
"""
from __future__ import annotations

import re
from typing import Callable, Collection, Mapping, Sequence

from coordinator.hosts import Allocation
from coordinator.store.records import JobRow
from coordinator.reports import FailureCause, WorkerFailure


def rank_hosts(allocation: Allocation) -> list[str]:
    """The host of each rank: `mpirun -hosts a:2,b:2 -n 4` puts ranks 0-1 on a and 2-3 on b."""
    return [host for host, n in allocation for _ in range(n)]


def ranks_of(allocation: Allocation) -> int:
    return sum(n for _, n in allocation)


def allocate(n: int, free: Mapping[str, int], usable: Collection[str]) -> Allocation | None:
    """n slots from the usable hosts' free slots, filling hosts in their listed order; None when they do not fit."""
    alloc: Allocation = []
    left = n
    for host, k in free.items():
        if host not in usable or k <= 0 or left == 0:
            continue
        take = min(k, left)
        alloc.append((host, take))
        left -= take
    return alloc if left == 0 and n > 0 else None


def usable_slots(counts: Mapping[str, int], usable: Collection[str]) -> int:
    return sum(max(0, k) for h, k in counts.items() if h in usable)


def missing_message(need: int, capacity: Mapping[str, int], free: Mapping[str, int], usable: Collection[str],
                    why_not: Callable[[str], str]) -> str:
    """"waiting for 4 worker slots: 2 free on usable hosts; unavailable: b (2 slots, quarantined until ...)"."""
    out = [f"waiting for {need} worker slot(s): {usable_slots(free, usable)} free on usable hosts"]
    gone = [f"{h} ({n} slot(s), {why_not(h)})" for h, n in capacity.items() if h not in usable]
    if gone:
        out.append("unavailable: " + ", ".join(gone))
    return "; ".join(out)


class Placer:
    """Slots taken job by job from a copy of the free slots, on usable hosts only (the scheduler's fair share,
    coordinator.team.fairshare, decides the order; this decides where). `size_of(job, usable capacity)` is the
    rank count to start a job with (coordinator.fleet.elastic.job_launch_size), None when the usable hosts
    cannot hold it at all."""

    def __init__(self, capacity: Mapping[str, int], free: Mapping[str, int], usable: Collection[str],
                 size_of: Callable[[JobRow, int], int | None], why_not: Callable[[str], str] = lambda h: "unavailable"):
        self.capacity, self.usable, self.size_of, self.why_not = capacity, usable, size_of, why_not
        self.free = dict(free)
        self.total_usable = usable_slots(capacity, usable)
        self.taken: dict[str, Allocation] = {}   # job id -> the slots taken for it

    def size(self, job: JobRow) -> int | None:
        return self.size_of(job, self.total_usable)

    def take(self, job: JobRow, n: int) -> bool:
        alloc = allocate(n, self.free, self.usable)
        if alloc is None:
            return False
        for host, k in alloc:
            self.free[host] -= k
        self.taken[job.id] = alloc
        return True

    def lacking(self, job: JobRow, n: int | None) -> str | None:
        """Why `job` cannot start whatever other jobs do (usable hosts missing), or None when it only waits for
        slots that other jobs hold."""
        if n is not None and self.total_usable >= job.workers:
            return None
        return missing_message(n or job.workers, self.capacity, self.free, self.usable, self.why_not)


_SILENT = re.compile(r"silent rank\(s\): (.*)$", re.S)
_SILENT_RANK = re.compile(r"(?:^|; )([0-9]{1,9}) \(")
_HYDRA_AT = re.compile(r"PID \d+ RUNNING AT (\S+)")
_HYDRA_SIGNAL = re.compile(r"EXIT STRING: (.*signal.*)$", re.I)
_SSH_UNREACHABLE = re.compile(r"ssh: (?:connect to host (\S+) port \d+|Could not resolve hostname ([^:\s]+))")


def blamed_hosts(allocation: Allocation, failure: WorkerFailure | None, tail: str) -> list[tuple[str, str]]:
    """[(host, why)] that this failed attempt's end attributes to a host (see the module docstring)."""
    hosts = rank_hosts(allocation)
    placed = {h for h, _ in allocation}
    if failure is not None and failure.cause is FailureCause.HANG:
        found = _SILENT.search(failure.message)
        silent = {int(r) for r in _SILENT_RANK.findall(found.group(1))} if found else set()
        reporter = hosts[failure.rank] if failure.rank is not None and failure.rank < len(hosts) else None
        blamed = []
        for host in dict.fromkeys(hosts):
            mine = {r for r, h in enumerate(hosts) if h == host}
            if host != reporter and mine <= silent:
                listed = ", ".join(map(str, sorted(mine)))
                blamed.append((host, f"rank(s) {listed} on {host} silent to rank {failure.rank}'s hang watchdog "
                                     f"(link cut or host down)"))
        return blamed
    lines = tail.splitlines()
    for line in lines:
        found = _SSH_UNREACHABLE.search(line)
        if found and (found.group(1) or found.group(2)) in placed:
            return [(found.group(1) or found.group(2), f"unreachable at launch: {line.strip()}")]
    if failure is None and any(_HYDRA_SIGNAL.search(line) for line in lines):
        for line in lines:
            found = _HYDRA_AT.search(line)
            if found and found.group(1) in placed:
                how = next((m.group(1).strip() for m in map(_HYDRA_SIGNAL.search, lines) if m), "")
                return [(found.group(1), f"a rank on {found.group(1)} was killed ({how})")]
    return []

