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
(hydra's "PID N RUNNING AT host" with "EXIT STRING: ... (signal 9)" on the same machine, or only "EXIT CODE:
9" when the rank ran on another host: hydra's proxy there reports the signal as the exit code), or the
launcher unable to reach it ("ssh: connect to host H ..."). A rank's own exception is the job's problem, not
the host's. `unreachable_at_launch` picks out the last kind: the fleet quarantines such a host at once, and
the attempt does not count against the job (it never ran).
"""
from __future__ import annotations

import re
from typing import Callable, Collection, Mapping

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
_HYDRA_CODE = re.compile(r"EXIT CODE: (\d+)")
_SSH_UNREACHABLE = re.compile(r"ssh: (?:connect to host (\S+) port \d+|Could not resolve hostname ([^:\s]+))")
# Signals that kill a process from outside or for a fault of the machine (SIGKILL: kill -9, the OOM killer;
# SIGBUS, SIGSEGV: bad memory), as hydra reports them in EXIT CODE (plain, or the shell's 128 + N). The
# worker's own exit codes are 0 to 4, and an MPI_Abort is 1.
_KILL_SIGNALS = {9: "SIGKILL", 7: "SIGBUS", 11: "SIGSEGV"}


def _killed_code(code: int) -> str | None:
    return _KILL_SIGNALS.get(code - 128 if code > 128 else code)


def unreachable_at_launch(allocation: Allocation, tail: str) -> list[tuple[str, str]]:
    """[(host, the launcher's line)] for the hosts of `allocation` the launcher could not reach."""
    placed = {h for h, _ in allocation}
    found = []
    for line in tail.splitlines():
        match = _SSH_UNREACHABLE.search(line)
        host = match and (match.group(1) or match.group(2))
        if host in placed and host not in {h for h, _ in found}:
            found.append((host, line.strip()))
    return found


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
    unreachable = unreachable_at_launch(allocation, tail)
    if unreachable:
        return [(host, f"unreachable at launch: {line}") for host, line in unreachable]
    if failure is not None:
        return []
    lines = tail.splitlines()
    how = next((m.group(1).strip() for m in map(_HYDRA_SIGNAL.search, lines) if m), "")
    for i, line in enumerate(lines):
        found = _HYDRA_AT.search(line)
        if not found or found.group(1) not in placed:
            continue
        host = found.group(1)
        if how:
            return [(host, f"a rank on {host} was killed ({how})")]
        code = next((m for m in map(_HYDRA_CODE.search, lines[i + 1:i + 3]) if m), None)
        name = _killed_code(int(code.group(1))) if code else None
        if name:
            return [(host, f"a rank on {host} was killed (hydra: EXIT CODE {code.group(1)}, {name})")]
    return []
