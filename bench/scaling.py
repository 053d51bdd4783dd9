"""Data-parallel scaling of one training step: 1 rank against 2 ranks, and ranks against BLAS threads.

    python bench/scaling.py                       # launches itself under `mpirun -n 2`
    python bench/scaling.py --rounds 20 --steps 5

One step is train.py's own step, through the same functions (worker/stepsync.py): forward + backward of
the 784-1024-1024-10 MLP (relu, cross-entropy) on this rank's slice of the global batch, one in-place
allreduce of [gradient | loss_sum, count, stop, stop_with_checkpoint] through worker.comm (hang watchdog
on, and in host-shared memory, as in training), division by the global count; then train.py's SGD update
(worker/optim.py). Data are random (speed does not depend on them). Configurations:

  1x1 b256           1 rank  x 1 thread,  global batch 256          (the reference)
  2x1 b256           2 ranks x 1 thread,  global batch 256 (128/rank: strong scaling)
  2x1 b512           2 ranks x 1 thread,  global batch 512 (256/rank: weak scaling)
  1x2 b256           1 rank  x 2 threads, global batch 256          (threads instead of ranks)
  2x1 b256 overlap   as 2x1 b256, each layer's gradient allreduced (Iallreduce) as backward produces it
  NxN b256 exactM    as NxN b256 with the exact step (worker/stepexact.py, M micro-batches, M = 8 and 16):
                     the same bits at any rank count; its cost is printed as the per-rank sums' rate over its

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
  exact step's cost         = sps(Nx1 b256) / sps(Nx1 b256 exactM)      (target <= 1.05)

    python bench/scaling.py --neighbour           # throughput with a neighbour burning half a core

--neighbour: 2 ranks x 1 thread on 2 cores train the 784-128-127-126-125-124-123-10 MLP at global batch
128 (train.py's step, as above), quiet and with a neighbour process that burns half a core (5 ms busy,
5 ms asleep, like a coordinator or a monitoring agent), under MPICH's default waiting (spin:
GRADMESH_MPI_WAIT=spin) and under gradmesh's wait policy (worker/mpiwait.py: a waiting rank yields every 10
polls when the ranks fill the cores); --wait-variants adds others (e.g. throttle). One mpirun launch per
policy and round, the policies in a random order each round. Within a launch, rank 0 keeps the neighbour
stopped (SIGSTOP) or running in alternating windows of --window-steps steps (--pairs pairs, ordered
quiet-busy, busy-quiet, ...); a window's samples/s = its samples / its total time. Printed per policy: the
median quiet and neighbour samples/s, and the median over all pairs of neighbour/quiet (target >= 0.70 with
gradmesh's policy), with its quartiles; and the quiet windows of gradmesh's policy over MPICH's default
(target: no loss above 3%). The third variant, auto+exact16, is gradmesh's policy with the exact step's 16
micro-batches handed to the ranks by measured speed (target >= 0.72; ideal 0.75); each of its launches then
trains 60 steps from scratch quiet and 60 beside the neighbour and prints whether the final parameters are
bit-identical (they must be: the parts moved, the bits may not), with the final split of parts of each.

    python bench/scaling.py --torch               # the same step against PyTorch DDP (gloo, torchrun)

--torch: gradmesh (mpirun -n 2, one BLAS thread per rank) against PyTorch DDP (torchrun --nproc-per-node 2,
gloo, one thread per rank) on 784-1024-1024-10, global batch 256, the same data, SGD with the same
learning rate, --torch-steps steps after 5 untimed ones. Each side reports its samples/s (median step)
and the whole command's wall time (launch, imports, setup, every step, exit) is timed from outside.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scaling_neighbour import neighbour_bench, run_small_worker
from scaling_setup import REPO, SIZES, THREAD_VARS, Trainer  # scaling_setup puts the repository on sys.path

from worker.comm import SerialComm, init_comm, launched_by_mpi

CONFIGS = {  # name: (ranks, BLAS threads per rank, global batch, overlap, micro-batches: 0 = per-rank sums)
    "1x1 b256": (1, 1, 256, False, 0),
    "2x1 b256": (2, 1, 256, False, 0),
    "2x1 b512": (2, 1, 512, False, 0),
    "1x2 b256": (1, 2, 256, False, 0),
    "2x1 b256 overlap": (2, 1, 256, True, 0),
    "1x1 b256 exact8": (1, 1, 256, False, 8),
    "2x1 b256 exact8": (2, 1, 256, False, 8),
    "1x1 b256 exact16": (1, 1, 256, False, 16),
    "2x1 b256 exact16": (2, 1, 256, False, 16),
}

def run_worker(args) -> int:
    from mpi4py import MPI  # only to let the idle rank sleep; training goes through worker.comm
    from threadpoolctl import threadpool_limits

    comm = init_comm(hang_timeout_s=60.0)
    if comm.size != 2:
        raise SystemExit("bench/scaling.py runs on exactly 2 ranks")
    world = MPI.COMM_WORLD
    trainers = {}
    for name, (ranks, _threads, batch, overlap, parts) in CONFIGS.items():
        if ranks == 2:
            trainers[name] = Trainer(comm, batch // 2, seed=comm.rank, overlap=overlap, parts=parts)
        elif comm.rank == 0:
            trainers[name] = Trainer(SerialComm(), batch, seed=0, overlap=overlap, parts=parts)

    def idle_until_rank0_is_done() -> None:
        request = world.Ibarrier()
        while not request.Test():
            time.sleep(0.001)

    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    order_rng = np.random.default_rng(0)  # the same order on both ranks
    for round_ in range(args.rounds + 1):  # round 0 warms every configuration up, untimed
        for name in order_rng.permutation(list(CONFIGS)):
            ranks, threads, _batch, _overlap, _parts = CONFIGS[name]
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
    from machine import machine_line
    print(machine_line())
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
        print(f"  [{label}] exact step's cost (per-rank sums' rate / exact's, target <= 1.05): " + ";  ".join(
              f"{ranks}x1 {parts} parts {sps[f'{ranks}x1 b256'] / sps[f'{ranks}x1 b256 exact{parts}']:.3f}"
              for parts in (8, 16) for ranks in (1, 2)) +
              f";  exact 1x1 vs the old 1x2 (2 threads): {sps['1x2 b256'] / sps['1x1 b256 exact8']:.3f}")
    return 0


TORCH_SIZES, TORCH_BATCH, TORCH_LR = [784, 1024, 1024, 10], 256, 0.01


def _timed_steps(step, steps: int) -> float:
    for _ in range(5):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return TORCH_BATCH / float(np.percentile(times, 50))


def run_gradmesh_worker(args) -> int:
    """--torch, gradmesh's side: train.py's step (StepSync), one BLAS thread, the kernel the parent chose."""
    from threadpoolctl import threadpool_limits

    from worker import blas
    comm = init_comm(hang_timeout_s=60.0)
    with threadpool_limits(limits=1):
        trainer = Trainer(comm, TORCH_BATCH // comm.size, seed=comm.rank, overlap=False, sizes=TORCH_SIZES)
        sps = _timed_steps(trainer.step, args.torch_steps)
    if comm.rank == 0:
        print(f"SPS {sps:.1f} {blas.running_kernel()[0]}", flush=True)
    return 0


def run_torch_worker(args) -> int:
    """--torch, PyTorch's side: DDP over gloo, one thread per rank, the same MLP, batch, data and SGD."""
    import torch
    import torch.distributed as dist

    from torch_ddp import ddp_step

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, size = dist.get_rank(), dist.get_world_size()
    step = ddp_step(TORCH_SIZES, rows=TORCH_BATCH // size, lr=TORCH_LR, rank=rank)
    sps = _timed_steps(step, args.torch_steps)
    if rank == 0:
        print(f"SPS {sps:.1f}", flush=True)
    dist.destroy_process_group()
    return 0


def torch_bench(args) -> int:
    import socket

    from worker import blas
    bindir = Path(sys.executable).parent
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    base.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    gm_env = dict(base)
    choice = blas.choose_kernel("auto", TORCH_SIZES, TORCH_BATCH // 2, 1, hostname=socket.gethostname(),
                                environ=gm_env)
    commands = {
        "gradmesh": ([str(bindir / "mpirun"), "-n", "2", sys.executable, __file__, "--gradmesh-worker",
                      "--torch-steps", str(args.torch_steps)], gm_env),
        "PyTorch DDP": ([str(bindir / "torchrun"), "--nproc-per-node", "2", "--standalone", __file__,
                         "--torch-worker", "--torch-steps", str(args.torch_steps)], base),
    }
    load_before = os.getloadavg()[0]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in commands}
    for round_ in range(args.rounds):
        for name in (list(commands) if round_ % 2 == 0 else list(commands)[::-1]):
            cmd, env = commands[name]
            start = time.perf_counter()
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
            wall = time.perf_counter() - start
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("SPS ")), None)
            if line is None:
                raise SystemExit(f"{name} failed: {out.stderr[-3000:]}")
            results[name].append((float(line.split()[1]), wall))
    med = {n: (float(np.median([r[0] for r in v])), float(np.median([r[1] for r in v]))) for n, v in results.items()}
    print(f"gradmesh vs PyTorch DDP: MLP {'-'.join(map(str, TORCH_SIZES))}, global batch {TORCH_BATCH}, 2 ranks x "
          f"1 thread, SGD lr {TORCH_LR}, {args.torch_steps} timed steps (+5) per launch, {args.rounds} launches each, "
          f"alternating (1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)")
    print(f"  gradmesh BLAS kernel: {choice.kernel or 'OpenBLAS default'} ({choice.source})")
    print(f"  {'':<14} {'samples/s (median step)':>24} {'whole command, s':>18}")
    for name, (sps, wall) in med.items():
        print(f"  {name:<14} {sps:24,.0f} {wall:18.2f}")
    g, t = med["gradmesh"], med["PyTorch DDP"]
    print(f"  gradmesh / DDP samples/s = {g[0] / t[0]:.2f}x (target >= 1.5x); whole command DDP / gradmesh = "
          f"{t[1] / g[1]:.2f}x")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="interleaved rounds (each configuration once)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration per round")
    parser.add_argument("--load-before", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--neighbour", action="store_true", help="quiet vs a half-core neighbour (see above)")
    parser.add_argument("--pairs", type=int, default=8, help="quiet/neighbour window pairs per --neighbour launch")
    parser.add_argument("--window-steps", type=int, default=300, help="timed steps per --neighbour window")
    parser.add_argument("--wait-variants", nargs="*", default=[], help="more GRADMESH_MPI_WAIT values to compare")
    parser.add_argument("--pin", action="store_true",
                        help="--neighbour: the neighbour on the last core, rank r on core r (else the kernel places all)")
    parser.add_argument("--neighbour-model", default="784-128-127-126-125-124-123-10@128",
                        help="--neighbour: the MLP's layer sizes and its global batch, as SIZES@BATCH")
    parser.add_argument("--small-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--parts", type=int, default=0, help=argparse.SUPPRESS)   # a --small-worker's micro-batches
    parser.add_argument("--torch", action="store_true", help="gradmesh against PyTorch DDP (see above)")
    parser.add_argument("--torch-steps", type=int, default=60, help="timed steps per side with --torch")
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--gradmesh-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small_worker:
        return run_small_worker(args)
    if args.torch_worker:
        return run_torch_worker(args)
    if args.gradmesh_worker:
        return run_gradmesh_worker(args)
    if args.neighbour:
        return neighbour_bench(args)
    if args.torch:
        return torch_bench(args)
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
