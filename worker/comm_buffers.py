"""What a communicator asks of the arrays it is handed, the same on every path (a helper of worker/comm.py).

Sums happen in place, so a buffer must be a C-contiguous, writeable float32 or float64 numpy array:
`check_reducible` raises TypeError or ValueError otherwise, on SerialComm too (where nothing is summed), so
a wrong buffer fails in a one-process test as it would under mpirun. `digest` is the cheap content hash
that `assert_identical` compares across ranks.

numpy is imported by these functions, not here: worker/comm.py says why.
"""
from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

REDUCIBLE_DTYPES = ("float32", "float64")


def check_reducible(buf: np.ndarray) -> None:
    import numpy as np
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"expected a numpy array, got {type(buf).__name__}")
    if buf.dtype.name not in REDUCIBLE_DTYPES:
        raise TypeError(f"buffer dtype must be float32 or float64, got {buf.dtype}")
    if not (buf.flags.c_contiguous and buf.flags.writeable):
        raise ValueError("buffer must be C-contiguous and writeable (reduced in place)")


def digest(vec: np.ndarray) -> int:
    """64-bit content hash of an array, its dtype and shape (blake2b: ~1 GB/s, no false matches in practice)."""
    import numpy as np
    h = hashlib.blake2b(digest_size=8)
    h.update(f"{vec.dtype.str}{vec.shape}".encode())
    h.update(np.ascontiguousarray(vec).data)
    return int.from_bytes(h.digest(), "little")
