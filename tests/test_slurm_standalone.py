"""Standalone training under a real Slurm gives the parameters `mpirun -n 2` gives without it.

Three ways to start the same 2-rank job: `srun --mpi=pmi2` (Slurm starts the ranks, MPICH wires them up
through PMI-2), `mpirun` inside an `salloc` allocation (hydra starts its proxies through Slurm), and
`sbatch examples/slurm/train.sbatch` (the shipped batch script). Same rank count, same reduction order:
the final parameters must be bit-identical to plain `mpirun -n 2` on this machine.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT
from mpi_programs.launch import run_mpi

pytestmark = pytest.mark.timeout(300)

SPEC = """
name = "slurm-digits"
[model]
layers = [64, 32, 10]
[data]
source = "digits"
[train]
steps = 60
batch_size = 61
eval_every = 20
[checkpoint]
every_steps = 20
"""


def final_layers(out: Path) -> dict[str, np.ndarray]:
    with np.load(out / "final.npz") as ckpt:
        return {name: ckpt[name] for name in ckpt.files if name.startswith("layers.")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The same job under plain `mpirun -n 2`, outside Slurm."""
    tmp = tmp_path_factory.mktemp("mpirun")
    spec = tmp / "job.toml"
    spec.write_text(SPEC)
    result = run_mpi(2, ["python", "-m", "worker", "--spec", str(spec), "--out", str(tmp / "out")], timeout=120)
    assert result.returncode == 0 and not result.timed_out, result.output
    return spec, final_layers(tmp / "out")


def worker_env() -> dict[str, str]:
    return {"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


def assert_same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_srun_pmi2_trains_the_same_parameters(slurm, reference, tmp_path):
    spec, want = reference
    done = slurm.run(["srun", "--mpi=pmi2", "-n", "2", sys.executable, "-m", "worker", "--spec", str(spec),
                      "--out", str(tmp_path / "out")], env=worker_env(), cwd=tmp_path)
    assert "2 rank(s)" in done.stdout + done.stderr, done.stdout + done.stderr
    assert_same(final_layers(tmp_path / "out"), want)


def test_mpirun_inside_an_allocation_trains_the_same_parameters(slurm, reference, tmp_path):
    spec, want = reference
    mpirun = str(Path(sys.executable).parent / "mpirun")
    slurm.run(["salloc", "-n", "2", mpirun, "-n", "2", sys.executable, "-m", "worker", "--spec", str(spec),
               "--out", str(tmp_path / "out")], env=worker_env(), cwd=tmp_path)
    assert_same(final_layers(tmp_path / "out"), want)


def test_the_shipped_batch_script_trains_the_same_parameters(slurm, reference, tmp_path):
    spec, want = reference
    out = tmp_path / "out"
    env = {**worker_env(), "GRADMESH_SPEC": str(spec), "GRADMESH_OUT": str(out), "GRADMESH_PYTHON": sys.executable,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    slurm.run(["sbatch", "--wait", str(ROOT / "examples" / "slurm" / "train.sbatch")], env=env, cwd=tmp_path)
    assert_same(final_layers(out), want)
    log = next(tmp_path.glob("gradmesh-*.out")).read_text()
    assert "gradmesh: job" in log and "final.npz" in log, log


def test_the_batch_script_finds_the_checkouts_venv_without_being_told(slurm, reference, tmp_path):
    """Submitted from the checkout with no venv active, no GRADMESH_PYTHON and no venv on PATH: the script
    finds .venv in the directory sbatch ran from (it used to run plain `python`: "No module named worker")."""
    if not (ROOT / ".venv" / "bin" / "python").exists():
        pytest.skip(f"no .venv in {ROOT} (the script looks for the submit directory's .venv)")
    spec, want = reference
    out = tmp_path / "out"
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "VIRTUAL_ENV": "", "GRADMESH_PYTHON": "", "PYTHONPATH": "",
           "GRADMESH_SPEC": str(spec), "GRADMESH_OUT": str(out)}
    slurm.run(["sbatch", "--wait", f"--output={tmp_path}/found-%j.out", "examples/slurm/train.sbatch"], env=env,
              cwd=ROOT)
    log = next(tmp_path.glob("found-*.out")).read_text()
    assert f"with {ROOT}/.venv/bin/python" in log and "(1 node(s) x 2 rank(s))" in log, log
    assert_same(final_layers(out), want)


def test_the_batch_script_says_which_python_cannot_run_the_worker(slurm, tmp_path):
    done = slurm.run(["sbatch", "--wait", f"--output={tmp_path}/bad-%j.out", str(ROOT / "examples" / "slurm" /
                                                                              "train.sbatch")],
                     env={"GRADMESH_PYTHON": "/usr/bin/python3", "PYTHONPATH": "", "VIRTUAL_ENV": ""},
                     cwd=tmp_path, check=False)
    assert done.returncode != 0
    log = next(tmp_path.glob("bad-*.out")).read_text()
    assert "gradmesh: /usr/bin/python3 cannot import gradmesh's worker and mpi4py; set GRADMESH_PYTHON" in log, log
