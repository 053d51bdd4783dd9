"""What bench/scaling.py's benchmarks share: the repository on the import path, and one replica's step.

`Trainer` is one model replica and train.py's own step (worker/stepsync.py's StepSync, or with `parts` the
exact step of worker/stepexact.py, then worker/optim.py's SGD) on random data, for a given communicator,
per-rank batch and mode: the unit every configuration of scaling.py, its --neighbour launches
(bench/scaling_neighbour.py) and its --torch side times.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.mlp import MLP  # noqa: E402
from worker.optim import make_optimizer  # noqa: E402
from worker.spec import OptimSpec  # noqa: E402
from worker.stepexact import ExactStep  # noqa: E402
from worker.stepsync import StepSync  # noqa: E402

SIZES = [784, 1024, 1024, 10]
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Trainer:
    """One model replica and train.py's step (StepSync), for a given communicator, per-rank batch and mode."""

    def __init__(self, comm, batch_per_rank: int, seed: int, overlap: bool, sizes=SIZES, parts: int = 0,
                 balance: bool = True, wire: str = "fp32", choose_overlap: bool = False):
        self.model = MLP(sizes, activation="relu", loss="cross_entropy", seed=0)
        self.parts = parts
        if parts:   # the exact step: every rank holds the global batch and takes its parts' rows each step
            self.sync = ExactStep(self.model, comm, parts, balance=balance, wire=wire,
                                  choose_overlap=choose_overlap)
            rng = np.random.default_rng(0)
            batch = batch_per_rank * comm.size
        else:
            self.sync = StepSync(self.model, comm, overlap=overlap)
            rng = np.random.default_rng(seed)
            batch = batch_per_rank
        self.x = rng.standard_normal((batch, sizes[0])).astype(np.float32)
        self.y = rng.integers(0, sizes[-1], batch)
        self.index = np.arange(batch)
        self.optimizer = make_optimizer(OptimSpec(name="sgd", lr=0.01), self.model.num_params, total_steps=1)

    def step(self) -> None:
        if self.parts:
            rows = self.sync.rows(self.index)
            self.sync.reduce(self.sync.backward(self.x[rows], self.y[rows]))
        else:
            self.sync.reduce(self.sync.backward(self.x, self.y))
        self.optimizer.step(self.model.params, self.model.grad)
