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
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

# numpy is imported where it is used: the worker lists checkpoints and reads their meta before numpy may
# be imported (the BLAS kernel is chosen first: worker/blas.py).
if TYPE_CHECKING:
    import numpy as np

FORMAT_VERSION = 2             # 2: the spec in `meta` as JobSpec.to_dict() gives it; 1 (to 2026-11-28): every key
MAX_META_BYTES = 16 << 20      # the metadata entry (JSON: spec, step, metrics, BLAS kernels) is a few kilobytes
MAX_INFLATION = 16             # members may inflate to this many times the file's size (+1 MiB), no more
_PERIODIC = re.compile(r"^ckpt-([0-9]{1,18})\.npz$")


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or of an unknown format."""


@dataclass
class Checkpoint:
    path: Path
    arrays: dict[str, np.ndarray]
    meta: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what reading it changed (an older format migrated)

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
    """Read and check a checkpoint; every member is read in full, so zip CRCs catch corruption.

    Memory is bounded before anything is read: the metadata at MAX_META_BYTES, each array by the model its
    spec describes (a layer's W is fan_in × fan_out; no other array has more values than the model has
    parameters), and all of them together by MAX_INFLATION times the file's size (np.savez stores members
    uncompressed; a deflated member that inflates far beyond that is a compression bomb, not a checkpoint).
    A checkpoint of an older format is migrated as it is read (`migrate_meta`); the file is never changed."""
    from worker import npzfile  # imports numpy: see the note on numpy at the top
    path = Path(path)
    try:
        on_disk = path.stat().st_size
        with zipfile.ZipFile(path) as zf:
            found = npzfile.members(zf)
            meta, notes = migrate_meta(_read_meta(zf, found, path), path)
            wanted = _check_members(found, meta, path, on_disk)
            arrays = {m.name: npzfile.read(zf, m) for m in wanted}
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except CheckpointError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, KeyError) as exc:
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {exc})") from None
    ckpt = Checkpoint(path, arrays, meta, notes)
    if not ckpt.layer_arrays():
        raise CheckpointError(f"{path}: no layers.0.W; not a gradmesh checkpoint")
    return ckpt


def _read_meta(zf: zipfile.ZipFile, found: dict, path: Path) -> dict[str, Any]:
    from worker import npzfile
    member = found.get("meta")
    if member is None:
        raise CheckpointError(f"{path}: no meta entry; not a gradmesh checkpoint")
    if member.nbytes > MAX_META_BYTES or member.dtype.kind != "U" or member.shape != ():
        raise CheckpointError(f"{path}: its meta entry is {npzfile.human_bytes(member.nbytes)} of {member.dtype}, "
                              f"not a JSON text of at most {npzfile.human_bytes(MAX_META_BYTES)}; not a gradmesh "
                              "checkpoint")
    try:
        meta = json.loads(str(npzfile.read(zf, member)))
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{path}: meta is not JSON ({exc})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: meta is not a JSON object; not a gradmesh checkpoint")
    return meta


def migrate_meta(meta: dict[str, Any], path: Path) -> tuple[dict[str, Any], list[str]]:
    """`meta` in today's format (FORMAT_VERSION), and notes on what was changed to get there.

    Format 1 (releases up to 2026-11-28) stored the spec with every key and its default, including settings
    the job's options do not use (`optim.momentum` of an adam job), which today's spec check refuses in a new
    submission; they are dropped here, with a note. Format 2 stores the spec as `JobSpec.to_dict()` does."""
    from worker.spec import SpecError, parse_stored_spec
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise CheckpointError(f"{path}: checkpoint format {version!r}, this gradmesh reads 1..{FORMAT_VERSION}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version} was written by a newer gradmesh; this one reads "
                              f"formats 1..{FORMAT_VERSION}: upgrade gradmesh to read it")
    if "spec" not in meta:  # not written by a training run (a test's, a tool's): nothing to migrate
        return {**meta, "format_version": FORMAT_VERSION}, []
    try:
        spec, dropped = parse_stored_spec(meta["spec"])
    except SpecError as err:
        raise CheckpointError(f"{path}: the spec in its metadata is not valid: {err}") from None
    notes = []
    if dropped:
        notes.append(f"its spec (format {version}) sets {', '.join(dropped)}, which the job's options do not use: "
                     "ignored")
    return {**meta, "spec": spec.to_dict(), "format_version": FORMAT_VERSION}, notes


def _check_members(found: dict, meta: dict[str, Any], path: Path, on_disk: int) -> list:
    """The members to read, once each is known to fit the model of the spec in `meta`, and all of them the
    file's size (CheckpointError otherwise)."""
    from worker import npzfile
    layers = meta["spec"]["model"]["layers"] if "spec" in meta else []  # without a spec: only the size bound
    expected = {}
    for i, (fan_in, fan_out) in enumerate(zip(layers, layers[1:])):
        expected[f"layers.{i}.W"], expected[f"layers.{i}.b"] = (fan_in, fan_out), (fan_out,)
    if layers:
        expected["normalize.mean"] = expected["normalize.std"] = (layers[0],)
    params = sum(a * b + b for a, b in zip(layers, layers[1:]))
    wanted = []
    for name, member in found.items():
        if name in expected:
            if member.shape != expected[name]:
                raise CheckpointError(f"{path}: {name} has shape {member.shape}, the spec's model {tuple(layers)} "
                                      f"needs {expected[name]}")
        elif name == "meta":
            continue  # read already
        elif layers and member.size > max(params, 1 << 16):  # optimizer state (a value a parameter), the rest
            raise CheckpointError(f"{path}: {name} holds {member.size} values, more than the model's {params} "
                                  "parameters")
        wanted.append(member)
    total = sum(m.info.file_size for m in wanted)
    if total > MAX_INFLATION * on_disk + (1 << 20):
        raise CheckpointError(f"{path}: its arrays inflate to {npzfile.human_bytes(total)} from "
                              f"{npzfile.human_bytes(on_disk)} on disk (over {MAX_INFLATION} times): a compression "
                              "bomb, not a checkpoint (numpy.savez stores arrays uncompressed)")
    return wanted


def load_model(path: str | Path):
    """(MLP with the checkpoint's weights, Normalizer or None): inference from a checkpoint in two lines."""
    return model_of(load_checkpoint(path))


def model_of(ckpt: Checkpoint):
    """(MLP with a loaded checkpoint's weights, Normalizer or None)."""
    from worker.data import Normalizer  # both import numpy: see the note on numpy at the top
    from worker.mlp import MLP

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
