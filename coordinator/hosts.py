"""Host lists, in one place: the user's `--hosts` / `--hostfile`, and the stored form of an allocation.

    parse_hosts("a:2, b:4,c")           → [("a", 2), ("b", 4), ("c", 1)]     (HostListError on bad input)
    parse_hostfile(Path("hosts.txt"))   → MPICH "node1:4" or Open MPI "node1 slots=4" lines
    format_hosts([("a", 2), ("b", 1)])  → "a:2,b:1"   (what `mpirun -hosts` takes, and what the store keeps)
    parse_formatted_hosts("a:2,b:1")    → [("a", 2), ("b", 1)]   (its inverse; malformed items skipped)
    parse_registered_hosts("vm:2")      → [("vm", 2)]  (a registered run's hosts: InvalidHosts naming the item)

Numbers are ASCII digits only, everywhere (`int()` also takes "²"-like digits of other scripts, signs,
spaces and underscores), and a host's slots are at most MAX_SLOTS: a stored list must never hold a count
that cannot be added up or sent (int32 on the wire).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Sequence

Allocation = list[tuple[str, int]]

MAX_SLOTS = 1 << 16                       # slots (ranks) of one host, and of one registered run's host
_COUNT = re.compile(r"[0-9]{1,9}")        # a count as the store and people write it
_HOST_NAME = re.compile(r"[A-Za-z0-9._\[\]:%-]{1,255}")   # names, IPv4 and [IPv6] addresses


class HostListError(ValueError):
    """A host list a person wrote is malformed; the message names where and why."""


def format_hosts(hosts: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{n}" for h, n in hosts)


def parse_formatted_hosts(text: str) -> Allocation:
    """The inverse of format_hosts, for allocations read back from the store (malformed items skipped)."""
    alloc = []
    for part in filter(None, text.split(",")):
        host, _, n = part.rpartition(":")
        if host and _COUNT.fullmatch(n) and 0 < int(n) <= MAX_SLOTS:
            alloc.append((host, int(n)))
    return alloc


class InvalidHosts(ValueError):
    """A registered run's host list is malformed; the message says which item and why."""


def parse_registered_hosts(text: str) -> Allocation:
    """The hosts a run registered from outside says it runs on: "HOST:RANKS,HOST:RANKS" ("HOST" alone is one
    rank), each name of letters, digits and . _ - : [ ] %, each count 1..MAX_SLOTS in ASCII digits."""
    hosts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, count = item.rpartition(":")
        if not sep or count.endswith("]"):  # "host", "[::1]": one rank
            name, count = item, "1"
        if not _HOST_NAME.fullmatch(name):
            raise InvalidHosts(f"'{_shown(item)}': a host name is 1-255 of A-Z a-z 0-9 . _ - : [ ] %")
        if not _COUNT.fullmatch(count) or not 0 < int(count) <= MAX_SLOTS:
            raise InvalidHosts(f"'{_shown(item)}': the rank count must be 1..{MAX_SLOTS} in digits 0-9")
        hosts.append((name, int(count)))
    return hosts


def _shown(text: str) -> str:
    return ascii(text[:40])[1:-1] + ("..." if len(text) > 40 else "")


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
    text = text.strip()
    if not _COUNT.fullmatch(text):
        raise HostListError(f"{where}: slots must be a whole number, got {text!r}")
    value = int(text)
    if value < 1 or value > MAX_SLOTS:
        raise HostListError(f"{where}: slots must be at least 1 and at most {MAX_SLOTS}")
    return value
