"""The host-shared-memory allreduce (worker/shmreduce.py) against sums computed here, to the last bit.

    mpirun -n 4 python tests/mpi_programs/shm_checks.py [--watchdog SECONDS]

Every rank knows every rank's data (seeded by rank), so it can compute the expected sum itself, in the order
the reducer promises: pairwise within a host ((r0 + r1) + (r2 + r3)), then the hosts' sums. Checked for float32 and
float64, for sizes smaller than one slice per rank, odd sizes and a step-sized vector, twice on the same
buffer (a reused window), through comm.reduction_buffer (one host), and with HostReducer built directly on
"hosts" made of rank pairs (the hierarchical path: leaders allreduce, the others copy from their leader).
A failed check raises, which aborts the job; one PASS line per rank is the verdict.
"""
import argparse

import numpy as np

from worker.comm import MpiComm, init_comm
from worker.shmreduce import HostReducer

parser = argparse.ArgumentParser()
parser.add_argument("--watchdog", type=float, default=None)
args = parser.parse_args()

comm = init_comm(hang_timeout_s=args.watchdog)
assert isinstance(comm, MpiComm), type(comm)
r, n = comm.rank, comm.size
SIZES = (1, 5, 17, 1000, 300_001)


def data(rank: int, size: int, dtype, round_: int) -> np.ndarray:
    return np.random.default_rng([rank, size, round_]).standard_normal(size).astype(dtype)


def in_order(ranks, size, dtype, round_):
    """Pairwise, level by level: ((d0 + d1) + (d2 + d3)) + d4 ..."""
    level = [data(k, size, dtype, round_) for k in ranks]
    while len(level) > 1:
        level = [level[i] + level[i + 1] if i + 1 < len(level) else level[i] for i in range(0, len(level), 2)]
    return level[0]


# One host: comm.reduction_buffer, as StepSync uses it.
for dtype in (np.float32, np.float64):
    for size in SIZES:
        buf = comm.reduction_buffer(size, dtype)
        assert buf.dtype == dtype and buf.shape == (size,) and not buf.any(), "a zeroed vector"
        for round_ in range(2):
            buf[...] = data(r, size, dtype, round_)
            comm.allreduce_sum_(buf)
            expected = in_order(list(range(n)), size, dtype, round_)
            assert np.array_equal(buf, expected), (dtype, size, round_, float(np.abs(buf - expected).max()))
        comm.assert_identical(buf, f"shm sum {np.dtype(dtype).name} x{size}")

# A private buffer still goes through MPI's Allreduce.
private = np.arange(10, dtype=np.float32) * (r + 1)
comm.allreduce_sum_(private)
assert np.array_equal(private, np.arange(10, dtype=np.float32) * (n * (n + 1) // 2))

# Hosts of two ranks each (the last one alone when n is odd): the path a job spanning hosts takes.
if n >= 3:
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    host = world.Split(r // 2, key=r)
    leaders = world.Split(0 if host.Get_rank() == 0 else MPI.UNDEFINED, key=r)
    leaders = None if leaders == MPI.COMM_NULL else leaders
    hosts = [list(range(h, min(h + 2, n))) for h in range(0, n, 2)]
    for dtype in (np.float32, np.float64):
        for size in SIZES:
            reducer = HostReducer(MPI, host, leaders, size, dtype, spans_hosts=True)
            for round_ in range(2):
                reducer.buffer[...] = data(r, size, dtype, round_)
                reducer.allreduce_sum_()
                sums = [in_order(h, size, dtype, round_) for h in hosts]
                if len(sums) == 2:   # two leaders: MPI's sum of two values is exact in either order
                    expected = sums[0] + sums[1]
                    assert np.array_equal(reducer.buffer, expected), (dtype, size, round_)
                else:
                    np.testing.assert_allclose(reducer.buffer, sum(sums), rtol=1e-5, atol=1e-5)
            comm.assert_identical(reducer.buffer, f"hierarchical shm sum {np.dtype(dtype).name} x{size}")
            reducer.free()

print(f"PASS shm checks on rank {r} of {n}", flush=True)
