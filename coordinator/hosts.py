"""Host lists, in one place: the user's `--hosts` / `--hostfile`, and the stored form of an allocation.

    parse_hosts("a:2, b:4,c")           → [("a", 2), ("b", 4), ("c", 1)]     (HostListError on bad input)
    parse_hostfile(Path("hosts.txt"))   → MPICH "node1:4" or Open MPI "node1 slots=4" lines
    format_hosts([("a", 2), ("b", 1)])  → "a:2,b:1"   (what `mpirun -hosts` takes, and what the store keeps)
    parse_formatted_hosts("a:2,b:1")    → [("a", 2), ("b", 1)]   (its inverse; malformed items skipped)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

Allocation = list[tuple[str, int]]


class HostListError(ValueError):
    """A host list a person wrote is malformed; the message names where and why."""


def format_hosts(hosts: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{n}" for h, n in hosts)


def parse_formatted_hosts(text: str) -> Allocation:
    """The inverse of format_hosts, for allocations read back from the store (malformed items skipped)."""
    alloc = []
    for part in filter(None, text.split(",")):
        host, _, n = part.rpartition(":")
        if host and n.isdigit():
            alloc.append((host, int(n)))
    return alloc


def parse_hosts(text: str) -> Allocation:
    """"a:2,b:4" → [("a", 2), ("b", 4)]; a host without ":N" has 1 slot."""
    hosts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, slots = item.partition(":")
        hosts.append((name.strip(), _positive_int(slots or "1", f"--hosts {item!r}")))
    if not hosts:
        raise HostListError("--hosts: give at least one HOST:SLOTS")
    return hosts


def parse_hostfile(path: Path) -> Allocation:
    """MPICH ("host:4") or Open MPI ("host slots=4") hostfile lines; '#' starts a comment."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise HostListError(f"--hostfile: cannot read {path}: {exc.strerror or exc}") from None
    hosts = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        name, _, slots = words[0].partition(":")
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key == "slots":
                slots = value
        hosts.append((name, _positive_int(slots or "1", f"--hostfile {path}:{number}")))
    if not hosts:
        raise HostListError(f"--hostfile: {path} lists no hosts")
    return hosts


def _positive_int(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise HostListError(f"{where}: slots must be a whole number, got {text!r}") from None
    if value < 1:
        raise HostListError(f"{where}: slots must be at least 1")
    return value
