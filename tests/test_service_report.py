"""worker/report.py's CoordinatorHooks against a real coordinator (its scheduler stopped, so the test plays
rank 0 of a RUNNING attempt with a known job token): fetch, heartbeat progress, metric points, checkpoint
uploads (a private copy taken before the original is deleted), cancel seen through poll_stop, failure events."""
from __future__ import annotations

import hashlib
import math
import time

import grpc
import pytest

from conftest import AuthedJobStub
from coordinator.reports import FailureCause, WorkerEvent
from coordinator.rpc import gradmesh_pb2 as pb
from helpers import idle_server, running_job, upload_checkpoint, wait_for, worker_stub
from worker.report import CoordinatorHooks, CoordinatorRefused

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def idle(start_coordinator):
    return idle_server(start_coordinator)


def point(step, val_loss=math.nan):
    return {"step": step, "epoch": 0, "train_loss": 1.0, "val_loss": val_loss, "val_accuracy": math.nan,
            "samples_per_second": 500.0, "lr": 0.01, "time_unix": time.time()}


def test_hooks_report_progress_points_checkpoints_and_hear_cancel(idle, tmp_path):
    job_id, token = running_job(idle)
    hooks = CoordinatorHooks(idle.address, job_id, token, 1, tmp_path / "work", heartbeat_s=0.1)
    spec_json, resume = hooks.fetch()
    assert '"steps": 40' in spec_json and resume is None
    with grpc.insecure_channel(idle.address) as ch:
        api = AuthedJobStub(ch, idle.token)
        hooks.on_start(step=0, total_steps=40, epoch=0, info={"ranks": 2})
        hooks.on_step(7)  # between evaluations: only the heartbeat tells
        wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id=job_id)).step == 7)
        assert idle.store.attempt(job_id, 1).worker_message == "2 rank(s)"
        hooks.on_metrics(point(10))
        hooks.on_metrics(point(20, val_loss=0.5))
        original = tmp_path / "ckpt-20.npz"
        original.write_bytes(b"checkpoint bytes" * 1000)
        hooks.on_checkpoint(original, step=20, epoch=0, is_final=False, metrics=point(20, 0.5))
        original.unlink()  # keep_last rotation may delete it at once: the hooks took their own copy
        wait_for(lambda: len(api.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job_id)).checkpoints) == 1)
        info = api.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job_id)).checkpoints[0]
        assert info.sha256 == hashlib.sha256(b"checkpoint bytes" * 1000).hexdigest() and info.val_loss == 0.5
        assert [p.step for p in api.GetMetrics(pb.GetMetricsRequest(job_id=job_id)).points] == [10, 20]
        assert hooks.poll_stop() is None
        api.CancelJob(pb.CancelJobRequest(job_id=job_id, checkpoint=True))
        wait_for(lambda: hooks.poll_stop() is not None)
        assert hooks.poll_stop().checkpoint
        hooks.on_finish(step=23, epoch=0, status="stopped", message="stopped at step 23 on request")
        assert hooks.close(timeout=10)
    attempt = idle.store.attempt(job_id, 1)
    assert (attempt.worker_event, attempt.worker_message) == (WorkerEvent.STOPPED, "stopped at step 23 on request")
    assert not any((tmp_path / "work" / ".pending-uploads").iterdir())


def test_report_failure_and_a_wrong_token(idle, tmp_path):
    job_id, token = running_job(idle)
    hooks = CoordinatorHooks(idle.address, job_id, token, 1, tmp_path)
    hooks.report_failure(pb.WorkerFailure(cause=pb.FAILURE_CAUSE_BAD_DATA, rank=0, host="h",
                                          message="data.source: x has 12 features"))
    attempt = idle.store.attempt(job_id, 1)
    assert (attempt.worker_event, attempt.worker_message) == (WorkerEvent.FAILING, "data.source: x has 12 features")
    assert (attempt.failure.cause, attempt.failure.message) == (FailureCause.BAD_DATA, "data.source: x has 12 features")
    hooks.close(timeout=1)
    intruder = CoordinatorHooks(idle.address, job_id, "wrong", 1, tmp_path)
    with pytest.raises(CoordinatorRefused, match="UNAUTHENTICATED"):
        intruder.fetch()
    intruder.close(timeout=1)


def test_resume_checkpoint_is_fetched_and_verified(idle, tmp_path):
    job_id, token = running_job(idle)
    payload = b"resume me" * 5000
    with grpc.insecure_channel(idle.address) as ch:
        upload_checkpoint(worker_stub(ch, token), job_id, 30, payload, val_loss=0.3)
    hooks = CoordinatorHooks(idle.address, job_id, token, 1, tmp_path / "w")
    spec_json, resume = hooks.fetch()
    assert resume is not None and resume.read_bytes() == payload and resume.name == "resume-step-30.npz"
    hooks.close(timeout=1)
