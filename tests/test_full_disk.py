"""A full disk under the coordinator: a small tmpfs as the data directory, filled on purpose with a ballast
file while a job trains, then freed.

While full: uploads and metric writes are refused with RESOURCE_EXHAUSTED (the free space and what was
refused), the job keeps training (its ranks skip the local checkpoints that do not fit, keep their points and
retry the uploads). Nothing is left half-written in the store or the checkpoint directory, and once the
ballast is gone everything resumes by itself: the job SUCCEEDS with every metric point, in one attempt.
"""
from __future__ import annotations

import errno
import hashlib
import os
import shutil
import time
import subprocess
from pathlib import Path

import grpc
import pytest

from conftest import job_stub
from coordinator.rpc import gradmesh_pb2 as pb
from helpers import idle_server, running_job, upload_checkpoint, wait_for, worker_stub

pytestmark = pytest.mark.timeout(150)
SIZE_MIB = 24


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MiB tmpfs mounted at tmp_path/disk (skips, saying why, where mounting is refused)."""
    where = tmp_path / "disk"
    where.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m,mode=0700", "tmpfs", str(where)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def fill(directory: Path) -> Path:
    """Write a ballast file until not one more byte fits; returns it."""
    ballast = directory / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4096, 1):
            block = b"\0" * size
            try:
                while True:
                    os.write(fd, block)
            except OSError as err:
                assert err.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return ballast


def test_uploads_are_refused_cleanly_and_nothing_is_left_half_written(small_disk, start_coordinator):
    srv = idle_server(start_coordinator, data_dir=small_disk / "data")
    job_id, token = running_job(srv)
    ballast = fill(small_disk)
    with grpc.insecure_channel(srv.address) as ch:
        worker = worker_stub(ch, token)
        for payload in (b"x" * (2 << 20), b"y" * 1000):  # refused up front (size known), or while written
            with pytest.raises(grpc.RpcError) as info:
                upload_checkpoint(worker, job_id, 10, payload)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, info.value.details()
            assert "disk is full" in info.value.details() and "bytes free" in info.value.details()
            assert "step 10" in info.value.details()
        assert srv.store.checkpoints(job_id) == []
        assert not list((srv.data_dir / "checkpoints" / job_id).iterdir())
        ballast.unlink()
        stored = upload_checkpoint(worker, job_id, 10, b"z" * (2 << 20))
    assert stored.step == 10 and srv.store.integrity_ok()


def test_a_job_trains_through_a_full_disk_and_resumes_by_itself(small_disk, start_coordinator):
    srv = start_coordinator(small_disk / "data", slots=1)
    api = job_stub(srv)
    spec = """
name = "full-disk"
workers = 1
[model]
layers = [64, 256, 10]
[data]
source = "digits"
[train]
steps = 2500
batch_size = 32
eval_every = 10
[checkpoint]
every_steps = 25
keep_last = 2
[fault]
hang_timeout_s = 30
"""
    api.SubmitJob(pb.SubmitJobRequest(spec=spec, job_id="fd"))
    get = lambda: api.GetJob(pb.GetJobRequest(job_id="fd"))  # noqa: E731
    wait_for(lambda: srv.store.checkpoints("fd"), timeout=60, what="a first checkpoint")
    ballast = fill(small_disk)
    # Full for 10 s: long enough for the rank to write (and skip) checkpoints, report (and keep) points, try
    # (and fail) uploads, and possibly reach its final checkpoint; had a rank died of the full disk, the job
    # would have left RUNNING or needed a second attempt.
    full_until = time.monotonic() + 10
    wait_for(lambda: time.monotonic() > full_until or get().state != pb.RUNNING, timeout=30,
             what="the disk to stay full for a while")
    assert get().state == pb.RUNNING and len(srv.store.attempts("fd")) == 1, get().message
    ballast.unlink()
    job = wait_for(lambda: (j := get()).state in (pb.SUCCEEDED, pb.FAILED) and j, timeout=120, what="the job to end")
    first = srv.store.attempts("fd")[0]
    assert job.state == pb.SUCCEEDED and job.attempts == 1, (first.message, Path(first.log_path).read_text()[-6000:].replace(chr(10), " | "))
    steps = [p.step for p in api.GetMetrics(pb.GetMetricsRequest(job_id="fd")).points]
    assert steps == list(range(10, 2501, 10)), "metric points were lost or duplicated"
    assert srv.store.integrity_ok()
    log = Path(srv.store.attempts("fd")[0].log_path)
    directory = srv.data_dir / "checkpoints" / "fd"
    rows = srv.store.checkpoints("fd")
    assert sorted(p.name for p in directory.iterdir()) == sorted(Path(r.path).name for r in rows)
    for row in rows:
        assert hashlib.sha256(Path(row.path).read_bytes()).hexdigest() == row.sha256
    workdir = Path(srv.store.attempts("fd")[0].workdir)
    local = sorted(p.name for p in workdir.glob("*.npz"))
    assert local == ["final.npz"] or len(local) <= 2, local  # rank 0 kept only its newest checkpoint(s)
    assert "disk is full" in log.read_text() or "skipped" in log.read_text()
