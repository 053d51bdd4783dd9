"""A trained checkpoint applied to a data source: evaluation (loss, accuracy, confusion matrix) and predictions.

    model, normalizer = load_model("best.npz")
    x, y, where = examples(data_spec, split="all")       # any source training reads; x may be memory-mapped
    report = evaluate(model, normalizer, x, y)            # report.loss, report.accuracy, report.confusion
    probs = predict(model, normalizer, x)                 # softmax probabilities (cross_entropy) or outputs (mse)

Rows are read and pushed through the network a chunk at a time, so a memory-mapped source larger than memory
is evaluated in the memory of one chunk. Nothing here needs MPI or a coordinator: `gradmesh evaluate` and
`gradmesh predict` run it where the data is.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worker import csvsource, idx
from worker.data import DataError, Normalizer, load_dataset
from worker.spec import DataSpec, is_csv_source

CHUNK = 4096


@dataclass
class Evaluation:
    examples: int
    loss: float                          # mean over examples, as training reports it
    accuracy: float | None = None        # cross_entropy only
    confusion: np.ndarray | None = None  # [true class, predicted class] counts, cross_entropy only
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"examples": self.examples, "loss": self.loss, "source": self.source}
        if self.confusion is not None:
            out["accuracy"] = self.accuracy
            out["confusion"] = self.confusion.tolist()
        return out


def examples(data: DataSpec, layers, loss: str, seed: int, split: str = "all", need_labels: bool = True):
    """(x, y, description) of a source: every example (`split="all"`: x and y, or for a source with a
    validation set such as an IDX directory's t10k files, x and y without them), or the held-out split a job
    with this seed trained beside (`split="val"`). Without `need_labels`, y may be None (a CSV without the
    label column, an IDX images file without its labels file)."""
    if not need_labels:
        path = Path(data.source).expanduser()
        if is_csv_source(data.source) and path.is_file():
            x, y, _, _, where, _ = csvsource.load(path, data.label_column, require_labels=False)
            return x, y, where
        if idx.is_idx_file(path) and path.is_file() and not data.labels:
            beside = path.with_name(path.name.replace("images-idx3", "labels-idx1"))
            if beside == path or not beside.exists():
                return idx.images(path), None, f"IDX {path} (images only)"
    dataset = load_dataset(data, tuple(layers), loss, seed) if split == "val" else None
    if dataset is not None:
        part = dataset.val
        if len(part) == 0:
            raise DataError("data: this source has no held-out split (val_fraction is 0)")
        return _Rows(part), np.asarray(part.y[part.index]), f"{dataset.description}, held-out split"
    whole = load_dataset(_no_split(data), tuple(layers), loss, seed)
    return whole.train.x, whole.train.y, whole.description


def _no_split(data: DataSpec) -> DataSpec:
    return dataclasses.replace(data, val_fraction=0.0)


@dataclass
class _Rows:
    """A split's rows in order, indexable by slices like an array (what evaluate and predict read)."""
    split: Any
    ndim: int = field(default=2, init=False)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, s: slice) -> np.ndarray:
        return np.asarray(self.split.x[self.split.index[s]])


def _chunks(x, normalizer: Normalizer | None):
    for start in range(0, len(x), CHUNK):
        xb = np.asarray(x[start:start + CHUNK], dtype=np.float32)
        yield start, normalizer.apply(xb) if normalizer is not None else xb


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def predict(model, normalizer: Normalizer | None, x) -> np.ndarray:
    """Class probabilities (cross_entropy) or the network's outputs (mse), float32, one row per example."""
    out = np.empty((len(x), model.sizes[-1]), np.float32)
    for start, xb in _chunks(x, normalizer):
        logits = model.forward(xb)
        out[start:start + len(xb)] = softmax(logits) if model.loss == "cross_entropy" else logits
    return out


def evaluate(model, normalizer: Normalizer | None, x, y, source: str = "") -> Evaluation:
    """Mean loss (the training loss's definition), and for cross_entropy the accuracy and confusion matrix."""
    if y is None:
        raise DataError(f"data: {source or 'the source'} has no labels to evaluate against")
    n, k = len(x), model.sizes[-1]
    if n == 0:
        raise DataError(f"data: {source or 'the source'} has no examples")
    classify = model.loss == "cross_entropy"
    confusion = np.zeros((k, k), np.int64) if classify else None
    loss_sum = 0.0
    for start, xb in _chunks(x, normalizer):
        logits = model.forward(xb).astype(np.float64)
        yb = np.asarray(y[start:start + len(xb)])
        if classify:
            top = logits.max(axis=1, keepdims=True)
            log_norm = (top[:, 0] + np.log(np.exp(logits - top).sum(axis=1)))
            loss_sum += float((log_norm - logits[np.arange(len(yb)), yb]).sum())
            np.add.at(confusion, (yb, logits.argmax(axis=1)), 1)
        else:
            target = yb.reshape(len(yb), -1).astype(np.float64)
            loss_sum += float(np.square(logits - target).mean(axis=1).sum())
    accuracy = float(np.trace(confusion)) / n if classify else None
    return Evaluation(n, loss_sum / n, accuracy, confusion, source)
