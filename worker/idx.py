"""IDX files as MNIST, Fashion-MNIST and KMNIST publish them, memory-mapped.

    train-images-idx3-ubyte[.gz]   magic 00 00 08 03, then N, rows, cols as big-endian uint32, then N·rows·cols bytes
    train-labels-idx1-ubyte[.gz]   magic 00 00 08 01, then N, then N bytes
    t10k-images-idx3-ubyte[.gz]    the test set, the same layout (optional)
    t10k-labels-idx1-ubyte[.gz]

A source names the pair by a directory holding the `train-` files (the `t10k-` pair, when present, becomes the
validation set), or by the images file, with the labels file beside it under the published name or given as
`[data] labels`. Images are flattened to rows of rows·cols features and scaled to [0, 1] (byte / 255) one batch
at a time, as the rows are read: the uint8 file stays on disk, mapped, so a rank only reads the rows of its
shards. A gzipped images file is decompressed once into a cached `.npy` (worker.datacache) and mapped from
there; labels are small (a byte per example) and read whole.

Every defect is a DataError naming the file: a wrong magic number, a truncated or overlong file, a gzip
stream that ends early, images and labels of different lengths.
"""
from __future__ import annotations

import gzip
import math
import re
import shutil
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker import datacache
from worker.data_paths import DataError, checked_path

_GZIP_MAGIC = b"\x1f\x8b"
_UBYTE = 0x08
_COPY_CHUNK = 1 << 22
IDX_NAME = re.compile(r"idx\d-ubyte(\.gz)?$")


def is_idx_file(path: Path) -> bool:
    return bool(IDX_NAME.search(path.name))


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (directory / name).is_file():
            return directory / name
    return None


def is_idx_dir(directory: Path) -> bool:
    return _find(directory, "train-images-idx3-ubyte") is not None


def labels_beside(images: Path) -> Path:
    """The labels file published with `images`: train-images-idx3-ubyte.gz → train-labels-idx1-ubyte.gz."""
    name = images.name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    if name == images.name:
        raise DataError(f"data.source: {images}: cannot tell its labels file from its name; set [data] labels")
    return images.with_name(name)


@dataclass
class ScaledImages:
    """Rows of a uint8 (examples × pixels) array, read as float32 in [0, 1] when indexed: the array-like that
    worker.data's splits and the normaliser read batches from."""
    raw: np.ndarray

    dtype = np.dtype(np.float32)
    ndim = 2

    @property
    def shape(self) -> tuple[int, int]:
        return self.raw.shape

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index) -> np.ndarray:
        return np.asarray(self.raw[index], dtype=np.float32) / np.float32(255)


def _header(head: bytes, file: Path, ndim: int) -> tuple[int, ...]:
    """The dimensions from an IDX header, after checking its magic number says unsigned bytes in `ndim` dims."""
    if len(head) < 4:
        raise DataError(f"data.source: {file}: truncated: {len(head)} bytes, not even an IDX magic number")
    if head[:2] != b"\0\0" or head[2] != _UBYTE or head[3] != ndim:
        kind = "images (idx3)" if ndim == 3 else "labels (idx1)"
        raise DataError(f"data.source: {file}: wrong magic number {head[:4].hex()} for IDX {kind}: expected "
                        f"0000080{ndim} (unsigned bytes, {ndim} dimension{'s' if ndim > 1 else ''})")
    need = 4 + 4 * ndim
    if len(head) < need:
        raise DataError(f"data.source: {file}: truncated: the header needs {need} bytes, the file has {len(head)}")
    return tuple(int(d) for d in np.frombuffer(head[4:need], ">u4"))


def _is_gzip(file: Path) -> bool:
    with open(file, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def _check_size(file: Path, dims: tuple[int, ...], have: int, what: str = "") -> None:
    need = math.prod(dims)  # Python integers: three uint32 dimensions can overflow int64
    if have < need:
        raise DataError(f"data.source: {file}: truncated{what}: the header promises {need} bytes of data "
                        f"({' × '.join(map(str, dims))}), there are {have}")
    if have > need:
        raise DataError(f"data.source: {file}: {have - need} bytes more{what} than its header "
                        f"({' × '.join(map(str, dims))}) says: not an IDX file as published")


def _gzip_error(file: Path, exc: Exception) -> DataError:
    if isinstance(exc, EOFError):
        return DataError(f"data.source: {file}: truncated: the gzip stream ends early")
    return DataError(f"data.source: {file}: corrupt gzip data ({exc})")


def _read_labels(file: Path, images: Path, expected: int) -> np.ndarray:
    """The labels of an idx1 file that must hold `expected` of them (one per image of `images`): the header is read and
    checked first, so a file claiming another count is refused before its data is read or inflated, and
    memory holds at most `expected` bytes (a gzip stream inflating far beyond that is never inflated)."""
    opened = checked_path(file)
    try:
        with (gzip.open(opened, "rb") if _is_gzip(opened) else open(opened, "rb")) as f:
            (n,) = _header(f.read(8), file, 1)
            if n != expected:
                raise DataError(f"data.source: {images} has {expected} images but {file} has {n} labels")
            labels = np.empty(n, np.uint8)  # kept as bytes: 1 byte per example, not 8
            done = 0
            while done < n:
                chunk = f.read(min(_COPY_CHUNK, n - done))
                if not chunk:
                    break
                labels[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                done += len(chunk)
            extra = len(f.read(1 << 16))  # enough to tell, never the rest of a stream that may not end
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _gzip_error(file, exc) from None
    except OSError as exc:
        raise DataError(f"data.source: cannot read {file}: {exc.strerror or exc}") from None
    if extra:
        raise DataError(f"data.source: {file}: {'at least ' if extra == 1 << 16 else ''}{extra} bytes more than its "
                        f"header ({n} labels) says: not an IDX file as published")
    _check_size(file, (n,), done)
    return labels


def _decompress_images(file: Path, out: Path) -> None:
    """Stream a gzipped idx3 file into an uint8 (examples × pixels) `.npy` at `out`, chunk by chunk."""
    try:
        with gzip.open(file, "rb") as f:
            head = f.read(16)
            n, rows, cols = _header(head, file, 3)
            _check_room(file, n * rows * cols, out.parent)
            target = np.lib.format.open_memmap(out, mode="w+", dtype=np.uint8, shape=(n, rows * cols))
            flat = target.reshape(-1)
            done = 0
            while done < flat.size:
                chunk = f.read(min(_COPY_CHUNK, flat.size - done))
                if not chunk:
                    break
                flat[done:done + len(chunk)] = np.frombuffer(chunk, np.uint8)
                done += len(chunk)
            extra = len(f.read(1 << 16))
            target.flush()
            del target, flat
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise _gzip_error(file, exc) from None
    _check_size(file, (n, rows, cols), done + extra, " (after decompression)")


def _check_room(file: Path, need: int, directory: Path) -> None:
    """Refuse to inflate a gzipped images file into more than the disk beside its cache has free: a small
    file whose header claims terabytes must not fill the disk before the stream turns out to be short."""
    free = shutil.disk_usage(directory).free
    if need > free:
        raise DataError(f"data.source: {file}: its header promises {need} bytes of images, more than the "
                        f"{free} bytes free in {directory} to decompress them into")


def _open_images(file: Path) -> np.ndarray:
    """The images of an idx3 file as a read-only uint8 (examples × pixels) memory map."""
    opened = checked_path(file)
    try:
        if _is_gzip(opened):
            paths = datacache.cached(opened, "idx3", ("x",), lambda tmp: _decompress_images(opened, tmp["x"]))
            return np.load(paths["x"], mmap_mode="r")
        with open(opened, "rb") as f:
            n, rows, cols = _header(f.read(16), file, 3)
        _check_size(file, (n, rows, cols), opened.stat().st_size - 16)
        if n * rows * cols == 0:
            return np.zeros((n, rows * cols), np.uint8)
        return np.memmap(opened, dtype=np.uint8, mode="r", offset=16, shape=(n, rows * cols))
    except OSError as exc:
        raise DataError(f"data.source: cannot read {file}: {exc.strerror or exc}") from None


def images(file: Path) -> ScaledImages:
    """The images of an idx3 file alone (predicting needs no labels)."""
    return ScaledImages(_open_images(file))


def load_pair(images: Path, labels: Path) -> tuple[ScaledImages, np.ndarray]:
    x = _open_images(images)
    return ScaledImages(x), _read_labels(labels, images, len(x))


def load(path: Path, labels: str = ""):
    """(x, y, x_val, y_val, description, labels file) of an IDX source: a directory or an images file."""
    if path.is_dir():
        images = _find(path, "train-images-idx3-ubyte")
        label_file = _find(path, "train-labels-idx1-ubyte")
        if label_file is None:
            raise DataError(f"data.source: {path} has {images.name} but no train-labels-idx1-ubyte[.gz]")
        x, y = load_pair(images, label_file)
        test_images, test_labels = _find(path, "t10k-images-idx3-ubyte"), _find(path, "t10k-labels-idx1-ubyte")
        x_val = y_val = None
        if test_images is not None and test_labels is not None:
            x_val, y_val = load_pair(test_images, test_labels)
        held_out = f", validation {test_images.name}" if x_val is not None else ""
        return x, y, x_val, y_val, f"IDX {images}{held_out} (memory-mapped)", label_file
    label_file = Path(labels).expanduser() if labels else labels_beside(path)
    if not label_file.is_file():
        raise DataError(f"data.source: no labels file {label_file} for {path} (set [data] labels)")
    x, y = load_pair(path, label_file)
    return x, y, None, None, f"IDX {path} (memory-mapped)", label_file
