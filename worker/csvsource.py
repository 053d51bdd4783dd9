"""CSV files with a header row: one column is the label (`[data] label_column`), every other one a float feature.

    label,pixel0,pixel1,...        the header names the columns (the label may be any of them)
    5,0,0.5,...                    one example per line; blank lines are skipped

Text cannot be memory-mapped, so the first run converts the file, a chunk of lines at a time (numpy's C
parser), into float32 features and labels in `.npy` files beside it, keyed by a hash of the file
(worker.datacache); every later epoch, restart and rank maps those. Labels that are all integers are stored
as int64 (class labels for cross_entropy), otherwise as float32 (mse targets).

A defect is a DataError naming the file and the row: a cell that is not a number, a row with too few or
too many cells, a missing label column, a file without data rows, a line that is not CSV, or a line too long
to be a row of numbers (over `row_limit`: 64 characters a column and some room; the header over 16 MiB),
which is refused after reading that much of it, so memory stays bounded by the header's width.
"""
from __future__ import annotations

import csv
import io
from itertools import islice
from pathlib import Path

import numpy as np

from worker import datacache
from worker.data_paths import DataError, checked_path

_CHUNK_LINES = 16384
MAX_HEADER_CHARS = 16 << 20  # the header row: a million columns with 16-character names
FORMAT = 1  # bump when the conversion changes: the cache key includes it


def is_csv(path: Path) -> bool:
    return path.suffix.lower() == ".csv"


def _cells(line: str, file: Path | None = None, line_no: int = 0) -> list[str]:
    try:
        return next(csv.reader([line]), [])
    except csv.Error as exc:  # a field over csv.field_size_limit(), a NUL, a bad quote
        raise DataError(f"data.source: {file}: line {line_no} is not CSV ({exc})") from None


def _line(f, file: Path, line_no: int, limit: int, what: str) -> str:
    """The next line of `f`, read in at most `limit` characters ("" at the end of the file): a longer line is
    refused before it is held whole, so one huge line cannot take the memory a file of rows would."""
    line = f.readline(limit + 1)
    if len(line) > limit and line[-1] not in "\r\n":
        raise DataError(f"data.source: {file}: line {line_no} is longer than {limit} characters, {what}: not a CSV "
                        "file of numbers")
    return line


def _header(file: Path, f) -> list[str]:
    first = _line(f, file, 1, MAX_HEADER_CHARS, "the most a header row may have")
    names = [name.strip() for name in _cells(first, file, 1)]
    if not names or names == [""]:
        raise DataError(f"data.source: {file}: no header row (the first line must name the columns)")
    return names


def row_limit(columns: int) -> int:
    """The longest data line accepted for a header of `columns` names: 64 characters a cell, and room to spare
    (a float32 printed in full takes at most 16; a float64, 24)."""
    return 4096 + 64 * columns


def _data_lines(f, file: Path, columns: int):
    """(line number, text) of every non-blank line after the header, each at most row_limit(columns) long."""
    limit = row_limit(columns)
    number = 1
    what = f"the most a row of {columns} numbers may have (64 characters a cell, and 4096 to spare)"
    while line := _line(f, file, number + 1, limit, what):
        number += 1
        if line.strip():
            yield number, line


def _explain(file: Path, chunk: list[tuple[int, str]], first_row: int, names: list[str]) -> DataError:
    """The first defect in a chunk numpy refused, found slowly, cell by cell, to name its row and column."""
    for offset, (line_no, line) in enumerate(chunk):
        row = first_row + offset
        cells = _cells(line, file, line_no)
        if len(cells) != len(names):
            return DataError(f"data.source: {file}: row {row} (line {line_no}) has {len(cells)} cells, "
                             f"the header has {len(names)}")
        for name, cell in zip(names, cells):
            try:
                float(cell)
            except ValueError:
                return DataError(f"data.source: {file}: non-numeric cell {cell.strip()[:40]!r} at row {row} "
                                 f"(line {line_no}), column {name!r}")
    return DataError(f"data.source: {file}: rows {first_row}..{first_row + len(chunk) - 1} do not parse as numbers")


def _convert(opened: Path, file: Path, label_column: str | None, out: dict[str, Path]) -> None:
    """Parse `opened` (the checked path of `file`, the name messages use) into the `.npy` files of `out`."""
    with open(opened, newline="", encoding="utf-8", errors="replace") as f:
        names = _header(file, f)
        rows = sum(1 for _ in _data_lines(f, file, len(names)))
    if rows == 0:
        raise DataError(f"data.source: {file}: a header but no data rows")
    label = names.index(label_column) if label_column is not None else None
    features = [i for i in range(len(names)) if i != label]
    x = np.lib.format.open_memmap(out["x"], mode="w+", dtype=np.float32, shape=(rows, len(features)))
    y = np.empty(rows, np.float64) if label is not None else None
    done = 0
    with open(opened, newline="", encoding="utf-8", errors="replace") as f:
        _header(file, f)
        lines = _data_lines(f, file, len(names))
        while chunk := list(islice(lines, _CHUNK_LINES)):
            try:
                table = np.loadtxt(io.StringIO("".join(text for _, text in chunk)), delimiter=",", quotechar='"',
                                   dtype=np.float64, ndmin=2)
            except ValueError:
                raise _explain(file, chunk, done + 1, names) from None
            if table.shape[1] != len(names):
                raise _explain(file, chunk, done + 1, names)
            x[done:done + len(table)] = table[:, features]
            if y is not None:
                y[done:done + len(table)] = table[:, label]
            done += len(table)
    x.flush()
    del x
    if y is not None:
        integral = np.all(np.isfinite(y)) and np.all(y == np.round(y)) and np.all(np.abs(y) < 2 ** 53)
        with open(out["y"], "wb") as f:  # a file object: np.save would append ".npy" to the temporary name
            np.save(f, y.astype(np.int64) if integral else y.astype(np.float32))


def load(path: Path, label_column: str, require_labels: bool = True):
    """(x, y, None, None, description, file): features memory-mapped from the cache, labels in memory.
    Without `require_labels` (predicting), a file whose header lacks `label_column` is all features, y None."""
    opened = checked_path(path)
    try:
        with open(opened, newline="", encoding="utf-8", errors="replace") as f:
            names = _header(path, f)
        if label_column not in names and require_labels:
            shown = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise DataError(f"data.label_column: {path} has no column {label_column!r} (its header: {shown})")
        label = label_column if label_column in names else None
        parts = ("x", "y") if label is not None else ("x",)
        paths = datacache.cached(opened, f"csv{FORMAT}:{label}", parts, lambda tmp: _convert(opened, path, label, tmp))
        x = np.load(paths["x"], mmap_mode="r")
        y = np.load(paths["y"]) if label is not None else None
    except (OSError, UnicodeError) as exc:
        raise DataError(f"data.source: cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return x, y, None, None, f"CSV {path} (label column {label!r}, converted once, memory-mapped)", path
