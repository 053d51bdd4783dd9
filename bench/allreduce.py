"""Gradient sync cost: gradmesh's one fused in-place allreduce against a bare MPI Allreduce and the naive way.

    python bench/allreduce.py                 # launches itself under `mpirun -n 2`
    mpirun -n 2 python bench/allreduce.py --rounds 15 --calls 20

The buffer is what train.py reduces each step for the 784-1024-1024-10 MLP: the flat float32 gradient
(1,863,690 parameters) plus the step's scalars (worker/stepsync.py's StepSync buffer, taken from the
product, not rebuilt here). Measured in the same run, interleaved round by round:

  bare MPI           COMM_WORLD-dup Allreduce(IN_PLACE, buf, SUM), nothing else
  gradmesh, MPI      MpiComm(hang_timeout_s=None).allreduce_sum_(buf) on a private buffer (MPI's Allreduce)
  gradmesh shm       the same on comm.reduction_buffer(n): summed in host-shared memory (worker/shmreduce.py)
  gradmesh shm+watchdog  MpiComm(hang_timeout_s=60), reduction_buffer: how train.py runs it
  naive pickled      comm.allreduce(array) per layer W and b (6 pickled, lowercase calls)

Rank 0 prints the median per call of each, and the ratios to bare MPI (target for gradmesh: <= 1.05; below
1.0 it is faster than MPI's own intra-host path).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from worker.comm import MpiComm, SerialComm, launched_by_mpi  # noqa: E402
from worker.mlp import MLP  # noqa: E402
from worker.stepsync import SCALARS, StepSync  # noqa: E402

SIZES = (784, 1024, 1024, 10)


def relaunch_under_mpirun(nprocs: int) -> int:
    mpirun = Path(sys.executable).parent / "mpirun"
    cmd = [str(mpirun if mpirun.exists() else "mpirun"), "-n", str(nprocs), sys.executable, *sys.argv]
    return subprocess.run(cmd, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=600).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, default=2, help="ranks when launching itself")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=20, help="calls per method per round")
    args = parser.parse_args()
    if not launched_by_mpi():
        return relaunch_under_mpirun(args.ranks)

    plain = MpiComm(hang_timeout_s=None)
    watched = MpiComm(hang_timeout_s=60.0)
    from mpi4py import MPI  # already initialised by MpiComm
    bare = MPI.COMM_WORLD.Dup()
    naive = MPI.COMM_WORLD.Dup()  # each method has its own communicator, as gradmesh has
    sync = MPI.COMM_WORLD.Dup()

    model = MLP(SIZES)
    params = model.num_params
    fused = StepSync(model, SerialComm()).buffer  # the vector train.py reduces: [gradient | scalars]
    fused.fill(1.0)
    shared = plain.reduction_buffer(fused.size, fused.dtype)            # the same size, in host-shared memory
    shared_watched = watched.reduction_buffer(fused.size, fused.dtype)  # (what StepSync gets on MpiComm)
    shared.fill(1.0)
    shared_watched.fill(1.0)
    layers = [np.ones(a.shape, np.float32) for layer in model.layers for a in (layer.W, layer.b)]

    def bare_allreduce():
        bare.Allreduce(MPI.IN_PLACE, fused, op=MPI.SUM)

    def naive_pickled():
        for i, arr in enumerate(layers):
            layers[i] = naive.allreduce(arr, op=MPI.SUM)

    methods = {
        "bare MPI Allreduce": bare_allreduce,
        "gradmesh, MPI path": lambda: plain.allreduce_sum_(fused),
        "gradmesh shm": lambda: plain.allreduce_sum_(shared),
        "gradmesh shm + watchdog": lambda: watched.allreduce_sum_(shared_watched),
        "naive per-layer pickled": naive_pickled,
    }
    times = {name: [] for name in methods}
    for fn in methods.values():  # warm-up: connections, pinned buffers, pickling paths
        for _ in range(3):
            fn()
    # Interleaved call by call in a random order (the same on every rank: seeded), with a barrier before
    # each: background load on a shared machine hits every method alike, each call starts with all ranks
    # present, and no method always follows the same one (the pickled one evicts the caches).
    names = list(methods)
    order_rng = np.random.default_rng(0)
    for round_ in range(args.rounds):
        for call in range(args.calls):
            for name in order_rng.permutation(names):
                sync.Barrier()
                start = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - start)
        for buf in (fused, shared, shared_watched):
            buf.fill(1.0)  # keep values finite: repeated sums would overflow to inf
        for arr in layers:
            arr.fill(1.0)

    # The slowest rank decides a synchronous step: take each call's max over ranks, then the median.
    summary = {}
    for name, samples in times.items():
        local = np.array(samples)
        worst = np.empty_like(local)
        sync.Allreduce(local, worst, op=MPI.MAX)
        summary[name] = float(np.median(worst))
    if plain.rank == 0:
        from machine import machine_line
        print(machine_line())
        base = summary["bare MPI Allreduce"]
        print(f"gradient sync, {plain.size} ranks on {plain.hostname}, MLP {'-'.join(map(str, SIZES))}: "
              f"{params:,} params + {SCALARS} scalars = {fused.nbytes / 1e6:.2f} MB float32, "
              f"median of {args.rounds}x{args.calls} calls; 1-min load average {os.getloadavg()[0]:.2f}")
        for name, t in summary.items():
            print(f"  {name:<26} {1e3 * t:8.3f} ms   {t / base:5.2f}x bare")
    for c in (bare, naive, sync):
        c.Free()
    return 0


if __name__ == "__main__":
    sys.exit(main())
