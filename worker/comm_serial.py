"""SerialComm: the communicator of a process started without an MPI launcher (a helper of worker/comm.py).

One process, no MPI: every collective is the identity, and checks its argument as MpiComm does, so a
wrong buffer fails in a one-process run too. It never imports mpi4py.
"""
from __future__ import annotations

import os
import socket
from typing import TYPE_CHECKING, Callable

from worker.comm_abort import flush_std_streams
from worker.comm_buffers import check_reducible, digest

if TYPE_CHECKING:
    import numpy as np


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

    def exact_reducer(self, n: int, slots: int, tail: int, wire: str = "fp32", overlap: str = "env"):
        from worker.comm_exact import LocalExactReducer   # one process: nothing crosses a wire, whatever `wire` says
        return LocalExactReducer(n, slots, tail)

    def allreduce_sum_(self, buf: np.ndarray) -> None:
        check_reducible(buf)

    def iallreduce_sum_(self, buf: np.ndarray) -> _DoneHandle:
        check_reducible(buf)
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
        digest(vec)

    def barrier(self) -> None:
        pass

    def abort(self, code: int) -> None:
        flush_std_streams()
        os._exit(code)
