"""Coordinator crash safety: the coordinator process is killed with SIGKILL mid-job and restarted on the
same data directory and port.

  - the job kept training meanwhile → the restarted coordinator re-adopts its process group; the job ends
    SUCCEEDED with no gap in its metric history, every checkpoint listed and downloading with its sha256,
    and a watcher that reconnects from its last step sees the rest and the end;
  - the job died too while no coordinator was up → it is restarted from its newest checkpoint and succeeds.
"""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import grpc
import pytest

from conftest import AuthedJobStub
from coordinator.supervision.processes import tagged as tagged_processes
from coordinator.access.tokens import attempt_tag
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.states import JobState
from coordinator.supervision.processes import of_job as job_processes
from helpers import assert_legal_path, digits_toml, restartable_port, wait_for, watch_to_end

pytestmark = pytest.mark.timeout(180)
ROOT = Path(__file__).resolve().parent.parent
# The survivor must outlive its coordinator's kill and restart by a wide margin, and no more: the restart slows with
# the load as the job does, so a step count holds its margin on a busy machine too
SURVIVOR_STEPS = 4000


def spec(steps: int) -> str:
    return digits_toml("crash-digits", steps=steps, eval_every=20, every_steps=40, backoff_s=0.2)


SERVE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from coordinator.api.server import start_server
    srv = start_server(Path(sys.argv[1]), port=int(sys.argv[2]), slots=2, token="crash-token")
    print(srv.address, flush=True)
    srv.wait_for_termination()
""")


@pytest.fixture
def coordinator_process(tmp_path):
    """Start a coordinator in its own process; yields (start, data_dir). Every process is killed at the end."""
    procs = []
    data_dir = tmp_path / "data"

    def start(port=None):
        port = restartable_port() if port is None else port  # the restart takes the same port
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(data_dir), str(port)], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        address = proc.stdout.readline().strip()
        assert address, "the coordinator did not start"
        return proc, address

    yield start, data_dir
    for proc in procs:
        proc.kill()
        proc.wait(timeout=10)


def test_sigkilled_coordinator_re_adopts_the_running_job(coordinator_process, start_coordinator):
    start, data_dir = coordinator_process
    proc, address = start()
    with grpc.insecure_channel(address) as ch:
        api = AuthedJobStub(ch, "crash-token", timeout=60)
        api.SubmitJob(pb.SubmitJobRequest(spec=spec(SURVIVOR_STEPS), job_id="survivor"))
        watch = api.WatchJob(pb.WatchJobRequest(job_id="survivor"), timeout=120)
        seen = []
        for event in watch:
            if event.WhichOneof("event") == "metric":
                seen.append(event.metric.step)
                if event.metric.step >= 40:
                    break
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        with pytest.raises(grpc.RpcError):
            for _ in watch:  # the stream breaks without a terminal state: not to be confused with the end
                pass
    assert job_processes("survivor"), "the job must keep training while no coordinator runs"

    port = int(address.rsplit(":", 1)[1])
    srv = start_coordinator(data_dir, port=port, token="crash-token")
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, "crash-token", timeout=120)
        rest = list(api.WatchJob(pb.WatchJobRequest(job_id="survivor", from_step=seen[-1] + 1), timeout=120))
        assert rest[-1].state.state == pb.SUCCEEDED, rest[-1]
        resumed = [e.metric.step for e in rest if e.WhichOneof("event") == "metric"]
        assert seen + resumed == list(range(20, SURVIVOR_STEPS + 1, 20))  # the reconnected watcher missed nothing
        job = api.GetJob(pb.GetJobRequest(job_id="survivor"))
        assert (job.state, job.attempts, job.restarts) == (pb.SUCCEEDED, 1, 0), job.message
        points = api.GetMetrics(pb.GetMetricsRequest(job_id="survivor")).points
        assert [p.step for p in points] == list(range(20, SURVIVOR_STEPS + 1, 20))
        infos = api.ListCheckpoints(pb.ListCheckpointsRequest(job_id="survivor")).checkpoints
        assert infos[-1].step == SURVIVOR_STEPS and infos[-1].is_final
        for info in infos:
            data = b"".join(c.data for c in api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id="survivor",
                                                                                                 step=info.step)))
            assert hashlib.sha256(data).hexdigest() == info.sha256
    assert srv.store.integrity_ok() and not job_processes("survivor")


def test_job_that_died_while_the_coordinator_was_down_restarts_from_its_checkpoint(coordinator_process,
                                                                                     start_coordinator):
    start, data_dir = coordinator_process
    proc, address = start()
    with grpc.insecure_channel(address) as ch:
        api = AuthedJobStub(ch, "crash-token", timeout=60)
        api.SubmitJob(pb.SubmitJobRequest(spec=spec(100000), job_id="orphan"))
        wait_for(lambda: len(api.ListCheckpoints(pb.ListCheckpointsRequest(job_id="orphan")).checkpoints) >= 1,
                 what="a first checkpoint")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)
    from coordinator.store.store import Store
    store = Store(data_dir / "gradmesh.db")
    tag = attempt_tag(store.get_job("orphan").token_hash)
    newest = store.checkpoints("orphan")[-1].step  # what the relaunch must resume from
    store.close()
    pids = tagged_processes(tag)
    assert len(pids) >= 3  # mpirun, hydra's proxy, 2 ranks
    for pid in pids:  # the job dies too while nobody watches
        os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not tagged_processes(tag), what="the job's death")

    srv = start_coordinator(data_dir, port=int(address.rsplit(":", 1)[1]), token="crash-token")
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, "crash-token", timeout=60)
        wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id="orphan")).attempts == 2, what="the relaunch")
        job = api.GetJob(pb.GetJobRequest(job_id="orphan"))
        restarting = next(h for h in job.history if h.state == pb.RESTARTING)
        assert "coordinator restarted while the job ran" in restarting.message
        # rank 0 of attempt 2 says where it started (its "started" event): from the newest checkpoint
        wait_for(lambda: srv.store.attempt("orphan", 2).worker_event, what="attempt 2 to start training")
        assert srv.store.attempt("orphan", 2).worker_message.endswith(f"resumed at step {newest}")
        wait_for(lambda: any(p.attempt == 2 for p in api.GetMetrics(pb.GetMetricsRequest(job_id="orphan")).points),
                 what="a metric point of attempt 2")
        api.CancelJob(pb.CancelJobRequest(job_id="orphan"))
        events = watch_to_end(api, "orphan", timeout=60)
        assert assert_legal_path(events)[-1] is JobState.CANCELLED
    assert not job_processes("orphan")


def test_graceful_shutdown_stops_jobs_and_records_why(start_coordinator, tmp_path):
    srv = start_coordinator(tmp_path / "d")
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, srv.token, timeout=60)
        api.SubmitJob(pb.SubmitJobRequest(spec=spec(100000), job_id="shut"))
        wait_for(lambda: api.GetJob(pb.GetJobRequest(job_id="shut")).latest.step >= 20, what="first point")
    tag = attempt_tag(srv.store.get_job("shut").token_hash)
    srv.stop(grace=1.0)  # stop_jobs=True by default
    assert not job_processes("shut") and tagged_processes(tag) == []
    from coordinator.store.store import Store
    store = Store(tmp_path / "d" / "gradmesh.db")
    try:
        job, attempt = store.get_job("shut"), store.attempt("shut", 1)
        # the next coordinator on this directory relaunches it from its checkpoint
        assert job.state is JobState.RESTARTING and attempt.outcome == "interrupted"
        assert "the coordinator shut down and stopped the job" in job.message
        # ... the one its ranks wrote as they stopped (they still reached the server), not the last periodic one
        assert max(c.step for c in store.checkpoints("shut")) == job.step
    finally:
        store.close()
