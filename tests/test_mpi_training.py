"""The real trainer under real mpirun: N ranks compute what one process computes, and failures end the job.

Equivalence: the same spec (digits, 64-32-10, Adam, 50 steps) on 1, 2 and 3 ranks, with a global batch
divisible by every rank count (60) and one that is not (61, so shards are uneven). Final parameters
(final.npz, arrays layers.{i}.W / layers.{i}.b) must agree within float32 rounding: relative difference
(Frobenius norm) <= 1e-5 per array; measured ~1e-7. A wrong shard, a missing division by the global count
or a lost rank's gradient moves them by far more. Every run must exit 0, which includes the trainer's
own cross-rank parameter hash check (a mismatch raises and aborts). One rank under mpirun and a plain
`python -m worker` (SerialComm, no MPI) must agree bit for bit.

Faults (GRADMESH_FAULT, worker/faults.py): a rank that raises, a rank killed with SIGKILL, and a rank that
hangs (caught by the hang watchdog with [fault] hang_timeout_s = 2) each end the job non-zero within
seconds, with the cause in the output and no process left behind.
"""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mpi_programs.launch import REPO, run_mpi

SPEC = """
name = "equivalence"
[model]
layers = [64, 32, 10]
[data]
source = "digits"
[train]
steps = {steps}
batch_size = {batch}
eval_every = 25
overlap = {overlap}
micro_batches = {micro_batches}
[optim]
name = "adam"
lr = 0.01
[checkpoint]
every_steps = 0
[fault]
hang_timeout_s = {hang}
"""


def write_spec(tmp_path, batch=60, steps=50, hang=60.0, overlap=False, micro_batches=8):
    path = tmp_path / f"job-{batch}-{steps}-{micro_batches}{'-overlap' if overlap else ''}.toml"
    path.write_text(SPEC.format(batch=batch, steps=steps, hang=hang, overlap="true" if overlap else "false",
                                micro_batches=micro_batches))
    return path


def train(nprocs, spec, out, timeout=60, env=None):
    return run_mpi(nprocs, ["python", "-m", "worker", "--spec", str(spec), "--out", str(out), "--no-resume"],
                   timeout=timeout, env=env)


def layer_arrays(path):
    with np.load(path) as z:
        return {k: z[k] for k in z.files if re.fullmatch(r"layers\.\d+\.(W|b)", k)}


@pytest.mark.timeout(120)
def test_two_ranks_into_a_finished_out_say_so_and_both_exit_0(tmp_path):
    """Every rank learns the resumed step from rank 0's broadcast, so all return together: no rank waits in a
    collective the others never enter."""
    spec = write_spec(tmp_path, steps=20)
    first = train(2, spec, tmp_path / "out")
    assert first.returncode == 0, first.output
    again = run_mpi(2, ["python", "-m", "worker", "--spec", str(spec), "--out", str(tmp_path / "out")], timeout=60)
    assert again.returncode == 0 and not again.leftovers, again.output
    assert again.output.count("already finished at step 20; use --no-resume to start over") == 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("batch", [60, 61], ids=["divisible", "uneven"])
def test_one_two_and_three_ranks_reach_the_same_parameters(tmp_path, batch):
    """The per-rank sums (micro_batches = 0): the same update up to rounding. The exact step's bit-for-bit
    agreement is tests/test_exact_ranks.py's."""
    spec = write_spec(tmp_path, batch=batch, micro_batches=0)
    finals = {}
    for nprocs in (1, 2, 3):
        result = train(nprocs, spec, tmp_path / f"n{nprocs}")
        assert result.returncode == 0 and not result.timed_out, result.output
        assert "done at step 50" in result.output, result.output
        assert f"{nprocs} rank(s)" in result.output, result.output
        assert result.leftovers == []
        finals[nprocs] = layer_arrays(tmp_path / f"n{nprocs}" / "final.npz")
    reference = finals[1]
    # Without mpirun the worker is a SerialComm process: the same arithmetic as 1 MPI rank, bit for bit.
    serial = subprocess.run([sys.executable, "-m", "worker", "--spec", str(spec), "--out", str(tmp_path / "serial"),
                             "--no-resume"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                            capture_output=True, text=True, timeout=60)
    assert serial.returncode == 0, serial.stdout + serial.stderr
    for name, arr in layer_arrays(tmp_path / "serial" / "final.npz").items():
        assert np.array_equal(arr, reference[name]), name
    assert sorted(reference) == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"]
    for nprocs in (2, 3):
        for name, ref in reference.items():
            got = finals[nprocs][name]
            assert got.shape == ref.shape and got.dtype == ref.dtype
            rel = np.linalg.norm(got - ref) / np.linalg.norm(ref)
            assert rel <= 1e-5, f"{nprocs} ranks, batch {batch}: {name} differs by {rel:.2e} (relative)"
    # The runs really trained (the check above does not compare near-initial weights): 1 step is far away.
    early = tmp_path / "n1-1step"
    one_step = train(1, write_spec(tmp_path, batch=batch, steps=1, micro_batches=0), early)
    assert one_step.returncode == 0, one_step.output
    moved = np.linalg.norm(layer_arrays(early / "final.npz")["layers.0.W"] - reference["layers.0.W"])
    assert moved > 1e-2 * np.linalg.norm(reference["layers.0.W"])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("nprocs", [2, 3])
def test_overlap_mode_reaches_the_blocking_mode_parameters(tmp_path, nprocs):
    """overlap = true: one Iallreduce per layer, started while backward goes on, then the scalars; the
    same sums as the one blocking Allreduce, so the same parameters up to float rounding (uneven shards)."""
    finals = {}
    for overlap in (False, True):
        out = tmp_path / f"overlap-{overlap}"
        result = train(nprocs, write_spec(tmp_path, batch=61, overlap=overlap, micro_batches=0), out)
        assert result.returncode == 0 and "done at step 50" in result.output, result.output
        # rank 0 says which path the sums take: overlap's per-layer MPI calls bypass the shared-memory sum
        assert ("one nonblocking MPI allreduce per layer" in result.output) == overlap, result.output
        assert ("step sum in host-shared memory" in result.output) == (not overlap), result.output
        finals[overlap] = layer_arrays(out / "final.npz")
    assert sorted(finals[True]) == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b"]
    for name, blocking in finals[False].items():
        np.testing.assert_allclose(finals[True][name], blocking, rtol=1e-6, atol=1e-7, err_msg=name)
    # the comparison means something: 50 steps moved the weights far from where one step leaves them
    one_step = train(nprocs, write_spec(tmp_path, batch=61, steps=1, overlap=True, micro_batches=0),
                     tmp_path / "one-step")
    assert one_step.returncode == 0, one_step.output
    first = layer_arrays(tmp_path / "one-step" / "final.npz")["layers.0.W"]
    assert not np.allclose(first, finals[True]["layers.0.W"], rtol=1e-3, atol=1e-4)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nprocs", [2, 3])
def test_a_rank_raising_mid_training_aborts_every_rank(tmp_path, nprocs):
    result = train(nprocs, write_spec(tmp_path, steps=2000), tmp_path / "out", timeout=30,
                   env={"GRADMESH_FAULT": "raise:rank=1:step=20"})
    assert not result.timed_out, "hung:\n" + result.output
    assert result.returncode not in (0, None), result.output
    assert result.elapsed_s < 15, f"{result.elapsed_s:.1f} s"
    assert "[rank 1 on " in result.output and "RuntimeError: injected fault at step 20" in result.output, \
        result.output
    assert not (tmp_path / "out" / "final.npz").exists()
    assert result.leftovers == [], result.leftovers


@pytest.mark.timeout(60)
def test_a_killed_rank_ends_the_job(tmp_path):
    result = train(2, write_spec(tmp_path, steps=2000), tmp_path / "out", timeout=30,
                   env={"GRADMESH_FAULT": "kill:rank=1:step=20"})
    assert not result.timed_out, "hung:\n" + result.output
    assert result.returncode not in (0, None), result.output
    assert result.elapsed_s < 15, f"{result.elapsed_s:.1f} s"
    assert "KILLED BY SIGNAL: 9" in result.output or "signal 9" in result.output, result.output
    assert result.leftovers == [], result.leftovers


@pytest.mark.timeout(60)
def test_a_hanging_rank_is_caught_by_the_watchdog(tmp_path):
    result = train(3, write_spec(tmp_path, steps=2000, hang=2.0), tmp_path / "out", timeout=30,
                   env={"GRADMESH_FAULT": "hang:rank=1:step=20"})
    assert not result.timed_out, "the watchdog did not fire:\n" + result.output
    assert result.returncode not in (0, None), result.output
    assert result.elapsed_s < 15, f"{result.elapsed_s:.1f} s"
    assert re.search(r"rank [02] on \S+: collective allreduce #\d+ did not complete within 2 s; "
                     r"silent rank\(s\): 1 \(busy outside any collective", result.output), result.output
    assert result.leftovers == [], result.leftovers
