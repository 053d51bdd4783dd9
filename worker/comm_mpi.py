"""MpiComm: COMM_WORLD of an MPI job, and the only module that imports mpi4py (a helper of worker/comm.py).

    comm = MpiComm(hang_timeout_s=60)          # what init_comm returns under mpirun or srun --mpi=...

Buffer methods only (`Allreduce`, `Bcast`, `Iallreduce`, `Allgather` on numpy arrays or plain Python
buffers): no pickling, no copies in the hot path. Every collective goes through `_guarded`, which the hang
watchdog (worker/hangwatch.py) times once `set_hang_timeout` started it; `reduction_buffer` hands out the
step's vector in host-shared memory, summed by worker/shmreduce.py. worker/comm.py's docstring is the manual.

`mpi4py.rc` is set in `MpiComm.__init__`, before the first `from mpi4py import MPI`; numpy, the watchdog and
the shared-memory reducer are imported where they are first used (worker/comm.py says why).
"""
from __future__ import annotations

import array
import atexit
import os
import socket
from typing import TYPE_CHECKING, Callable

from worker.comm_abort import ABORT_CODE, abort_job, install_abort_hook
from worker.comm_buffers import check_reducible, digest
from worker.mpiwait import set_wait_policy

if TYPE_CHECKING:
    import numpy as np

    from worker.hangwatch import Watchdog
    from worker.shmreduce import HostReducer

SHM_REDUCE_ENV = "GRADMESH_SHM_REDUCE"   # "0": reduction buffers are private and reduced by MPI's Allreduce

# The exit barrier's hang timeout (see MpiComm._finish_watched): long enough for rank 0's final uploads.
EXIT_BARRIER_TIMEOUT_S = 300.0


class MpiComm:
    """COMM_WORLD of an MPI job, through a private duplicate so no other library's messages can interleave."""

    def __init__(self, hang_timeout_s: float | None = None):
        import mpi4py

        self.wait_policy = set_wait_policy(os.environ)  # MPICH reads its CVARs at MPI_Init (worker/mpiwait.py)
        # Must precede the first `from mpi4py import MPI` (no effect afterwards: checked below).
        mpi4py.rc.thread_level = "multiple"
        mpi4py.rc.finalize = True
        from mpi4py import MPI

        self._MPI = MPI
        self._world = MPI.COMM_WORLD
        self.rank = self._world.Get_rank()
        self.size = self._world.Get_size()
        self.hostname = os.environ.get("PMI_HOSTNAME") or socket.gethostname()
        install_abort_hook(self._world, self.rank, self.hostname)

        self._comm = self._world.Dup()
        self._node = self._comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        self.local_rank, self.local_size = self._node.Get_rank(), self._node.Get_size()
        self._reducers: dict[int, HostReducer] = {}   # id of a reduction buffer -> its reducer (buffers live as long)
        self.reduction_note = ""   # how the step's sum runs here, set by reduction_buffer (train.py prints it)

        self._watchdog: Watchdog | None = None
        if hang_timeout_s is not None:
            self.set_hang_timeout(hang_timeout_s)

    def set_hang_timeout(self, seconds: float, on_hang: Callable[[str], None] | None = None) -> None:
        """Start (or retune) the hang watchdog. Collective on first use: every rank must call it together.

        `on_hang(verdict)` is called by the watchdog just before it aborts the job (it must return quickly)."""
        if not seconds > 0:
            raise ValueError(f"hang timeout must be positive, got {seconds!r}")
        if self._watchdog is not None:
            self._watchdog.retune(float(seconds))
            if on_hang is not None:
                self._watchdog.on_hang = on_hang
            return
        MPI = self._MPI
        if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
            raise RuntimeError("the hang watchdog needs MPI_THREAD_MULTIPLE; mpi4py was initialised with "
                               f"thread level {MPI.Query_thread()} (was mpi4py imported before worker.comm?)")
        from worker.hangwatch import Watchdog
        world = self._world
        self._watchdog = Watchdog(world.Dup(), self.rank, self.size, self.hostname, float(seconds),
                                  any_source=MPI.ANY_SOURCE, abort=lambda: abort_job(world, ABORT_CODE),
                                  on_hang=on_hang)
        atexit.register(self._finish_watched)

    # ---- collectives ---------------------------------------------------------------------------------
    def reduction_buffer(self, n: int, dtype="float32") -> np.ndarray:
        """A zeroed vector of `n` elements that allreduce_sum_ sums through host-shared memory.
        Collective: every rank calls it with the same n and dtype."""
        import numpy as np
        if os.environ.get(SHM_REDUCE_ENV, "1").strip() == "0":
            self.reduction_note = f"step sum by MPI's Allreduce ({SHM_REDUCE_ENV}=0); waiting: {self.wait_policy}"
            return np.zeros(n, dtype)
        from worker.shmreduce import HostReducer
        MPI = self._MPI
        spans_hosts = self.local_size < self.size
        leaders = None
        if spans_hosts:
            leaders = self._comm.Split(0 if self.local_rank == 0 else MPI.UNDEFINED, key=self.rank)
            if leaders == MPI.COMM_NULL:
                leaders = None
        reducer = HostReducer(MPI, self._node, leaders, n, dtype, spans_hosts)
        self._reducers[id(reducer.buffer)] = reducer
        hosts = " per host, then MPI across hosts" if spans_hosts else ""
        self.reduction_note = (f"step sum in host-shared memory ({self.local_size} rank(s) on this host{hosts}); "
                               f"waiting: {self.wait_policy}")
        return reducer.buffer

    def exact_reducer(self, n: int, slots: int, tail: int, wire: str = "fp32", overlap: str = "env"):
        """The exact step's node vectors and their combine (worker/stepexact.py): in host-shared memory when
        every rank is on this host (worker/shmexact.py), else over MPI by slice owners (worker/comm_exact.py).
        `wire` is what those MPI messages carry: "fp32", or "bf16" (half the bytes, not exact across rank
        counts); sums in shared memory stay fp32. `overlap`: "env" (GRADMESH_OVERLAP=1 combines layer by layer
        during the backward pass) or "auto" (a reducer that can do both, for the caller to choose step by step:
        `[train] overlap = "auto"`). Collective: every rank calls it with the same arguments. Its `combine` (and
        `finish`) runs under the hang watchdog."""
        if self.local_size == self.size and os.environ.get(SHM_REDUCE_ENV, "1").strip() != "0":
            from worker.shmexact import HostExactReducer
            reducer = HostExactReducer(self._MPI, self._node, n, slots, tail)
        else:
            from worker.comm_exact import MpiExactReducer
            from worker.comm_overlap import OVERLAP_ENV, OverlapExactReducer
            why = "ranks on several hosts" if self.local_size < self.size else f"{SHM_REDUCE_ENV}=0"
            # layer by layer during backward (its thread calls MPI beside the main thread's), when asked: measured
            # on a quiet machine it won 10% at 1 Gbit/s and lost 55% at 10 Gbit/s (docs/benchmarks.md)
            layered = (overlap == "auto" or os.environ.get(OVERLAP_ENV, "0").strip() == "1") \
                and self._MPI.Query_thread() >= self._MPI.THREAD_MULTIPLE
            if layered:
                reducer = OverlapExactReducer(self._MPI, self._comm, n, slots, tail, why, wire, overlap == "auto")
            else:
                reducer = MpiExactReducer(self._MPI, self._comm, n, slots, tail, why, wire)
        for name in ("combine", "finish"):     # the step's sum, timed by the watchdog as before
            method = getattr(reducer, name, None)
            if method is not None:
                setattr(reducer, name, self._guard_method(method))
        reducer.note += f"; waiting: {self.wait_policy}"
        return reducer

    def allreduce_sum_(self, buf: np.ndarray) -> None:
        check_reducible(buf)
        reducer = self._reducers.get(id(buf))
        if reducer is not None and reducer.buffer is buf:
            self._guarded("allreduce", reducer.allreduce_sum_)
        else:
            self._guarded("allreduce", lambda: self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM))

    def iallreduce_sum_(self, buf: np.ndarray) -> _RequestHandle:
        check_reducible(buf)
        wd = self._watchdog
        ticket = wd.enter("iallreduce") if wd is not None else None
        request = self._comm.Iallreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return _RequestHandle(request, wd, ticket)

    def bcast_(self, buf: np.ndarray, root: int = 0) -> None:
        import numpy as np
        if not (isinstance(buf, np.ndarray) and buf.flags.c_contiguous):
            raise ValueError("bcast_ needs a C-contiguous numpy array")
        self._guarded("bcast", lambda: self._comm.Bcast(buf, root=root))

    def bcast_bytes(self, data: bytes | None, root: int = 0) -> bytes:
        # Plain Python buffers (no numpy): this carries the spec before numpy may be imported.
        length = array.array("q", [0])
        if self.rank == root:
            if data is None:
                raise ValueError("the root must pass the bytes to broadcast")
            length[0] = len(data)
        self._guarded("bcast_bytes(length)", lambda: self._comm.Bcast([length, self._MPI.INT64_T], root=root))
        payload = bytearray(data) if self.rank == root else bytearray(length[0])
        if payload:
            self._guarded("bcast_bytes", lambda: self._comm.Bcast([payload, self._MPI.BYTE], root=root))
        return bytes(payload)

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        """Every rank's bytes, in rank order, on every rank (startup only; no numpy needed)."""
        lengths = array.array("q", [0] * self.size)
        self._guarded("allgather_bytes(length)", lambda: self._comm.Allgather(
            [array.array("q", [len(data)]), self._MPI.INT64_T], [lengths, self._MPI.INT64_T]))
        out = bytearray(sum(lengths))
        offsets = [sum(lengths[:r]) for r in range(self.size)]
        self._guarded("allgather_bytes", lambda: self._comm.Allgatherv(
            [bytearray(data), self._MPI.BYTE], [out, (list(lengths), offsets), self._MPI.BYTE]))
        return [bytes(out[o:o + n]) for o, n in zip(offsets, lengths)]

    def assert_identical(self, vec: np.ndarray, what: str) -> None:
        import numpy as np
        mine = np.array([digest(vec)], np.uint64)
        everyone = np.empty(self.size, np.uint64)
        self._guarded(f"assert_identical({what})", lambda: self._comm.Allgather(mine, everyone))
        if np.all(everyone == everyone[0]):
            return
        # Name the odd ones out: against the majority's value when there is one, else against rank 0.
        values, counts = np.unique(everyone, return_counts=True)
        majority = values[counts.argmax()] if counts.max() * 2 > self.size else everyone[0]
        agree = [r for r in range(self.size) if everyone[r] == majority]
        differing = [r for r in range(self.size) if everyone[r] != majority]
        raise RuntimeError(f"{what} differ across ranks: rank(s) {', '.join(map(str, differing))} differ from "
                           f"rank(s) {', '.join(map(str, agree))} (hashes: " +
                           ", ".join(f"rank {r}={int(h):016x}" for r, h in enumerate(everyone)) + ")")

    def barrier(self) -> None:
        self._guarded("barrier", self._comm.Barrier)

    def abort(self, code: int) -> None:
        abort_job(self._world, code)

    # ---- internals -----------------------------------------------------------------------------------
    def _guarded(self, name: str, collective) -> None:
        wd = self._watchdog
        if wd is None:
            collective()
            return
        ticket = wd.enter(name)
        collective()
        wd.leave(ticket)

    def _guard_method(self, method):
        def guarded(*args):
            out = []
            self._guarded("allreduce", lambda: out.append(method(*args)))
            return out[0]
        return guarded

    def _finish_watched(self) -> None:
        """At exit: one watched barrier, so a rank that left early is reported instead of hanging Finalize.

        Rank 0 may legitimately linger before exiting (flushing reports and uploads to the coordinator),
        so this barrier gets at least EXIT_BARRIER_TIMEOUT_S.
        """
        wd = self._watchdog
        if wd is None:
            return
        wd.retune(max(wd.timeout_s, EXIT_BARRIER_TIMEOUT_S))
        self._guarded("barrier at exit", self._comm.Barrier)
        wd.stop()
        self._watchdog = None


class _RequestHandle:
    def __init__(self, request, watchdog: Watchdog | None, ticket: int | None):
        self._request = request
        self._watchdog = watchdog
        self._ticket = ticket

    def wait(self) -> None:
        if self._request is None:
            return
        self._request.Wait()
        self._request = None
        if self._watchdog is not None:
            self._watchdog.leave(self._ticket)
