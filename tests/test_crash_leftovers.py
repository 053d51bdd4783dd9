"""What a crash can leave behind: a checkpoint renamed into place whose record never committed, temporary
files, a resume's seed link whose job was never created, an upload queue of a dead attempt; and two uploads
of the same step at once. Each must leave the store and the checkpoint directory consistent."""
from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import grpc
import pytest

from conftest import job_stub
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.states import JobState
from helpers import idle_server, running_job, upload_checkpoint, worker_stub

pytestmark = pytest.mark.timeout(90)


def stored_files(srv, job_id: str) -> list[str]:
    directory = srv.data_dir / "checkpoints" / job_id
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def test_start_up_sweep_removes_unrecorded_and_temporary_files(start_coordinator, tmp_path):
    data_dir = tmp_path / "data"
    srv = idle_server(start_coordinator, data_dir=data_dir)
    job_id, token = running_job(srv)
    with grpc.insecure_channel(srv.address) as ch:
        upload_checkpoint(worker_stub(ch, token), job_id, 10, b"kept" * 100)
    srv.store.transition(job_id, JobState.FAILED, "its attempt died", attempt=1)
    srv.stop(grace=1.0, stop_jobs=False)
    directory = data_dir / "checkpoints" / job_id
    (directory / "step-00000020.npz").write_bytes(b"renamed, but the record never committed")
    (directory / ".step-00000030.npz.999999.7f00.tmp").write_bytes(b"half an upload")
    (data_dir / "checkpoints" / "never-created-r1").mkdir()
    (data_dir / "checkpoints" / "never-created-r1" / "step-00000010.npz").write_bytes(b"a seed link")
    pending = data_dir / "runs" / job_id / "attempt-1" / ".pending-uploads"
    pending.mkdir(parents=True)
    (pending / "step-40-123.npz").write_bytes(b"a link rank 0 never sent")

    srv = start_coordinator(data_dir)
    assert stored_files(srv, job_id) == ["step-00000010.npz"]
    assert stored_files(srv, "never-created-r1") == []
    assert [r.step for r in srv.store.checkpoints(job_id)] == [10]
    assert not pending.exists() or not any(pending.iterdir())


def test_two_uploads_of_the_same_step_at_once_leave_a_record_that_matches_its_file(start_coordinator):
    srv = idle_server(start_coordinator)
    job_id, token = running_job(srv)
    payloads = [bytes([i]) * (3 << 20) for i in (1, 2)]  # several chunks each: the streams interleave
    with grpc.insecure_channel(srv.address) as ch:
        worker = worker_stub(ch, token)
        for round_ in range(8):
            step = 10 + round_
            start = threading.Barrier(2)
            errors = []

            def upload(payload):
                start.wait()
                try:
                    upload_checkpoint(worker, job_id, step, payload, chunk=256 << 10)
                except grpc.RpcError as err:  # refusing the second writer cleanly is allowed too
                    errors.append(err.code())

            threads = [threading.Thread(target=upload, args=(p,)) for p in payloads]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=60)
            assert all(code in (grpc.StatusCode.ABORTED, grpc.StatusCode.FAILED_PRECONDITION) for code in errors)
            row = next(r for r in srv.store.checkpoints(job_id) if r.step == step)
            assert hashlib.sha256(Path(row.path).read_bytes()).hexdigest() == row.sha256, f"round {round_}"
    files = stored_files(srv, job_id)
    assert not [f for f in files if f.endswith(".tmp")], files
    recorded = {Path(r.path).name for r in srv.store.checkpoints(job_id)}
    assert set(files) == recorded  # no file without its record


def test_a_leftover_link_at_the_seed_path_does_not_break_a_resume_nor_touch_another_file(start_coordinator):
    srv = idle_server(start_coordinator)
    job_id, token = running_job(srv)
    with grpc.insecure_channel(srv.address) as ch:
        worker = worker_stub(ch, token)
        upload_checkpoint(worker, job_id, 10, b"step ten" * 1000)
        upload_checkpoint(worker, job_id, 20, b"step twenty" * 1000)
    srv.store.transition(job_id, JobState.FAILED, "failed for the test", attempt=1)
    rows = {r.step: r for r in srv.store.checkpoints(job_id)}
    # a crash between an earlier resume's seed link and its job's record left links at the new job's path
    seed_dir = srv.data_dir / "checkpoints" / f"{job_id}-r1"
    seed_dir.mkdir(parents=True)
    os.link(rows[20].path, seed_dir / "step-00000020.npz")         # the very file it will seed from
    api = job_stub(srv)
    resumed = api.ResumeJob(pb.ResumeJobRequest(job_id=job_id))
    assert resumed.id == f"{job_id}-r1"
    seeded = srv.store.checkpoints(resumed.id)
    assert [r.step for r in seeded] == [20]
    assert hashlib.sha256(Path(seeded[0].path).read_bytes()).hexdigest() == rows[20].sha256

    # again, with the leftover being a link to ANOTHER checkpoint: a copy over it would overwrite that one
    srv.store.transition(resumed.id, JobState.CANCELLED, "cancelled for the test")
    seed_dir = srv.data_dir / "checkpoints" / f"{job_id}-r2"
    seed_dir.mkdir(parents=True)
    os.link(rows[10].path, seed_dir / "step-00000020.npz")
    resumed = api.ResumeJob(pb.ResumeJobRequest(job_id=job_id))
    assert resumed.id == f"{job_id}-r2"
    assert hashlib.sha256(Path(rows[10].path).read_bytes()).hexdigest() == rows[10].sha256, "step 10 was overwritten"
