"""The exact step's combine over MPI, for ranks on several hosts (a helper of worker/comm.py).

    reducer = MpiExactReducer(MPI, comm, n, slots, tail, why, wire="fp32")
    tails = reducer.combine(frontier, parts)   # slot 0 of every rank holds the total; every rank's tail

Rank s owns slice s of the vector. Every frontier node (worker/microbatch.py: a rank's cover of whole tree
nodes) sends its slice s to rank s, which adds the frontier up along the tree in that slice
(`combine_frontier`), and an in-place Allgatherv hands every rank every slice of the total: a
reduce-scatter and an allgather, as in a ring allreduce, except that the owner adds in the tree's order,
not MPI's. With one node per rank (aligned splits: 2, 4, 8 ranks and 16 parts) each rank sends and receives
2 (N-1)/N of the vector, what an allreduce moves. The tails are gathered with Allgather (not summed).

`wire = "bf16"` (the spec's `train.wire`, for slow links) halves those bytes and leaves the exact path: every
node's vector is rounded to bfloat16 (worker/bf16.py), what goes to another rank sent as 16-bit words, the
owner's own slice rounded in place (so a sum does not depend on which rank owns the slice, and the combine in
one piece gives the bits of worker/comm_overlap.py's, whose owners are per layer); the owner adds in float32
in the same tree order, rounds the total to bfloat16, keeps those values itself and the allgather carries
their words. Every rank ends with the same bits, and a job repeats them at the same rank count, but they
depend on where the parts meet (the frontier), so on the rank count. The tails stay float64.

MPI's own Allreduce would be exact only for two nodes (a + b = b + a); its order over more is MPI's to
choose. This module calls methods of the communicator handed to it: it imports no mpi4py. It imports numpy
at its top, unlike comm.py: MpiComm imports it only from `exact_reducer`, after the BLAS kernel is chosen.
"""
from __future__ import annotations

import numpy as np

from worker.bf16 import Bf16Codec
from worker.microbatch import combine_frontier
from worker.shmreduce import ALIGN

WIRES = ("fp32", "bf16")


class MpiExactReducer:
    """Private node vectors, combined slice by slice by their owners over point-to-point messages."""

    def __init__(self, MPI, comm, n: int, slots: int, tail: int, why: str, wire: str = "fp32"):
        if wire not in WIRES:
            raise ValueError(f"wire must be one of {', '.join(WIRES)}, got {wire!r}")
        self._MPI, self._comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.slots = [np.zeros(n, np.float32) for _ in range(slots)]
        self.tail = np.zeros(tail)
        self._gathered = np.zeros((self.size, tail))
        self._edges = [min(n, -(-(n * r // self.size) // ALIGN) * ALIGN) for r in range(self.size)] + [n]
        self._recv: list[np.ndarray] = []
        self.note = f"combined over MPI by slice owners ({why})"
        self.wire = wire
        self._codec = Bf16Codec() if wire == "bf16" else None
        self._words: dict = {}      # bf16 wire: a node's words by slot, received words by key, the total's words
        if self._codec is not None:
            self.note += "; bf16 on the wire (each node and the total rounded to bfloat16)"

    # ---- the bf16 wire's buffers and conversions (no-ops on the fp32 wire) ---------------------------------
    def _node_words(self, slot: int, vec: np.ndarray, lo: int, hi: int, a: int, b: int) -> np.ndarray:
        """The words of vec[lo:hi] (a node of mine) but for [a:b], my own slice, which is rounded in place
        instead: it is added here, and rounded like every node's slice, so a sum does not depend on which rank
        owns the slice (worker/comm_overlap.py's owners are per layer). The words span the whole vector."""
        words = self._buffer(("slot", slot), len(vec))
        for x, y in ((lo, a), (b, hi)):
            if y > x:
                self._codec.encode(vec[x:y], words[x:y])
        if b > a:
            self._codec.round_(vec[a:b])
        return words

    def _buffer(self, key, n: int) -> np.ndarray:
        buf = self._words.get(key)
        if buf is None or len(buf) < n:
            buf = self._words[key] = np.empty(n, np.uint16)
        return buf[:n]

    def _round_total(self, out: np.ndarray, a: int, b: int) -> np.ndarray:
        """The total's words (the whole vector's buffer); out[a:b] becomes their values, as on every rank."""
        back = self._buffer("total", len(out))
        self._codec.encode(out[a:b], back[a:b])
        self._codec.decode(back[a:b], out[a:b])
        return back

    # ---- the combine ---------------------------------------------------------------------------------
    def combine(self, nodes, parts: int) -> np.ndarray:
        MPI, comm, me, bf16 = self._MPI, self._comm, self.rank, self._codec is not None
        lo, hi = self._edges[me], self._edges[me + 1]
        n = self._edges[-1]
        while len(self._recv) < len(nodes):
            self._recv.append(np.empty(hi - lo, np.float32))
        requests, mine, arriving = [], [], []
        for index, (rank, slot, _node) in enumerate(nodes):
            if rank == me:
                vec = self.slots[slot]
                sent, kind = (self._node_words(slot, vec, 0, n, lo, hi), MPI.UINT16_T) if bf16 else (vec, MPI.FLOAT)
                mine.append(vec[lo:hi])
                for dest in range(self.size):
                    a, b = self._edges[dest], self._edges[dest + 1]
                    if dest != me and b > a:
                        requests.append(comm.Isend([sent[a:b], kind], dest=dest, tag=index))
            else:
                mine.append(self._recv[index][:hi - lo])
                if hi > lo:
                    if bf16:
                        words = self._buffer(("recv", index), hi - lo)
                        arriving.append((words, mine[-1]))
                        requests.append(comm.Irecv([words, MPI.UINT16_T], source=rank, tag=index))
                    else:
                        requests.append(comm.Irecv([mine[-1], MPI.FLOAT], source=rank, tag=index))
        comm.Allgather(self.tail, self._gathered)
        MPI.Request.Waitall(requests)
        for words, values in arriving:
            self._codec.decode(words, values)

        def add(i: int, j: int) -> None:
            mine[i] += mine[j]
        total = mine[combine_frontier(nodes, parts, add)] if hi > lo else None
        out = self.slots[0]
        if total is not None and not np.may_share_memory(out[lo:hi], total):
            out[lo:hi] = total
        counts = [self._edges[r + 1] - self._edges[r] for r in range(self.size)]
        if bf16:
            back = self._round_total(out, lo, hi)
            comm.Allgatherv(MPI.IN_PLACE, [back, (counts, self._edges[:-1]), MPI.UINT16_T])
            for x, y in ((0, lo), (hi, n)):     # the others' slices (mine is already its words' values)
                if y > x:
                    self._codec.decode(back[x:y], out[x:y])
        else:
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
