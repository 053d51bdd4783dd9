"""Datasets, the train/validation split, input standardisation and the deterministic sharded sampler.

Sources (spec `[data] source`):
  digits       scikit-learn's bundled 8×8 handwritten digits (1,797 × 64, 10 classes; no download)
  synthetic    seeded Gaussian clusters: `[data.synthetic] samples, features, classes, seed`
  FILE.npz     arrays `x`, `y` and optionally `x_val`, `y_val` (loaded whole: numpy cannot map inside a zip)
  DIRECTORY    `x.npy`, `y.npy` and optionally `x_val.npy`, `y_val.npy`, memory-mapped, so a rank reads
               only the rows of the batches it trains on
  IDX          `train-images-idx3-ubyte[.gz]` and its labels as MNIST publishes them (a directory or the images
               file), memory-mapped, pixels scaled to [0, 1] as rows are read: worker.idx
  FILE.csv     a header row, `[data] label_column`, float features; converted once to a cached `.npy` beside
               it and memory-mapped: worker.csvsource

The sampler makes data parallelism exact and resumable: epoch e's order is the permutation drawn from
(seed, e); global batch k of that epoch is positions [k·B, (k+1)·B) of it (the last may be short); rank r
of N takes the r-th of N nearly equal contiguous slices of each global batch. Nothing depends on history,
so any (epoch, position) can be resumed from, with any number of ranks.

Under a coordinator, every dataset file is checked when it is opened: it must resolve (symbolic links
followed) under one of the coordinator's data roots, which the launcher passes in GRADMESH_DATA_ROOTS
(worker/data_paths.py, shared with the format readers). The coordinator checks the spec's path at submit;
this catches what lies inside a dataset directory (an `x.npy` symlink to a file elsewhere). Standalone runs
(the variable unset) read any path the user gives.
"""
from __future__ import annotations

import importlib.util
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker import csvsource, datacache, idx, npzfile
from worker.data_paths import DataError, checked_path  # callers import DataError from here too
from worker.spec import DataSpec


@dataclass
class Split:
    """Rows `index` of the arrays `x`, `y` (which may be memory-mapped and shared with another split)."""
    x: np.ndarray
    y: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.index)

    def rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The examples at `positions` (into this split), in that order, x as a fresh array."""
        idx = self.index[positions]
        return np.asarray(self.x[idx]), np.asarray(self.y[idx])


@dataclass
class Normalizer:
    """Per-feature standardisation (x - mean) / std, with statistics of the training split."""
    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, split: Split, chunk: int = 4096) -> "Normalizer":
        total = np.zeros(split.x.shape[1], np.float64)
        squares = np.zeros_like(total)
        for start in range(0, len(split), chunk):
            xb = np.asarray(split.x[split.index[start:start + chunk]], np.float64)
            total += xb.sum(axis=0)
            squares += np.square(xb).sum(axis=0)
        n = max(len(split), 1)
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean ** 2, 0.0))
        std[std < 1e-8] = 1.0  # constant features stay constant instead of dividing by zero
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        x = np.array(x, dtype=np.float32, copy=True)
        x -= self.mean
        x /= self.std
        return x

    def arrays(self) -> dict[str, np.ndarray]:
        return {"normalize.mean": self.mean, "normalize.std": self.std}


@dataclass
class Dataset:
    train: Split
    val: Split
    features: int
    classes: int           # 0 for regression targets
    description: str


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits. Reading its bundled CSV directly skips importing scikit-learn, which is
    most of a worker's start-up time (about 1 s of CPU); the import is the fallback if the file moved."""
    spec = importlib.util.find_spec("sklearn")
    csv = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz" if spec and spec.origin else None
    if csv is not None and csv.is_file():
        table = np.loadtxt(csv, delimiter=",", dtype=np.float64)
        if table.shape == (1797, 65):
            return table[:, :-1], table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.data, digits.target.astype(np.int64)


SYNTHETIC_CACHE_MIN_VALUES = 1 << 20   # below ~4 MB, drawing the sample is about as fast as reading it back


def _synthetic(samples: int, features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The sample, generated once per host and memory-mapped after (worker.datacache): the same bits either way."""
    if samples * features < SYNTHETIC_CACHE_MIN_VALUES:
        return _draw_synthetic(samples, features, classes, seed)

    def build(paths: dict[str, Path]) -> None:
        x, y = _draw_synthetic(samples, features, classes, seed)
        for name, array in (("x", x), ("y", y)):
            with open(paths[name], "wb") as f:
                np.save(f, array, allow_pickle=False)

    try:
        paths = datacache.generated("synthetic-v1", f"{samples},{features},{classes},{seed}", ("x", "y"), build)
        return (np.load(paths["x"], mmap_mode="r", allow_pickle=False),
                np.load(paths["y"], mmap_mode="r", allow_pickle=False))
    except OSError:  # no writable cache directory, a full disk, or the cache pruned under us: draw it here
        return _draw_synthetic(samples, features, classes, seed)


def _draw_synthetic(samples: int, features: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng([seed, 7919])
    # class centres about 4 noise standard deviations apart: learnable, but not trivially separable
    centers = rng.standard_normal((classes, features)).astype(np.float32) * np.float32(3.0 / np.sqrt(features))
    y = rng.integers(0, classes, samples)
    x = rng.standard_normal((samples, features), dtype=np.float32)
    x += centers[y]
    return x, y


def _load_source(spec: DataSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None, str, Path | None]:
    """(x, y, x_val, y_val, description, the labels file when it is not the source itself)."""
    if spec.source == "digits":
        pixels, labels = digits_arrays()
        # pixel intensities 0..16 scaled to [0, 1], as image loaders do
        x = (pixels / 16.0).astype(np.float32)
        return x, labels, None, None, "digits (scikit-learn, pixels scaled to [0, 1])", None
    if spec.source == "synthetic":
        s = spec.synthetic
        x, y = _synthetic(s.samples, s.features, s.classes, s.seed)
        return x, y, None, None, f"synthetic {s.samples}×{s.features}, {s.classes} classes, seed {s.seed}", None
    path = Path(spec.source).expanduser()
    if csvsource.is_csv(path) and path.is_file():
        return csvsource.load(path, spec.label_column)
    if (idx.is_idx_file(path) and path.is_file()) or (path.is_dir() and idx.is_idx_dir(path)):
        if path.is_dir() and (path / "x.npy").exists():
            raise DataError(f"data.source: {path} holds both x.npy and IDX files: name the IDX images file instead")
        return idx.load(path, spec.labels)
    if path.is_dir():
        arrays = {}
        for name in ("x", "y", "x_val", "y_val"):
            file = path / f"{name}.npy"
            if file.exists():
                try:
                    arrays[name] = np.load(checked_path(file), mmap_mode="r", allow_pickle=False)
                except (ValueError, OSError) as exc:
                    raise DataError(f"data.source: cannot read {file}: {exc}") from None
        where = f"directory {path} (memory-mapped)"
    elif path.is_file():
        arrays = _load_npz(path)
        where = f"file {path}"
    else:
        raise DataError(f"data.source: {spec.source!r} is neither a built-in source (digits, synthetic) "
                        f"nor an existing .npz file or directory")
    for required in ("x", "y"):
        if required not in arrays:
            raise DataError(f"data.source: {where} has no array {required!r} (found: {', '.join(sorted(arrays)) or 'none'})")
    if ("x_val" in arrays) != ("y_val" in arrays):
        raise DataError(f"data.source: {where} must have both x_val and y_val, or neither")
    return arrays["x"], arrays["y"], arrays.get("x_val"), arrays.get("y_val"), where, None


def _load_npz(path: Path) -> dict[str, np.ndarray]:
    """x, y, x_val, y_val of an .npz source, loaded whole (numpy cannot map inside a zip), after their headers
    show they agree with the file and fit in the memory available (worker/npzfile.py): a header claiming
    terabytes is one line, not a MemoryError."""
    opened = checked_path(path)
    try:
        with zipfile.ZipFile(opened) as zf:
            found = npzfile.members(zf, ("x", "y", "x_val", "y_val"))
            need = sum(m.nbytes for m in found.values())
            available = _memory_available()
            if available is not None and need > available:
                raise DataError(f"data.source: {path}: its arrays need {npzfile.human_bytes(need)} "
                                f"({', '.join(f'{m.name} {m.shape}' for m in found.values())}), more than the "
                                f"{npzfile.human_bytes(available)} of memory available; an .npz source is loaded "
                                "whole: save large arrays as a directory of .npy files, which are memory-mapped")
            return {name: npzfile.read(zf, member) for name, member in found.items()}
    except DataError:
        raise
    except npzfile.NpzError as exc:
        raise DataError(f"data.source: {path}: {exc}") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(f"data.source: cannot read {path} as .npz: {exc}") from None


def _memory_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_arrays(x, y, name: str, inputs: int, outputs: int, loss: str, labels_name: str = "") -> None:
    if x.ndim != 2:
        raise DataError(f"data: {name} must be 2-D (examples × features), got shape {x.shape}")
    if x.shape[1] != inputs:
        raise DataError(f"data: {name} has {x.shape[1]} features but model.layers[0] is {inputs}")
    if len(y) != len(x):
        raise DataError(f"data: {name} has {len(x)} rows but its labels have {len(y)}")
    if len(x) == 0:
        raise DataError(f"data: {name} is empty")
    if loss == "cross_entropy":
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise DataError(f"data: cross_entropy needs 1-D integer labels, got {y.dtype} {y.shape}")
        low, high = int(np.min(y)), int(np.max(y))
        if low < 0 or high >= outputs:
            raise DataError(f"data: {labels_name or name}: labels span {low}..{high} but the model has {outputs} "
                            f"outputs")
    else:
        width = 1 if y.ndim == 1 else y.shape[1]
        if width != outputs:
            raise DataError(f"data: mse targets have {width} columns but the model has {outputs} outputs")


def _validation_rows(y, fraction: float, seed: int, stratify: bool) -> np.ndarray:
    """Rows held out for validation: `fraction` of each class (stratified) or of all rows, seeded."""
    if fraction <= 0:
        return np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 104729])
    if not stratify:
        order = rng.permutation(len(y))
        return order[:max(1, int(round(len(y) * fraction)))]
    labels = np.asarray(y)
    picked = []
    for label in np.unique(labels):
        rows = np.flatnonzero(labels == label)
        take = int(round(len(rows) * fraction))
        picked.append(rng.permutation(rows)[:take])
    chosen = np.concatenate(picked)
    return chosen if len(chosen) else rng.permutation(len(y))[:1]


def load_dataset(spec: DataSpec, layers: tuple[int, ...], loss: str, seed: int) -> Dataset:
    """Load the source, check it against the model, split off validation data when none is given."""
    x, y, x_val, y_val, where, labels_file = _load_source(spec)
    inputs, outputs = layers[0], layers[-1]
    builtin = spec.source in ("digits", "synthetic")
    _check_arrays(x, y, "x" if builtin else f"{where}: x", inputs, outputs, loss, str(labels_file or ""))
    if x_val is not None:
        _check_arrays(x_val, y_val, f"{where}: x_val", inputs, outputs, loss)
        train = Split(x, y, np.arange(len(x)))
        val = Split(x_val, y_val, np.arange(len(x_val)))
    else:
        val_index = _validation_rows(y, spec.val_fraction, seed, stratify=loss == "cross_entropy")
        if len(val_index) >= len(x):
            raise DataError(f"data.val_fraction: {spec.val_fraction} leaves no training examples out of {len(x)}")
        train_mask = np.ones(len(x), bool)
        train_mask[val_index] = False
        train = Split(x, y, np.flatnonzero(train_mask))
        val = Split(x, y, np.sort(val_index))
    classes = outputs if loss == "cross_entropy" else 0
    return Dataset(train, val, inputs, classes, where)


class Sampler:
    """Deterministic global batches over `n` examples; see the module docstring."""

    def __init__(self, n: int, batch_size: int, seed: int):
        if n <= 0 or batch_size <= 0:
            raise ValueError("the sampler needs examples and a positive batch size")
        self.n = n
        self.batch_size = batch_size
        self.seed = seed
        self.steps_per_epoch = -(-n // batch_size)
        self._epoch = -1
        self._order = np.empty(0, np.int64)

    def epoch_order(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._order = np.random.default_rng([self.seed, epoch]).permutation(self.n)
            self._epoch = epoch
        return self._order

    def global_batch(self, epoch: int, position: int) -> np.ndarray:
        """Positions (into the split) of global batch `position` of `epoch`."""
        if not 0 <= position < self.steps_per_epoch:
            raise IndexError(f"position {position} outside 0..{self.steps_per_epoch - 1}")
        start = position * self.batch_size
        return self.epoch_order(epoch)[start:start + self.batch_size]

    @staticmethod
    def rank_slice(batch: np.ndarray, rank: int, size: int) -> np.ndarray:
        """Rank `rank`'s contiguous share of a global batch (sizes differ by at most one)."""
        n = len(batch)
        return batch[rank * n // size:(rank + 1) * n // size]

    def rank_batch(self, epoch: int, position: int, rank: int, size: int) -> np.ndarray:
        return self.rank_slice(self.global_batch(epoch, position), rank, size)

    def locate(self, step: int) -> tuple[int, int]:
        """(epoch, position), both 0-based, of the 0-based global `step`: where the batch of that step comes from."""
        return divmod(step, self.steps_per_epoch)

    def epoch_of(self, steps_done: int) -> int:
        """The 1-based epoch that the last of `steps_done` steps belongs to (0 before the first step): the one
        epoch number gradmesh publishes (progress lines, metric points, reports, checkpoint metadata)."""
        return -(-steps_done // self.steps_per_epoch)
