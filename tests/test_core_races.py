"""Races and half-failures of the coordinator core, each provoked for real: threads reaping and stopping one
process at once, a store error while an attempt's end is recorded, tokens outliving their attempt, a
checkpoint file deleted between choosing and opening it, and a wildcard bind nobody can be told about."""
from __future__ import annotations

import json
import os
import random
import sqlite3
import sys
import textwrap
import threading
import time
from pathlib import Path

import grpc
import pytest

from conftest import AuthedJobStub
from coordinator.supervision.launcher import WorkerProcess, build_worker_env
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.wire import KIND_CHECKPOINT, KIND_TRAILER
from helpers import expect_error, idle_server, running_job, small_digits_spec, upload_checkpoint, wait_for, worker_stub

pytestmark = pytest.mark.timeout(120)

# exits by itself after a moment, ignoring SIGTERM, so stop() has to escalate while pollers race to reap it
SELF_EXITING = textwrap.dedent("""
    import signal, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(float(sys.argv[1]))
    sys.exit(3)
""")


def _leader_reaped(pid: int) -> bool:
    try:
        os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return True
    return False


@pytest.mark.parametrize("run_for", [0.2, 0.4])
def test_concurrent_poll_and_stop_see_one_exit_and_never_signal_a_reaped_group(tmp_path, monkeypatch, run_for):
    env = build_worker_env(os.environ, job_token="t", attempt_tag=f"race-{os.getpid()}-{run_for}")
    proc = WorkerProcess.start([sys.executable, "-c", SELF_EXITING, str(run_for)], env, tmp_path / "p.log",
                               cwd=tmp_path)
    real_killpg = os.killpg
    late_signals: list[tuple[int, int]] = []

    def recording_killpg(pgid: int, sig: int) -> None:
        time.sleep(random.uniform(0, 0.02))  # a thread preempted just before its signal (the race's window)
        if sig != 0 and pgid == proc.pgid and _leader_reaped(proc.pid):
            late_signals.append((pgid, sig))  # the group id may already belong to someone else
        real_killpg(pgid, sig)

    monkeypatch.setattr(os, "killpg", recording_killpg)
    start = threading.Barrier(12)
    exits, errors = [], []

    def poller() -> None:
        try:
            start.wait()
            exits.append(wait_for(proc.poll, timeout=30, interval=0.0005, what="the exit"))
        except Exception as err:  # noqa: BLE001 - collected and asserted below
            errors.append(err)

    def stopper() -> None:
        try:
            start.wait()
            exits.append(proc.stop(grace_s=run_for / 2))
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=poller) for _ in range(8)] + [threading.Thread(target=stopper) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(exits) == 12 and len(set(exits)) == 1, exits
    assert late_signals == []
    assert proc.poll() == exits[0] and _leader_reaped(proc.pid)


def test_job_moves_on_when_recording_its_attempt_end_fails(start_coordinator, tmp_path, monkeypatch):
    srv = start_coordinator()

    def broken_end_attempt(*args, **kwargs):
        raise sqlite3.OperationalError("disk I/O error (injected)")

    monkeypatch.setattr(srv.store, "end_attempt", broken_end_attempt)
    spec = small_digits_spec(steps=20, workers=1)
    spec["fault"] = {"max_restarts": 0}
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, srv.token, timeout=60)
        api.SubmitJob(pb.SubmitJobRequest(spec=json.dumps(spec), job_id="unrecorded"))
        job = wait_for(lambda: (j := api.GetJob(pb.GetJobRequest(job_id="unrecorded"))).ended_unix and j,
                       timeout=90, what="the job to leave RUNNING")
    assert job.state == pb.FAILED, job.message
    assert "could not record how attempt 1 ended (OperationalError: disk I/O error (injected))" in job.message
    assert not srv.core.supervisor.is_active("unrecorded")  # its slots are free again


def test_job_token_lives_only_while_its_attempt_runs(start_coordinator):
    srv = start_coordinator()
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, srv.token, timeout=60)
        api.SubmitJob(pb.SubmitJobRequest(spec=json.dumps(small_digits_spec(steps=200000, workers=1)),
                                          job_id="tok"))
        with pytest.raises(KeyError):
            srv.job_token("never-submitted")

        def token():
            try:
                return srv.job_token("tok")
            except KeyError:
                return None
        plain = wait_for(token, timeout=60, what="the attempt to start")
        reply = worker_stub(ch, plain).ReportProgress(pb.ReportProgressRequest(job_id="tok", attempt=1))
        assert not reply.cancel_requested  # it is the attempt's real token
        api.CancelJob(pb.CancelJobRequest(job_id="tok"))
        wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id="tok")).state == pb.CANCELLED, timeout=60,
                 what="the cancel")
    with pytest.raises(KeyError):
        srv.job_token("tok")


def test_checkpoint_removed_between_choosing_and_opening_is_not_found(start_coordinator, monkeypatch):
    srv = idle_server(start_coordinator)
    job_id, token = running_job(srv)
    with grpc.insecure_channel(srv.address) as ch:
        upload_checkpoint(worker_stub(ch, token), job_id, 10, b"x" * 5000, val_loss=0.5)
        checkpoints = srv.core.checkpoints
        choose = checkpoints.choose

        def choose_then_lose_the_file(*args, **kwargs):
            row = choose(*args, **kwargs)
            Path(row.path).unlink(missing_ok=True)  # what retention does when a newer upload lands at this moment
            return row

        monkeypatch.setattr(checkpoints, "choose", choose_then_lose_the_file)
        api = AuthedJobStub(ch, srv.token)
        calls = [lambda: list(api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id=job_id, step=10))),
                 lambda: list(worker_stub(ch, token).FetchCheckpoint(pb.FetchCheckpointRequest(job_id=job_id,
                                                                                               step=10)))]
        for call in calls:
            err = expect_error(grpc.StatusCode.NOT_FOUND, call, match="step 10")  # not INTERNAL
            assert dict(err.trailing_metadata())[KIND_TRAILER] == KIND_CHECKPOINT


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
def test_serving_on_every_interface_needs_an_advertise_address(tmp_path, host):
    from coordinator.api.server import start_server
    with pytest.raises(ValueError) as err:
        start_server(tmp_path / "d", host=host, port=0, slots=1)
    message = str(err.value)
    assert "--advertise-address" in message and "\n" not in message
    assert not (tmp_path / "d" / "gradmesh.db").exists()  # refused before anything was opened
