"""Slurm's controller away for a while, against a real single-node Slurm (tests/slurm_cluster.py) whose
slurmctld the tests stop and start again (the node's slurmd and the running steps stay, as in an outage).

What is shown: a job submitted while slurmctld is away stays QUEUED with no restart spent, its message (and
`gradmesh status`) says since when the controller is unreachable, and it runs once the controller is back; a
job whose ranks finished during the outage is settled at once, on its batch step's word (Slurm records its
end once the controller is back); a rank
killed during the outage does not leave its step to the hang watchdog (60 s here): the batch step ends the
step at once, and the job restarts when the controller is back.
"""
from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from coordinator.access.tokens import attempt_tag
from coordinator.supervision.processes import tagged
from helpers import wait_for

from slurm_serve import Serve

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def serve(slurm, tmp_path):
    server = Serve(slurm, slurm.hidden / f"outage-{tmp_path.name}")
    try:
        yield server
    finally:
        slurm.start_controller()
        server.stop()


def rank_pids(server: Serve, job: str) -> list[int]:
    """The worker processes (not the batch step) of the job's current attempt."""
    tag = attempt_tag(server.job(job)["token_hash"])
    pids = []
    for pid in tagged(tag):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"worker" in argv and b"worker.slurm_step" not in argv and b"srun" not in argv[0]:
            pids.append(pid)
    return pids


def test_a_job_submitted_while_the_controller_is_away_waits_and_then_runs(serve, slurm, tmp_path):
    slurm.stop_controller()
    job = serve.submit(tmp_path, "out-submit", steps=40)
    row = wait_for(lambda: (r := serve.job(job)) and "Slurm controller unreachable since" in r["message"] and r,
                   timeout=120, what="the job to say the controller is unreachable")
    assert row["state"] == "QUEUED" and row["restarts"] == 0, dict(row)
    assert re.search(r"unreachable since \d\d:\d\d:\d\d \(.*Unable to contact slurm controller", row["message"]), \
        row["message"]
    shown = serve.cli("status", job).stdout
    assert "Slurm controller unreachable since" in shown, shown
    time.sleep(5)  # sbatch is retried with a backoff meanwhile, and the job stays queued
    assert serve.job(job)["state"] == "QUEUED"
    slurm.start_controller()
    done = serve.wait_state(job, "SUCCEEDED", timeout=180)
    assert done["restarts"] == 0, dict(done)
    history = [t["state"] for t in serve.query("SELECT state FROM transitions WHERE job_id = ? ORDER BY id", job)]
    assert history == ["QUEUED", "RUNNING", "SUCCEEDED"], history
    outcomes = [a["outcome"] for a in serve.query("SELECT outcome FROM attempts WHERE job_id = ? ORDER BY attempt",
                                                  job)]
    assert outcomes[-1] == "succeeded" and set(outcomes[:-1]) <= {"not-submitted"}, outcomes


def test_ranks_that_finish_during_an_outage_are_settled_once_the_controller_is_back(serve, slurm, tmp_path):
    steps = 20000  # ~1 min on a quiet machine: long enough to be seen running during the outage
    job = serve.submit(tmp_path, "out-finish", steps=steps, eval_every=100)
    serve.wait_state(job, "RUNNING")
    wait_for(lambda: serve.job(job)["step"] >= 100, timeout=120, what="some steps")
    t0, s0 = time.monotonic(), serve.job(job)["step"]
    wait_for(lambda: serve.job(job)["step"] >= s0 + 500, timeout=120, what="500 more steps")
    rate = (serve.job(job)["step"] - s0) / (time.monotonic() - t0)  # this machine's speed now
    slurm.stop_controller()
    shown = wait_for(lambda: "Slurm controller unreachable since" in serve.job(job)["message"]
                     and serve.cli("status", job).stdout, timeout=60, what="the running job to say the controller is away")
    assert re.search(r"RUNNING.*\n.*running as Slurm job \d+; Slurm controller unreachable since", shown), shown
    # the batch step tells the coordinator when its ranks exited: settled without waiting for Slurm's word
    done = serve.wait_state(job, "SUCCEEDED", timeout=60 + 3 * steps / rate)
    assert not rank_pids(serve, job)
    assert done["restarts"] == 0 and done["step"] == steps, dict(done)
    ended = serve.query("SELECT message FROM attempts WHERE job_id = ?", job)[0]["message"]
    slurm_id = serve.slurm_job(job)
    assert slurm.run(["scontrol", "ping"], check=False).returncode != 0  # still away
    slurm.start_controller()
    # and Slurm, back, records the job's end too
    wait_for(lambda: "JobState=COMPLETED" in slurm.run(["scontrol", "show", "job", slurm_id, "--oneliner"],
                                                       check=False).stdout, timeout=180,
             what="Slurm to record the job as COMPLETED once its controller is back")
    assert serve.job(job)["state"] == "SUCCEEDED", ended


def test_a_rank_killed_while_the_controller_is_away_ends_its_step_without_waiting_for_the_hang_timeout(
        serve, slurm, tmp_path):
    job = serve.submit(tmp_path, "out-kill", steps=100000, eval_every=50, hang_timeout_s=60, max_restarts=2,
                       backoff_s=0.5)
    serve.wait_state(job, "RUNNING")
    wait_for(lambda: serve.job(job)["step"] >= 50, timeout=120, what="some steps")
    ranks = wait_for(lambda: len(p := rank_pids(serve, job)) == 2 and p, timeout=30, what="the job's two ranks")
    slurm.stop_controller()
    killed = time.monotonic()
    os.kill(ranks[1], signal.SIGKILL)
    wait_for(lambda: not rank_pids(serve, job), timeout=45, what="the step to end (the hang timeout is 60 s)")
    ended_s = time.monotonic() - killed
    print(f"\nstep ended {ended_s:.1f} s after the rank was killed, slurmctld away (hang_timeout_s 60)")
    log = serve.cli("logs", job).stdout
    assert "task 1: Killed" in log and "ending it from here with srun's Ctrl-C" in log, log[-3000:]
    slurm.start_controller()
    wait_for(lambda: serve.job(job)["attempts"] >= 2 and serve.job(job)["state"] == "RUNNING", timeout=180,
             what="the restart once the controller is back")
    assert serve.job(job)["restarts"] == 1
    serve.cli("cancel", job)
    serve.wait_state(job, "CANCELLED", timeout=120)
