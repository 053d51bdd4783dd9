"""coordinator/files/verified.py on real files: a file is hashed again exactly when it changed since its
bytes were last hashed, so downloads skip the server's hash pass without ever serving a changed file."""
import hashlib
import os
import time

import pytest

from coordinator.errors import ChecksumMismatch
from coordinator.files.verified import VerifiedFiles

WRONG = "0" * 64


def make(tmp_path, size=3 * (1 << 20) + 17):
    path = tmp_path / "ckpt.npz"
    data = os.urandom(size)
    path.write_bytes(data)
    return path, data, hashlib.sha256(data).hexdigest()


def read(files, path, sha, size):
    return b"".join(files.chunks(path, sha, size, what="ckpt"))


def test_a_remembered_unchanged_file_is_streamed_without_hashing(tmp_path):
    path, data, sha = make(tmp_path)
    files = VerifiedFiles()
    files.remember(path, WRONG)   # what only a skipped hash pass lets through
    assert read(files, path, WRONG, len(data)) == data
    with pytest.raises(ChecksumMismatch, match="ckpt"):   # a fresh record hashes, and refuses it
        read(VerifiedFiles(), path, WRONG, len(data))


def test_any_rewrite_makes_the_next_read_hash_again(tmp_path):
    path, data, sha = make(tmp_path)
    files = VerifiedFiles()
    files.remember(path, WRONG)
    time.sleep(0.01)
    path.write_bytes(data)        # the same bytes: only the file's identity (ctime, mtime) changed
    assert not files.known(path, WRONG)
    with pytest.raises(ChecksumMismatch):
        read(files, path, WRONG, len(data))


def test_a_hashed_read_that_matches_is_remembered_and_a_mismatch_is_not(tmp_path):
    path, data, sha = make(tmp_path)
    files = VerifiedFiles()
    assert not files.known(path, sha)
    assert read(files, path, sha, len(data)) == data
    assert files.known(path, sha)
    assert files.intact(path, sha)
    other = tmp_path / "other.npz"
    other.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    assert not files.intact(other, sha) and not files.known(other, sha)
    files.forget(path)
    assert not files.known(path, sha)


def test_a_missing_file_raises_at_open_not_at_the_first_chunk(tmp_path):
    with pytest.raises(FileNotFoundError):
        VerifiedFiles().chunks(tmp_path / "gone.npz", WRONG, 0, what="gone")
