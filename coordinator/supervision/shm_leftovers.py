"""Shared-memory segments that killed MPI ranks leave behind in /dev/shm, and their removal.

    removed = sweep()        # every segment of ours that nothing maps any more
    janitor = Janitor()      # the supervisor's: attempt_ended() when one ends, tick() every scheduler round

The ranks of one host share memory through files MPICH creates in /dev/shm (`mpich_shm_*`: its message
cells, and the windows the step's allreduce sums in, worker/shmreduce.py) and unlinks in MPI_Finalize. A
rank killed by a signal never gets there, so its segments stay, holding RAM (tmpfs), until someone removes
them: a coordinator that restarts hung or crashed attempts for weeks would slowly fill the host's memory
(one day of this project's tests left 82 of them, 161 MiB). A file is removed when all of these hold:
  - its name is MPICH's (`mpich_shm_*`) and it belongs to this process's user;
  - no live process maps it (every /proc/PID/maps this process can read is checked);
  - it is older than GRACE_S: a rank creates a segment and maps it in the same call, and the grace covers
    that moment for jobs starting right now.
Processes whose maps this process cannot read belong to other users, who cannot map a file of ours that
is readable by us alone (MPICH creates them 0600), so they are not a risk. Without /dev/shm or /proc
(not Linux) nothing is done.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

SHM_DIR = Path("/dev/shm")
PROC = Path("/proc")
PREFIX = "mpich_shm_"
GRACE_S = 30.0

log = logging.getLogger("gradmesh.shm")


def mapped_paths(proc: Path = PROC) -> set[str]:
    """Every file path some live process maps (as far as this process may read their maps)."""
    paths: set[str] = set()
    try:
        entries = [e for e in os.listdir(proc) if e.isdigit()]
    except OSError:
        return paths
    for entry in entries:
        try:
            with open(proc / entry / "maps", "rb") as f:
                for line in f:
                    parts = line.split(None, 5)
                    if len(parts) == 6:
                        paths.add(parts[5].rstrip(b"\n").decode(errors="replace"))
        except OSError:   # gone meanwhile, or another user's
            continue
    return paths


def sweep(shm_dir: Path = SHM_DIR, grace_s: float = GRACE_S, proc: Path = PROC) -> list[Path]:
    """Remove MPICH segments of ours that nothing maps any more; returns what was removed."""
    if not shm_dir.is_dir() or not proc.is_dir():
        return []
    try:
        candidates = [p for p in shm_dir.iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return []
    if not candidates:
        return []
    uid, now = os.getuid(), time.time()
    old = []
    for path in candidates:
        try:
            st = path.stat(follow_symlinks=False)
        except OSError:
            continue
        if st.st_uid == uid and now - max(st.st_mtime, st.st_ctime) >= grace_s:
            old.append(path)
    if not old:
        return []
    in_use = mapped_paths(proc)
    removed = []
    for path in old:
        if str(path) in in_use:
            continue
        try:
            path.unlink()
            removed.append(path)
        except OSError:
            continue
    if removed:
        log.info("removed %d shared-memory segment(s) left in %s by killed MPI ranks", len(removed), shm_dir)
    return removed


class Janitor:
    """Runs `sweep` off the scheduler's thread: right after an attempt ends, and again once the grace of
    the segments that attempt may have created just before is over."""

    def __init__(self, grace_s: float = GRACE_S, sweep_fn=None):
        self._grace_s = grace_s
        self._sweep = sweep_fn or (lambda: sweep(grace_s=grace_s))
        self._lock = threading.Lock()
        self._due: list[float] = []
        self._thread: threading.Thread | None = None

    def attempt_ended(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._due += [now, now + self._grace_s + 1.0]

    def tick(self) -> None:
        now = time.monotonic()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            if not any(t <= now for t in self._due):
                return
            self._due = [t for t in self._due if t > now]
            self._thread = threading.Thread(target=self._run, name="shm-janitor", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        try:
            self._sweep()
        except Exception:  # noqa: BLE001 - housekeeping must never take the scheduler down
            log.exception("sweeping shared-memory leftovers failed")
