"""`gradmesh serve --executor slurm` against a real single-node Slurm (tests/slurm_cluster.py, 2 CPUs).

The coordinator runs inside the cluster's network namespace (ranks that slurmd starts inherit it and dial
127.0.0.1 there); the CLI calls run there too. Its data directory is under `slurm.hidden`, which the compute
side cannot see (slurmd runs in a mount namespace with a tmpfs over it): no shared filesystem, so spec,
checkpoints, reports and the ranks' output all travel over gRPC. The tests read job states straight from the coordinator's
SQLite file (a reader beside the coordinator, cheap to poll) and check what a person sees with the CLI.

Each attempt is a Slurm batch job named gradmesh-<job>-a<attempt>. What is shown: it runs through sbatch and
succeeds; a job that does not fit waits PENDING with Slurm's reason as its message; cancel --checkpoint
writes a checkpoint and leaves nothing in squeue; an scancel from outside restarts the job, which ends with
the parameters of an uninterrupted run; a coordinator killed with SIGKILL and started again re-adopts the
running Slurm job by its id. The submit → first-step figure is printed beside the local executor's.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import cli_env, digits_toml, restartable_port, wait_for
from mpi_programs.launch import run_mpi
from slurm_serve import WORKER_THREADS, Serve

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def serve(slurm, tmp_path_factory):
    server = Serve(slurm, slurm.hidden / "serve")
    yield server
    server.stop()


def squeue(slurm) -> str:
    return slurm.run(["squeue", "--noheader", "--format=%i|%j|%T|%r"]).stdout


def final_layers(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as ckpt:
        return {name: ckpt[name] for name in ckpt.files if name.startswith("layers.")}


def first_step_s(server, job_id: str) -> float:
    """From submission to the first metric point rank 0 measured."""
    row = server.query("SELECT MIN(m.time) - j.created AS s FROM metrics m JOIN jobs j ON j.id = m.job_id"
                       " WHERE m.job_id = ?", job_id)
    return float(row[0]["s"])


class Here:
    """Runs commands on this machine, as SlurmCluster runs them in its namespace (for the local executor)."""

    @staticmethod
    def popen(argv, *, env=None, **kwargs) -> subprocess.Popen:
        return subprocess.Popen(argv, env=env, start_new_session=True, **kwargs)

    @staticmethod
    def run(argv, *, check=True, timeout=120, env=None, cwd=None) -> subprocess.CompletedProcess:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}")
        return done


def test_submit_to_first_step_through_slurm_and_the_local_executor(serve, slurm, tmp_path):
    """The same job, submitted the same way (the CLI), to both executors: seconds from the job's creation
    to its first metric point (step 1). Printed side by side; Slurm adds its scheduling pass and srun."""
    local = Serve(Here(), tmp_path / "local", executor=("--slots", "2"))
    try:
        figures = {}
        for name, server in (("local", local), ("slurm", serve)):
            runs = []
            for i in range(3):
                job = server.submit(tmp_path, f"first-{name}-{i}", steps=20, eval_every=1)
                server.wait_state(job, "SUCCEEDED")
                runs.append(first_step_s(server, job))
            figures[name] = runs
    finally:
        local.stop()
    line = "  ".join(f"{name}: median {sorted(v)[1]:.2f} s ({', '.join(f'{x:.2f}' for x in v)})"
                     for name, v in figures.items())
    print(f"\nsubmit -> first step (3 runs each)  {line}")
    assert sorted(figures["slurm"])[1] < 30


def test_a_job_runs_through_sbatch_reports_and_succeeds(serve, slurm, tmp_path):
    job = serve.submit(tmp_path, "sb-ok", steps=240, eval_every=5)
    serve.wait_state(job, "RUNNING")
    slurm_id = serve.slurm_job(job)
    assert f"{slurm_id}|{serve.slurm_name(job)}|RUNNING" in squeue(slurm)
    # Slurm's side says whose job it is: the gradmesh owner is the Slurm job's comment
    assert "Comment=gradmesh owner=admin" in slurm.run(["scontrol", "show", "job", slurm_id]).stdout
    script = (serve.data_dir / "logs" / job / "attempt-1.sbatch").read_text()
    assert "-m worker.slurm_step" in script and "srun --mpi=pmi2" in script and f"--job {job}" in script
    hidden = slurm.run(["srun", "-n", "1", "ls", "-A", str(serve.data_dir)], check=False)
    assert hidden.returncode != 0 and "No such file" in hidden.stderr, hidden  # the ranks' side cannot see it
    done = serve.wait_state(job, "SUCCEEDED")
    assert done["attempts"] == 1 and done["restarts"] == 0
    assert serve.query("SELECT COUNT(*) AS n FROM metrics WHERE job_id = ?", job)[0]["n"] >= 240 // 5
    out = tmp_path / "best.npz"
    serve.cli("download", job, "--best", "-o", str(out))
    assert final_layers(out)
    history = [t["state"] for t in serve.query("SELECT state FROM transitions WHERE job_id = ? ORDER BY id", job)]
    assert history == ["QUEUED", "RUNNING", "SUCCEEDED"]
    status = serve.cli("status", job).stdout   # the attempt names its Slurm job, for scontrol/sacct
    assert re.search(rf"#1 .* succeeded .* Slurm job {slurm_id}\b", status), status
    # what the ranks printed on the compute side reached the coordinator: `gradmesh logs` shows it
    logs = serve.cli("logs", job).stdout
    assert f"submitted as Slurm job {slurm_id}" in logs and "2 rank(s)" in logs, logs[-3000:]
    assert not list(Path("/tmp").glob(f"gradmesh-{job}-a1.*")), "the ranks' scratch directory was left behind"


def test_a_job_that_does_not_fit_waits_pending_with_slurms_reason(serve, slurm, tmp_path):
    first = serve.submit(tmp_path, "sb-first", steps=50000, eval_every=100)  # runs until cancelled below
    serve.wait_state(first, "RUNNING")
    second = serve.submit(tmp_path, "sb-second", steps=40)
    wait_for(lambda: "PENDING, reason Resources" in serve.job(second)["message"], timeout=30,
             what="the second job to pend for resources")
    assert f"|{serve.slurm_name(second)}|PENDING|Resources" in squeue(slurm)
    shown = serve.cli("status", second).stdout
    assert "QUEUED" in shown and "waiting in Slurm's queue" in shown and "Resources" in shown, shown
    serve.cli("cancel", first)
    serve.wait_state(first, "CANCELLED")
    serve.wait_state(second, "SUCCEEDED")
    history = [t["state"] for t in serve.query("SELECT state FROM transitions WHERE job_id = ? ORDER BY id", second)]
    assert history == ["QUEUED", "RUNNING", "SUCCEEDED"]


def test_cancel_with_checkpoint_writes_one_and_leaves_nothing_in_squeue(serve, slurm, tmp_path):
    job = serve.submit(tmp_path, "sb-cancel", steps=10**6, every_steps=10**7, eval_every=50)  # runs until cancelled
    serve.wait_state(job, "RUNNING")
    slurm_id = serve.slurm_job(job)
    wait_for(lambda: serve.job(job)["step"] >= 20, timeout=60, what="some steps")
    serve.cli("cancel", job, "--checkpoint")
    row = serve.wait_state(job, "CANCELLED")
    assert "last checkpoint at step" in row["message"], row["message"]
    assert serve.query("SELECT COUNT(*) AS n FROM checkpoints WHERE job_id = ?", job)[0]["n"] >= 1
    assert slurm_id not in [line.split("|")[0] for line in squeue(slurm).splitlines()]
    # Slurm's own view of the cancel says cancelled (the ranks exit 4, stopped on request: not a failure)
    shown = wait_for(lambda: (t := slurm.run(["scontrol", "show", "job", slurm_id, "--oneliner"]).stdout)
                     and "JobState=CANCELLED" in t and t, timeout=30, what="Slurm to show the job CANCELLED")
    assert "JobState=FAILED" not in shown


def test_scancel_from_outside_restarts_to_the_uninterrupted_parameters(serve, slurm, tmp_path):
    spec = dict(steps=300, every_steps=20, eval_every=20, max_restarts=2, backoff_s=0.2)
    reference = tmp_path / "ref.toml"
    reference.write_text(digits_toml("sb-ref", **spec))
    done = run_mpi(2, ["python", "-m", "worker", "--spec", str(reference), "--out", str(tmp_path / "ref")],
                   timeout=120, env=WORKER_THREADS)
    assert done.returncode == 0, done.output
    job = serve.submit(tmp_path, "sb-scancel", **spec)
    serve.wait_state(job, "RUNNING")
    slurm_id = serve.slurm_job(job)
    wait_for(lambda: serve.query("SELECT COUNT(*) AS n FROM checkpoints WHERE job_id = ?", job)[0]["n"] >= 1,
             timeout=60, what="a checkpoint to reach the coordinator")
    slurm.run(["scancel", slurm_id])
    row = serve.wait_state(job, "SUCCEEDED", timeout=120)
    assert row["restarts"] == 1 and row["attempts"] == 2, dict(row)
    failed = serve.query("SELECT message FROM transitions WHERE job_id = ? AND state = 'RESTARTING'", job)
    assert f"Slurm job {slurm_id} ended CANCELLED" in failed[0]["message"], failed[0]["message"]
    out = tmp_path / "final.npz"
    serve.cli("download", job, "--latest", "-o", str(out))
    got, want = final_layers(out), final_layers(tmp_path / "ref" / "final.npz")
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_a_killed_coordinator_readopts_the_slurm_job_by_its_id(slurm, tmp_path):
    server = Serve(slurm, slurm.hidden / "adopt", port=restartable_port())
    try:
        job = server.submit(tmp_path, "sb-adopt", steps=600, eval_every=20)
        server.wait_state(job, "RUNNING")
        slurm_id = server.slurm_job(job)
        wait_for(lambda: server.job(job)["step"] >= 20, timeout=60, what="some steps")
        server.kill9()
        assert f"{slurm_id}|{server.slurm_name(job)}|RUNNING" in squeue(slurm)
        server = Serve(slurm, slurm.hidden / "adopt", port=server.port)
        row = server.wait_state(job, "SUCCEEDED", timeout=120)
        assert row["attempts"] == 1 and row["restarts"] == 0, dict(row)
        assert f"re-adopting {job} attempt 1 (Slurm job {slurm_id})" in server.log.read_text()
    finally:
        server.stop()


def registered_run(serve, slurm, tmp_path: Path, name: str, steps: int) -> tuple[subprocess.Popen, str, Path]:
    """`srun --mpi=pmi2 -n 2 python -m worker --spec ... --register` started by hand, and its job id."""
    spec = tmp_path / f"{name}.toml"
    spec.write_text(digits_toml(name, steps=steps, eval_every=10))
    out = tmp_path / "out"
    token = (serve.data_dir / "token").read_text().strip()  # the compute side cannot read the data directory
    proc = slurm.popen(["srun", "--mpi=pmi2", "-n", "2", sys.executable, "-m", "worker", "--spec", str(spec),
                        "--coordinator", serve.address, "--register", "--out", str(out)],
                       env=cli_env(GRADMESH_TOKEN=token, **WORKER_THREADS), cwd=tmp_path,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = wait_for(lambda: next((r["id"] for r in serve.query("SELECT id FROM jobs WHERE name = ? AND executor = ?",
                                                              name, "external")), None),
                   timeout=60, what=f"{name} to register")
    return proc, job, out


def test_a_run_launched_with_srun_registers_streams_and_is_served(serve, slurm, tmp_path):
    proc, job, out = registered_run(serve, slurm, tmp_path, "sb-own", steps=600)
    listed = serve.cli("list").stdout
    assert job in listed, listed
    watched = serve.cli("watch", job, "--json", timeout=120).stdout
    points = [json.loads(line) for line in watched.splitlines() if '"metric"' in line]
    assert len(points) >= 10, watched[-2000:]
    assert proc.wait(timeout=60) == 0, proc.stdout.read()
    row = serve.wait_state(job, "SUCCEEDED")
    assert row["attempts"] == 1 and row["restarts"] == 0
    got = tmp_path / "got.npz"
    serve.cli("download", job, "--latest", "-o", str(got))
    assert got.read_bytes() == (out / "final.npz").read_bytes()


def test_cancel_stops_a_registered_run_at_a_step_boundary(serve, slurm, tmp_path):
    proc, job, out = registered_run(serve, slurm, tmp_path, "sb-own-cancel", steps=20000)
    wait_for(lambda: serve.job(job)["step"] >= 20, timeout=60, what="some steps")
    serve.cli("cancel", job, "--checkpoint")
    assert proc.wait(timeout=60) == 4, proc.stdout.read()  # 4: stopped on request, after a checkpoint
    row = serve.wait_state(job, "CANCELLED")
    assert "cancelled on request" in row["message"] and "last checkpoint at step" in row["message"], row["message"]
    history = [t["state"] for t in serve.query("SELECT state FROM transitions WHERE job_id = ? ORDER BY id", job)]
    assert history == ["QUEUED", "RUNNING", "CANCELLED"]
