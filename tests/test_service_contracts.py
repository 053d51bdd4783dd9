"""The typed contracts of gradmesh.v1 as a real coordinator serves them (its scheduler stopped, the test
playing the ranks): typed worker events and failures from any rank, transition ids on state changes,
GetMetrics pages with an explicit next_page_token, and error trailers a client maps without reading
messages. Plus the decision they feed: a reported failure's cause decides the retry, the log only speaks
when no rank did, and an old database gains the failure columns when opened."""
from __future__ import annotations

import math
import sqlite3
from pathlib import Path

import grpc
import pytest

from conftest import AuthedJobStub
from coordinator.supervision.launcher import Exit
from coordinator.supervision.outcomes import classify
from coordinator.reports import FailureCause, WorkerEvent, WorkerFailure
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.states import JobState
from coordinator.store.store import Store
from coordinator.wire import (FIELD_TRAILER, KIND_CHECKPOINT, KIND_FIELD, KIND_JOB, KIND_TOKEN, KIND_TRAILER,
                              METRICS_PAGE)
from helpers import SMALL_SPEC, expect_error, idle_server, running_job, worker_stub

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def idle(start_coordinator):
    return idle_server(start_coordinator)


@pytest.fixture
def channel(idle):
    with grpc.insecure_channel(idle.address) as ch:
        yield ch


def trailers(err: grpc.RpcError) -> dict:
    return dict(err.trailing_metadata() or ())


def failing(cause, *, rank=0, host="node7", exception_type="ValueError", message="boom", step=12):
    return pb.WorkerFailure(cause=cause, rank=rank, host=host, exception_type=exception_type, message=message,
                            step=step)


# ---------------------------------------------------------------- worker events and failures

def test_typed_events_are_stored_and_bad_ones_refused(idle, channel):
    job_id, token = running_job(idle)
    w = worker_stub(channel, token)
    w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, worker_event=pb.WORKER_EVENT_STARTED,
                                              message="2 rank(s)", step=0, total_steps=40))
    attempt = idle.store.attempt(job_id, 1)
    assert (attempt.worker_event, attempt.worker_message, attempt.failure) == (WorkerEvent.STARTED, "2 rank(s)", None)
    for request, field in [
        (pb.ReportProgressRequest(job_id=job_id, attempt=1, worker_event=99), "worker_event"),
        (pb.ReportProgressRequest(job_id=job_id, attempt=1, worker_event=pb.WORKER_EVENT_FAILING), "failure"),
        (pb.ReportProgressRequest(job_id=job_id, attempt=1, worker_event=pb.WORKER_EVENT_FAILING,
                                  failure=failing(pb.FAILURE_CAUSE_UNSPECIFIED)), "failure.cause"),
        (pb.ReportProgressRequest(job_id=job_id, attempt=1, rank=1, step=5), "rank"),
        (pb.ReportProgressRequest(job_id=job_id, attempt=1, rank=-1), "rank"),
    ]:
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, w.ReportProgress, request)
        assert trailers(err)[FIELD_TRAILER] == field, err.details()
    assert idle.store.attempt(job_id, 1).failure is None


def test_a_failure_from_any_rank_is_kept_first_and_touches_no_progress(idle, channel):
    job_id, token = running_job(idle)
    w = worker_stub(channel, token)
    w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, step=10, total_steps=40,
                                              points=[pb.MetricPoint(step=10, val_loss=0.5)]))
    # rank 2 raises and says so before it aborts; its points and step are not progress
    reply = w.ReportProgress(pb.ReportProgressRequest(
        job_id=job_id, attempt=1, rank=2, step=99, points=[pb.MetricPoint(step=99)],
        worker_event=pb.WORKER_EVENT_FAILING,
        failure=failing(pb.FAILURE_CAUSE_RANK_ERROR, rank=0, host="node3", message="injected fault at step 12")))
    assert not reply.cancel_requested
    # then rank 0's collective breaks: an echo of the first failure, not its cause
    w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, worker_event=pb.WORKER_EVENT_FAILING,
                                              failure=failing(pb.FAILURE_CAUSE_HANG, host="node1")))
    attempt = idle.store.attempt(job_id, 1)
    assert attempt.failure == WorkerFailure(FailureCause.RANK_ERROR, "injected fault at step 12", rank=2,
                                            host="node3", exception_type="ValueError", step=12)
    assert attempt.worker_event is WorkerEvent.FAILING  # rank 0's own event
    assert [p.step for p in idle.store.metrics(job_id)] == [10] and idle.store.get_job(job_id).step == 10


def test_legacy_string_events_still_work(idle, channel):
    job_id, token = running_job(idle)
    w = worker_stub(channel, token)
    w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, event="nan", message="loss became NaN at "
                                                                                            "step 5"))
    attempt = idle.store.attempt(job_id, 1)
    assert attempt.worker_event is WorkerEvent.FAILING
    assert attempt.failure == WorkerFailure(FailureCause.NAN, "loss became NaN at step 5")  # no rank said


@pytest.mark.parametrize("cause,retried,word", [
    (FailureCause.NAN, False, "nan"), (FailureCause.BAD_SPEC, False, "bad-input"),
    (FailureCause.BAD_DATA, False, "bad-input"), (FailureCause.BAD_CHECKPOINT, False, "bad-input"),
    (FailureCause.OUT_OF_MEMORY, False, "out-of-memory"), (FailureCause.RANK_ERROR, True, "failed"),
    (FailureCause.HANG, True, "hung")])
def test_the_reported_cause_decides_the_retry_and_leads_the_message(cause, retried, word):
    tail = "[rank 1 on node7] RuntimeError: what the log says\n"
    failure = WorkerFailure(cause, "what the rank says", rank=3, host="node9", exception_type="MemoryError")
    out = classify(Exit(1), cancel_requested=False, final_checkpoint_step=None, worker_event=WorkerEvent.FAILING,
                   failure=failure, tail=tail)
    assert (out.state, out.retryable, out.outcome) == (JobState.FAILED, retried, word)
    lead = "MemoryError: what the rank says" if cause is FailureCause.NAN else \
        "rank 3 on node9: MemoryError: what the rank says"
    assert out.message.startswith(lead + " (exit code 1)"), out.message
    assert "what the log says" not in out.message.splitlines()[0]  # the log is only the fallback
    # without a report the log's headline speaks
    silent = classify(Exit(1), cancel_requested=False, final_checkpoint_step=None,
                      worker_event=WorkerEvent.STARTED, failure=None, tail=tail)
    assert silent.message.splitlines()[0] == "mpirun failed with exit code 1: rank 1 on node7: RuntimeError: what " \
                                             "the log says"


def test_an_old_database_gains_the_failure_columns(tmp_path):
    path = tmp_path / "gradmesh.db"
    old = Store(path)
    old.close()
    con = sqlite3.connect(path)
    for column in ("failure_cause", "failure_rank", "failure_host", "failure_exception", "failure_message",
                   "failure_step"):
        con.execute(f"ALTER TABLE attempts DROP COLUMN {column}")
    con.execute("INSERT INTO jobs (id, name, spec_json, state, workers, created) VALUES ('j', 'n', '{}', 'FAILED', 1, 0)")
    con.execute("INSERT INTO attempts (job_id, attempt, started, log_path, workdir, worker_event, worker_message)"
                " VALUES ('j', 1, 0, 'l', 'w', 'data', 'data.source: 12 features')")
    con.commit()
    con.close()
    store = Store(path)
    try:
        attempt = store.attempt("j", 1)
        assert attempt.worker_event is WorkerEvent.FAILING
        assert attempt.failure == WorkerFailure(FailureCause.BAD_DATA, "data.source: 12 features")
        assert store.record_failure("j", 1, WorkerFailure(FailureCause.HANG, "late")) is True
        assert store.attempt("j", 1).failure.cause is FailureCause.HANG  # stored columns win over the old word
    finally:
        store.close()


# ---------------------------------------------------------------- transition ids, metric pages

def test_state_changes_carry_the_stores_transition_id(idle, channel):
    api = AuthedJobStub(channel, idle.token)
    api.SubmitJob(pb.SubmitJobRequest(spec=SMALL_SPEC, job_id="t1"))
    api.CancelJob(pb.CancelJobRequest(job_id="t1"))
    ids = [t.id for t in idle.store.transitions("t1")]
    job = api.GetJob(pb.GetJobRequest(job_id="t1"))
    assert [h.transition_id for h in job.history] == ids and ids == sorted(set(ids)) and ids[0] > 0
    events = list(api.WatchJob(pb.WatchJobRequest(job_id="t1")))
    assert events[-1].state.transition_id == ids[-1]


def test_metrics_come_in_pages_with_an_explicit_next_token(idle, channel):
    job_id, token = running_job(idle)
    worker_stub(channel, token).ReportProgress(pb.ReportProgressRequest(
        job_id=job_id, attempt=1, points=[pb.MetricPoint(step=s, val_loss=1.0 / s) for s in range(1, 11)]))
    api = AuthedJobStub(channel, idle.token)
    pages, token_ = [], ""
    while True:
        reply = api.GetMetrics(pb.GetMetricsRequest(job_id=job_id, page_size=4, page_token=token_))
        pages.append([p.step for p in reply.points])
        token_ = reply.next_page_token
        if not token_:
            break
    assert pages == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]]
    whole = api.GetMetrics(pb.GetMetricsRequest(job_id=job_id, from_step=3, page_size=10 * METRICS_PAGE))
    assert [p.step for p in whole.points] == list(range(3, 11)) and whole.next_page_token == ""
    exact = api.GetMetrics(pb.GetMetricsRequest(job_id=job_id, page_size=10))
    assert len(exact.points) == 10 and exact.next_page_token == ""  # a full last page is still the last
    for request, field in [(pb.GetMetricsRequest(job_id=job_id, page_token="x"), "page_token"),
                           (pb.GetMetricsRequest(job_id=job_id, page_size=-1), "page_size")]:
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.GetMetrics, request)
        assert trailers(err)[FIELD_TRAILER] == field
    assert not math.isnan(whole.points[0].val_loss)


# ---------------------------------------------------------------- error trailers

def test_errors_carry_their_kind_and_field_as_ascii_trailers(idle, channel):
    api = AuthedJobStub(channel, idle.token)
    api.SubmitJob(pb.SubmitJobRequest(spec=SMALL_SPEC, job_id="q1"))
    cases = [
        (lambda: api.GetJob(pb.GetJobRequest(job_id="ghost")), grpc.StatusCode.NOT_FOUND, KIND_JOB),
        (lambda: api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id="q1", step=7)), grpc.StatusCode.NOT_FOUND,
         KIND_CHECKPOINT),
        (lambda: api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id="q1", best=True)),
         grpc.StatusCode.NOT_FOUND, KIND_CHECKPOINT),
        (lambda: api.ResumeJob(pb.ResumeJobRequest(job_id="q1")), grpc.StatusCode.FAILED_PRECONDITION, KIND_JOB),
        (lambda: api.DeleteJob(pb.DeleteJobRequest(job_id="q1")), grpc.StatusCode.FAILED_PRECONDITION, KIND_JOB),
        (lambda: worker_stub(channel, "wrong").FetchJob(pb.FetchJobRequest(job_id="q1")),
         grpc.StatusCode.UNAUTHENTICATED, KIND_TOKEN),
        (lambda: api.SubmitJob(pb.SubmitJobRequest(spec=SMALL_SPEC, labels={"k\u00e9y\u2192": "v"})),
         grpc.StatusCode.INVALID_ARGUMENT, KIND_FIELD),
    ]
    for call, code, kind in cases:
        err = expect_error(code, call)
        assert trailers(err)[KIND_TRAILER] == kind, err.details()
    field = trailers(err)[FIELD_TRAILER]
    assert field == "labels[k\\xe9y\\u2192]" and field.isascii()


# ---------------------------------------------------------------- streams read in pages

def test_watch_and_logs_deliver_everything_a_page_at_a_time(idle, channel):
    from coordinator.jobs.streams import LOG_CHUNK_BYTES, PAGE
    job_id, token = running_job(idle)
    total = 2 * PAGE + 7
    for start in range(1, total + 1, 1000):  # limits.points_per_report
        worker_stub(channel, token).ReportProgress(pb.ReportProgressRequest(
            job_id=job_id, attempt=1, points=[pb.MetricPoint(step=s) for s in range(start, min(start + 1000, total + 1))]))
    log = idle.store.attempt(job_id, 1).log_path
    text = b"".join(b"line %d\n" % i for i in range(40000))  # several chunks
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    Path(log).write_bytes(text)
    idle.store.end_attempt(job_id, 1, exit_code=1, outcome="failed", message="ended by the test")
    idle.store.transition(job_id, JobState.FAILED, "ended by the test", attempt=1)
    idle.core.signal.changed()
    api = AuthedJobStub(channel, idle.token, timeout=30)
    events = list(api.WatchJob(pb.WatchJobRequest(job_id=job_id, from_step=2)))
    assert [e.metric.step for e in events[1:-1]] == list(range(2, total + 1))
    assert events[-1].state.state == pb.FAILED
    chunks = [c.data for c in api.StreamLogs(pb.StreamLogsRequest(job_id=job_id, follow=True))]
    assert b"".join(chunks) == text and len(chunks) > 1 and max(map(len, chunks)) <= LOG_CHUNK_BYTES
