"""The service path's shortcuts keep their contracts: a GetJob message is reused only for the very same view,
a client's JobInfo only for byte-identical replies; a download's early write-out changes nothing on disk."""
from __future__ import annotations

import os

from coordinator.api import convert
from coordinator.client.writeback import start_writeback
from coordinator.jobs.operations import JobView
from coordinator.store.records import JobRow
from coordinator.states import JobState


def _view(step: int) -> JobView:
    job = JobRow(id="j", name="n", spec_json="{}", state=JobState.RUNNING, workers=2, step=step)
    return JobView(job=job, history=[], latest=None, best=None, samples_per_second=0.0, eta_seconds=-1.0)


def test_getjob_message_is_reused_for_the_same_view_only():
    first = _view(3)
    assert convert.job_to_pb(first) is convert.job_to_pb(first)
    changed = _view(4)
    assert convert.job_to_pb(changed).step == 4 and convert.job_to_pb(first).step == 3


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
