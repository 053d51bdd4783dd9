"""Start writing a file's dirty pages to disk while more of it is still arriving (Linux sync_file_range).

    start_writeback(fd, offset, length)   # returns at once; the final fsync then has little left to do

A downloaded checkpoint is fsynced before it is renamed into place (durability is kept). Left alone, the
kernel writes nothing until that fsync, so the whole file's write-out (~120 ms for 63 MiB on the CI-class
disk) came after the last byte arrived. Asking for write-out of each piece as soon as it is written
overlaps it with the transfer. Where sync_file_range is missing (not Linux), this does nothing.
"""
from __future__ import annotations

import ctypes
import ctypes.util

SYNC_FILE_RANGE_WRITE = 2   # start write-out of dirty pages in the range; do not wait


def _load():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load()


def start_writeback(fd: int, offset: int, length: int) -> bool:
    """Ask the kernel to start writing [offset, offset+length) of `fd` now; False when it cannot."""
    if _sync_file_range is None:
        return False
    return _sync_file_range(fd, offset, length, SYNC_FILE_RANGE_WRITE) == 0
