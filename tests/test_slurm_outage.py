"""Slurm's controller away for a while, against a real single-node Slurm (tests/slurm_cluster.py) whose
slurmctld the tests stop and start again (the node's slurmd and the running steps stay, as in an outage).

What is shown: a job submitted while slurmctld is away stays QUEUED with no restart spent, its message (and
`gradmesh status`, and the dashboard in a real Chromium: the job's page and the jobs list) says since when the
controller is unreachable, and it runs once the controller is back, the dashboard's words gone; a
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
from coordinator.wire import TOKEN_FILE
from chromium import chromium
from helpers import seconds_for, step_rate, wait_for

from slurm_serve import Serve

pytestmark = pytest.mark.timeout(400)


@pytest.fixture
def serve(slurm, tmp_path):
    server = Serve(slurm, slurm.hidden / f"outage-{tmp_path.name}", dashboard=True)
    try:
        yield server
    finally:
        slurm.start_controller()
        server.stop()


@pytest.fixture(scope="module")
def cluster_browser(slurm, tmp_path_factory):
    """Chromium inside the cluster's namespace, where the coordinator's dashboard listens on 127.0.0.1."""
    with chromium(netns=slurm.namespace, scratch=tmp_path_factory.mktemp("browser")) as browser:
        yield browser


SEEN_MS = 20_000  # how long the dashboard may take to show a change (it polls the job every 2 s)


def dashboard(browser, server: Serve, path: str):
    """A page of the coordinator's dashboard at `path`, logged in with the bootstrap token."""
    from playwright.sync_api import expect
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_timeout(SEEN_MS)
    page = context.new_page()
    url = server.dashboard.rstrip("/") + path
    assert page.goto(url).status == 401  # the login form
    page.fill("#token", (server.data_dir / TOKEN_FILE).read_text().strip())
    page.click("button[type=submit]")
    page.wait_for_url(url)
    return page, expect


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


def test_a_job_submitted_while_the_controller_is_away_waits_and_then_runs(serve, slurm, cluster_browser, tmp_path):
    slurm.stop_controller()
    job = serve.submit(tmp_path, "out-submit", steps=40)
    row = wait_for(lambda: (r := serve.job(job)) and "Slurm controller unreachable since" in r["message"] and r,
                   timeout=120, what="the job to say the controller is unreachable")
    away_until = time.monotonic() + 5  # sbatch is retried with a backoff meanwhile, and the job stays queued
    assert row["state"] == "QUEUED" and row["restarts"] == 0, dict(row)
    assert re.search(r"unreachable since \d\d:\d\d:\d\d \(.*Unable to contact slurm controller", row["message"]), \
        row["message"]
    shown = serve.cli("status", job).stdout
    assert "Slurm controller unreachable since" in shown, shown
    since = re.search(r"unreachable since \d\d:\d\d:\d\d", row["message"]).group()
    page, expect = dashboard(cluster_browser, serve, f"/jobs/{job}")
    expect(page.locator("#summary")).to_contain_text(since, timeout=SEEN_MS)
    expect(page.locator("#state")).to_have_text("QUEUED", timeout=SEEN_MS)
    jobs, _ = dashboard(cluster_browser, serve, "/")
    expect(jobs.locator(f'tr[data-job="{job}"] .reason')).to_contain_text(since, timeout=SEEN_MS)
    time.sleep(max(0.0, away_until - time.monotonic()))
    # still said while sbatch is tried again (each try takes Slurm's ~9 s to fail), not only between tries
    assert serve.job(job)["state"] == "QUEUED" and since in serve.job(job)["message"], dict(serve.job(job))
    assert since in page.text_content("#summary") and since in serve.cli("status", job).stdout
    slurm.start_controller()
    done = serve.wait_state(job, "SUCCEEDED", timeout=180)
    # the open pages follow the job: the outage's words go, and it shows as done
    expect(page.locator("#state")).to_have_text("SUCCEEDED", timeout=SEEN_MS)
    expect(page.locator("#summary")).not_to_contain_text("unreachable", timeout=SEEN_MS)
    expect(jobs.locator(f'tr[data-job="{job}"]')).to_contain_text("SUCCEEDED", timeout=SEEN_MS)
    expect(jobs.locator(f'tr[data-job="{job}"]')).not_to_contain_text("unreachable", timeout=SEEN_MS)
    page.context.close()
    jobs.context.close()
    assert done["restarts"] == 0, dict(done)
    history = [t["state"] for t in serve.query("SELECT state FROM transitions WHERE job_id = ? ORDER BY id", job)]
    assert history == ["QUEUED", "RUNNING", "SUCCEEDED"], history
    outcomes = [a["outcome"] for a in serve.query("SELECT outcome FROM attempts WHERE job_id = ? ORDER BY attempt",
                                                  job)]
    assert outcomes[-1] == "succeeded" and set(outcomes[:-1]) <= {"not-submitted"}, outcomes


def test_ranks_that_finish_during_an_outage_are_settled_once_the_controller_is_back(serve, slurm, cluster_browser,
                                                                                   tmp_path):
    # The ranks are paused (SIGSTOP) while the outage is looked at, so the job need not be long enough to
    # outlast Slurm's ~9 s before its commands give up on the controller at whatever speed this machine has
    # now (a fixed 20,000 steps took 1 min here when quiet, over 3 when busy); they finish once resumed.
    steps = 1000
    job = serve.submit(tmp_path, "out-finish", steps=steps, eval_every=100, hang_timeout_s=300)
    serve.wait_state(job, "RUNNING")
    ranks = wait_for(lambda: len(p := rank_pids(serve, job)) == 2 and p, timeout=30, what="the job's two ranks")
    rate = step_rate(lambda: serve.job(job)["step"], min_steps=50)
    wait_for(lambda: serve.job(job)["step"] >= 100, timeout=120, what="some steps")
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    t0 = time.monotonic()
    slurm.stop_controller()
    shown = wait_for(lambda: "Slurm controller unreachable since" in serve.job(job)["message"]
                     and serve.cli("status", job).stdout, timeout=60, what="the running job to say the controller is away")
    assert re.search(r"RUNNING.*\n.*running as Slurm job \d+; Slurm controller unreachable since", shown), shown
    page, expect = dashboard(cluster_browser, serve, f"/jobs/{job}")  # the running job's page says so too
    expect(page.locator("#summary")).to_contain_text(re.compile(r"running as Slurm job \d+; Slurm controller "
                                                                r"unreachable since \d\d:\d\d:\d\d"), timeout=SEEN_MS)
    seen_s = time.monotonic() - t0
    paused = serve.job(job)
    assert paused["state"] == "RUNNING" and paused["step"] < steps, dict(paused)  # its ranks have yet to finish
    for pid in ranks:
        os.kill(pid, signal.SIGCONT)
    # the batch step tells the coordinator when its ranks exited: settled without waiting for Slurm's word
    done = serve.wait_state(job, "SUCCEEDED", timeout=seconds_for(steps - paused["step"], rate))
    assert not rank_pids(serve, job)
    assert done["restarts"] == 0 and done["step"] == steps, dict(done)
    print(f"\nthe outage seen (status, page) {seen_s:.1f} s after the stop; the job SUCCEEDED "
          f"{time.monotonic() - t0:.1f} s after it ({rate:.0f} steps/s before the pause)")
    ended = serve.query("SELECT message FROM attempts WHERE job_id = ?", job)[0]["message"]
    slurm_id = serve.slurm_job(job)
    assert slurm.run(["scontrol", "ping"], check=False).returncode != 0  # still away
    # back at once: slurmstepd tries to send the step's completion for ~9 s, then again only after 60 s
    slurm.start_controller()
    back = time.monotonic()
    expect(page.locator("#state")).to_have_text("SUCCEEDED", timeout=SEEN_MS)
    expect(page.locator("#summary")).not_to_contain_text("unreachable", timeout=SEEN_MS)
    page.context.close()
    # and Slurm, back, records the job's end too: its batch script's exit 0 at once (COMPLETING), COMPLETED
    # once the step's completion arrives (60 s later if slurmstepd's first try failed: a loaded machine)
    wait_for(lambda: re.search(r"JobState=COMPLET(ING|ED) .*ExitCode=0:0", slurm.run(
        ["scontrol", "show", "job", slurm_id, "--oneliner"], check=False).stdout), timeout=180,
             what="Slurm to record the job's end once its controller is back")
    print(f"Slurm recorded the end {time.monotonic() - back:.1f} s after its controller was back")
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
    # back at once: a step completion slurmstepd fails to send for ~9 s waits 60 s for its next try, and the
    # node, COMPLETING the old job meanwhile, has no CPUs for the restart
    slurm.start_controller()
    log = serve.cli("logs", job).stdout
    assert "task 1: Killed" in log and "ending it from here with srun's Ctrl-C" in log, log[-3000:]
    wait_for(lambda: serve.job(job)["attempts"] >= 2 and serve.job(job)["state"] == "RUNNING", timeout=180,
             what="the restart once the controller is back")
    assert serve.job(job)["restarts"] == 1
    serve.cli("cancel", job)
    serve.wait_state(job, "CANCELLED", timeout=120)
