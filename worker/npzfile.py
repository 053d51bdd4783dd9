"""An `.npz` file from a stranger, read the careful way: every member's header first, its data only once the
header is known to agree with the member's size, and with what the caller can afford.

    with zipfile.ZipFile(path) as zf:
        found = members(zf, ("x", "y"))            # {name: Member}: each .npy header read (a few hundred bytes)
        total = sum(m.nbytes for m in found.values())  # what reading them will cost, known before it is paid
        x = read(zf, found["x"])

`numpy.load` trusts the file: an array header that claims 4 TiB is allocated before a byte of the data is
read (a MemoryError and a traceback), and a deflated member that inflates 1000-fold is inflated whole. Here a
member whose header promises more (or fewer) bytes than the zip entry holds is refused as truncated, the
entry's declared size bounds what is inflated (zipfile stops there, and its CRC catches a lie), and the
caller sees every size before choosing to read: worker/checkpoint.py bounds a checkpoint by its model and by
its size on disk, worker/data.py bounds a data file by the memory available. Every refusal is an NpzError
(a ValueError) naming the member; callers add the file's name.

This module imports numpy at its top: the rank imports it only where numpy is already allowed (see
worker/__init__.py on the BLAS kernel), and worker/checkpoint.py imports it inside its functions.
"""
from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from typing import Iterable

import numpy as np

MAX_HEADER_BYTES = 10000  # numpy's own limit on an .npy header (np.lib.format.read_array_header_*)


class NpzError(ValueError):
    """An `.npz` member that is not what its header says, or that the caller cannot afford."""


@dataclass(frozen=True)
class Member:
    name: str                  # the array's name (the zip entry without .npy)
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    dtype: np.dtype
    header_bytes: int          # the .npy header before the data

    @property
    def size(self) -> int:
        """The number of elements, as exact Python integers (a header may claim more than int64 holds)."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize


def members(zf: zipfile.ZipFile, names: Iterable[str] | None = None) -> dict[str, Member]:
    """The members called `names` (every `.npy` member when None) that the file has, headers checked."""
    entries = {info.filename[:-4]: info for info in zf.infolist() if info.filename.endswith(".npy")}
    wanted = entries if names is None else {n: entries[n] for n in names if n in entries}
    return {name: _header(zf, name, info) for name, info in wanted.items()}


def _header(zf: zipfile.ZipFile, name: str, info: zipfile.ZipInfo) -> Member:
    with zf.open(info) as f:
        try:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _fortran, dtype = np.lib.format.read_array_header_1_0(f, max_header_size=MAX_HEADER_BYTES)
            else:
                shape, _fortran, dtype = np.lib.format.read_array_header_2_0(f, max_header_size=MAX_HEADER_BYTES)
        except (ValueError, EOFError) as exc:
            raise NpzError(f"member {name!r} is not a .npy array ({exc})") from None
        header_bytes = f.tell()
    member = Member(name, info, tuple(int(n) for n in shape), np.dtype(dtype), header_bytes)
    if member.dtype.hasobject:
        raise NpzError(f"member {name!r} holds Python objects ({member.dtype}), which are never loaded")
    if header_bytes + member.nbytes != info.file_size:
        shown = " × ".join(map(str, member.shape)) or "a scalar"
        raise NpzError(f"member {name!r}: its header promises {human_bytes(member.nbytes)} ({shown} {member.dtype}), "
                       f"its zip entry holds {human_bytes(max(info.file_size - header_bytes, 0))}: truncated or forged")
    return member


def read(zf: zipfile.ZipFile, member: Member) -> np.ndarray:
    """The member's array (after `members` checked its header: at most member.nbytes are allocated)."""
    with zf.open(member.info) as f:
        return np.lib.format.read_array(f, allow_pickle=False, max_header_size=MAX_HEADER_BYTES)


def human_bytes(n: int) -> str:
    """A byte count as a person reads it: 4.0 TiB, 2.0 GiB, 12 bytes."""
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"
