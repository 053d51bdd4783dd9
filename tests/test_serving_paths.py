"""The service path's shortcuts keep their contracts: a GetJob message is reused only for the very same view;
a checkpoint is served without hashing only while the file is the one that streamed out intact; a download's
early write-out changes nothing in what lands on disk."""
from __future__ import annotations

import hashlib
import os

import pytest

from coordinator import convert, verified_files, wire
from coordinator.client.writeback import start_writeback
from coordinator.errors import ChecksumMismatch
from coordinator.jobs import JobView
from coordinator.records import JobRow
from coordinator.states import JobState


def _view(step: int) -> JobView:
    job = JobRow(id="j", name="n", spec_json="{}", state=JobState.RUNNING, workers=2, step=step)
    return JobView(job=job, history=[], latest=None, best=None, samples_per_second=0.0, eta_seconds=-1.0)


def test_getjob_message_is_reused_for_the_same_view_only():
    first = _view(3)
    assert convert.job_to_pb(first) is convert.job_to_pb(first)
    changed = _view(4)
    assert convert.job_to_pb(changed).step == 4 and convert.job_to_pb(first).step == 3


class CountingTally(wire.Sha256Tally):
    made = 0

    def __init__(self):
        super().__init__()
        CountingTally.made += 1


def _serve(path, sha, size):
    f = open(path, "rb")
    return b"".join(verified_files.serve_verified(f, sha, size, iter(lambda: f.read(1 << 20), b""), "test file"))


def test_a_file_served_intact_is_not_hashed_again_until_it_changes(tmp_path, monkeypatch):
    monkeypatch.setattr(wire, "Sha256Tally", CountingTally)
    path = tmp_path / "ckpt.npz"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    CountingTally.made = 0
    assert _serve(path, sha, len(data)) == data and CountingTally.made == 1
    assert _serve(path, sha, len(data)) == data and CountingTally.made == 1      # not hashed again
    # the file damaged in place (its mtime/ctime move): hashed again, and the damage is caught
    with open(path, "r+b") as f:
        f.seek(100)
        f.write(b"\0" * 16)
    with pytest.raises(ChecksumMismatch):
        _serve(path, sha, len(data))
    assert CountingTally.made == 2
    with pytest.raises(ChecksumMismatch):                                          # and stays caught
        _serve(path, sha, len(data))


def test_a_stream_cut_short_is_not_remembered(tmp_path, monkeypatch):
    monkeypatch.setattr(wire, "Sha256Tally", CountingTally)
    path = tmp_path / "ckpt.npz"
    data = os.urandom(3 << 20)
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    verified_files.forget(path)
    CountingTally.made = 0
    f = open(path, "rb")
    stream = verified_files.serve_verified(f, sha, len(data), iter(lambda: f.read(1 << 20), b""), "test file")
    next(stream)          # the client went away after one chunk
    stream.close()
    f.close()
    assert _serve(path, sha, len(data)) == data and CountingTally.made == 2       # checked in full next time


def test_early_writeback_keeps_the_bytes(tmp_path):
    path = tmp_path / "out.bin"
    data = os.urandom(9 << 20)
    with open(path, "wb") as f:
        f.write(data[: 8 << 20])
        f.flush()
        started = start_writeback(f.fileno(), 0, 8 << 20)
        f.write(data[8 << 20:])
        f.flush()
        os.fsync(f.fileno())
    assert path.read_bytes() == data
    assert started or not os.uname().sysname == "Linux"


def test_client_get_reuses_the_jobinfo_of_identical_replies_only():
    from coordinator.client import Client
    from coordinator.rpc import gradmesh_pb2 as pb

    client = Client("127.0.0.1:1", token="t")
    replies = [pb.Job(id="j", name="n", state=int(JobState.RUNNING), step=s) for s in (1, 1, 2)]
    client._unary = lambda method, request, what: replies.pop(0)
    try:
        a, b, c = client.get("j"), client.get("j"), client.get("j")
    finally:
        client.close()
    assert a is b and a.step == 1 and c.step == 2 and c is not a
