"""Sweeps end to end: a real coordinator on 127.0.0.1:0 launching real `mpirun` trials.

  - the same ASHA sweep with max_concurrent = 1 and = 2 gives the same trials, values at every rung,
    promotions and winner, and a bit-identical best checkpoint; so does one whose coordinator is killed with
    SIGKILL mid-sweep and restarted on the same data directory;
  - a promoted trial (paused at two rungs, relaunched from its checkpoint each time) ends with exactly the
    parameters of the same configuration run alone;
  - trials are ordinary jobs (labels sweep/trial; a pause spends no restart; every transition legal);
  - a sweep with one invalid trial is refused whole, INVALID_ARGUMENT naming the key and the trial;
  - the CLI: sweep submit/status/watch/delete, download SWEEP --best.

Timeouts scale with a measured end-to-end job on this machine (`pace`): seven engineers share two cores.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import AuthedJobStub
from coordinator.client import Client, JobState
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.states import is_legal
from helpers import cli_env, digits_toml, expect_error, restartable_port, run_cli, wait_for

pytestmark = pytest.mark.timeout(1800)
ROOT = Path(__file__).resolve().parent.parent

SWEEP = """
name = "sweep-digits"
workers = 1
[model]
layers = [64, 32, 10]
[train]
steps = 90
batch_size = 32
eval_every = 1000
[checkpoint]
every_steps = 0
keep_last = 2
[fault]
backoff_s = 0.2
[sweep]
method = "asha"
metric = "val_loss"
max_trials = 9
max_concurrent = {concurrent}
seed = 3
[sweep.parameters]
"optim.lr" = {{ low = 3e-4, high = 1e-1, log = true }}
"model.activation" = {{ values = ["relu", "tanh"] }}
[sweep.asha]
min_steps = 10
reduction_factor = 3
"""


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "meta"}


def assert_same_arrays(a: Path, b: Path) -> None:
    x, y = arrays(a), arrays(b)
    assert sorted(x) == sorted(y)
    for k in x:
        np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def decisions(sweep) -> dict:
    """Everything the sweep decided, and the values it decided on (exact floats)."""
    return {"trials": [(t.trial, t.params, t.status, t.rung, t.values) for t in sweep.trials],
            "promotions": sweep.promotions, "best": sweep.best_trial, "state": sweep.state,
            "rungs": sweep.rungs}


def finish(client: Client, sweep_id: str, timeout: float):
    return wait_for(lambda: (s := client.sweep(sweep_id)).is_terminal() and s, timeout=timeout,
                    what=f"sweep {sweep_id} to end", interval=0.5)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One coordinator (2 local slots) for the module, and `pace`: seconds one small job takes end to end here."""
    from coordinator.api.server import start_server
    data = tmp_path_factory.mktemp("sweeps")
    srv = start_server(data / "coord", slots=2, data_roots=[data])
    try:
        with Client(srv.address, token=srv.token) as client:
            started = time.monotonic()
            job = client.submit(digits_toml("pace", steps=30, workers=1))
            wait_for(lambda: client.get(job.id).is_terminal(), timeout=600, what="the pace job")
            assert client.get(job.id).state is JobState.SUCCEEDED
            pace = time.monotonic() - started
        yield srv, pace, data
    finally:
        srv.stop(grace=1.0)


@pytest.fixture(scope="module")
def reference(served):
    """The sweep run with max_concurrent = 1, then = 2, on the same coordinator; their best checkpoints."""
    srv, pace, data = served
    out = {}
    with Client(srv.address, token=srv.token) as client:
        for concurrent in (1, 2):
            sweep = client.submit_sweep(SWEEP.format(concurrent=concurrent), sweep_id=f"one-by-{concurrent}")
            assert sweep.max_concurrent == concurrent and sweep.trials_total == 9 and sweep.rungs == (10, 30, 90)
            done = finish(client, sweep.id, timeout=120 + 60 * pace)
            best = data / f"best-{concurrent}.npz"
            client.download_best(sweep.id, best)
            out[concurrent] = (done, best)
    return out


def test_the_same_sweep_replays_with_one_or_two_trials_at_a_time(reference):
    (one, best1), (two, best2) = reference[1], reference[2]
    assert one.state is JobState.SUCCEEDED, one.message
    assert decisions(one) == decisions(two)
    assert one.best_job_id != two.best_job_id and one.best_value == two.best_value
    assert_same_arrays(best1, best2)
    # the rule did its work: 9 trials at rung 0, at least 3 promoted, at least 1 run to the end, the rest stopped
    assert len(one.promotions[0]) >= 3 and len(one.promotions[1]) >= 1
    statuses = [t.status for t in one.trials]
    assert statuses.count("done") == len(one.promotions[1]) and statuses.count("stopped") == 9 - statuses.count("done")
    assert all(len(t.values) == t.rung + 1 for t in one.trials)
    winner = one.trials[one.best_trial]
    assert winner.status == "done" and winner.values[-1][1] == 90


def test_trials_are_ordinary_jobs_and_a_pause_spends_no_restart(served, reference):
    srv, _, _ = served
    one, _ = reference[1]
    with Client(srv.address, token=srv.token) as client:
        jobs = {j.id: j for j in client.list() if j.labels.get("sweep") == one.id}
        assert sorted(jobs) == sorted(t.job_id for t in one.trials)
        for t in one.trials:
            job = jobs[t.job_id]
            assert job.labels["trial"] == str(t.trial) and job.restarts == 0
            states = [c.state for c in job.history]
            assert all(is_legal(a, b) for a, b in zip(states, states[1:]) if a != b), states
            pauses = [c for c in job.history if c.state is JobState.RESTARTING]
            assert len(pauses) == t.rung + (0 if t.status == "done" else 1)  # one pause per rung below the last
            assert all("paused at step" in c.message for c in pauses)
            expected = JobState.SUCCEEDED if t.status == "done" else JobState.CANCELLED
            assert job.state is expected, (t, job.message)
            if t.status == "stopped":
                assert "stopped by sweep" in job.message
            assert [p.step for p in client.metrics(job.id)][-1] == one.rungs[t.rung]


def test_a_promoted_trial_ends_with_the_parameters_of_the_same_config_run_alone(served, reference):
    srv, pace, data = served
    one, _ = reference[1]
    winner = one.trials[one.best_trial]
    with Client(srv.address, token=srv.token) as client:
        spec = json.loads(client.get(winner.job_id).spec_json)
        solo = client.submit(spec, job_id="winner-alone")
        wait_for(lambda: client.get(solo.id).is_terminal(), timeout=60 + 20 * pace, what="the solo run")
        assert client.get(solo.id).state is JobState.SUCCEEDED
        assert [c.state for c in client.get(solo.id).history].count(JobState.RESTARTING) == 0  # never paused
        client.download(winner.job_id, data / "promoted.npz", step=90)
        client.download(solo.id, data / "alone.npz", step=90)
    assert_same_arrays(data / "promoted.npz", data / "alone.npz")


SERVE = textwrap.dedent("""
    import sys
    from pathlib import Path
    from coordinator.api.server import start_server
    srv = start_server(Path(sys.argv[1]), port=int(sys.argv[2]), slots=2, token="sweep-token",
                       data_roots=[Path(sys.argv[1]).parent])
    print(srv.address, flush=True)
    srv.wait_for_termination()
""")


def test_a_coordinator_killed_mid_sweep_changes_no_decision(tmp_path, served, reference):
    _, pace, _ = served
    one, best1 = reference[1]
    data_dir = tmp_path / "data"
    procs = []

    def start(port: int) -> str:
        proc = subprocess.Popen([sys.executable, "-c", SERVE, str(data_dir), str(port)], cwd=ROOT,
                                env=dict(os.environ, PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, text=True)
        procs.append(proc)
        address = proc.stdout.readline().strip()
        assert address, "the coordinator did not start"
        return address

    try:
        port = restartable_port()
        address = start(port)
        with Client(address, token="sweep-token") as client:
            client.submit_sweep(SWEEP.format(concurrent=2), sweep_id="killed")
            # mid-sweep: some values recorded, trials running or paused, the sweep far from its end
            wait_for(lambda: sum(len(t.values) for t in client.sweep("killed").trials) >= 4, timeout=60 + 40 * pace,
                     what="four values")
        procs[-1].send_signal(signal.SIGKILL)
        procs[-1].wait(timeout=30)
        with Client(start(port), token="sweep-token") as client:
            again = finish(client, "killed", timeout=120 + 60 * pace)
            client.download_best("killed", tmp_path / "best.npz")
            # and the stop that follows: the coordinator ends its trials' processes
        assert decisions(again) == decisions(one)
        assert_same_arrays(tmp_path / "best.npz", best1)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def test_one_invalid_trial_refuses_the_whole_sweep_naming_key_and_trial(served):
    srv, _, _ = served
    bad = SWEEP.format(concurrent=1).replace('"model.activation" = { values = ["relu", "tanh"] }',
                                             '"model.layers" = { values = [[64, 32, 10], [64, 32, 7]] }')
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, srv.token)
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.SubmitSweep, pb.SubmitSweepRequest(text=bad))
        trailers = dict(err.trailing_metadata())
        assert trailers["gradmesh-field"] == "model.layers" and trailers["gradmesh-kind"] == "field"
        assert "trial " in err.details() and "[64, 32, 7]" in err.details() and "10 classes" in err.details()
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.SubmitSweep,
                           pb.SubmitSweepRequest(text=SWEEP.format(concurrent=1).replace("min_steps = 10",
                                                                                         "min_steps = 0")))
        assert dict(err.trailing_metadata())["gradmesh-field"] == "sweep.asha.min_steps"
        expect_error(grpc.StatusCode.NOT_FOUND, api.GetSweep, pb.GetSweepRequest(sweep_id="nope"))
        expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.GetSweep, pb.GetSweepRequest(sweep_id="../x"))
        assert not [s for s in api.ListSweeps(pb.ListSweepsRequest()).sweeps if s.name == "sweep-digits"
                    and s.id not in ("one-by-1", "one-by-2")]


def test_the_cli_submits_watches_shows_and_downloads_the_best(served, reference, tmp_path):
    srv, pace, _ = served
    one, best1 = reference[1]
    env = cli_env(GRADMESH_ADDRESS=srv.address, GRADMESH_TOKEN=srv.token)
    grid = tmp_path / "grid.toml"
    grid.write_text(digits_toml("grid", steps=20, workers=1) + '[sweep]\nmethod = "grid"\n[sweep.parameters]\n'
                    '"optim.lr" = { values = [0.01, 0.003] }\n')
    proc = run_cli("sweep", "submit", str(grid), env=env)
    assert proc.returncode == 0, proc.stderr
    sweep_id = proc.stdout.strip()
    proc = run_cli("sweep", "watch", sweep_id, env=env, timeout=120 + 30 * pace)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"{sweep_id} SUCCEEDED: best: trial" in proc.stdout and "trial   1  done" in proc.stdout
    proc = run_cli("sweep", "status", one.id, "--json", env=env)
    shown = json.loads(proc.stdout)
    assert shown["best_trial"] == one.best_trial and shown["promotions"] == [list(p) for p in one.promotions]
    assert [t["values"][-1]["value"] for t in shown["trials"]] == [t.values[-1][2] for t in one.trials]
    proc = run_cli("sweep", "status", one.id, env=env)
    assert f"best       trial {one.best_trial}" in proc.stdout and "@90" in proc.stdout
    proc = run_cli("download", one.id, "--best", "-o", str(tmp_path / "cli-best.npz"), env=env)
    assert proc.returncode == 0 and one.best_job_id in proc.stdout, proc.stderr
    assert_same_arrays(tmp_path / "cli-best.npz", best1)
    proc = run_cli("sweep", "status", "no-such-sweep", env=env)
    assert proc.returncode == 1 and "sweep no-such-sweep not found" in proc.stderr
    proc = run_cli("sweep", "delete", sweep_id, env=env)
    assert proc.returncode == 0 and f"{sweep_id}: deleted (2 trial job(s)" in proc.stdout, proc.stdout + proc.stderr
    proc = run_cli("sweep", "status", sweep_id, env=env)
    assert proc.returncode == 1 and f"sweep {sweep_id} not found" in proc.stderr
