"""The exact step's combine over MPI, for ranks on several hosts (a helper of worker/comm.py).

    reducer = MpiExactReducer(MPI, comm, n, slots, tail)
    tails = reducer.combine(frontier, parts)   # slot 0 of every rank holds the total; every rank's tail

Rank s owns slice s of the vector. Every frontier node (worker/microbatch.py: a rank's cover of whole tree
nodes) sends its slice s to rank s, which adds the frontier up along the tree in that slice
(`combine_frontier`), and an in-place Allgatherv hands every rank every slice of the total: a
reduce-scatter and an allgather, as in a ring allreduce, except that the owner adds in the tree's order,
not MPI's. With one node per rank (aligned splits: 2, 4, 8 ranks and 16 parts) each rank sends and receives
2 (N-1)/N of the vector, what an allreduce moves. The tails are gathered with Allgather (not summed).

MPI's own Allreduce would be exact only for two nodes (a + b = b + a); its order over more is MPI's to
choose. This module calls methods of the communicator handed to it: it imports no mpi4py. It imports numpy
at its top, unlike comm.py: MpiComm imports it only from `exact_reducer`, after the BLAS kernel is chosen.
"""
from __future__ import annotations

import numpy as np

from worker.microbatch import combine_frontier
from worker.shmreduce import ALIGN


class MpiExactReducer:
    """Private node vectors, combined slice by slice by their owners over point-to-point messages."""

    def __init__(self, MPI, comm, n: int, slots: int, tail: int, why: str):
        self._MPI, self._comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.slots = [np.zeros(n, np.float32) for _ in range(slots)]
        self.tail = np.zeros(tail)
        self._gathered = np.zeros((self.size, tail))
        self._edges = [min(n, -(-(n * r // self.size) // ALIGN) * ALIGN) for r in range(self.size)] + [n]
        self._recv: list[np.ndarray] = []
        self.note = f"combined over MPI by slice owners ({why})"

    def combine(self, nodes, parts: int) -> np.ndarray:
        MPI, comm, me = self._MPI, self._comm, self.rank
        lo, hi = self._edges[me], self._edges[me + 1]
        while len(self._recv) < len(nodes):
            self._recv.append(np.empty(hi - lo, np.float32))
        requests, mine = [], []
        for index, (rank, slot, _node) in enumerate(nodes):
            if rank == me:
                vec = self.slots[slot]
                mine.append(vec[lo:hi])
                for dest in range(self.size):
                    a, b = self._edges[dest], self._edges[dest + 1]
                    if dest != me and b > a:
                        requests.append(comm.Isend([vec[a:b], MPI.FLOAT], dest=dest, tag=index))
            else:
                mine.append(self._recv[index][:hi - lo])
                if hi > lo:
                    requests.append(comm.Irecv([self._recv[index][:hi - lo], MPI.FLOAT], source=rank, tag=index))
        comm.Allgather(self.tail, self._gathered)
        MPI.Request.Waitall(requests)

        def add(i: int, j: int) -> None:
            mine[i] += mine[j]
        total = mine[combine_frontier(nodes, parts, add)] if hi > lo else None
        out = self.slots[0]
        if total is not None and not np.may_share_memory(out[lo:hi], total):
            out[lo:hi] = total
        counts = [self._edges[r + 1] - self._edges[r] for r in range(self.size)]
        comm.Allgatherv(MPI.IN_PLACE, [out, (counts, self._edges[:-1]), MPI.FLOAT])
        return self._gathered.copy()


class LocalExactReducer:
    """One process: its nodes are the whole frontier; the combine adds them in place."""

    note = ""

    def __init__(self, n: int, slots: int, tail: int):
        self.slots = [np.zeros(n, np.float32) for _ in range(slots)]
        self.tail = np.zeros(tail)

    def combine(self, nodes, parts: int) -> np.ndarray:
        vectors = [self.slots[slot] for _, slot, _ in nodes]

        def add(i: int, j: int) -> None:
            vectors[i] += vectors[j]
        total = vectors[combine_frontier(nodes, parts, add)]
        if total is not self.slots[0]:
            self.slots[0][...] = total
        return self.tail[None, :].copy()
