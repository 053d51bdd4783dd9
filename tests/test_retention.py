"""--delete-ended-after: jobs that ended longer ago than the retention go with their files; younger ones and
jobs that have not ended stay; a bad duration is a usage error."""
from __future__ import annotations

import time

import grpc
import pytest

from coordinator.files.expiry import Retention, parse_duration
from coordinator.states import JobState
from helpers import idle_server, run_cli, running_job, upload_checkpoint, wait_for, worker_stub

pytestmark = pytest.mark.timeout(60)


def test_a_coordinator_with_a_retention_deletes_what_ended_before_it_and_nothing_else(start_coordinator):
    srv = idle_server(start_coordinator, delete_ended_after_s=1.5)
    old, token = running_job(srv, "old", "token-old")
    with grpc.insecure_channel(srv.address) as ch:
        upload_checkpoint(worker_stub(ch, token), old, 10, b"old weights" * 100)
    srv.store.transition(old, JobState.SUCCEEDED, "done", attempt=1)
    ended_old = time.time()
    running, _ = running_job(srv, "running", "token-running")
    time.sleep(1.0)
    young, _ = running_job(srv, "young", "token-young")
    srv.store.transition(young, JobState.FAILED, "failed for the test", attempt=1)

    wait_for(lambda: srv.store.get_job(old) is None, 10, "the old job to be deleted")
    assert time.time() - ended_old >= 1.5
    assert not (srv.data_dir / "checkpoints" / old).exists()
    assert srv.store.get_job(young) is not None and srv.store.get_job(running) is not None
    wait_for(lambda: srv.store.get_job(young) is None, 10, "the younger job, once its term is over")
    time.sleep(0.5)
    assert srv.store.get_job(running).state is JobState.RUNNING  # never touched, however old


def test_a_sweep_skips_a_job_it_cannot_delete_and_goes_on(start_coordinator):
    srv = idle_server(start_coordinator)
    for job_id in ("a", "b"):
        running_job(srv, job_id, f"token-{job_id}")
        srv.store.transition(job_id, JobState.CANCELLED, "cancelled for the test", attempt=1)
    refused = []

    class Jobs:  # the real Jobs.delete, except that "a" is refused once (its ranks still stopping, say)
        def delete(self, job_id):
            if job_id == "a" and not refused:
                from coordinator.errors import FailedPrecondition
                refused.append(job_id)
                raise FailedPrecondition("job_id: still stopping")
            return srv.core.jobs.delete(job_id)
    retention = Retention(Jobs(), srv.store, keep_s=60, clock=lambda: time.time() + 3600)
    assert retention.sweep() == ["b"]
    assert retention.sweep() == ["a"]
    assert retention.sweep() == []


@pytest.mark.parametrize("text, seconds", [("90", 90), ("90s", 90), ("45m", 2700), ("12h", 43200), ("30d", 2592000),
                                           ("1.5h", 5400)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-1d", "abc", "3w", "nan", "inf"])
def test_a_bad_duration_is_a_usage_error(text):
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration(text)
    result = run_cli("serve", "--port", "0", f"--delete-ended-after={text}")
    assert result.returncode == 2 and "--delete-ended-after" in result.stderr and "not a duration" in result.stderr
