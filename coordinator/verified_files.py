"""Which stored files have already been read back whole with their recorded sha256, so serving them again
does not hash them again.

    chunks = serve_verified(path, sha256, size, what)   # hashes while streaming the first time only

The coordinator hashes a checkpoint as it streams it to a client or a worker, to catch a file damaged on
its own disk (DataLoss instead of bad bytes). On 2 cores shared by server and client, that second sha256
pass (the receiver always hashes too) cost as much as the network: bench/service.py measured downloads at
0.46x a bare stream. So a file that streamed out whole with the right sha256 is remembered by its inode,
size, mtime and ctime; while none of those change, later downloads stream it without hashing. Anything that
rewrites, truncates or replaces the file changes them and brings the check back. What stat cannot see
(bits rotting in place) is still caught end to end: every receiver checks the sha256 it is sent.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Iterator

from coordinator.wire import verified

_lock = threading.Lock()
_known: dict[str, tuple[tuple[int, int, int, int], str]] = {}   # path -> (stat signature, sha256)
MAX_ENTRIES = 100_000


def _signature(fd: int) -> tuple[int, int, int, int]:
    st = os.fstat(fd)
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def serve_verified(file, sha256: str, size: int | None, chunks: Iterator[bytes], what: str) -> Iterator[bytes]:
    """`chunks` of the open `file`, hashed on the way (ChecksumMismatch at the end) unless this very file
    (same inode, size, mtime, ctime) already streamed out whole with this sha256."""
    key = str(Path(file.name))
    signature = _signature(file.fileno())
    with _lock:
        known = _known.get(key)
    if known == (signature, sha256):
        return chunks
    return _remember_when_whole(verified(chunks, sha256, size, what), key, signature, sha256)


def _remember_when_whole(chunks: Iterator[bytes], key: str, signature, sha256: str) -> Iterator[bytes]:
    yield from chunks   # verified() raises at the end on a mismatch, before we get past this line
    with _lock:
        if len(_known) >= MAX_ENTRIES:
            _known.clear()
        _known[key] = (signature, sha256)


def forget(path: str | Path) -> None:
    with _lock:
        _known.pop(str(Path(path)), None)
