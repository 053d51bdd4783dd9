"""End to end: a real coordinator on 127.0.0.1:0 launching real `mpirun -n 2 python -m worker` jobs.

Each test uses the digits data with a 64-32-10 model and a few dozen steps, so a job takes seconds.
What is proved:
  - submit → SUCCEEDED through legal states only; a metric point for every eval step; the checkpoints
    retained per keep_last + best + final; downloads match their sha256; the .npz loads with plain numpy
    and its weights reproduce the reported validation accuracy;
  - cancel of a running job → CANCELLED and no process of the job left;
  - two 2-worker jobs on 2 slots run one after the other;
  - failures end FAILED, not retried, with the exit code / the worker's reason and the log tail;
  - a coordinator stopped and restarted on the same data directory re-adopts a running job, which finishes.
"""
from __future__ import annotations

import hashlib
import io
import json
import time

import grpc
import numpy as np
import pytest

from conftest import AuthedJobStub
from coordinator.supervision.processes import group_alive, of_job as job_processes, tagged as tagged_processes
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.states import JobState
from coordinator.access.tokens import attempt_tag
from helpers import assert_legal_path, digits_toml, self_signed_cert, wait_for, watch_to_end

pytestmark = pytest.mark.timeout(180)



def spec(steps=60, eval_every=10, extra=""):
    return digits_toml("e2e-digits", steps=steps, eval_every=eval_every, lr=0.01) + extra


@pytest.fixture
def api(coordinator):
    with grpc.insecure_channel(coordinator.address) as ch:
        yield AuthedJobStub(ch, coordinator.token, timeout=120)


def test_submit_watch_metrics_checkpoints_download(coordinator, api):
    job = api.SubmitJob(pb.SubmitJobRequest(spec=spec(), job_id="ok-1")).job
    follow = api.StreamLogs(pb.StreamLogsRequest(job_id=job.id, follow=True))  # started now, read at the end
    events = watch_to_end(api, job.id)
    states = assert_legal_path(events)
    assert states == [JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED]

    final = api.GetJob(pb.GetJobRequest(job_id=job.id))
    assert final.state == pb.SUCCEEDED and final.message == "finished at step 60", final.message
    assert (final.step, final.total_steps, final.attempts, final.restarts) == (60, 60, 1, 0)
    assert final.started_unix >= final.created_unix and final.ended_unix >= final.started_unix

    points = api.GetMetrics(pb.GetMetricsRequest(job_id=job.id)).points
    assert [p.step for p in points] == list(range(10, 61, 10))  # a point for every reporting step
    assert all(np.isfinite(p.val_loss) and 0 <= p.val_accuracy <= 1 and p.attempt == 1 for p in points)
    watched = [e.metric.step for e in events if e.WhichOneof("event") == "metric"]
    assert sorted(set(watched)) == [p.step for p in points]
    assert final.latest.step == 60 and final.best.val_loss == min(p.val_loss for p in points)

    infos = api.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job.id)).checkpoints
    best_step = min((c for c in infos), key=lambda c: c.val_loss).step
    assert [c.step for c in infos][-2:] == [40, 60] and infos[-1].is_final
    assert set(c.step for c in infos) <= {20, 40, 60} and best_step in [c.step for c in infos]

    downloads = {}
    for request in (pb.DownloadCheckpointRequest(job_id=job.id, latest=True),
                    pb.DownloadCheckpointRequest(job_id=job.id, best=True),
                    pb.DownloadCheckpointRequest(job_id=job.id, step=40)):
        chunks = list(api.DownloadCheckpoint(request))
        data = b"".join(c.data for c in chunks)
        assert hashlib.sha256(data).hexdigest() == chunks[0].info.sha256 == next(
            c.sha256 for c in infos if c.step == chunks[0].info.step)
        downloads[chunks[0].info.step] = data
    assert set(downloads) == {60, 40} | {best_step}

    # the final checkpoint loads with plain numpy and its weights give the reported accuracy
    with np.load(io.BytesIO(downloads[60]), allow_pickle=False) as npz:
        weights = [(npz[f"layers.{i}.W"], npz[f"layers.{i}.b"]) for i in range(2)]
        meta = json.loads(str(npz["meta"]))
    assert meta["step"] == 60 and weights[0][0].shape == (64, 32)
    from worker.data import load_dataset
    from worker.spec import parse_spec_text
    s = parse_spec_text(final.spec_json)
    val = load_dataset(s.data, s.model.layers, s.model.loss, s.train.seed).val
    x, y = val.rows(np.arange(len(val)))
    hidden = np.maximum(x.astype(np.float64) @ weights[0][0] + weights[0][1], 0)
    accuracy = float(np.mean(np.argmax(hidden @ weights[1][0] + weights[1][1], axis=1) == y))
    assert abs(accuracy - points[-1].val_accuracy) <= 1.0 / len(y) + 1e-9

    log = b"".join(c.data for c in api.StreamLogs(pb.StreamLogsRequest(job_id=job.id))).decode()
    assert "mpirun -n 2" in log and "done at step 60" in log
    followed = list(follow)  # ends by itself because the job ended
    assert b"".join(c.data for c in followed).decode() == log and {c.attempt for c in followed} == {1}
    assert not job_processes(job.id)


def test_cancel_running_job_leaves_no_process(coordinator, api):
    job = api.SubmitJob(pb.SubmitJobRequest(spec=spec(steps=200000, eval_every=20), job_id="cancel-1")).job
    wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id=job.id)).latest.step >= 20, what="the first metric point")
    assert job_processes(job.id), "workers should be running"
    attempt = coordinator.store.attempt(job.id, 1)
    assert attempt.pgid > 0 and group_alive(attempt.pgid)
    # the attempt's job token (kept in memory for tests and benchmarks) is what its rank 0 uses
    with grpc.insecure_channel(coordinator.address) as ch:
        reply = rpc.WorkerServiceStub(ch).ReportProgress(
            pb.ReportProgressRequest(job_id=job.id, attempt=1), timeout=10,
            metadata=(("x-gradmesh-job-token", coordinator.job_token(job.id)),))
    assert not reply.cancel_requested
    t0 = time.monotonic()
    api.CancelJob(pb.CancelJobRequest(job_id=job.id))
    events = watch_to_end(api, job.id, timeout=60)
    assert_legal_path(events)
    final = api.GetJob(pb.GetJobRequest(job_id=job.id))
    assert final.state == pb.CANCELLED and "cancelled on request" in final.message
    assert time.monotonic() - t0 < 20
    assert not group_alive(attempt.pgid) and not job_processes(job.id)
    assert tagged_processes(attempt_tag(coordinator.store.get_job(job.id).token_hash)) == []  # proxies too
    assert coordinator.store.attempt(job.id, 1).outcome == "cancelled"


def test_two_jobs_that_do_not_fit_together_run_one_after_the_other(coordinator, api):
    a = api.SubmitJob(pb.SubmitJobRequest(spec=spec(steps=30), job_id="seq-a")).job
    b = api.SubmitJob(pb.SubmitJobRequest(spec=spec(steps=30), job_id="seq-b")).job
    watch_to_end(api, a.id)
    watch_to_end(api, b.id)
    ja = api.GetJob(pb.GetJobRequest(job_id=a.id))
    jb = api.GetJob(pb.GetJobRequest(job_id=b.id))
    assert ja.state == jb.state == pb.SUCCEEDED
    a_end = next(h.time_unix for h in ja.history if h.state == pb.SUCCEEDED)
    b_run = next(h.time_unix for h in jb.history if h.state == pb.RUNNING)
    assert b_run >= a_end, "b started before a released its slots"


@pytest.mark.parametrize("case", ["exit-code", "bad-data", "nan"])
def test_failing_job_ends_failed_with_reason_and_log_tail(coordinator, api, monkeypatch, tmp_path, case):
    extra = ""
    if case == "exit-code":
        monkeypatch.setenv("GRADMESH_FAULT", "exit:rank=1:step=5:code=7")
        extra = "[fault]\nmax_restarts = 0\n"  # retryable, but this job allows no restart
    elif case == "nan":
        monkeypatch.setenv("GRADMESH_FAULT", "nan:step=5")
    else:
        np.savez(tmp_path / "wrong.npz", x=np.zeros((50, 12), np.float32), y=np.zeros(50, np.int64))
        extra = '[data]\nsource = "wrong.npz"\n'
    job = api.SubmitJob(pb.SubmitJobRequest(spec=spec() + extra, job_id=f"fail-{case}")).job
    assert_legal_path(watch_to_end(api, job.id))
    final = api.GetJob(pb.GetJobRequest(job_id=job.id))
    # bad data and NaN are never retried, although this spec allows 2 restarts (the default)
    assert final.state == pb.FAILED and final.attempts == 1, final.message
    message = final.message
    if case == "exit-code":
        assert "mpirun failed with exit code" in message and "last lines of attempt-1.log" in message
        # mpirun passes on the dead rank's 7 -- or, under load, the 9 of the rank it killed first (hydra)
        code = coordinator.store.attempt(job.id, 1).exit_code
        assert code in (7, 9) and message.startswith(f"mpirun failed with exit code {code}"), message
    elif case == "nan":
        assert message.startswith("loss became NaN at step 5") and "not retried" in message, message
    else:
        assert "12 features" in message and "not retried" in message and "exit code 2" in message
    assert not job_processes(job.id)


# The job must outlive a coordinator's stop and restart (1-2 s) by a wide margin, and no more
ADOPTED_STEPS = 4000


def test_restarted_coordinator_re_adopts_a_running_job(start_coordinator, tmp_path):
    data_dir = tmp_path / "shared-data"
    first = start_coordinator(data_dir)
    port = first.port
    with grpc.insecure_channel(first.address) as ch:
        api = AuthedJobStub(ch, first.token, timeout=60)
        api.SubmitJob(pb.SubmitJobRequest(spec=spec(steps=ADOPTED_STEPS, eval_every=20), job_id="adopt-1"))
        wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id="adopt-1")).latest.step >= 20, what="first point")
    first.stop(grace=1.0, stop_jobs=False)  # the job keeps training in its own session
    assert job_processes("adopt-1")
    second = start_coordinator(data_dir, port=port)
    assert second.token == first.token  # read back from DATA_DIR/token
    with grpc.insecure_channel(second.address) as ch:
        api = AuthedJobStub(ch, second.token, timeout=120)
        events = watch_to_end(api, "adopt-1")
        final = api.GetJob(pb.GetJobRequest(job_id="adopt-1"))
        assert final.state == pb.SUCCEEDED, final.message
        assert_legal_path(events)
        steps = [p.step for p in api.GetMetrics(pb.GetMetricsRequest(job_id="adopt-1")).points]
        assert steps == list(range(20, ADOPTED_STEPS + 1, 20))  # nothing lost while no coordinator listened
    assert not job_processes("adopt-1")


def test_a_host_list_pool_passes_hosts_to_mpirun(start_coordinator):
    """Two 'hosts' that are both this machine: the slots come from the list and mpirun gets -hosts."""
    srv = start_coordinator(slots=None, hosts=[("localhost", 1), ("127.0.0.1", 1)])
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, srv.token, timeout=120)
        too_big = spec().replace("workers = 2", "workers = 3")
        with pytest.raises(grpc.RpcError) as err:
            api.SubmitJob(pb.SubmitJobRequest(spec=too_big))
        assert "workers: the job needs 3 worker slots but this coordinator has 2" in err.value.details()
        api.SubmitJob(pb.SubmitJobRequest(spec=spec(steps=20), job_id="hosts-1"))
        watch_to_end(api, "hosts-1")
        assert api.GetJob(pb.GetJobRequest(job_id="hosts-1")).state == pb.SUCCEEDED
        assert srv.store.attempt("hosts-1", 1).hosts == "localhost:1,127.0.0.1:1"
        log = b"".join(c.data for c in api.StreamLogs(pb.StreamLogsRequest(job_id="hosts-1"))).decode()
        assert "mpirun -n 2 -hosts localhost:1,127.0.0.1:1 " in log


def test_tls_coordinator_runs_a_job_end_to_end(start_coordinator, tmp_path):
    """With TLS the ranks get GRADMESH_TLS_CA and report over TLS too."""
    cert, key = self_signed_cert(tmp_path)
    srv = start_coordinator(tls_cert=cert, tls_key=key)
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(srv.address, creds) as ch:
        api = AuthedJobStub(ch, srv.token, timeout=120)
        api.SubmitJob(pb.SubmitJobRequest(spec=spec(steps=20), job_id="tls-1"))
        watch_to_end(api, "tls-1")
        job = api.GetJob(pb.GetJobRequest(job_id="tls-1"))
        assert job.state == pb.SUCCEEDED, job.message
        assert [p.step for p in api.GetMetrics(pb.GetMetricsRequest(job_id="tls-1")).points] == [10, 20]
