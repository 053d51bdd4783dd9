"""Data-parallel scaling of one training step: 1 rank against 2 ranks, and ranks against BLAS threads.

    python bench/scaling.py                       # launches itself under `mpirun -n 2`
    python bench/scaling.py --rounds 20 --steps 5

One step is train.py's own step, through the same functions (worker/stepsync.py): forward + backward of
the 784-1024-1024-10 MLP (relu, cross-entropy) on this rank's slice of the global batch, one in-place
allreduce of [gradient | loss_sum, count, stop, stop_with_checkpoint] through worker.comm (hang watchdog
on, as in training), division by the global count; then an SGD update. Data are random (speed does not
depend on them). Configurations:

  1x1 b256           1 rank  x 1 thread,  global batch 256          (the reference)
  2x1 b256           2 ranks x 1 thread,  global batch 256 (128/rank: strong scaling)
  2x1 b512           2 ranks x 1 thread,  global batch 512 (256/rank: weak scaling)
  1x2 b256           1 rank  x 2 threads, global batch 256          (threads instead of ranks)
  2x1 b256 overlap   as 2x1 b256, each layer's gradient allreduced (Iallreduce) as backward produces it

All of them run inside ONE 2-rank launch, interleaved: each round runs every configuration for
`--steps` timed steps, in a random order. For a 1-rank configuration rank 1 sleeps (polling a
nonblocking barrier every millisecond, so it takes no CPU) and rank 0 trains alone through a
SerialComm (a 1-rank allreduce is the identity). BLAS threads are switched with threadpoolctl. So
load from other work on the machine hits every configuration alike; each one's rate is its global
batch over its median step time (and, beside it, over its 10th-percentile step: the least disturbed),
and the ratios printed, for both, are:

  weak-scaling efficiency   = sps(2x1 b512) / (2 * sps(1x1 b256))   (target >= 0.85)
  strong-scaling efficiency = sps(2x1 b256) / (2 * sps(1x1 b256))
  ranks vs threads          = sps(2x1 b256) / sps(1x2 b256)
  overlap gain              = sps(2x1 b256 overlap) / sps(2x1 b256)
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

from worker.comm import SerialComm, init_comm, launched_by_mpi  # noqa: E402
from worker.mlp import MLP  # noqa: E402
from worker.stepsync import StepSync  # noqa: E402

SIZES = [784, 1024, 1024, 10]
CONFIGS = {  # name: (ranks, BLAS threads per rank, global batch, overlap)
    "1x1 b256": (1, 1, 256, False),
    "2x1 b256": (2, 1, 256, False),
    "2x1 b512": (2, 1, 512, False),
    "1x2 b256": (1, 2, 256, False),
    "2x1 b256 overlap": (2, 1, 256, True),
}
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class Trainer:
    """One model replica and train.py's step (StepSync), for a given communicator, per-rank batch and mode."""

    def __init__(self, comm, batch_per_rank: int, seed: int, overlap: bool):
        self.model = MLP(SIZES, activation="relu", loss="cross_entropy", seed=0)
        self.sync = StepSync(self.model, comm, overlap=overlap)
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((batch_per_rank, SIZES[0])).astype(np.float32)
        self.y = rng.integers(0, SIZES[-1], batch_per_rank)

    def step(self) -> None:
        self.sync.reduce(self.sync.backward(self.x, self.y))
        self.model.params -= np.float32(0.01) * self.model.grad


def run_worker(args) -> int:
    from mpi4py import MPI  # only to let the idle rank sleep; training goes through worker.comm
    from threadpoolctl import threadpool_limits

    comm = init_comm(hang_timeout_s=60.0)
    if comm.size != 2:
        raise SystemExit("bench/scaling.py runs on exactly 2 ranks")
    world = MPI.COMM_WORLD
    trainers = {}
    for name, (ranks, _threads, batch, overlap) in CONFIGS.items():
        if ranks == 2:
            trainers[name] = Trainer(comm, batch // 2, seed=comm.rank, overlap=overlap)
        elif comm.rank == 0:
            trainers[name] = Trainer(SerialComm(), batch, seed=0, overlap=overlap)

    def idle_until_rank0_is_done() -> None:
        request = world.Ibarrier()
        while not request.Test():
            time.sleep(0.001)

    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    order_rng = np.random.default_rng(0)  # the same order on both ranks
    for round_ in range(args.rounds + 1):  # round 0 warms every configuration up, untimed
        for name in order_rng.permutation(list(CONFIGS)):
            ranks, threads, _batch, _overlap = CONFIGS[name]
            with threadpool_limits(limits=threads):
                if ranks == 1 and comm.rank == 1:
                    idle_until_rank0_is_done()
                    continue
                trainer = trainers[name]
                trainer.step()  # one untimed step: caches and BLAS threads after the switch
                for _ in range(args.steps):
                    start = time.perf_counter()
                    trainer.step()
                    if round_:
                        times[name].append(time.perf_counter() - start)
                if ranks == 1:
                    world.Ibarrier().Wait()  # wake rank 1
    if comm.rank != 0:
        return 0

    # Median steps give the typical rate; the 10th percentile the least disturbed one. On a machine shared
    # with other work the two differ, and more for 2-core configurations (a busy core slows them, while a
    # 1-core configuration still finds a free one): both are printed, each with its ratios.
    rates = {"median": {n: CONFIGS[n][2] / np.percentile(t, 50) for n, t in times.items()},
             "p10": {n: CONFIGS[n][2] / np.percentile(t, 10) for n, t in times.items()}}
    print(f"training step of MLP {'-'.join(map(str, SIZES))}, one 2-rank launch, {args.rounds} interleaved "
          f"rounds x {args.steps} steps per configuration ({os.cpu_count()} cores; 1-min load average "
          f"{args.load_before:.2f} before, {os.getloadavg()[0]:.2f} after)")
    print(f"  {'configuration':<18} {'samples/s (median step)':>24} {'(10th percentile step)':>24}")
    for name in CONFIGS:
        print(f"  {name:<18} {rates['median'][name]:14,.0f} ({1e3 * np.percentile(times[name], 50):5.1f} ms) "
              f"{rates['p10'][name]:14,.0f} ({1e3 * np.percentile(times[name], 10):5.1f} ms)")
    for label, sps in (("median", rates["median"]), ("p10", rates["p10"])):
        print(f"  [{label}] weak-scaling efficiency 2x1 b512 / (2 x 1x1 b256) = "
              f"{sps['2x1 b512'] / (2 * sps['1x1 b256']):.3f};  strong 2x1 b256 / (2 x 1x1 b256) = "
              f"{sps['2x1 b256'] / (2 * sps['1x1 b256']):.3f};  2x1 / 1x2 (b256) = {sps['2x1 b256'] / sps['1x2 b256']:.3f};"
              f"  overlap / none = {sps['2x1 b256 overlap'] / sps['2x1 b256']:.3f}")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (each configuration once)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration per round")
    parser.add_argument("--load-before", type=float, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if launched_by_mpi():
        return run_worker(args)
    mpirun = Path(sys.executable).parent / "mpirun"
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}  # threads are set per configuration
    env["PYTHONPATH"] = str(REPO)
    cmd = [str(mpirun if mpirun.exists() else "mpirun"), "-n", "2", sys.executable, __file__,
           "--rounds", str(args.rounds), "--steps", str(args.steps), "--load-before", f"{os.getloadavg()[0]:.2f}"]
    return subprocess.run(cmd, env=env, timeout=900).returncode


if __name__ == "__main__":
    sys.exit(main())
