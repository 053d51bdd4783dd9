"""One rank raises in the middle of a loop of allreduces, while the others wait in the next one.

    mpirun -n 3 python tests/mpi_programs/raise_midway.py --rank 1 --step 5 [--plain]

With worker.comm, the abort hook prints the rank-tagged traceback and aborts: mpirun exits 1 at once.
With --plain (bare mpi4py, no hook) the raising rank waits in MPI_Finalize and the others wait in their
allreduce: the job hangs forever. The tests use that to show the hook is what makes the difference.
"""
import argparse
import time

import numpy as np

parser = argparse.ArgumentParser()
parser.add_argument("--rank", type=int, required=True)
parser.add_argument("--step", type=int, required=True)
parser.add_argument("--steps", type=int, default=1000)
parser.add_argument("--plain", action="store_true", help="bare mpi4py: no abort hook")
args = parser.parse_args()

if args.plain:
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    rank = world.Get_rank()

    def allreduce(buf):
        world.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
else:
    from worker.comm import init_comm
    comm = init_comm()
    rank = comm.rank
    allreduce = comm.allreduce_sum_

grad = np.ones(100_000, np.float32)
for step in range(args.steps):
    if rank == args.rank and step == args.step:
        raise RuntimeError(f"injected failure on rank {rank} at step {step}")
    allreduce(grad)
    grad[:] = 1.0
    time.sleep(0.005)
print(f"rank {rank} finished all {args.steps} steps", flush=True)
