"""Checkpoint files on the coordinator's disk: written atomically, verified by sha256, read in chunks.

    path = ckpt_dir / "step-00000200.npz"
    size, sha = write_verified(path, chunks, expected_sha256="ab12...", expected_size=12345)
    for chunk in read_chunks(path): ...

`write_verified` streams into a temporary file beside the target, hashing as it goes, fsyncs it, and
renames it into place only when the size and sha256 match what the sender announced — so a reader (or a
coordinator restarted after a crash) sees either the complete file or none. A mismatch raises
`ChecksumMismatch` and leaves nothing behind.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Iterable, Iterator

CHUNK_BYTES = 1 << 20  # the largest data payload of one gRPC message (the API promises ≤ 1 MiB)


class ChecksumMismatch(ValueError):
    pass


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.npz"


def write_verified(path: Path, chunks: Iterable[bytes], *, expected_sha256: str, expected_size: int | None) -> tuple[int, str]:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(chunks):x}.tmp")
    digest = hashlib.sha256()
    size = 0
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = digest.hexdigest()
        if expected_size is not None and expected_size > 0 and size != expected_size:
            raise ChecksumMismatch(f"received {size} bytes but info.size_bytes announced {expected_size}")
        if sha != expected_sha256.lower():
            raise ChecksumMismatch(f"sha256 of the received {size} bytes is {sha}, not the announced {expected_sha256}")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return size, sha
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_chunks(path: Path, chunk_bytes: int = CHUNK_BYTES) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while True:
            data = f.read(chunk_bytes)
            if not data:
                return
            yield data


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    for chunk in read_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()
