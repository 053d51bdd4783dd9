"""worker/shmreduce.py under real mpirun: the step's sum through host-shared memory is the pairwise sum,
bit for bit, on every rank; a rank that never arrives is caught by the hang watchdog; and a job with it
on trains to exactly the parameters of a job with it off (MPI's Allreduce)."""
import re

import numpy as np
import pytest

from mpi_programs.launch import PROGRAMS, run_mpi

CHECKS = str(PROGRAMS / "shm_checks.py")


@pytest.mark.timeout(90)
@pytest.mark.parametrize("nprocs", [2, 3, 4])
def test_shared_memory_sum_is_the_pairwise_sum_on_every_rank(nprocs):
    result = run_mpi(nprocs, ["python", CHECKS, "--watchdog", "20"], timeout=60)
    assert not result.timed_out, result.output
    assert result.returncode == 0, result.output
    for rank in range(nprocs):
        assert f"PASS shm checks on rank {rank} of {nprocs}" in result.output, result.output
    assert result.leftovers == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nprocs,silent,how,why", [(2, 1, "sigstop", "no answer"),
                                                   (3, 2, "sleep", "busy outside any collective")])
def test_a_rank_missing_from_the_shared_memory_sum_is_caught_by_the_watchdog(nprocs, silent, how, why):
    result = run_mpi(nprocs, ["python", str(PROGRAMS / "hang.py"), "--rank", str(silent), "--step", "5",
                              "--how", how, "--timeout", "2", "--shared"], timeout=25)
    assert not result.timed_out, "the watchdog did not fire:\n" + result.output
    assert result.returncode not in (0, None), result.output
    line = re.search(r"rank (\d+) on \S+: collective allreduce #6 did not complete within 2 s; "
                     r"silent rank\(s\): (.*)", result.output)
    assert line, result.output
    assert int(line.group(1)) != silent and line.group(2).startswith(f"{silent} ({why}"), line.group(0)
    assert "finished" not in result.output
    assert result.leftovers == []


SPEC = """
name = "shm-vs-mpi"
[model]
layers = [64, 32, 10]
[data]
source = "digits"
[train]
steps = 50
batch_size = 61
eval_every = 25
[optim]
name = "adam"
lr = 0.01
[checkpoint]
every_steps = 0
"""


@pytest.mark.timeout(120)
def test_training_through_shared_memory_equals_training_through_mpi_allreduce(tmp_path):
    """2 ranks: a sum of two values is the same in either order, so both paths must give the same bits."""
    spec = tmp_path / "job.toml"
    spec.write_text(SPEC)
    finals = {}
    for shm in ("1", "0"):
        out = tmp_path / f"shm-{shm}"
        result = run_mpi(2, ["python", "-m", "worker", "--spec", str(spec), "--out", str(out), "--no-resume"],
                         timeout=60, env={"GRADMESH_SHM_REDUCE": shm})
        assert result.returncode == 0 and "done at step 50" in result.output, result.output
        assert result.leftovers == []
        with np.load(out / "final.npz") as z:
            finals[shm] = {k: z[k] for k in z.files if re.fullmatch(r"layers\.\d+\.(W|b)", k)}
    assert sorted(finals["1"]) == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"]
    for name, via_mpi in finals["0"].items():
        assert np.array_equal(finals["1"][name], via_mpi), name
