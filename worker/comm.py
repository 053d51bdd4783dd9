"""Every MPI call in gradmesh: one small communicator object the training loop talks to.

    comm = init_comm(hang_timeout_s=60)        # MpiComm under mpirun/srun, SerialComm otherwise
    comm.bcast_(params)                        # one in-place Bcast of the flat vector from rank 0
    buf = comm.reduction_buffer(n)             # the step's vector, where this comm reduces fastest
    comm.allreduce_sum_(buf)                   # ONE in-place sum over all ranks per step
    comm.assert_identical(params, "parameters")  # cheap hash compared across ranks, RuntimeError on mismatch
    comm.set_hang_timeout(spec.fault.hang_timeout_s, on_hang=report)  # start the watchdog once the spec is known

Run it like any MPI program:

    mpirun -n 2 python -m worker --spec job.toml --out DIR          # MPICH hydra (the `mpich` wheel)
    srun --mpi=pmi2 -n 2 python -m worker --spec job.toml --out DIR  # Slurm

and without a launcher (`python -m worker ...`) it is a `SerialComm`, which never imports mpi4py.

Three rules make a distributed run fail loudly instead of hanging:

1. Buffer methods only (`Allreduce`, `Bcast`, `Iallreduce`, `Allgather` on numpy arrays): no pickling, no
   copies in the hot path. Buffers must be C-contiguous float32/float64 (uint8 for `bcast_bytes`).
2. An uncaught exception on any rank prints its traceback, each line prefixed with `[rank R on HOST]`,
   and calls `MPI_Abort(1)`, so mpirun exits non-zero within about a second. Without that hook, a plain
   `python` rank that raises tears itself down through `MPI_Finalize`, which waits for the peers while
   they wait in their next collective: the job hangs forever (measured: tests/test_mpi_kill.py).
   `SystemExit` is not an error and is not caught: when only some ranks stop, call `comm.abort(code)`.
3. With `hang_timeout_s`, every collective is timed by a watchdog (`worker/hangwatch.py`, this module's
   helper). When one has not completed in time, the watchdog asks the other ranks' watchdogs (on a
   private communicator) where they are, prints which rank is silent and why, hands that verdict to
   `on_hang` (the worker's failure report) and calls `MPI_Abort(1)`. MPI itself never notices a stopped
   peer: the collective would spin forever.
   Every abort here is made certain (`_abort_job`): MPICH's MPI_Abort returns when the process manager
   cannot be reached (a host cut off from the network), so the process then exits by itself.
   The watchdog thread calls MPI (Isend/Irecv/Test of its probes) while the main thread sits in a
   collective, so MPI must run at `MPI_THREAD_MULTIPLE` (what mpi4py requests by default; we set it
   explicitly, and set_hang_timeout refuses to start otherwise). Measured with MPICH 5: MPI_Abort from a
   second thread ends the job at every thread level (MPI does not promise it below MULTIPLE), the
   probes need MULTIPLE, and MULTIPLE made a 7.45 MB Allreduce no slower (1.0 ms vs 1.8 ms at SINGLE).
   The timing itself is two dict operations under a lock per collective: bench/allreduce.py shows
   gradmesh with the watchdog within noise (0.93-1.03x) of a bare Allreduce.

The step's vector comes from `reduction_buffer`: on MpiComm it lives in memory the ranks of a host share
(MPI_Win_allocate_shared), and its allreduce sums it there (worker/shmreduce.py): each rank of the host
adds one slice of everyone's vector, and hosts combine their sums with MPI. That skips the two copies per
byte of MPI's own intra-host path: 7.45 MB on 2 ranks in about half the time of MPI's Allreduce
(bench/allreduce.py). GRADMESH_SHM_REDUCE=0 turns it off (MPI's Allreduce on a private buffer instead).

No other module imports mpi4py (hangwatch.py and shmreduce.py only call methods of the communicators
handed to them).
`mpi4py.rc` is set here, before the first `from mpi4py import MPI`.
"""
from __future__ import annotations

import array
import atexit
import hashlib
import os
import signal
import socket
import sys
import time
import traceback
from typing import TYPE_CHECKING, Callable, Protocol

if TYPE_CHECKING:
    import numpy as np

    from worker.hangwatch import Watchdog
    from worker.shmreduce import HostReducer
# numpy is imported by the methods that need it, not here: a rank starts its communicator and receives the
# spec before numpy is first imported, because the BLAS kernel must be chosen before that (worker/blas.py).

# Environment variables that MPI launchers set in every rank: MPICH hydra (PMI_*, MPI_LOCALNRANKS),
# Slurm's PMI-2/PMIx plugins (PMI_RANK / PMIX_RANK) and Open MPI.
LAUNCHER_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")

REDUCIBLE_DTYPES = ("float32", "float64")
SHM_REDUCE_ENV = "GRADMESH_SHM_REDUCE"   # "0": reduction buffers are private and reduced by MPI's Allreduce

# The exit barrier's hang timeout (see MpiComm._finish_watched): long enough for rank 0's final uploads.
EXIT_BARRIER_TIMEOUT_S = 300.0

# Exit code of a job aborted by an uncaught exception or by the watchdog ("any other failure: retry").
ABORT_CODE = 1


class Handle(Protocol):
    def wait(self) -> None: ...


class Comm(Protocol):
    """What the training loop may ask of a communicator: MpiComm and SerialComm both provide it."""

    rank: int
    size: int
    hostname: str
    local_rank: int
    local_size: int
    reduction_note: str   # how the step's sum runs, once reduction_buffer was called ("" when there is nothing to say)

    def reduction_buffer(self, n: int, dtype=...) -> np.ndarray: ...
    def allreduce_sum_(self, buf: np.ndarray) -> None: ...
    def iallreduce_sum_(self, buf: np.ndarray) -> Handle: ...
    def bcast_(self, buf: np.ndarray, root: int = 0) -> None: ...
    def bcast_bytes(self, data: bytes | None, root: int = 0) -> bytes: ...
    def allgather_bytes(self, data: bytes) -> list[bytes]: ...
    def assert_identical(self, vec: np.ndarray, what: str) -> None: ...
    def barrier(self) -> None: ...
    def abort(self, code: int) -> None: ...
    def set_hang_timeout(self, seconds: float, on_hang: Callable[[str], None] | None = None) -> None: ...


def launched_by_mpi(environ: dict[str, str] | None = None) -> bool:
    """True when a launcher (mpirun, mpiexec, srun --mpi=...) started this process as an MPI rank."""
    env = os.environ if environ is None else environ
    return any(name in env for name in LAUNCHER_ENV_VARS)


def init_comm(hang_timeout_s: float | None = None) -> Comm:
    """The communicator for this process: MpiComm under a launcher, else SerialComm (mpi4py not imported)."""
    if hang_timeout_s is not None and not hang_timeout_s > 0:
        raise ValueError(f"hang_timeout_s must be positive or None, got {hang_timeout_s!r}")
    if launched_by_mpi():
        return MpiComm(hang_timeout_s)
    tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "1")
    if tasks.isascii() and tasks.isdigit() and len(tasks) < 10 and int(tasks) > 1:
        # srun without an MPI plugin starts N independent copies that would each train alone.
        raise RuntimeError(f"started by srun as one of {tasks} tasks without MPI wire-up: "
                           "use `srun --mpi=pmi2 ...` (or mpirun inside the allocation)")
    return SerialComm()


def _check_reducible(buf: np.ndarray) -> None:
    import numpy as np
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(buf).__name__}")
    if buf.dtype.name not in REDUCIBLE_DTYPES:
        raise TypeError(f"buffer dtype must be float32 or float64, got {buf.dtype}")
    if not (buf.flags.c_contiguous and buf.flags.writeable):
        raise ValueError("buffer must be C-contiguous and writeable (reduced in place)")


def _digest(vec: np.ndarray) -> int:
    """64-bit content hash of an array, its dtype and shape (blake2b: ~1 GB/s, no false matches in practice)."""
    import numpy as np
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{vec.dtype.str}{vec.shape}".encode())
    h.update(np.ascontiguousarray(vec).data)
    return int.from_bytes(h.digest(), "little")


def _abort_job(world, code: int) -> None:
    """MPI_Abort, made certain: this process ends here whatever the process manager can or cannot do.

    MPICH's MPI_Abort asks the process manager (hydra's proxy) to kill every rank and then RETURNS when
    the kill does not come: measured with a rank whose network was cut (tests/test_multihost.py). So we
    give the manager a moment to kill us with the right exit code, then exit ourselves; and in case
    MPI_Abort itself blocks, SIGALRM (its default action terminates the process without needing Python)
    is armed first.
    """
    _flush_std_streams()
    # hydra forwards our stderr through its proxy asynchronously and drops what is still in flight when
    # it kills the job: give the last words (traceback, watchdog verdict) a moment to get out first.
    time.sleep(0.3)
    try:
        signal.alarm(10)
    except (ValueError, OSError):
        pass
    try:
        world.Abort(code)
    finally:
        time.sleep(2.0)
        _flush_std_streams()
        os._exit(code)


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not stop the abort
            pass


class _DoneHandle:
    def wait(self) -> None:
        return None


class SerialComm:
    """One process, no MPI: every collective is the identity (and checks its argument like MpiComm)."""

    rank = 0
    size = 1
    local_rank = 0
    local_size = 1
    reduction_note = ""   # nothing to say: one process sums nothing

    def __init__(self):
        self.hostname = socket.gethostname()

    def reduction_buffer(self, n: int, dtype="float32") -> np.ndarray:
        import numpy as np
        return np.zeros(n, dtype)

    def allreduce_sum_(self, buf: np.ndarray) -> None:
        _check_reducible(buf)

    def iallreduce_sum_(self, buf: np.ndarray) -> Handle:
        _check_reducible(buf)
        return _DoneHandle()

    def set_hang_timeout(self, seconds: float, on_hang: Callable[[str], None] | None = None) -> None:
        """Nothing can hang without peers; accepted (and checked) for symmetry with MpiComm."""
        if not seconds > 0:
            raise ValueError(f"hang timeout must be positive, got {seconds!r}")

    def bcast_(self, buf: np.ndarray, root: int = 0) -> None:
        if root != 0:
            raise ValueError(f"root {root} out of range for 1 rank")

    def bcast_bytes(self, data: bytes | None, root: int = 0) -> bytes:
        if root != 0:
            raise ValueError(f"root {root} out of range for 1 rank")
        if data is None:
            raise ValueError("the root must pass the bytes to broadcast")
        return bytes(data)

    def allgather_bytes(self, data: bytes) -> list[bytes]:
        return [bytes(data)]

    def assert_identical(self, vec: np.ndarray, what: str) -> None:
        _digest(vec)

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        _flush_std_streams()
        os._exit(code)


class MpiComm:
    """COMM_WORLD of an MPI job, through a private duplicate so no other library's messages can interleave."""

    def __init__(self, hang_timeout_s: float | None = None):
        import mpi4py

        from worker.mpiwait import set_wait_policy
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
        _install_abort_hook(self._world, self.rank, self.hostname)

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
                                  any_source=MPI.ANY_SOURCE, abort=lambda: _abort_job(world, ABORT_CODE),
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

    def allreduce_sum_(self, buf: np.ndarray) -> None:
        _check_reducible(buf)
        reducer = self._reducers.get(id(buf))
        if reducer is not None and reducer.buffer is buf:
            self._guarded("allreduce", reducer.allreduce_sum_)
        else:
            self._guarded("allreduce", lambda: self._comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM))

    def iallreduce_sum_(self, buf: np.ndarray) -> Handle:
        _check_reducible(buf)
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
        mine = np.array([_digest(vec)], np.uint64)
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
        _abort_job(self._world, code)

    # ---- internals -----------------------------------------------------------------------------------
    def _guarded(self, name: str, collective) -> None:
        wd = self._watchdog
        if wd is None:
            collective()
            return
        ticket = wd.enter(name)
        collective()
        wd.leave(ticket)

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


def _install_abort_hook(world, rank: int, hostname: str) -> None:
    """Make any uncaught exception print its rank-tagged traceback and abort the whole job."""

    def abort_on_uncaught(exc_type, exc, tb):
        prefix = f"[rank {rank} on {hostname}] "
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            _flush_std_streams()
            sys.stderr.write("".join(prefix + line for line in text.splitlines(keepends=True)))
            sys.stderr.write(f"{prefix}uncaught {exc_type.__name__}: aborting the MPI job\n")
        finally:
            _abort_job(world, 130 if issubclass(exc_type, KeyboardInterrupt) else ABORT_CODE)

    sys.excepthook = abort_on_uncaught
