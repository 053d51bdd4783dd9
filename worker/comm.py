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
   Every abort is made certain (`abort_job`, worker/comm_abort.py): MPICH's MPI_Abort returns when the
   process manager cannot be reached (a host cut off from the network), so the process then exits by itself.
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

This module is the face: the `Comm` protocol the training loop relies on, and `init_comm`, which picks one
of the two communicators. Its helpers, each one concept, are the only other modules that touch MPI:
  worker/comm_mpi.py       MpiComm, the only importer of mpi4py (`mpi4py.rc` is set there, before the first
                           `from mpi4py import MPI`)
  worker/comm_serial.py    SerialComm, one process without MPI
  worker/comm_buffers.py   what a buffer must be (float32/float64, C-contiguous, writeable), its digest
  worker/comm_abort.py     the abort hook and the certain abort (rule 2)
  worker/hangwatch.py      the watchdog (rule 3); worker/shmreduce.py, the sum in host-shared memory;
                           worker/mpiwait.py, how MPICH waits (set before MPI_Init)
hangwatch.py and shmreduce.py only call methods of the communicators handed to them.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Callable, Protocol

from worker.comm_mpi import MpiComm
from worker.comm_serial import SerialComm

if TYPE_CHECKING:
    import numpy as np
# numpy is imported by the methods that need it, not here: a rank starts its communicator and receives the
# spec before numpy is first imported, because the BLAS kernel must be chosen before that (worker/blas.py).

__all__ = ["Comm", "Handle", "LAUNCHER_ENV_VARS", "MpiComm", "SerialComm", "init_comm", "launched_by_mpi"]

# Environment variables that MPI launchers set in every rank: MPICH hydra (PMI_*, MPI_LOCALNRANKS),
# Slurm's PMI-2/PMIx plugins (PMI_RANK / PMIX_RANK) and Open MPI.
LAUNCHER_ENV_VARS = ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


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
    def exact_reducer(self, n: int, slots: int, tail: int, wire: str = ..., overlap: str = ...): ...
    # the exact step's nodes (worker/stepexact.py); wire "bf16": what crosses hosts is bfloat16 (worker/comm_exact.py);
    # overlap "auto": a combine that can run layer by layer or in one piece, step by step
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
