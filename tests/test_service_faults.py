"""Faults injected for real into coordinator-launched jobs (coordinator side).

Faults come from the worker's GRADMESH_FAULT hook (a real SIGKILL, exit, stall), set in the coordinator's
environment, which the launched ranks inherit; `attempt=1` limits a fault to the first attempt.
What is proved:
  - a rank killed with SIGKILL → RESTARTING → RUNNING → SUCCEEDED with one restart, the metric history has
    every eval step exactly once, and the final parameters are bit-identical to an uninterrupted run;
  - a failure on every attempt → FAILED after max_restarts, naming the last cause;
  - a stalled rank → the coordinator's no-progress watchdog (or the ranks' own) kills it, restart, success;
  - a corrupt newest checkpoint is refused for download (DATA_LOSS) and skipped for resume;
  - cancel with checkpoint → CANCELLED with the checkpoint uploaded; ResumeJob on 1 worker continues it as a
    new job "<id>-r1" that goes on from that checkpoint (the original stays CANCELLED).
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
import re
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import AuthedJobStub
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.states import JobState
from coordinator.supervision.processes import of_job as job_processes
from coordinator.supervision.shm_leftovers import PREFIX, SHM_DIR, Janitor, mapped_paths
from helpers import assert_legal_path, digits_toml, wait_for, watch_to_end

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent



def spec(max_restarts=2, backoff_s=0.2, hang_timeout_s=60, steps=60):
    return digits_toml("fault-digits", steps=steps, lr=0.01, max_restarts=max_restarts, backoff_s=backoff_s,
                       hang_timeout_s=hang_timeout_s)


@pytest.fixture(scope="module")
def clean_final(tmp_path_factory):
    """Final checkpoint arrays of the same spec run without any fault (standalone, 2 ranks)."""
    out = tmp_path_factory.mktemp("clean")
    (out / "job.toml").write_text(spec())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GRADMESH_FAULT", None)
    done = subprocess.run([str(Path(sys.executable).parent / "mpirun"), "-n", "2", sys.executable, "-m", "worker",
                           "--spec", str(out / "job.toml"), "--out", str(out / "run")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(out / "run" / "final.npz") as npz:
        return {k: npz[k] for k in npz.files if k != "meta"}


def shm_segments() -> set:
    return {p for p in SHM_DIR.iterdir() if p.name.startswith(PREFIX)} if SHM_DIR.is_dir() else set()


@pytest.fixture
def api(coordinator):
    with grpc.insecure_channel(coordinator.address) as ch:
        yield AuthedJobStub(ch, coordinator.token, timeout=120)


def final_arrays(api, job_id):
    data = b"".join(c.data for c in api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id=job_id, latest=True)))
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "meta"}


def assert_bit_identical(got, want):
    assert sorted(got) == sorted(want)
    for key in want:
        assert got[key].dtype == want[key].dtype and np.array_equal(got[key], want[key]), key


def test_killed_rank_restarts_and_ends_bit_identical(coordinator, api, monkeypatch, clean_final):
    monkeypatch.setenv("GRADMESH_FAULT", "kill:rank=1:step=45:attempt=1")
    shm_before = shm_segments()
    # the ranks here live seconds, not GRACE_S; 2 s still spares attempt 2's segments while its MPI_Init maps them
    coordinator.core.supervisor.shm = Janitor(grace_s=2.0)
    api.SubmitJob(pb.SubmitJobRequest(spec=spec(), job_id="kill-1"))
    follow = api.StreamLogs(pb.StreamLogsRequest(job_id="kill-1", follow=True))  # follows across the restart
    events = watch_to_end(api, "kill-1")
    states = assert_legal_path(events)
    assert states == [JobState.QUEUED, JobState.RUNNING, JobState.RESTARTING, JobState.RUNNING, JobState.SUCCEEDED]
    job = api.GetJob(pb.GetJobRequest(job_id="kill-1"))
    assert (job.state, job.attempts, job.restarts) == (pb.SUCCEEDED, 2, 1), job.message
    restarting = next(h for h in job.history if h.state == pb.RESTARTING)
    assert restarting.message.startswith("attempt 1 failed, restart 1 of 2") and restarting.attempt == 1
    # the first line says what happened to which process on which host, before the log tail
    assert re.search(r"a rank \(pid \d+\) on \S+ ended: Killed \(signal 9\)", restarting.message.splitlines()[0]), \
        restarting.message
    assert [p.step for p in api.GetMetrics(pb.GetMetricsRequest(job_id="kill-1")).points] == list(range(10, 61, 10))
    assert_bit_identical(final_arrays(api, "kill-1"), clean_final)
    assert not job_processes("kill-1")
    chunks = list(follow)
    assert [c.attempt for c in chunks] == sorted(c.attempt for c in chunks) and {c.attempt for c in chunks} == {1, 2}
    assert "done at step 60" in b"".join(c.data for c in chunks if c.attempt == 2).decode()
    # the killed attempt's /dev/shm segments (its ranks never reached MPI_Finalize) are removed
    wait_for(lambda: not {str(p) for p in shm_segments() - shm_before} - mapped_paths(), timeout=20,
             what="the killed attempt's shared-memory segments to be removed")


def test_failure_on_every_attempt_gives_up_after_max_restarts(coordinator, api, monkeypatch):
    monkeypatch.setenv("GRADMESH_FAULT", "exit:rank=1:step=5:code=7")
    api.SubmitJob(pb.SubmitJobRequest(spec=spec(max_restarts=1, backoff_s=0.1), job_id="doomed"))
    assert_legal_path(watch_to_end(api, "doomed"))
    job = api.GetJob(pb.GetJobRequest(job_id="doomed"))
    assert (job.state, job.attempts, job.restarts) == (pb.FAILED, 2, 1)
    assert job.message.startswith("attempt 2 failed and no restarts are left (max_restarts = 1): "
                                  "mpirun failed with exit code "), job.message
    assert [a.outcome for a in coordinator.store.attempts("doomed")] == ["failed", "failed"]


def test_stalled_rank_is_detected_killed_and_restarted(coordinator, api, monkeypatch):
    monkeypatch.setenv("GRADMESH_FAULT", "hang:rank=1:step=25:attempt=1")
    t0 = time.monotonic()
    api.SubmitJob(pb.SubmitJobRequest(spec=spec(hang_timeout_s=6), job_id="stall"))
    assert_legal_path(watch_to_end(api, "stall"))
    job = api.GetJob(pb.GetJobRequest(job_id="stall"))
    assert (job.state, job.restarts) == (pb.SUCCEEDED, 1), job.message
    first = coordinator.store.attempts("stall")[0]
    assert first.outcome in ("hung", "failed"), first.message  # our watchdog, or the ranks' own, caught it
    if first.outcome == "failed":  # the ranks' watchdog: its verdict names the silent rank
        assert "silent rank(s): 1" in first.message.splitlines()[0], first.message
    assert time.monotonic() - t0 < 90
    assert not job_processes("stall")


def test_corrupt_newest_checkpoint_is_refused_and_skipped(coordinator, api, monkeypatch, clean_final):
    # rank 1 stalls at step 45 until the ranks' watchdog aborts the attempt 3 s later: uploads run in the
    # background, so a kill right after step 40 could leave both checkpoints unsent on a loaded machine
    monkeypatch.setenv("GRADMESH_FAULT", "hang:rank=1:step=45:attempt=1")
    api.SubmitJob(pb.SubmitJobRequest(spec=spec(backoff_s=4.0, hang_timeout_s=3), job_id="corrupt"))
    wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id="corrupt")).state == pb.RESTARTING, what="RESTARTING")
    stored = coordinator.store.checkpoints("corrupt")
    assert [c.step for c in stored] == [20, 40], stored
    newest = stored[-1]
    raw = bytearray(Path(newest.path).read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    Path(newest.path).write_bytes(bytes(raw))
    with pytest.raises(grpc.RpcError) as err:
        list(api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id="corrupt", step=newest.step)))
    assert err.value.code() == grpc.StatusCode.DATA_LOSS and "corrupt" in err.value.details()
    offer = coordinator.core.checkpoints.newest_intact("corrupt")  # what FetchJob will offer
    assert (offer.step if offer else None) == (stored[-2].step if len(stored) > 1 else None)
    watch_to_end(api, "corrupt")
    job = api.GetJob(pb.GetJobRequest(job_id="corrupt"))
    assert (job.state, job.restarts) == (pb.SUCCEEDED, 1), job.message
    assert_bit_identical(final_arrays(api, "corrupt"), clean_final)  # resumed from the older one: same result


def test_cancel_with_checkpoint_stops_at_a_step_boundary_and_keeps_it(coordinator, api):
    long = spec().replace("steps = 60", "steps = 200000").replace("every_steps = 20", "every_steps = 0")
    api.SubmitJob(pb.SubmitJobRequest(spec=long, job_id="graceful"))
    wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id="graceful")).latest.step >= 10, what="first point")
    api.CancelJob(pb.CancelJobRequest(job_id="graceful", checkpoint=True))
    assert_legal_path(watch_to_end(api, "graceful", timeout=60))
    job = api.GetJob(pb.GetJobRequest(job_id="graceful"))
    checkpoints = api.ListCheckpoints(pb.ListCheckpointsRequest(job_id="graceful")).checkpoints
    assert job.state == pb.CANCELLED and len(checkpoints) == 1 and not checkpoints[0].is_final
    assert f"last checkpoint at step {checkpoints[0].step}" in job.message, job.message
    assert coordinator.store.attempts("graceful")[0].exit_code == 4  # the workers stopped themselves
    assert not job_processes("graceful")

    stopped_at = checkpoints[0].step
    resumed = api.ResumeJob(pb.ResumeJobRequest(job_id="graceful", workers=1))
    assert resumed.id == "graceful-r1" and resumed.workers == 1 and resumed.labels["resumed_from"] == "graceful"
    assert resumed.history[0].message == f"resumed from job graceful at step {stopped_at}"
    wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id="graceful-r1")).step > stopped_at, what="resumed progress")
    points = api.GetMetrics(pb.GetMetricsRequest(job_id="graceful-r1")).points
    assert points and points[0].step > stopped_at  # it went on from the checkpoint, not from step 0
    api.CancelJob(pb.CancelJobRequest(job_id="graceful-r1"))
    assert watch_to_end(api, "graceful-r1")[-1].state.state == pb.CANCELLED
    assert api.GetJob(pb.GetJobRequest(job_id="graceful")).state == pb.CANCELLED  # terminal states stay final


def test_frozen_job_is_killed_by_the_coordinators_watchdog_and_restarted(coordinator, api):
    """SIGSTOP on the whole process group: no rank can notice (they are all stopped), only the coordinator can."""
    import signal
    # long enough that it is still training when the first point arrives, even on an idle fast machine
    api.SubmitJob(pb.SubmitJobRequest(spec=spec(hang_timeout_s=4, steps=3000), job_id="frozen"))
    wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id="frozen")).latest.step >= 10, what="first point")
    from coordinator.supervision.processes import tagged as tagged_processes
    from coordinator.access.tokens import attempt_tag
    pids = tagged_processes(attempt_tag(coordinator.store.get_job("frozen").token_hash))
    assert api.GetJob(pb.GetJobRequest(job_id="frozen")).state == pb.RUNNING
    assert len(pids) >= 4  # mpirun, hydra's proxy, 2 ranks
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    assert_legal_path(watch_to_end(api, "frozen"))
    job = api.GetJob(pb.GetJobRequest(job_id="frozen"))
    assert (job.state, job.restarts) == (pb.SUCCEEDED, 1), job.message
    first = coordinator.store.attempts("frozen")[0]
    assert first.outcome == "hung" and "no progress for" in first.message and "hang_timeout_s = 4" in first.message
    assert "SIGKILL" in first.message  # stopped processes ignore SIGTERM: killed after the grace period
    assert not job_processes("frozen")
