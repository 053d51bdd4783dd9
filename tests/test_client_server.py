"""The Python client against the REAL coordinator (tests/conftest.py: start_server on 127.0.0.1:0, 2 slots)
with real mpirun workers: a job goes from submission to SUCCEEDED through legal states only, its metric
history has a point for every reporting step, its checkpoints download with matching sha256 and load with
plain numpy at the reported accuracy; the server's errors arrive as the right typed exceptions."""
from __future__ import annotations

import hashlib
import time

import numpy as np
import pytest

from coordinator.client import (
    KIND_CHECKPOINT, KIND_JOB, AlreadyExists, Client, FailedPrecondition, InvalidArgument, InvalidSpec, JobSnapshot,
    JobState, JobStateChanged, MetricReported, NotFound, Unauthenticated,
)
from coordinator.supervision import processes
from tests.helpers import numpy_accuracy, restartable_port, scaled, small_digits_spec, wait_for

LEGAL = {
    JobState.QUEUED: {JobState.RUNNING, JobState.CANCELLED, JobState.FAILED},
    JobState.RUNNING: {JobState.RESTARTING, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED},
    JobState.RESTARTING: {JobState.RUNNING, JobState.FAILED, JobState.CANCELLED},
}


@pytest.fixture
def client(coordinator):
    with Client(coordinator.address, token=coordinator.token, timeout=10) as c:
        yield c


@pytest.mark.timeout(120)
def test_submit_watch_metrics_checkpoints_download(client, tmp_path):
    job = client.submit(small_digits_spec(), labels={"suite": "client"})
    assert job.state in (JobState.QUEUED, JobState.RUNNING) and job.labels == {"suite": "client"}
    assert job.workers == 2 and job.spec["train"]["steps"] == 60

    events = list(client.watch(job.id))
    assert isinstance(events[0], JobSnapshot)
    states = [events[0].job.state] + [e.change.state for e in events if isinstance(e, JobStateChanged)]
    for old, new in zip(states, states[1:]):
        assert new in LEGAL[old], f"illegal transition {old} → {new} in {states}"
    assert states[-1] is JobState.SUCCEEDED
    watched_steps = [e.point.step for e in events if isinstance(e, MetricReported)]
    assert watched_steps == sorted(set(watched_steps)) and watched_steps[-1] == 60

    final = client.get(job.id)
    assert final.state is JobState.SUCCEEDED and final.step == 60 and final.ended_unix
    history = client.metrics(job.id)
    evaluated = [p.step for p in history if p.val_loss is not None]
    assert set(range(10, 61, 10)) <= set(evaluated), evaluated  # a point for every reporting step
    assert [p.step for p in history] == watched_steps  # the watcher missed nothing

    ckpts = client.checkpoints(job.id)
    assert ckpts and ckpts[-1].step == 60 and ckpts[-1].is_final
    best = min((c for c in ckpts if c.val_loss is not None), key=lambda c: c.val_loss)
    result = client.download(job.id, tmp_path / "best.npz", best=True)
    data = result.path.read_bytes()
    assert result.info.step == best.step
    assert hashlib.sha256(data).hexdigest() == best.sha256 and len(data) == best.size_bytes
    with np.load(result.path, allow_pickle=False) as npz:
        assert npz["layers.0.W"].shape == (64, 32) and npz["layers.1.W"].shape == (32, 10)
    accuracy, count = numpy_accuracy(result.path)
    assert 150 < count < 200  # digits: 10% of 1,797 held out
    assert accuracy == pytest.approx(best.val_accuracy, abs=1e-6)
    by_step = client.download(job.id, tmp_path / "s.npz", step=ckpts[0].step)
    assert hashlib.sha256(by_step.path.read_bytes()).hexdigest() == ckpts[0].sha256

    logs = b"".join(client.logs(job.id))
    assert f"attempt 1 of {job.id}".encode() in logs


@pytest.mark.timeout(60)
def test_typed_errors_from_the_real_server(coordinator, client, tmp_path):
    with pytest.raises(NotFound, match="nope") as missing:
        client.get("nope")
    assert missing.value.kind == KIND_JOB
    with pytest.raises(InvalidSpec) as bad:
        client.submit({"train": {"steps": 10, "batch_size": 0}})
    assert bad.value.field == "train.batch_size" and "at least 1" in bad.value.reason
    with pytest.raises(InvalidSpec) as too_many:
        client.submit(small_digits_spec(), workers=64)
    assert too_many.value.field == "workers"
    with pytest.raises(InvalidSpec) as outside:
        client.submit({**small_digits_spec(), "data": {"source": "/etc/passwd"}})
    assert outside.value.field == "data.source"
    with pytest.raises(InvalidArgument):
        client.get("bad id with spaces/..")
    with Client(coordinator.address, token="wrong") as intruder, pytest.raises(Unauthenticated):
        intruder.get("nope")
    with Client(coordinator.address, data_dir=coordinator.data_dir) as local:  # the token file
        with pytest.raises(NotFound):
            local.get("nope")

    first = client.submit(small_digits_spec(steps=20), job_id="fixed-id")
    again = client.submit(small_digits_spec(steps=20), job_id="fixed-id")
    assert again.id == first.id == "fixed-id"
    with pytest.raises(AlreadyExists, match="different spec"):
        client.submit(small_digits_spec(steps=30), job_id="fixed-id")
    assert client.wait("fixed-id").state is JobState.SUCCEEDED
    with pytest.raises(FailedPrecondition):
        client.cancel("fixed-id")
    with pytest.raises(NotFound) as no_checkpoint:
        client.download("fixed-id", tmp_path / "x.npz", step=7)
    assert no_checkpoint.value.kind == KIND_CHECKPOINT
    assert not (tmp_path / "x.npz").exists()


@pytest.mark.timeout(90)
def test_list_pages_and_state_filter(client):
    ids = [client.submit(small_digits_spec(steps=10_000), labels={"n": str(i)}).id for i in range(5)]
    for job_id in ids:
        client.cancel(job_id)
    for job_id in ids:
        wait_for(lambda: client.get(job_id).is_terminal(), scaled(30), what=f"{job_id} to end")
    listed = [j.id for j in client.list(page_size=2)]
    assert listed[:5] == ids[::-1]  # newest first, across 3 pages
    cancelled = [j.id for j in client.list(states=["CANCELLED"], page_size=2)]
    assert sorted(cancelled) == sorted(ids)
    assert list(client.list(states=[JobState.SUCCEEDED])) == []


@pytest.mark.timeout(120)
def test_cancel_running_job_leaves_no_worker(client):
    job = client.submit(small_digits_spec(steps=100_000, workers=2))
    wait_for(lambda: client.get(job.id).step >= 5, scaled(60), what="the job to train a few steps")
    assert processes.of_job(job.id)
    client.cancel(job.id, checkpoint=True)
    events = list(client.watch(job.id))  # ends by itself once the job has stopped
    assert client.get(job.id).state is JobState.CANCELLED
    assert any(isinstance(e, JobStateChanged) and e.change.state is JobState.CANCELLED for e in events) or \
        events[0].job.state is JobState.CANCELLED
    wait_for(lambda: not processes.of_job(job.id), scaled(15), what="the worker processes to exit")
    resumed = client.resume(job.id, workers=1)
    assert resumed.id != job.id and resumed.labels["resumed_from"] == job.id
    assert resumed.workers == 1 and resumed.state in (JobState.QUEUED, JobState.RUNNING)
    assert client.get(job.id).state is JobState.CANCELLED  # the original stays as it ended
    client.cancel(resumed.id)
    assert client.wait(resumed.id).state is JobState.CANCELLED


@pytest.mark.timeout(180)
def test_watch_survives_a_coordinator_restart(start_coordinator):
    """The coordinator is stopped mid-job (its jobs keep training in their own sessions) and a new one is
    started on the same data directory and port; the watcher reconnects by itself and, at the end, has seen
    exactly the metric history the store holds — no gap, no duplicate — and the job's success."""
    first = start_coordinator(port=restartable_port())
    client = Client(first.address, token=first.token, reconnect_timeout=60)
    job = client.submit(small_digits_spec(steps=4000, eval_every=20))
    watched, restarted, second = [], False, None
    try:
        for event in client.watch(job.id):
            watched.append(event)
            if not restarted and isinstance(event, MetricReported) and event.point.step >= 200:
                restarted = True
                first.stop(grace=0.5, stop_jobs=False)
                time.sleep(1.0)
                second = start_coordinator(data_dir=first.data_dir, port=first.port)
        final = client.get(job.id)
        stored = [p.step for p in client.metrics(job.id)]
    finally:
        client.close()
    assert restarted and second is not None
    assert final.state is JobState.SUCCEEDED, final.message
    steps = [e.point.step for e in watched if isinstance(e, MetricReported)]
    assert steps == stored and steps == list(range(20, 4001, 20))
    assert sum(isinstance(e, JobSnapshot) for e in watched) == 2  # one per connection
