"""The step's allreduce through shared memory, for the ranks that share a host.

    reducer = HostReducer(MPI, node, leaders, n, np.float32, spans_hosts)   # collective over the host
    buf = reducer.buffer             # this rank's vector, inside a window every rank on the host can read
    reducer.allreduce_sum_()         # every rank's buf now holds the sum over all ranks, bit-identical

MPI's Allreduce between processes of one host moves every byte through MPICH's shared-memory cells: the
sender copies into a cell, the receiver copies out, and only then adds. When the vector already lives in
memory all of them can read (MPI_Win_allocate_shared), none of that is needed: after a barrier, rank r of
the host sums slice r of everyone's vector and writes the sum into slice r of everyone's vector; after a
second barrier every vector holds the whole sum. Each rank reads and writes about the vector's size once.
Each slice is summed by one rank and copied to the rest, so every rank holds the same bits. The order of
the additions is pairwise, (r0 + r1) + (r2 + r3), as in MPICH's recursive doubling: so a job of 2 hosts x 2
ranks (each host's pair, then the two hosts) adds in the same order as 4 ranks on one host, and an elastic
job that moves between such layouts keeps its trajectory (tests/test_hosts_cluster.py).

Across hosts it is hierarchical: the hosts' first ranks (`leaders`) allreduce their host's sum with MPI,
and the others copy it from their leader's vector after a third barrier.

The sums are blocked to keep the slice in cache while it is read and written back. The host's barriers are
MPI's, so MPICH's wait policy (worker/mpiwait.py) covers them, and the caller's hang watchdog times the
whole call; MPI_Win_sync around them orders the memory accesses, as MPI's unified memory model asks. (A
barrier of our own on shared counters that napped while waiting was tried, and lost to MPICH's throttled
barrier with a neighbour on the cores: bench/scaling.py --neighbour.) This module is worker/comm.py's helper: it calls methods of
the communicators and window handed to it and imports no mpi4py itself.
"""
from __future__ import annotations

import numpy as np

ALIGN = 16               # slice boundaries on 64-byte cache lines (float32), so no line is written by two ranks
BLOCK_BYTES = 256 << 10  # summed and copied block by block: stays in L2 between the read and the writes


class HostReducer:
    """A vector of `n` elements per rank in host-shared memory, and the allreduce over it."""

    def __init__(self, MPI, node, leaders, n: int, dtype, spans_hosts: bool):
        """`node`: the ranks of this host; `leaders`: the hosts' first ranks (None on the others);
        `spans_hosts`: the job has ranks on other hosts (the same answer on every rank)."""
        dtype = np.dtype(dtype)
        self._node, self._leaders, self._MPI, self._spans_hosts = node, leaders, MPI, spans_hosts
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")   # each rank's vector in its own pages (first touch: its NUMA node)
        self._win = MPI.Win.Allocate_shared(n * dtype.itemsize, dtype.itemsize, info=info, comm=node)
        info.Free()
        self._win.Lock_all(MPI.MODE_NOCHECK)   # passive epoch for Win_sync; no locks are taken afterwards
        self.vectors = []
        for r in range(self.local_size):
            memory, _ = self._win.Shared_query(r)
            self.vectors.append(np.frombuffer(memory, dtype, n))
        self.buffer = self.vectors[self.local_rank]
        self.buffer[...] = 0
        edges = [min(n, -(-(n * r // self.local_size) // ALIGN) * ALIGN) for r in range(self.local_size)] + [n]
        self._lo, self._hi = edges[self.local_rank], edges[self.local_rank + 1]
        self._block = max(ALIGN, BLOCK_BYTES // dtype.itemsize)

    def allreduce_sum_(self) -> None:
        """Sum every rank's buffer into every rank's buffer (collective over the job)."""
        self._host_barrier()   # every vector on this host holds its rank's contribution
        self._sum_my_slice()
        self._host_barrier()   # every slice is summed: each vector holds the host's sum
        if not self._spans_hosts:
            return
        if self._leaders is not None:
            MPI = self._MPI
            self._leaders.Allreduce(MPI.IN_PLACE, self.buffer, op=MPI.SUM)
        if self.local_size == 1:
            return
        self._host_barrier()   # the leader's vector holds the sum over all hosts
        if self._leaders is None:
            self.buffer[...] = self.vectors[0]
        self._host_barrier()   # copied by all, before the leader's next gradient overwrites it

    def _host_barrier(self) -> None:
        if self.local_size > 1:
            self._win.Sync()
            self._node.Barrier()
            self._win.Sync()

    def _sum_my_slice(self) -> None:
        """Pairwise, level by level ((v0+v1)+(v2+v3), ...), in place in slice r of the vectors (only this
        rank touches slice r), then copied from vector 0's slice to the others'."""
        vectors, block = self.vectors, self._block
        if len(vectors) == 1:
            return
        for start in range(self._lo, self._hi, block):
            stop = min(self._hi, start + block)
            parts = [v[start:stop] for v in vectors]
            while len(parts) > 1:
                for left, right in zip(parts[0::2], parts[1::2]):
                    left += right
                parts = parts[0::2]
            total = parts[0]
            for v in vectors[1:]:
                v[start:stop] = total

    def free(self) -> None:
        """Collective over the host; after it the buffer must not be used."""
        self.vectors.clear()
        self.buffer = None
        self._win.Unlock_all()
        self._win.Free()
