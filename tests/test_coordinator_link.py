"""worker/coordinator_link.py: the one backoff for what gRPC's retry policy cannot retry, and the one-shot
failure report of a rank other than 0 (against a real gRPC server, and against nothing at all)."""
from __future__ import annotations

import time

import pytest

from coordinator.rpc import gradmesh_pb2 as pb
from helpers import RecordingWorkerService
from worker.coordinator_link import Backoff, RankFailureHooks


def test_backoff_doubles_up_to_its_cap_and_gives_up_after_its_tries():
    backoff = Backoff(tries=5, first_s=0.5, cap_s=1.5)
    delays = []
    for _ in range(4):
        before = time.monotonic()
        assert backoff.failed() and not backoff.ready()
        delays.append(backoff.not_before - before)
    assert [round(d, 1) for d in delays] == [0.5, 1.0, 1.5, 1.5]
    assert not backoff.failed() and backoff.exhausted   # the fifth failure was the last try
    fresh = Backoff()
    fresh.give_up()
    assert fresh.exhausted and fresh.ready()


@pytest.mark.timeout(30)
def test_a_rank_reports_its_failure_in_one_call_and_never_waits_long():
    failure = pb.WorkerFailure(cause=pb.FAILURE_CAUSE_RANK_ERROR, rank=2, host="h", exception_type="ValueError",
                               message="boom", step=9)
    with RecordingWorkerService("{}", token="t") as coord:
        RankFailureHooks(coord.address, "job", "t", 3).report_failure(failure)
        (report,) = coord.reports
    assert (report.job_id, report.attempt, report.rank, report.step) == ("job", 3, 2, 9)
    assert report.worker_event == pb.WORKER_EVENT_FAILING and report.failure == failure
    # nobody listening: the report gives up within its deadline instead of holding up the abort
    started = time.monotonic()
    RankFailureHooks(coord.address, "job", "t", 3, timeout_s=0.5).report_failure(failure)
    assert time.monotonic() - started < 1.5
