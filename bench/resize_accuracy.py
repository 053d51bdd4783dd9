"""Resize accuracy: how far an elastic job's final parameters are from an uninterrupted run's.

    PYTHONPATH=. python bench/resize_accuracy.py                       # 3 optimizers, 3 → 2 → 3 ranks, ~1 min
    PYTHONPATH=. python bench/resize_accuracy.py --steps 4000 --sizes 4,2,4 --optims sgd

An elastic resize is a stop with a checkpoint and a resume on another rank count (coordinator.fleet.elastic),
so this replays exactly that with the standalone worker and real `mpirun`: train to 1/3 of the steps on the
first size, resume from the checkpoint to 2/3 on the second, then to the end on the third; and once more
without a break on the first size, and on each size as a control. Printed per optimizer: the relative
distance ||a - b|| / ||b|| of all weights against the uninterrupted run on the first size, for the resized
run and for uninterrupted runs on the other sizes (the rounding of another rank count alone).

Why they differ at all on the per-rank path (--micro-batches 0, this script's default; the product's default
exact step gives 0 everywhere): the gradient sum is pairwise in rank order, so another rank count rounds
differently, and the difference grows with the steps as training amplifies it (an optimizer like Adam more);
a resume on the same rank count is bit-identical (tests/test_hosts_cluster.py replays it).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OPTIMS = {"sgd": {"name": "sgd", "lr": 0.05}, "momentum": {"name": "momentum", "lr": 0.05, "momentum": 0.9},
          "adam": {"name": "adam", "lr": 3e-3}}


MICRO_BATCHES = 0  # --micro-batches: 0 is the per-rank path, whose rounding depends on the rank count


def spec(steps: int, optim: dict, layers: list[int]) -> dict:
    return {"name": "resize", "model": {"layers": layers}, "data": {"source": "digits"}, "optim": optim,
            "train": {"steps": steps, "batch_size": 64, "eval_every": max(steps, 1), "threads_per_rank": 1,
                      "micro_batches": MICRO_BATCHES},
            "checkpoint": {"every_steps": 0, "keep_last": 3}}


def train(ranks: int, job: dict, out: Path) -> None:
    path = out / f"job-{job['train']['steps']}.json"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(job))
    mpirun = Path(sys.executable).parent / "mpirun"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run([str(mpirun), "-n", str(ranks), sys.executable, "-m", "worker", "--spec", str(path),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"mpirun -n {ranks} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def weights(out: Path) -> np.ndarray:
    with np.load(out / "final.npz") as z:
        return np.concatenate([z[k].ravel().astype(np.float64) for k in sorted(z.files) if k.startswith("layers.")])


def distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--sizes", default="3,2,3", help="rank counts of the three stretches")
    parser.add_argument("--optims", default="sgd,momentum,adam")
    parser.add_argument("--layers", default="64,128,128,10")
    parser.add_argument("--micro-batches", type=int, default=0,
                        help="train.micro_batches: 0 (default here) the per-rank path; 8, the product's default, "
                             "is the exact step, which must print 0 everywhere")
    opts = parser.parse_args()
    global MICRO_BATCHES
    MICRO_BATCHES = opts.micro_batches
    sizes = [int(x) for x in opts.sizes.split(",")]
    layers = [int(x) for x in opts.layers.split(",")]
    cuts = [opts.steps // 3, 2 * opts.steps // 3, opts.steps]
    started = time.time()
    from machine import machine_line
    print(machine_line())
    print(f"digits, layers {layers}, batch 64, "
          f"{opts.steps} steps, resized {' → '.join(map(str, sizes))} at steps {cuts[0]} and {cuts[1]}")
    for name in opts.optims.split(","):
        optim = OPTIMS[name]
        with tempfile.TemporaryDirectory(prefix="gm-resize-") as tmp:
            tmp = Path(tmp)
            for ranks, end in zip(sizes, cuts):  # one output directory: each stretch resumes from the last
                train(ranks, spec(end, optim, layers), tmp / "resized")
            controls = {}
            for ranks in dict.fromkeys(sizes):
                train(ranks, spec(opts.steps, optim, layers), tmp / f"plain-{ranks}")
                controls[ranks] = weights(tmp / f"plain-{ranks}")
            reference = controls[sizes[0]]
            others = "  ".join(f"{r} ranks uninterrupted {distance(w, reference):.1e}"
                               for r, w in controls.items() if r != sizes[0])
            print(f"{name:9s} resized {distance(weights(tmp / 'resized'), reference):.1e}  {others}  "
                  f"(relative to {sizes[0]} ranks uninterrupted)")
    print(f"({time.time() - started:.0f} s)")


if __name__ == "__main__":
    main()
