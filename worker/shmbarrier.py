"""A barrier for the ranks of one host, over counters in shared memory, that naps when ranks fill the cores.

    barrier = FlagBarrier(MPI, node, patient=True)    # collective over the host's ranks
    barrier.wait()                                    # returns once every rank of the host has arrived

MPICH waits in a barrier by polling its progress engine, so the core of a waiting rank never goes idle.
When the ranks fill the host's cores and something else wants a core (a coordinator, an agent, another
user's process: a "neighbour"), the kernel then time-slices the neighbour with one of the ranks, the other
ranks wait for that one at the next barrier, and the whole job runs at the speed of its slowest share.
Yielding (MPICH's CVARs, worker/mpiwait.py) keeps the waiting rank runnable, so the neighbour still stays
where it is. A rank that sleeps lets its core go idle, and an idle core pulls a waiting task from a busy
one: the neighbour moves to the waiting rank's core instead of slowing a computing one.

So this barrier polls for `spin_s` first (on a quiet host the others arrive within that: no sleep, no
wake-up latency) and, when `patient`, then naps `nap_s` at a time until everyone is there. Without
`patient` (fewer ranks than cores: spinning costs nobody anything) it only polls.

Each rank owns one counter in its own page; arriving at its k-th barrier a rank stores k and waits until
every counter is at least k. An aligned 8-byte store is atomic, and MPI_Win_sync before the store and
after the wait is the memory fence that orders the caller's vector writes and reads around it.
"""
from __future__ import annotations

import time

import numpy as np

SPIN_S = 200e-6   # poll this long before napping: longer than the usual skew between ranks on a quiet host
NAP_S = 50e-6     # one nap (the kernel's timer slack makes it ~60-110 us)


class FlagBarrier:
    def __init__(self, MPI, node, *, patient: bool, spin_s: float = SPIN_S, nap_s: float = NAP_S):
        self.patient, self.spin_s, self.nap_s = patient, spin_s, nap_s
        rank, size = node.Get_rank(), node.Get_size()
        info = MPI.Info.Create()
        info.Set("alloc_shared_noncontig", "true")
        self._win = MPI.Win.Allocate_shared(8, 8, info=info, comm=node)
        info.Free()
        self._win.Lock_all(MPI.MODE_NOCHECK)
        counters = [np.frombuffer(self._win.Shared_query(r)[0], np.int64, 1) for r in range(size)]
        self._mine = counters[rank]
        self._others = [c for r, c in enumerate(counters) if r != rank]
        self._mine[0] = 0
        self._arrivals = 0
        self._win.Sync()
        node.Barrier()   # every counter is zero before anyone counts

    def _all_there(self, k: int) -> bool:
        for counter in self._others:
            if counter[0] < k:
                return False
        return True

    def wait(self) -> None:
        self._arrivals += 1
        k = self._arrivals
        win = self._win
        win.Sync()
        self._mine[0] = k
        if not self._all_there(k):
            clock = time.perf_counter
            nap_after = clock() + self.spin_s
            while not self._all_there(k):
                if self.patient and clock() > nap_after:
                    time.sleep(self.nap_s)
        win.Sync()

    def free(self) -> None:
        self._others.clear()
        self._mine = None
        self._win.Unlock_all()
        self._win.Free()
