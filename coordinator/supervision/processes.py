"""The one place that looks for processes in /proc (Linux): by process group, environment or command line.

    find(env={ATTEMPT_TAG_ENV: tag})            → every live process of an attempt (mpirun, proxies, ranks)
    find(pgid=1234)                             → the live members of a process group
    find(argv_has=["--job", "digits-1"])        → processes whose command line holds these words
    group_alive(1234), tagged(tag), of_job("digits-1"), alive(pid)
    identity(pid) → Identity(start_ticks, boot_id)   # who a pid is: a reused pid has another start time
    is_ours(pid, tag, identity)                        # alive, the same process, and carrying the tag
    may_signal_group(pgid)                             # never 0, 1 or our own group

"Live" skips zombies: an init that does not reap (as in some containers) would otherwise make a finished
attempt look alive forever. The calling process is never listed. Without /proc nothing is found.
Tests and benchmarks use this module too instead of scanning /proc themselves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping, Sequence

PROC = Path("/proc")
ATTEMPT_TAG_ENV = "GRADMESH_ATTEMPT_TAG"  # every process of an attempt carries it (coordinator.supervision.launcher sets it)


@dataclass(frozen=True)
class Process:
    pid: int
    pgid: int

    def argv(self) -> list[str]:
        return _read_nul_list(self.pid, "cmdline")

    def environ(self) -> dict[str, str]:
        return dict(item.partition("=")[::2] for item in _read_nul_list(self.pid, "environ") if "=" in item)


def _read_nul_list(pid: int, name: str) -> list[str]:
    try:
        raw = (PROC / str(pid) / name).read_bytes()
    except OSError:
        return []
    return [item.decode(errors="replace") for item in raw.split(b"\0") if item]


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after "pid (comm) " (state, ppid, pgrp, ...), None when it is gone."""
    try:
        stat = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2:].split()


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, process group) of a process, None when it is gone."""
    fields = _stat_fields(pid)
    return None if fields is None else (fields[0], int(fields[2]))


@dataclass(frozen=True)
class Identity:
    """What tells one process from a later one that got the same pid: its start time (clock ticks after
    boot, /proc/PID/stat field 22) and the boot it started in (a reboot restarts both pids and ticks)."""
    start_ticks: int
    boot_id: str


def boot_id() -> str:
    """This boot's random id ("" without /proc)."""
    try:
        return (PROC / "sys" / "kernel" / "random" / "boot_id").read_text().strip()
    except OSError:
        return ""


def identity(pid: int) -> Identity | None:
    """The identity of live process `pid`; None when it is gone, a zombie, or cannot be read."""
    fields = _stat_fields(pid) if pid > 0 else None
    if fields is None or fields[0] in ("Z", "X"):
        return None
    return Identity(int(fields[19]), boot_id())  # field 22 of the whole line is the 20th after "(comm) "


def carries(pid: int, tag: str) -> bool:
    """Whether live process `pid` has GRADMESH_ATTEMPT_TAG=`tag` in its environment (never for an empty tag)."""
    return bool(tag) and Process(pid, 0).environ().get(ATTEMPT_TAG_ENV) == tag


def is_ours(pid: int, tag: str, expected: Identity | None) -> bool:
    """Whether `pid` is still the process an attempt launched: alive, with the identity recorded at launch
    (when one was recorded), and carrying the attempt's tag. A pid reused after the attempt ended, or after a
    reboot, fails at least one of these."""
    if pid <= 1 or not tag:
        return False
    now = identity(pid)
    if now is None or (expected is not None and now != expected):
        return False
    return carries(pid, tag)


def may_signal_group(pgid: int) -> bool:
    """killpg is never sent to group 0 (the caller's own group), 1 (init's), or the caller's own group."""
    return pgid > 1 and pgid != os.getpgrp()


def _live() -> Iterator[Process]:
    if not PROC.is_dir():
        return
    me = os.getpid()
    for entry in PROC.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        stat = _stat(int(entry.name))
        if stat is not None and stat[0] not in ("Z", "X"):
            yield Process(int(entry.name), stat[1])


def find(*, pgid: int | None = None, env: Mapping[str, str] | None = None,
         argv_has: Sequence[str] = ()) -> list[Process]:
    """Live processes matching every given condition: in group `pgid`, with each `env` variable set to its
    value, with every word of `argv_has` among their command-line arguments."""
    found = []
    for proc in _live():
        if pgid is not None and proc.pgid != pgid:
            continue
        if argv_has and not set(argv_has) <= set(proc.argv()):
            continue
        if env:
            environ = proc.environ()
            if any(environ.get(key) != value for key, value in env.items()):
                continue
        found.append(proc)
    return found


def alive(pid: int) -> bool:
    """Not gone and not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def group_alive(pgid: int) -> bool:
    """Whether any live process is in group `pgid`."""
    if pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if not PROC.is_dir():
        return True  # the signal found the group and we cannot look closer
    return bool(find(pgid=pgid))


def tagged(tag: str) -> list[int]:
    """Pids of the live processes of the attempt tagged `tag` ([] for an empty tag)."""
    return [p.pid for p in find(env={ATTEMPT_TAG_ENV: tag})] if tag else []


def of_job(job_id: str) -> list[int]:
    """Pids of the live processes whose command line names job `job_id` (mpirun, proxies, ranks)."""
    return [p.pid for p in find(argv_has=["--job", job_id])]
