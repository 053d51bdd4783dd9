"""What ranks print reaches the attempt's log on the coordinator over gRPC (AppendLog), for ranks that run
where the coordinator's disk is not (Slurm without a shared filesystem): the coordinator's side against a
real server, and worker/slurm_step.py, the batch step that runs srun and forwards its output, against it."""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from coordinator.rpc import gradmesh_pb2 as pb
from helpers import ROOT, cli_env, expect_error, idle_server, running_job, worker_stub

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def idle(start_coordinator):
    return idle_server(start_coordinator)


def log_of(srv, job_id: str, attempt: int = 1) -> str:
    path = Path(srv.store.attempt(job_id, attempt).log_path)
    return path.read_text() if path.exists() else ""


def test_appended_output_lands_in_the_attempt_log_once_and_in_order(idle):
    job, token = running_job(idle)
    with grpc.insecure_channel(idle.address) as ch:
        worker = worker_stub(ch, token)
        append = lambda offset, data: worker.AppendLog(  # noqa: E731
            pb.AppendLogRequest(job_id=job, attempt=1, offset=offset, data=data)).offset
        assert append(0, b"step 10 loss 2.1\n") == 17
        assert append(0, b"step 10 loss 2.1\n") == 17              # a retried call appends nothing twice
        assert append(8, b"loss 2.1\nstep 20 loss 1.9\n") == 34    # overlapping: only the new part
        assert append(40, b"step 40\n") == 48                      # a gap is said, not hidden
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, append, 48, b"x" * (256 * 1024 + 1),
                     match="data")
        err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, lambda: worker.AppendLog(
            pb.AppendLogRequest(job_id=job, attempt=7, offset=48, data=b"late\n")))
        assert dict(err.trailing_metadata()).get("gradmesh-kind") == "attempt"
        for field, request in (("offset", pb.AppendLogRequest(job_id=job, attempt=1, offset=-1, data=b"x")),
                               ("offset", pb.AppendLogRequest(job_id=job, attempt=1, offset=2**63 - 1, data=b"x")),
                               ("attempt", pb.AppendLogRequest(job_id=job, attempt=-2, data=b"x")),
                               ("job_id", pb.AppendLogRequest(job_id="../etc", data=b"x"))):
            err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, worker.AppendLog, request)
            trailers = dict(err.trailing_metadata())
            assert trailers.get("gradmesh-field") == field and trailers.get("gradmesh-kind") == "field", trailers
        bad = worker_stub(ch, "not-the-token")
        expect_error(grpc.StatusCode.UNAUTHENTICATED, lambda: bad.AppendLog(
            pb.AppendLogRequest(job_id=job, attempt=1, offset=48, data=b"forged\n")))
    text = log_of(idle, job)
    assert "step 10 loss 2.1\nstep 20 loss 1.9\n" in text and text.count("step 10") == 1
    assert "[6 bytes of the ranks' output did not reach the coordinator]\nstep 40\n" in text
    assert "forged" not in text and "late" not in text


def test_an_ended_attempt_takes_no_more_output(idle):
    job, token = running_job(idle)
    idle.store.end_attempt(job, 1, exit_code=0, outcome="succeeded", message="done")
    with grpc.insecure_channel(idle.address) as ch:
        expect_error(grpc.StatusCode.FAILED_PRECONDITION, lambda: worker_stub(ch, token).AppendLog(
            pb.AppendLogRequest(job_id=job, attempt=1, data=b"after the end\n")))
    assert "after the end" not in log_of(idle, job)


def slurm_step(srv, job: str, token: str, command: list[str], scratch: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.slurm_step", "--coordinator", srv.address, "--job", job,
                           "--attempt", "1", "--scratch", str(scratch), "--", *command],
                          capture_output=True, timeout=60, cwd=ROOT,
                          env=cli_env(GRADMESH_JOB_TOKEN=token, SLURM_JOB_ID=""))


def test_the_batch_step_forwards_everything_srun_prints_and_keeps_its_exit_code(idle, tmp_path):
    job, token = running_job(idle)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "ckpt-10.npz").write_bytes(b"node-local")
    lines = "".join(f"[rank {i % 2}] step {i}\n" for i in range(2000))   # ~40 kB, more than one call
    program = f"import sys; sys.stdout.write({lines!r}); sys.stdout.flush(); " \
              "print('srun: error: task 1: Exited with exit code 3', file=sys.stderr); sys.exit(3)"
    done = slurm_step(idle, job, token, [sys.executable, "-c", program], scratch)
    assert done.returncode == 3, done.stderr.decode()
    assert done.stdout.decode() == lines + "srun: error: task 1: Exited with exit code 3\n"  # the node-local copy
    text = log_of(idle, job)
    assert lines + "srun: error: task 1: Exited with exit code 3\n" in text
    assert not scratch.exists()  # the ranks' node-local scratch is removed at the end


def test_the_batch_step_says_so_when_the_coordinator_refuses_its_output(idle, tmp_path):
    job, _ = running_job(idle)
    done = slurm_step(idle, job, "wrong-token", [sys.executable, "-c", "print('hello')"], tmp_path / "s")
    assert done.returncode == 0
    out = done.stdout.decode()
    assert out.startswith("hello\n") and "did not reach the coordinator (UNAUTHENTICATED" in out, out
    assert "hello" not in log_of(idle, job)


def test_the_batch_step_ends_a_step_whose_task_died_when_srun_does_not(idle, tmp_path):
    """srun's --kill-on-bad-exit needs Slurm's controller; while it is away the step would wait for the ranks'
    hang watchdog. A stand-in srun that reports a dead task and then waits until it gets two SIGINTs (srun's
    "sending Ctrl-C to StepId", which reaches the tasks without the controller)."""
    job, token = running_job(idle)
    srun = tmp_path / "srun"
    srun.write_text("#!/bin/sh\n"
                    "n=0; trap 'n=$((n+1)); [ $n -ge 2 ] && { echo \"srun: Force Terminated\"; exit 137; }' INT\n"
                    "echo 'srun: error: vm: task 1: Killed'\n"
                    "i=0; while [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; exit 0\n")
    srun.chmod(0o755)
    started = time.monotonic()
    done = slurm_step(idle, job, token, [str(srun)], tmp_path / "s")
    took = time.monotonic() - started
    assert done.returncode == 137, done.stdout.decode()
    assert "ending it from here with srun's Ctrl-C" in done.stdout.decode() and took < 30, (took, done.stdout)
    assert "srun: Force Terminated" in log_of(idle, job)


def test_ranks_that_stop_on_request_are_not_taken_for_dead_tasks(idle, tmp_path):
    job, token = running_job(idle)
    program = "print('srun: error: vm: tasks 0-1: Exited with exit code 4', flush=True); import time; time.sleep(7)"
    done = slurm_step(idle, job, token, [sys.executable, "-c", program], tmp_path / "s")
    assert done.returncode == 0 and "ending it from here" not in done.stdout.decode(), done.stdout

