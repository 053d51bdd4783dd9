"""The exact step's combine through shared memory, for a job whose ranks all share one host.

    reducer = HostExactReducer(MPI, node, n, slots, tail)   # collective over the host
    reducer.slots[k]       # this rank's node vectors, inside one window every rank of the host can read
    reducer.tail           # this rank's scalars (float64)
    tails = reducer.combine(frontier, parts)   # slot 0 of every rank holds the total; every rank's tail

Each rank has already added its micro-batches up to its cover of tree nodes (worker/stepexact.py). After a
barrier, rank r of the host adds slice r of every rank's nodes along the tree (worker/microbatch.py
`combine_frontier`: the frontier's adjacent siblings, bottom-up) and writes the total into slice r of
every rank's slot 0; after a second barrier every rank holds the same bits, and those of one process.
The tails are read (not summed) by every rank between the barriers. As in worker/shmreduce.py, each slice
is worked block by block so it stays in cache between the additions and the writes, and this module calls
methods of the communicator and window handed to it: it imports no mpi4py.
"""
from __future__ import annotations

import numpy as np

from worker.microbatch import combine_frontier
from worker.shmreduce import ALIGN, BLOCK_BYTES


class HostExactReducer:
    """`slots` node vectors of `n` float32 and a float64 tail of `tail` per rank, in host-shared memory."""

    def __init__(self, MPI, node, n: int, slots: int, tail: int):
        self._node, self._MPI = node, MPI
        self.local_rank, self.local_size = node.Get_rank(), node.Get_size()
        tail_bytes = -(-tail * 8 // 64) * 64
        slot_bytes = -(-n * 4 // 64) * 64
        size = tail_bytes + slots * slot_bytes
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")
        self._win = MPI.Win.Allocate_shared(size, 1, info=info, comm=node)
        info.Free()
        self._win.Lock_all(MPI.MODE_NOCHECK)
        self._tails, self._slots = [], []
        for r in range(self.local_size):
            memory, _ = self._win.Shared_query(r)
            raw = np.frombuffer(memory, np.uint8, size)
            self._tails.append(raw[:tail * 8].view(np.float64))
            self._slots.append([raw[tail_bytes + k * slot_bytes:][:n * 4].view(np.float32) for k in range(slots)])
        self.slots, self.tail = self._slots[self.local_rank], self._tails[self.local_rank]
        self.slots[0][...] = 0
        self.tail[...] = 0
        edges = [min(n, -(-(n * r // self.local_size) // ALIGN) * ALIGN) for r in range(self.local_size)] + [n]
        self._lo, self._hi = edges[self.local_rank], edges[self.local_rank + 1]
        self._block = BLOCK_BYTES // 4
        self._gathered = np.zeros((self.local_size, tail))
        self.note = f"combined in host-shared memory ({self.local_size} rank(s))"

    def combine(self, nodes, parts: int) -> np.ndarray:
        """Collective over the host: the total of the frontier `nodes` into every rank's slot 0."""
        self._barrier()                       # every rank's nodes and tail are written
        for r, t in enumerate(self._tails):
            self._gathered[r] = t
        vectors = [self._slots[rank][slot] for rank, slot, _ in nodes]
        outs = [s[0] for s in self._slots]
        for start in range(self._lo, self._hi, self._block):
            stop = min(self._hi, start + self._block)
            parts_here = [v[start:stop] for v in vectors]

            def add(i: int, j: int) -> None:
                parts_here[i] += parts_here[j]
            total = parts_here[combine_frontier(nodes, parts, add)]
            for out in outs:
                if not np.may_share_memory(out[start:stop], total):
                    out[start:stop] = total
        self._barrier()                       # every slice is done: slot 0 holds the total everywhere
        return self._gathered.copy()

    def _barrier(self) -> None:
        if self.local_size > 1:
            self._win.Sync()
            self._node.Barrier()
            self._win.Sync()

    def free(self) -> None:
        self._slots.clear()
        self._tails.clear()
        self.slots = []
        self._win.Unlock_all()
        self._win.Free()
