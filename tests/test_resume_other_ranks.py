"""Exact resume across rank counts, under real mpirun: a run cut short on 2 ranks and resumed on 3 follows
the trajectory of an uninterrupted 1-rank run within float32 rounding (and bit-for-bit on the same count)."""
import re

import numpy as np
import pytest

from mpi_programs.launch import run_mpi

SPEC = """
name = "resume-ranks"
[model]
layers = [64, 32, 10]
[train]
steps = 60
batch_size = 61
eval_every = 20
[optim]
name = "adam"
lr = 0.01
schedule = "cosine"
warmup_steps = 5
[checkpoint]
every_steps = 20
keep_last = 2
"""


def layers(path):
    with np.load(path) as npz:
        return {k: npz[k] for k in npz.files if re.fullmatch(r"layers\.\d+\.[Wb]", k)}


def train(nprocs, spec, out, env=None):
    result = run_mpi(nprocs, ["python", "-m", "worker", "--spec", str(spec), "--out", str(out)], timeout=90, env=env)
    assert not result.timed_out and result.leftovers == [], result.output
    return result


@pytest.mark.timeout(240)
def test_cut_on_two_ranks_resumed_on_three_matches_one_uninterrupted_rank(tmp_path):
    spec = tmp_path / "job.toml"
    spec.write_text(SPEC)
    reference = train(1, spec, tmp_path / "one")
    assert reference.returncode == 0, reference.output

    cut = train(2, spec, tmp_path / "moved", env={"GRADMESH_FAULT": "exit:step=47:code=9"})
    assert cut.returncode == 9 and not (tmp_path / "moved" / "final.npz").exists(), cut.output
    resumed = train(3, spec, tmp_path / "moved")
    assert resumed.returncode == 0 and "3 rank(s)" in resumed.output and "resumed at step 40" in resumed.output

    again = train(2, spec, tmp_path / "same", env={"GRADMESH_FAULT": "exit:step=47:code=9"})
    assert again.returncode == 9
    finished = train(2, spec, tmp_path / "same")
    uninterrupted = train(2, spec, tmp_path / "two")
    assert finished.returncode == 0 and uninterrupted.returncode == 0

    want = layers(tmp_path / "one" / "final.npz")
    got = layers(tmp_path / "moved" / "final.npz")
    for name, ref in want.items():
        rel = np.linalg.norm(got[name] - ref) / np.linalg.norm(ref)
        assert rel <= 1e-5, f"{name}: resumed on another rank count differs by {rel:.2e}"
    same, two = layers(tmp_path / "same" / "final.npz"), layers(tmp_path / "two" / "final.npz")
    for name in want:
        np.testing.assert_array_equal(same[name], two[name])  # same rank count: bit-identical
