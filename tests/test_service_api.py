"""The gRPC API of a real coordinator on 127.0.0.1:0, through real stubs, without launching workers.

The scheduler of these servers is stopped, so submitted jobs stay QUEUED and a "running" job is made by
starting an attempt in the store with a known job token; the worker-facing RPCs are then exercised as a
rank would call them. Every refusal must carry the right status code and a message naming the field or
the missing thing; afterwards the server still answers and the database passes SQLite's integrity check.
"""
from __future__ import annotations

import hashlib
import json
import math
import os

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import AuthedJobStub
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.wire import FIELD_TRAILER, KIND_CHECKPOINT, KIND_JOB, KIND_TRAILER, METRICS_PAGE
from helpers import SMALL_SPEC, expect_error, idle_server, running_job, self_signed_cert, upload_checkpoint, worker_stub

pytestmark = pytest.mark.timeout(60)

SPEC = SMALL_SPEC
CODE = grpc.StatusCode


@pytest.fixture
def idle(start_coordinator):
    return idle_server(start_coordinator)  # nothing is launched: jobs stay where the test puts them


@pytest.fixture
def api(idle):
    with grpc.insecure_channel(idle.address) as ch:
        yield AuthedJobStub(ch, idle.token)


@pytest.fixture
def worker_channel(idle):
    with grpc.insecure_channel(idle.address) as ch:
        yield ch


# ---------------------------------------------------------------- health, reflection, auth

def test_health_reports_serving_without_a_token(idle, worker_channel):
    health = health_pb2_grpc.HealthStub(worker_channel)
    for service in ("", "gradmesh.v1.JobService", "gradmesh.v1.WorkerService"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_both_services_to_token_holders(idle, worker_channel):
    stub = reflection_pb2_grpc.ServerReflectionStub(worker_channel)
    ask = [reflection_pb2.ServerReflectionRequest(list_services="")]
    expect_error(CODE.UNAUTHENTICATED, lambda: list(stub.ServerReflectionInfo(iter(ask), timeout=5)))
    replies = stub.ServerReflectionInfo(iter(ask), timeout=5, metadata=(("authorization", f"Bearer {idle.token}"),))
    names = {s.name for r in replies for s in r.list_services_response.service}
    assert {"gradmesh.v1.JobService", "gradmesh.v1.WorkerService", "grpc.health.v1.Health"} <= names


def test_client_calls_need_the_bearer_token(idle, worker_channel):
    stub = rpc.JobServiceStub(worker_channel)
    expect_error(CODE.UNAUTHENTICATED, stub.GetJob, pb.GetJobRequest(job_id="x"), match="authorization")
    err = expect_error(CODE.UNAUTHENTICATED, lambda: stub.ListJobs(pb.ListJobsRequest(), timeout=5,
                                                                   metadata=(("authorization", "Bearer nope"),)))
    assert "wrong bearer token" in err.details()
    expect_error(CODE.UNAUTHENTICATED, lambda: list(stub.WatchJob(pb.WatchJobRequest(job_id="x"), timeout=5)))
    assert AuthedJobStub(worker_channel, idle.token).ListJobs(pb.ListJobsRequest()).jobs == []


def test_token_file_is_private(idle):
    path = idle.data_dir / "token"
    assert path.read_text().strip() == idle.token and (path.stat().st_mode & 0o777) == 0o600


def test_worker_token_is_good_for_its_own_job_only(idle, worker_channel):
    job_a, token_a = running_job(idle, "job-a", "token-a")
    job_b, _ = running_job(idle, "job-b", "token-b")
    assert worker_stub(worker_channel, token_a).FetchJob(pb.FetchJobRequest(job_id=job_a)).attempt == 1
    expect_error(CODE.UNAUTHENTICATED, worker_stub(worker_channel, token_a).FetchJob, pb.FetchJobRequest(job_id=job_b),
                 match="job-b")
    expect_error(CODE.UNAUTHENTICATED, worker_stub(worker_channel, "guess").ReportProgress,
                 pb.ReportProgressRequest(job_id=job_a))
    expect_error(CODE.UNAUTHENTICATED, rpc.WorkerServiceStub(worker_channel).FetchJob,
                 pb.FetchJobRequest(job_id=job_a), match="x-gradmesh-job-token")
    # the client bearer token is not a job token
    expect_error(CODE.UNAUTHENTICATED, worker_stub(worker_channel, idle.token).FetchJob, pb.FetchJobRequest(job_id=job_a))


# ---------------------------------------------------------------- invalid input, everywhere

def _spec(**changes):
    text = SPEC
    for old, new in changes.items():
        text = text.replace(old, new)
    return text


@pytest.fixture
def data_root_files(idle, tmp_path):
    outside = tmp_path.parent / f"{tmp_path.name}-outside.npz"
    outside.write_bytes(b"x")
    link = tmp_path / "link.npz"
    link.symlink_to(outside)
    yield outside, link
    outside.unlink(missing_ok=True)


INVALID_CLIENT_CALLS = [
    ("SubmitJob", pb.SubmitJobRequest(spec=""), "spec: must not be empty"),
    ("SubmitJob", pb.SubmitJobRequest(spec="name = ["), "file: not valid TOML"),
    ("SubmitJob", pb.SubmitJobRequest(spec=_spec(**{"batch_size = 32": "batch_size = 0"})), "train.batch_size:"),
    ("SubmitJob", pb.SubmitJobRequest(spec=_spec(**{"[train]": "[train]\nbogus = 1"})), "train.bogus: unknown key"),
    ("SubmitJob", pb.SubmitJobRequest(spec=SPEC, job_id="../etc"), "job_id:"),
    ("SubmitJob", pb.SubmitJobRequest(spec=SPEC, workers=-1), "workers: must not be negative"),
    ("SubmitJob", pb.SubmitJobRequest(spec=SPEC, workers=99), "workers: the job needs 99 worker slots"),
    ("SubmitJob", pb.SubmitJobRequest(spec=SPEC, labels={"bad key!": "v"}), "labels[bad key!]"),
    ("SubmitJob", pb.SubmitJobRequest(spec=_spec(**{"[train]": '[data]\nsource = "/etc/passwd"\n[train]'})),
     "data.source: '/etc/passwd' resolves to /etc/passwd, which is outside the data roots"),
    ("SubmitJob", pb.SubmitJobRequest(spec=_spec(**{"[train]": '[data]\nsource = "link.npz"\n[train]'})),
     "which is outside the data roots"),
    ("SubmitJob", pb.SubmitJobRequest(spec=_spec(**{"[train]": '[data]\nsource = "nope.npz"\n[train]'})),
     "data.source: 'nope.npz' does not exist under the data roots"),
    ("GetJob", pb.GetJobRequest(job_id=""), "job_id: must not be empty"),
    ("GetJob", pb.GetJobRequest(job_id="a/b"), "job_id:"),
    ("ListJobs", pb.ListJobsRequest(page_size=-1), "page_size:"),
    ("ListJobs", pb.ListJobsRequest(page_size=5000), "page_size:"),
    ("ListJobs", pb.ListJobsRequest(page_token="xyz"), "page_token:"),
    ("ListJobs", pb.ListJobsRequest(states=[99]), "states: 99 is not a job state"),
    ("ListJobs", pb.ListJobsRequest(states=[0]), "states: 0 is not a job state"),
    ("CancelJob", pb.CancelJobRequest(job_id=""), "job_id:"),
    ("WatchJob", pb.WatchJobRequest(job_id="q1", from_step=-1), "from_step: must not be negative"),
    ("GetMetrics", pb.GetMetricsRequest(job_id="q1", from_step=-5), "from_step:"),
    ("StreamLogs", pb.StreamLogsRequest(job_id="q1", attempt=-1), "attempt:"),
    ("StreamLogs", pb.StreamLogsRequest(job_id="q1", attempt=3), "attempt: job q1 has 0 attempt(s)"),
    ("DownloadCheckpoint", pb.DownloadCheckpointRequest(job_id="q1", step=-2), "step:"),
    ("ResumeJob", pb.ResumeJobRequest(job_id=""), "job_id:"),
    ("ResumeJob", pb.ResumeJobRequest(job_id="q1", workers=-2), "workers: must not be negative"),
    ("DeleteJob", pb.DeleteJobRequest(job_id=""), "job_id:"),
    ("DeleteJob", pb.DeleteJobRequest(job_id="a/../../b"), "job_id:"),
]


@pytest.mark.parametrize("method,request_msg,message", INVALID_CLIENT_CALLS,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(INVALID_CLIENT_CALLS)])
def test_invalid_client_input_is_invalid_argument_naming_the_field(idle, api, data_root_files, method,
                                                                   request_msg, message):
    api.SubmitJob(pb.SubmitJobRequest(spec=SPEC, job_id="q1"))
    before = idle.store.list_jobs(limit=100)
    err = expect_error(CODE.INVALID_ARGUMENT, getattr(api, method), request_msg, match=message)
    field = dict(err.trailing_metadata() or ()).get(FIELD_TRAILER)
    assert field and err.details().startswith(field + ": ")
    assert idle.store.list_jobs(limit=100) == before and idle.store.integrity_ok()
    assert api.GetJob(pb.GetJobRequest(job_id="q1")).state == pb.QUEUED  # still serving


NOT_FOUND_CALLS = [
    ("GetJob", pb.GetJobRequest(job_id="ghost"), "job ghost not found"),
    ("CancelJob", pb.CancelJobRequest(job_id="ghost"), "job ghost not found"),
    ("ResumeJob", pb.ResumeJobRequest(job_id="ghost"), "job ghost not found"),
    ("DeleteJob", pb.DeleteJobRequest(job_id="ghost"), "job ghost not found"),
    ("WatchJob", pb.WatchJobRequest(job_id="ghost"), "job ghost not found"),
    ("GetMetrics", pb.GetMetricsRequest(job_id="ghost"), "job ghost not found"),
    ("StreamLogs", pb.StreamLogsRequest(job_id="ghost"), "job ghost not found"),
    ("ListCheckpoints", pb.ListCheckpointsRequest(job_id="ghost"), "job ghost not found"),
    ("DownloadCheckpoint", pb.DownloadCheckpointRequest(job_id="ghost"), "job ghost not found"),
    ("DownloadCheckpoint", pb.DownloadCheckpointRequest(job_id="q1"), "checkpoint: job q1 has no checkpoints"),
    ("DownloadCheckpoint", pb.DownloadCheckpointRequest(job_id="q1", best=True), "checkpoint"),
    ("DownloadCheckpoint", pb.DownloadCheckpointRequest(job_id="q1", step=7), "checkpoint at step 7 not found"),
]


@pytest.mark.parametrize("method,request_msg,message", NOT_FOUND_CALLS,
                         ids=[f"{m}-{i}" for i, (m, _, _) in enumerate(NOT_FOUND_CALLS)])
def test_missing_things_are_not_found(api, method, request_msg, message):
    api.SubmitJob(pb.SubmitJobRequest(spec=SPEC, job_id="q1"))
    err = expect_error(CODE.NOT_FOUND, getattr(api, method), request_msg, match=message)
    kind = KIND_CHECKPOINT if "checkpoint" in message else KIND_JOB  # the client reads the kind, not the words
    assert dict(err.trailing_metadata() or ()).get(KIND_TRAILER) == kind


def test_malformed_request_bytes_are_invalid_argument(idle, worker_channel):
    md = (("authorization", f"Bearer {idle.token}"),)
    raw = worker_channel.unary_unary("/gradmesh.v1.JobService/GetJob")  # no serializer: bytes go as they are
    err = expect_error(CODE.INVALID_ARGUMENT, lambda: raw(b"\xff\xff\xff\xff", timeout=5, metadata=md))
    assert "request: cannot parse the gradmesh.v1.GetJobRequest message" in err.details()
    stream = worker_channel.unary_stream("/gradmesh.v1.JobService/WatchJob")
    expect_error(CODE.INVALID_ARGUMENT, lambda: list(stream(b"\x0a\xff", timeout=5, metadata=md)))
    assert AuthedJobStub(worker_channel, idle.token).ListJobs(pb.ListJobsRequest()).jobs == []


def test_invalid_worker_input(idle, worker_channel):
    job_id, token = running_job(idle)
    w = worker_stub(worker_channel, token)
    expect_error(CODE.INVALID_ARGUMENT, w.ReportProgress, pb.ReportProgressRequest(job_id=job_id, event="explode"),
                 match="event:")
    expect_error(CODE.INVALID_ARGUMENT, w.ReportProgress, pb.ReportProgressRequest(job_id=job_id, step=-3),
                 match="step: must not be negative")
    expect_error(CODE.INVALID_ARGUMENT, w.ReportProgress,
                 pb.ReportProgressRequest(job_id=job_id, points=[pb.MetricPoint(step=-1)]), match="points[0].step")
    expect_error(CODE.FAILED_PRECONDITION, w.FetchJob, pb.FetchJobRequest(job_id=job_id, attempt=5), match="attempt")
    expect_error(CODE.INVALID_ARGUMENT, w.UploadCheckpoint, iter([pb.UploadCheckpointRequest(job_id=job_id, data=b"x")]),
                 match="info:")
    expect_error(CODE.INVALID_ARGUMENT, w.UploadCheckpoint, iter([]), match="info: the upload stream was empty")
    bad_sha = pb.CheckpointInfo(step=10, sha256="abc", size_bytes=1)
    expect_error(CODE.INVALID_ARGUMENT, w.UploadCheckpoint,
                 iter([pb.UploadCheckpointRequest(job_id=job_id, info=bad_sha, data=b"x")]), match="info.sha256")
    wrong = pb.CheckpointInfo(step=10, sha256=hashlib.sha256(b"other").hexdigest(), size_bytes=4)
    expect_error(CODE.INVALID_ARGUMENT, w.UploadCheckpoint,
                 iter([pb.UploadCheckpointRequest(job_id=job_id, info=wrong, data=b"data")]), match="sha256 of the received")
    mixed = pb.CheckpointInfo(step=10, sha256=hashlib.sha256(b"ab").hexdigest(), size_bytes=2)
    expect_error(CODE.INVALID_ARGUMENT, w.UploadCheckpoint,
                 iter([pb.UploadCheckpointRequest(job_id=job_id, info=mixed, data=b"a"),
                       pb.UploadCheckpointRequest(job_id="other", data=b"b")]), match="messages[1].job_id")
    expect_error(CODE.NOT_FOUND, lambda: list(w.FetchCheckpoint(pb.FetchCheckpointRequest(job_id=job_id, step=3))),
                 match="checkpoint at step 3")
    ckpt_dir = idle.data_dir / "checkpoints" / job_id
    assert not ckpt_dir.exists() or list(ckpt_dir.iterdir()) == []  # refused uploads leave no file behind
    assert idle.store.checkpoints(job_id) == [] and idle.store.integrity_ok()


# ---------------------------------------------------------------- behaviour

def test_submit_is_idempotent_on_the_job_id(idle, api):
    first = api.SubmitJob(pb.SubmitJobRequest(spec=SPEC, job_id="same", labels={"team": "a"}))
    assert first.created and first.job.id == "same" and first.job.state == pb.QUEUED
    assert dict(first.job.labels) == {"team": "a"} and first.job.total_steps == 40
    again = api.SubmitJob(pb.SubmitJobRequest(spec=SPEC, job_id="same"))
    assert not again.created and again.job.created_unix == first.job.created_unix
    err = expect_error(CODE.ALREADY_EXISTS, api.SubmitJob,
                       pb.SubmitJobRequest(spec=_spec(**{"steps = 40": "steps = 41"}), job_id="same"))
    assert "job_id: job same already exists with a different spec" in err.details()
    generated = api.SubmitJob(pb.SubmitJobRequest(spec=SPEC)).job.id
    assert generated.startswith("api-test-") and generated != "same"
    assert len(idle.store.list_jobs(limit=10)) == 2


def test_submitted_spec_is_canonical_with_overrides_and_absolute_dataset_path(idle, api, tmp_path):
    (tmp_path / "sets").mkdir()
    (tmp_path / "sets" / "d.npz").write_bytes(b"whatever")  # content is the worker's business
    spec = _spec(**{"[train]": '[data]\nsource = "sets/d.npz"\n[train]'})
    job = api.SubmitJob(pb.SubmitJobRequest(spec=spec, workers=2)).job
    stored = json.loads(job.spec_json)
    assert stored["workers"] == 2 and job.workers == 2
    assert stored["data"]["source"] == str((tmp_path / "sets" / "d.npz").resolve())


def test_list_jobs_pages_newest_first_and_filters_by_state(api):
    ids = [api.SubmitJob(pb.SubmitJobRequest(spec=SPEC, job_id=f"p{i}")).job.id for i in range(5)]
    api.CancelJob(pb.CancelJobRequest(job_id="p1"))
    seen, token, pages = [], "", 0
    while True:
        reply = api.ListJobs(pb.ListJobsRequest(page_size=2, page_token=token))
        seen += [j.id for j in reply.jobs]
        pages += 1
        token = reply.next_page_token
        if not token:
            break
    assert seen == ids[::-1] and pages == 3
    queued = api.ListJobs(pb.ListJobsRequest(states=[pb.QUEUED]))
    assert [j.id for j in queued.jobs] == ["p4", "p3", "p2", "p0"]
    assert [j.id for j in api.ListJobs(pb.ListJobsRequest(states=[pb.CANCELLED])).jobs] == ["p1"]


def test_cancel_queued_job_and_watch_ends_with_the_terminal_state(api):
    api.SubmitJob(pb.SubmitJobRequest(spec=SPEC, job_id="c1"))
    job = api.CancelJob(pb.CancelJobRequest(job_id="c1"))
    assert job.state == pb.CANCELLED and job.ended_unix > 0
    assert [h.state for h in job.history] == [pb.QUEUED, pb.CANCELLED]
    assert api.CancelJob(pb.CancelJobRequest(job_id="c1")).state == pb.CANCELLED  # idempotent
    events = list(api.WatchJob(pb.WatchJobRequest(job_id="c1")))
    assert events[0].WhichOneof("event") == "snapshot" and events[0].snapshot.state == pb.CANCELLED
    assert events[-1].WhichOneof("event") == "state" and events[-1].state.state == pb.CANCELLED
    assert list(api.StreamLogs(pb.StreamLogsRequest(job_id="c1", follow=True))) == []
    expect_error(CODE.FAILED_PRECONDITION, api.ResumeJob, pb.ResumeJobRequest(job_id="c1"),
                 match="job_id: job c1 has no intact checkpoint to resume from")
    api.SubmitJob(pb.SubmitJobRequest(spec=SPEC, job_id="c2"))
    expect_error(CODE.FAILED_PRECONDITION, api.ResumeJob, pb.ResumeJobRequest(job_id="c2"),
                 match="job_id: job c2 is QUEUED; only a FAILED or CANCELLED job can be resumed")


def _point(step, val=math.nan):
    return pb.MetricPoint(step=step, epoch=0, train_loss=1.0 / step, val_loss=val, val_accuracy=math.nan,
                          samples_per_second=1000.0, lr=0.001, time_unix=1.0)


def test_worker_reports_feed_metrics_progress_watch_and_cancel(idle, api, worker_channel):
    job_id, token = running_job(idle)
    w = worker_stub(worker_channel, token)
    fetched = w.FetchJob(pb.FetchJobRequest(job_id=job_id, attempt=1))
    assert json.loads(fetched.spec_json)["train"]["steps"] == 40 and not fetched.HasField("resume_from")
    reply = w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, event="started", step=0,
                                                      total_steps=40))
    assert not reply.cancel_requested
    w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, points=[_point(10), _point(20, 0.5)],
                                              step=20, total_steps=40))
    # a retried report (duplicates) plus one new point
    w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1,
                                              points=[_point(10), _point(20, 0.5), _point(30, 0.4)], step=30,
                                              total_steps=40))
    assert [p.step for p in api.GetMetrics(pb.GetMetricsRequest(job_id=job_id)).points] == [10, 20, 30]
    job = api.GetJob(pb.GetJobRequest(job_id=job_id))
    assert (job.step, job.total_steps, job.latest.step, job.best.step) == (30, 40, 30, 30)
    assert job.eta_seconds == pytest.approx(10 * 32 / 1000.0)
    assert math.isnan(api.GetMetrics(pb.GetMetricsRequest(job_id=job_id)).points[0].val_loss)

    watch = api.WatchJob(pb.WatchJobRequest(job_id=job_id, from_step=20), timeout=20)
    first = next(watch)
    assert first.snapshot.state == pb.RUNNING
    assert [next(watch).metric.step for _ in range(2)] == [20, 30]
    w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, points=[_point(40)], step=40, total_steps=40))
    assert next(watch).metric.step == 40  # live

    cancelled = api.CancelJob(pb.CancelJobRequest(job_id=job_id, checkpoint=True))
    assert cancelled.state == pb.RUNNING  # stops when its process ends (no process here)
    reply = w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, step=40))
    assert reply.cancel_requested and reply.checkpoint_requested
    # a stale attempt is told to stop
    assert w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=9)).cancel_requested
    watch.cancel()


def test_checkpoints_upload_retention_download_and_resume_offer(idle, api, worker_channel):
    job_id, token = running_job(idle)  # keep_last = 2
    w = worker_stub(worker_channel, token)
    payloads = {s: os.urandom(2_500_000 if s == 20 else 1000 + s) for s in (10, 20, 30, 40, 50)}
    losses = {10: 0.9, 20: 0.2, 30: 0.5, 40: 0.6, 50: 0.4}
    for step, payload in payloads.items():
        stored = upload_checkpoint(w, job_id, step, payload, val_loss=losses[step], final=step == 50)
        assert stored.sha256 == hashlib.sha256(payload).hexdigest() and stored.size_bytes == len(payload)
    infos = api.ListCheckpoints(pb.ListCheckpointsRequest(job_id=job_id)).checkpoints
    assert [c.step for c in infos] == [20, 40, 50]  # last 2, best (20), final (50)
    assert [c.is_final for c in infos] == [False, False, True]
    files = sorted(p.name for p in (idle.data_dir / "checkpoints" / job_id).iterdir())
    assert files == ["step-00000020.npz", "step-00000040.npz", "step-00000050.npz"]

    for request, step in [(pb.DownloadCheckpointRequest(job_id=job_id, step=20), 20),
                          (pb.DownloadCheckpointRequest(job_id=job_id, best=True), 20),
                          (pb.DownloadCheckpointRequest(job_id=job_id, latest=True), 50),
                          (pb.DownloadCheckpointRequest(job_id=job_id), 50)]:
        chunks = list(api.DownloadCheckpoint(request))
        data = b"".join(c.data for c in chunks)
        assert chunks[0].info.step == step and chunks[0].info.sha256 == hashlib.sha256(data).hexdigest()
        assert data == payloads[step] and all(len(c.data) <= 1 << 20 for c in chunks)
        assert all(not c.HasField("info") for c in chunks[1:])
    assert len(list(api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id=job_id, step=20)))) == 3

    offer = w.FetchJob(pb.FetchJobRequest(job_id=job_id)).resume_from
    assert offer.step == 50
    got = b"".join(c.data for c in w.FetchCheckpoint(pb.FetchCheckpointRequest(job_id=job_id, step=50)))
    assert hashlib.sha256(got).hexdigest() == offer.sha256


def test_tls_server_accepts_tls_clients_only(start_coordinator, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    srv = start_coordinator(tls_cert=cert, tls_key=key)
    creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
    with grpc.secure_channel(srv.address, creds) as ch:
        assert AuthedJobStub(ch, srv.token).ListJobs(pb.ListJobsRequest()).jobs == []
    with grpc.insecure_channel(srv.address) as ch:
        expect_error(CODE.UNAVAILABLE, AuthedJobStub(ch, srv.token, timeout=3).ListJobs, pb.ListJobsRequest())


@pytest.mark.timeout(60)
def test_long_metric_history_is_paged_and_best_lookup_uses_the_index(idle, api, worker_channel):
    """A history longer than one GetMetrics reply can hold comes back whole through the client's paging."""
    from coordinator.client import Client

    job_id, token = running_job(idle)
    w = worker_stub(worker_channel, token)
    total = METRICS_PAGE + 1500
    for start in range(1, total + 1, 1000):  # limits.points_per_report
        w.ReportProgress(pb.ReportProgressRequest(
            job_id=job_id, attempt=1, points=[_point(s, 1.0 / s) for s in range(start, min(start + 1000, total + 1))]))
    first = api.GetMetrics(pb.GetMetricsRequest(job_id=job_id)).points
    assert len(first) == METRICS_PAGE and first[-1].step == METRICS_PAGE
    client = Client(idle.address, token=idle.token)
    try:
        assert [p.step for p in client.metrics(job_id)] == list(range(1, total + 1))
    finally:
        client.close()
    plan = idle.core.store._query(
        "EXPLAIN QUERY PLAN SELECT * FROM metrics WHERE job_id = ? AND val_loss IS NOT NULL"
        " ORDER BY val_loss ASC, step ASC LIMIT 1", (job_id,))
    assert any("metrics_best" in str(tuple(row)) for row in plan), [tuple(r) for r in plan]
    assert api.GetJob(pb.GetJobRequest(job_id=job_id)).best.step == total
