"""Checks every Comm method on every rank; run under `mpirun -n N` (any N). Prints one PASS line per rank.

    mpirun -n 3 python tests/mpi_programs/comm_checks.py [--watchdog SECONDS]

A failed check raises, which (through worker.comm's abort hook) aborts the job with a non-zero exit.
"""
import argparse
import os
import sys

import numpy as np

from worker.comm import MpiComm, init_comm

parser = argparse.ArgumentParser()
parser.add_argument("--watchdog", type=float, default=None)
args = parser.parse_args()

comm = init_comm(hang_timeout_s=args.watchdog)
assert isinstance(comm, MpiComm), type(comm)
r, n = comm.rank, comm.size
assert n == int(os.environ["PMI_SIZE"]) and r == int(os.environ["PMI_RANK"]), (r, n)
assert (comm.local_rank, comm.local_size) == (r, n), "one host: every rank is local"

for dtype in (np.float32, np.float64):
    # Integers stay exact in either precision: the sum must match to the last bit.
    buf = np.arange(1000, dtype=dtype) * (r + 1)
    comm.allreduce_sum_(buf)
    assert buf.dtype == dtype
    assert np.array_equal(buf, np.arange(1000, dtype=dtype) * (n * (n + 1) // 2)), dtype
    # Random values: compare with the sum computed locally from every rank's seed.
    mine = np.random.default_rng(r).standard_normal(100_003).astype(dtype)
    expected = sum(np.random.default_rng(k).standard_normal(100_003).astype(np.float64) for k in range(n))
    comm.allreduce_sum_(mine)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert np.allclose(mine, expected, rtol=tol, atol=tol), (dtype, np.abs(mine - expected).max())

for bad, error in ((np.zeros(4, np.int32), TypeError), (np.zeros(8, np.float32)[::2], ValueError)):
    try:
        comm.allreduce_sum_(bad)
    except error:
        pass
    else:
        raise AssertionError(f"allreduce_sum_ accepted {bad.dtype} contiguous={bad.flags.c_contiguous}")

for root in sorted({0, n - 1}):
    vec = np.full(777, float(r), np.float32)
    comm.bcast_(vec, root=root)
    assert np.all(vec == root), (root, vec[:3])

for root in sorted({0, n - 1}):
    for payload in (np.random.default_rng(7).bytes(123_457), b""):
        got = comm.bcast_bytes(payload if r == root else None, root=root)
        assert got == payload, (root, len(got))

params = np.linspace(-1, 1, 5000, dtype=np.float32)
comm.assert_identical(params, "parameters")
if n > 1:
    odd = params.copy()
    if r == n - 1:
        odd[-1] = np.nextafter(odd[-1], np.float32(2))  # one ulp in one element on one rank
    try:
        comm.assert_identical(odd, "parameters")
    except RuntimeError as exc:
        assert f"rank(s) {n - 1} differ" in str(exc) and "parameters" in str(exc), str(exc)
    else:
        raise AssertionError("assert_identical missed a one-ulp difference on the last rank")
if n >= 3:
    odd = params.copy()
    if r == 0:
        odd[0] = -odd[0]  # rank 0 is the odd one out: it is named, not the majority
    try:
        comm.assert_identical(odd, "weights")
    except RuntimeError as exc:
        assert "weights differ across ranks: rank(s) 0 differ from rank(s) 1, 2" in str(exc), str(exc)
    else:
        raise AssertionError("assert_identical missed a difference on rank 0")

a = np.full(300_000, r + 1.0, np.float32)
b = np.full(1000, 2.0 * (r + 1), np.float64)
ha, hb = comm.iallreduce_sum_(a), comm.iallreduce_sum_(b)
hb.wait()
ha.wait()
ha.wait()  # waiting twice is harmless
assert np.all(a == n * (n + 1) / 2) and np.all(b == n * (n + 1)), (a[0], b[0])

comm.barrier()
print(f"PASS comm checks on rank {r} of {n} (watchdog={args.watchdog})", flush=True)
sys.exit(0)
