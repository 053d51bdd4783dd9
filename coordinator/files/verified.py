"""Which checkpoint files the coordinator has hashed, so a download hashes a file only when it changed since.

    seen = VerifiedFiles()
    seen.remember(path, sha256)                  # after a write whose bytes were hashed on the way to disk
    seen.intact(path, sha256)                    # True/False, hashing only a file that changed since
    chunks = seen.chunks(path, sha256, what=...)  # unchanged since: plain chunks; else hashed (DataLoss at the
                                                  # end on mismatch) and remembered when they match

A download used to hash every byte on the server and again on the client: on 2 cores the server's pass
alone halved the stream's speed. The server's pass exists to refuse a file that changed on its disk
(DATA_LOSS) instead of sending it; a file is taken as unchanged while its identity (device, inode, size,
mtime and ctime, in nanoseconds) is the one seen right after its bytes were last hashed. Any write, rename
over it or truncation changes ctime, so the server notices all of those. What it cannot notice without
hashing is a change beneath the filesystem (bit rot), and that the client catches: every client (SDK, CLI,
worker resume) checks the sha256 sent in the stream's first message, and so can any API user.

The record is in memory: after a restart the first download of each file hashes it again.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import IO, Iterator

from coordinator.errors import ChecksumMismatch
from coordinator.wire import CHUNK_BYTES, Sha256Tally


def file_chunks(f: IO[bytes]) -> Iterator[bytes]:
    """An open file's bytes in chunks of at most wire.CHUNK_BYTES; the file is closed at the end."""
    with f:
        while data := f.read(CHUNK_BYTES):
            yield data


def _identity(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class VerifiedFiles:
    def __init__(self):
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[tuple[int, ...], str]] = {}   # path -> (identity when hashed, sha256)

    def remember(self, path: Path | str, sha256: str) -> None:
        """`path` now holds bytes whose sha256 is `sha256` (hashed by the caller as they were written)."""
        try:
            ident = _identity(os.stat(path))
        except OSError:
            return
        with self._lock:
            self._seen[str(path)] = (ident, sha256)

    def known(self, path: Path | str, sha256: str) -> bool:
        """Whether the file is unchanged since its bytes were hashed and found to be `sha256`."""
        try:
            ident = _identity(os.stat(path))
        except OSError:
            return False
        with self._lock:
            return self._seen.get(str(path)) == (ident, sha256)

    def forget(self, path: Path | str) -> None:
        with self._lock:
            self._seen.pop(str(path), None)

    def forget_under(self, directory: Path | str) -> None:
        """Forget every file below `directory` (a deleted job's): their records would only take memory."""
        prefix = os.path.join(str(directory), "")
        with self._lock:
            for path in [p for p in self._seen if p.startswith(prefix)]:
                del self._seen[path]

    def chunks(self, path: Path | str, sha256: str, size: int | None, what: str) -> Iterator[bytes]:
        """The file's chunks (opened now: FileNotFoundError here); hashed on the way unless the file is
        unchanged since its bytes were hashed and found to be `sha256`."""
        f = open(path, "rb")
        try:
            ident = _identity(os.fstat(f.fileno()))
        except BaseException:
            f.close()
            raise
        with self._lock:
            known = self._seen.get(str(path))
        if known == (ident, sha256):
            return file_chunks(f)
        return self._hashed(path, f, ident, sha256, size, what)

    def intact(self, path: Path | str, sha256: str) -> bool:
        """Whether the file still holds bytes with this sha256 (hashing it unless unchanged since it did).
        OSError when it cannot be read."""
        try:
            for _ in self.chunks(path, sha256, None, what=str(path)):
                pass
        except ChecksumMismatch:
            return False
        return True

    def _hashed(self, path, f, ident, sha256: str, size: int | None, what: str) -> Iterator[bytes]:
        tally = Sha256Tally()
        for chunk in file_chunks(f):
            tally.add(chunk)
            yield chunk
        tally.check(sha256, size, what)
        try:
            unchanged = _identity(os.stat(path)) == ident
        except OSError:
            unchanged = False
        if unchanged:
            with self._lock:
                self._seen[str(path)] = (ident, sha256)
