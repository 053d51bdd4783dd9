"""Checkpoints: `.npz` files that plain `numpy.load(path)` reads, written atomically.

Contents (no pickle anywhere):
  layers.{i}.W, layers.{i}.b       the weights, shape (fan_in, fan_out) and (fan_out,)
  optim.*                          optimizer state vectors and `optim.t`, the update count
  normalize.mean, normalize.std    input standardisation, when the spec asks for it
  meta                             a 0-d string array holding JSON: format version, spec, step, epoch,
                                   position in the epoch, sampler seed, metrics, ranks, time

    ckpt = load_checkpoint("runs/digits/final.npz")
    ckpt.meta["step"], ckpt.meta["metrics"]["val_accuracy"]
    model, normalizer = load_model("runs/digits/final.npz")      # ready for model.predict(x)

Resuming needs nothing else: the epoch order is a pure function of (seed, epoch), so (epoch, position)
pins the data stream, and the optimizer state plus `optim.t` pin the schedule.
"""
from __future__ import annotations

import json
import os
import re
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

# numpy is imported where it is used: the worker lists checkpoints and reads their meta before numpy may
# be imported (the BLAS kernel is chosen first: worker/blas.py).
if TYPE_CHECKING:
    import numpy as np

FORMAT_VERSION = 1
_PERIODIC = re.compile(r"^ckpt-([0-9]{1,18})\.npz$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or of an unknown format."""


@dataclass
class Checkpoint:
    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.meta["step"])

    def layer_arrays(self) -> list[tuple[np.ndarray, np.ndarray]]:
        n = sum(1 for k in self.arrays if k.startswith("layers.") and k.endswith(".W"))
        return [(self.arrays[f"layers.{i}.W"], self.arrays[f"layers.{i}.b"]) for i in range(n)]

    def flat_params(self) -> np.ndarray:
        """The parameters in the model's flat layout (W then b, layer by layer)."""
        import numpy as np
        return np.concatenate([part.reshape(-1) for pair in self.layer_arrays() for part in pair])

    def optimizer_arrays(self) -> dict[str, np.ndarray]:
        return {k: v for k, v in self.arrays.items() if k.startswith("optim.")}

    def normalizer_arrays(self) -> dict[str, np.ndarray] | None:
        if "normalize.mean" in self.arrays:
            return {k: self.arrays[k] for k in ("normalize.mean", "normalize.std")}
        return None


def checkpoint_arrays(model, optimizer=None, normalizer=None) -> dict[str, np.ndarray]:
    arrays: dict[str, np.ndarray] = {}
    for i, layer in enumerate(model.layers):
        arrays[f"layers.{i}.W"] = layer.W
        arrays[f"layers.{i}.b"] = layer.b
    if optimizer is not None:
        arrays.update(optimizer.state_arrays())
    if normalizer is not None:
        arrays.update(normalizer.arrays())
    return arrays


def save_checkpoint(path: str | Path, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
    """Write `arrays` and `meta` to `path` atomically: temporary file, fsync, rename, fsync the directory."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"format_version": FORMAT_VERSION, "saved_unix": time.time(), **meta}
    import numpy as np
    payload = dict(arrays)
    payload["meta"] = np.array(json.dumps(meta, sort_keys=True, allow_nan=True))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and check a checkpoint; every member is read in full, so zip CRCs catch corruption."""
    import numpy as np
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    if "meta" not in arrays:
        raise CheckpointError(f"{path}: no meta entry; not a gradmesh checkpoint")
    try:
        meta = json.loads(str(arrays.pop("meta")))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{path}: meta is not JSON ({exc})") from None
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this gradmesh reads {FORMAT_VERSION}")
    ckpt = Checkpoint(path, arrays, meta)
    if not ckpt.layer_arrays():
        raise CheckpointError(f"{path}: no layers.0.W; not a gradmesh checkpoint")
    return ckpt


def load_model(path: str | Path):
    """(MLP with the checkpoint's weights, Normalizer or None): inference from a checkpoint in two lines."""
    from worker.data import Normalizer  # both import numpy: see the note on numpy at the top
    from worker.mlp import MLP

    ckpt = load_checkpoint(path)
    model_spec = ckpt.meta["spec"]["model"]
    model = MLP(model_spec["layers"], model_spec["activation"], model_spec["loss"])
    model.params[...] = ckpt.flat_params()
    norm = ckpt.normalizer_arrays()
    normalizer = Normalizer(norm["normalize.mean"], norm["normalize.std"]) if norm else None
    return model, normalizer


def periodic_name(step: int) -> str:
    return f"ckpt-{step}.npz"


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """Periodic checkpoints in `directory`, as (step, path), oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _PERIODIC.match(p.name))]
    return sorted(found)


def newest_valid_checkpoint(directory: str | Path, warn=print) -> Checkpoint | None:
    """The newest checkpoint (final.npz or the highest ckpt-<step>.npz) that loads; corrupt ones are reported and skipped."""
    directory = Path(directory)
    final = directory / "final.npz"
    newest_first = ([final] if final.exists() else []) + [p for _, p in reversed(list_checkpoints(directory))]
    for path in newest_first:
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:
            warn(f"gradmesh: skipping checkpoint: {exc}")
    return None


def rotate(directory: str | Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` periodic checkpoints; returns what was deleted."""
    old = list_checkpoints(directory)[:-keep_last] if keep_last > 0 else []
    for _, path in old:
        path.unlink(missing_ok=True)
    return [p for _, p in old]
