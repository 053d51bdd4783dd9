"""One data directory, one coordinator: an exclusive `flock` on DATA_DIR/lock held for the server's life.

    owner = DataDirLock.acquire(data_dir)      # DataDirInUse (an OSError) naming the running one's pid and address
    owner.announce(address="127.0.0.1:50051", dashboard="http://127.0.0.1:50052/")
    owner.release()                            # at stop (the kernel releases it too if the process dies)

A second coordinator on the same directory would take over the first one's running jobs and stop them
when it stops. The lock is the kernel's, so it ends with the process however it ends: a coordinator killed
with -9 leaves no lock behind, only a stale DATA_DIR/coordinator.json, which nobody trusts without the lock
held (coordinator.wire.owner_address). That file, written beside the token once the server listens, tells
a second server whom it met, and a client given --data-dir where the owning coordinator listens.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import time
from pathlib import Path

from coordinator import wire


class DataDirInUse(OSError):
    """Another coordinator holds the data directory."""


class DataDirLock:
    def __init__(self, data_dir: Path, fd: int):
        self.data_dir, self._fd = data_dir, fd

    @classmethod
    def acquire(cls, data_dir: Path) -> "DataDirLock":
        path = data_dir / wire.LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        for tries_left in reversed(range(5)):  # a client's look at the lock holds it for an instant
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return cls(data_dir, fd)
            except OSError as err:
                if err.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    os.close(fd)
                    raise
            if tries_left:
                time.sleep(0.05)
        os.close(fd)
        raise DataDirInUse(f"data directory {data_dir} is in use by {_described(data_dir)}; stop it first, "
                           "or give this one another --data-dir")

    def announce(self, address: str, dashboard: str = "") -> None:
        """Write who holds the directory (pid, gRPC address, dashboard URL), atomically, 0600."""
        path = self.data_dir / wire.OWNER_FILE
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"pid": os.getpid(), "address": address, "dashboard": dashboard}, f)
        os.replace(temporary, path)

    def release(self) -> None:
        if self._fd < 0:
            return
        (self.data_dir / wire.OWNER_FILE).unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = -1


def _described(data_dir: Path) -> str:
    """"the coordinator pid 4242 on 127.0.0.1:50051", from the file it wrote (or less, when it has not yet)."""
    try:
        owner = json.loads((data_dir / wire.OWNER_FILE).read_text())
        pid, address = int(owner["pid"]), str(owner["address"])
    except (OSError, ValueError, KeyError, TypeError):
        return "another coordinator (still starting, or from before this release)"
    return f"the coordinator pid {pid} on {address[:200]}"
