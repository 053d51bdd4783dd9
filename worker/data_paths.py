"""What every data reader shares: the error it raises, and the check that a dataset file may be opened.

    opened = checked_path(Path("data/x.npy"))   # resolved, and known to lie under the data roots
    raise DataError("data.source: ...")          # a defect in the data, said so a person can fix it

Under a coordinator, every dataset file must resolve (symbolic links followed) under one of the
coordinator's data roots, which the launcher passes in GRADMESH_DATA_ROOTS; standalone runs (the variable
unset) read any path the user gives. worker/data.py and the format readers (worker/csvsource.py,
worker/idx.py) import this module, which imports none of them: the readers sit below data.py, this below
both. `worker.data` re-exports DataError and checked_path, so `from worker.data import DataError` keeps working.
"""
from __future__ import annotations

import os
from pathlib import Path

from coordinator.wire import DATA_ROOTS_ENV


class DataError(ValueError):
    """The data cannot be used as the spec says; the message says why."""


def data_roots() -> list[Path]:
    """The roots every dataset file must resolve under ([] = unchecked: no coordinator set them)."""
    return [Path(p) for p in os.environ.get(DATA_ROOTS_ENV, "").split(os.pathsep) if p]


def checked_path(file: Path) -> Path:
    """`file` resolved, once it is known to lie under the data roots (DataError otherwise). The resolved path
    is what gets opened, so a link swapped after the check is not followed to a new place."""
    roots = data_roots()
    if not roots:
        return file
    resolved = file.resolve()
    if not any(resolved.is_relative_to(root) for root in roots):
        raise DataError(f"data.source: {file} resolves to {resolved}, outside the data roots "
                        f"({', '.join(map(str, roots))})")
    return resolved
