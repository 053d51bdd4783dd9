"""The job spec: a declarative description of one training job, validated into typed, frozen dataclasses.

A spec arrives as TOML (or the same structure as JSON), from a file or from the coordinator. Every key is
checked: an unknown key or a bad value raises `SpecError` naming the dotted key and the reason, so a
person can fix the file without reading code. The coordinator imports this module (and only this one
from `worker`) to refuse bad jobs at submission, so it must stay free of numpy, MPI and gRPC.

    spec = load_spec("examples/digits.toml")
    spec.train.batch_size            # 64
    spec.to_dict()                   # plain dict, round-trips through parse_spec()

A setting the chosen option does not use (`momentum` for `[optim] name = "sgd"`, `[data.synthetic]` for a
file source, ...) is refused like an unknown key rather than silently ignored: see UNUSED_WHEN. So
`to_dict()` leaves such settings out, and the canonical JSON a coordinator stores parses again.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")
LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
NORMALIZATIONS = ("none", "standard")
BUILTIN_SOURCES = ("digits", "synthetic")
MAX_LAYER_SIZE = 1 << 20
MAX_RESTARTS = 1000             # a retry policy beyond this is a loop, not a policy
MAX_BACKOFF_S = 3600.0          # the first relaunch waits at most an hour (coordinator.outcomes caps the doubling)
MAX_HANG_TIMEOUT_S = 7 * 86400.0
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1   # the store's integers are SQLite's int64


class SpecError(ValueError):
    """A spec value is wrong. `field` is the dotted key (e.g. "train.batch_size")."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


@dataclass(frozen=True)
class ModelSpec:
    layers: tuple[int, ...] = (64, 128, 128, 10)  # [inputs, hidden..., outputs]
    activation: str = "relu"                       # hidden-layer nonlinearity; the last layer is linear
    loss: str = "cross_entropy"                    # cross_entropy (integer labels) | mse


@dataclass(frozen=True)
class SyntheticSpec:
    samples: int = 20000    # rows generated
    features: int = 784     # columns of x
    classes: int = 10       # labels are 0..classes-1
    seed: int = 0           # the data's own seed, independent of the training seed


@dataclass(frozen=True)
class DataSpec:
    source: str = "digits"        # digits | synthetic | path to a .npz | directory of .npy files | IDX | .csv
    val_fraction: float = 0.1     # held out from the training data when the source has no validation set
    normalize: str = "none"       # none | standard (per-feature mean/std of the training split)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)
    label_column: str = "label"   # a .csv source: the header's name of the label column; the rest are features
    labels: str = ""              # an IDX images file: its labels file ("" = the published name beside it)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = 0               # train for this many epochs ...
    steps: int = 0                # ... or this many steps; exactly one of the two is set
    batch_size: int = 64          # the global batch, split across all ranks
    seed: int = 0                 # initialisation and epoch order
    eval_every: int = 100         # steps between evaluations (and progress lines); also at the end
    threads_per_rank: int = 0     # BLAS threads per rank; 0 = cores on the host / ranks on the host
    overlap: bool = False         # start bucketed gradient allreduces during backward
    blas_kernel: str = "auto"     # OpenBLAS kernel: auto (fastest measured on each host, worker/blas.py) | default | a core name


@dataclass(frozen=True)
class OptimSpec:
    name: str = "adam"            # sgd | momentum | nesterov | adam | adamw
    lr: float = 0.001             # peak learning rate
    momentum: float = 0.9         # momentum / nesterov
    beta1: float = 0.9            # adam / adamw
    beta2: float = 0.999          # adam / adamw
    eps: float = 1e-8             # adam / adamw
    weight_decay: float = 0.0     # L2 added to the gradient (decoupled for adamw)
    clip_norm: float = 0.0        # clip the global gradient norm to this; 0 = off
    schedule: str = "constant"    # constant | step | cosine, after warmup
    warmup_steps: int = 0         # linear warmup from lr/warmup_steps to lr
    step_size: int = 1000         # step schedule: multiply by gamma every step_size steps
    gamma: float = 0.1            # step schedule factor
    min_lr: float = 0.0           # cosine schedule floor


@dataclass(frozen=True)
class CheckpointSpec:
    every_steps: int = 200        # 0 = only the final checkpoint
    keep_last: int = 3            # older periodic checkpoints are deleted


@dataclass(frozen=True)
class FaultSpec:
    max_restarts: int = 2         # relaunches after a failed attempt before the job is FAILED
    backoff_s: float = 1.0        # wait before a relaunch, doubled each time
    hang_timeout_s: float = 60.0  # a collective or a progress report this late means a hang
    min_workers: int = 0          # elastic: restart on as few as this many ranks when hosts are lost, grow
                                  # back to `workers` when they return (0 = workers: not elastic)


@dataclass(frozen=True)
class JobSpec:
    name: str = "job"
    workers: int = 1              # MPI ranks when the coordinator launches it (standalone: mpirun -n)
    priority: int = 0             # higher runs first; FIFO within a priority
    model: ModelSpec = field(default_factory=ModelSpec)
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainSpec = field(default_factory=TrainSpec)
    optim: OptimSpec = field(default_factory=OptimSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    fault: FaultSpec = field(default_factory=FaultSpec)

    def to_dict(self) -> dict[str, Any]:
        """Every setting the job uses, as plain values (settings its options do not use are left out)."""
        raw = _plain(dataclasses.asdict(self))
        for section, key, _reason in _unused_settings(self):
            del raw[section][key]
        if not self.fault.min_workers:  # the default (not elastic) is left out: older specs keep their JSON
            del raw["fault"]["min_workers"]
        return raw

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def source_is_path(self) -> bool:
        return self.data.source not in BUILTIN_SOURCES


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- parsing

def load_spec(path: str | Path) -> JobSpec:
    """Read a TOML or JSON spec file. Raises SpecError (field "file") when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError("file", f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_spec_text(text, json_format=path.suffix.lower() == ".json")


def parse_spec_text(text: str, json_format: bool | None = None) -> JobSpec:
    """Parse spec text; JSON when `json_format` is true, or when None and the text starts with '{'."""
    return parse_spec(load_raw(text, json_format))


def load_raw(text: str, json_format: bool | None = None) -> Any:
    """The plain structure of spec text, not yet validated (SpecError, field "file", when it does not parse)."""
    if json_format is None:
        json_format = text.lstrip().startswith("{")
    try:
        return json.loads(text) if json_format else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        kind = "JSON" if json_format else "TOML"
        raise SpecError("file", f"not valid {kind}: {exc}") from None
    except RecursionError:
        raise SpecError("file", "nested too deeply (a job spec is at most a few tables deep)") from None


def parse_spec(raw: Any) -> JobSpec:
    """Validate a plain dict into a JobSpec, or raise SpecError naming the first bad key."""
    if not isinstance(raw, dict):
        raise SpecError("spec", "must be a table of keys")
    spec = _build(JobSpec, raw, "")
    _check_cross_fields(spec)
    for section, key, reason in _unused_settings(spec):
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise SpecError(f"{section}.{key}", f"not used: {reason}")
    return spec


def drop_unused(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` without the settings its options do not use: for specs stored before such settings were
    refused (their canonical JSON listed every key). Raises SpecError when `raw` is otherwise invalid."""
    if not isinstance(raw, dict):
        raise SpecError("spec", "must be a table of keys")
    spec = _build(JobSpec, raw, "")
    cleaned = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    for section, key, _reason in _unused_settings(spec):
        if isinstance(cleaned.get(section), dict):
            cleaned[section].pop(key, None)
    return cleaned


# (section, key, the option that would use it): a setting is refused when its option is not chosen
def _unused_settings(spec: JobSpec) -> list[tuple[str, str, str]]:
    o, unused = spec.optim, []
    if o.name not in ("momentum", "nesterov"):
        unused.append(("optim", "momentum", f'optimizer {o.name!r} has no momentum (use name = "momentum" or '
                                            '"nesterov")'))
    if o.name not in ("adam", "adamw"):
        unused += [("optim", k, f"only adam and adamw use {k}; optimizer {o.name!r} does not")
                   for k in ("beta1", "beta2", "eps")]
    if o.schedule != "step":
        unused += [("optim", k, f'only schedule = "step" uses {k}; this job\'s schedule is {o.schedule!r}')
                   for k in ("step_size", "gamma")]
    if o.schedule != "cosine":
        unused.append(("optim", "min_lr", f'only schedule = "cosine" uses min_lr; this job\'s schedule is '
                                          f'{o.schedule!r}'))
    if spec.data.source != "synthetic":
        unused.append(("data", "synthetic", f'[data.synthetic] is only read when source = "synthetic"; this '
                                            f'job\'s source is {_short(spec.data.source)}'))
    if not is_csv_source(spec.data.source):
        unused.append(("data", "label_column", f"only a .csv source has a label column; this job's source is "
                                               f"{_short(spec.data.source)}"))
    if not is_idx_file_source(spec.data.source):
        unused.append(("data", "labels", f"only an IDX images file (train-images-idx3-ubyte[.gz]) takes a labels "
                                         f"file; this job's source is {_short(spec.data.source)}"))
    if spec.fault.max_restarts == 0:
        unused.append(("fault", "backoff_s", "max_restarts = 0: there is no relaunch to wait for"))
    return unused


def is_csv_source(source: str) -> bool:
    """A CSV source is named by its suffix (the worker reads it: worker.csvsource)."""
    return source.lower().endswith(".csv")


def is_idx_file_source(source: str) -> bool:
    """An IDX file is named as published: ...idx3-ubyte[.gz] (the worker reads it: worker.idx)."""
    return re.search(r"idx\d-ubyte(\.gz)?$", source) is not None


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "spec"
    if not isinstance(raw, dict):
        raise SpecError(where, f"must be a table, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SpecError(prefix + _short(unknown[0], 64).strip("'"), f"unknown key (allowed: {', '.join(sorted(fields))})")
    values = {}
    for name, value in raw.items():
        key = prefix + name
        default = fields[name].default
        if default is dataclasses.MISSING:
            default = fields[name].default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            values[name] = _build(type(default), value, key + ".")
        else:
            values[name] = _coerce(key, value, default)
    obj = cls(**values)
    _check_section(obj, prefix)
    return obj


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Type-check one scalar (or list) against the type of its default."""
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise SpecError(key, f"must be true or false, got {_short(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(key, f"must be an integer, got {_short(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise SpecError(key, f"must fit in 64 bits (at most {INT64_MAX}), got {_short(value)}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(key, f"must be a number, got {_short(value)}")
        if isinstance(value, int) and not -1e308 < value < 1e308:
            raise SpecError(key, f"must be finite, got {_short(value)}")
        if not math.isfinite(value):
            raise SpecError(key, f"must be finite, got {_short(value)}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise SpecError(key, f"must be a string, got {_short(value)}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SpecError(key, f"must be a list of integers, got {_short(value)}")
        if len(value) > 1024:
            raise SpecError(key, f"at most 1024 entries, got {len(value)}")
        return tuple(value)
    raise AssertionError(f"no coercion for {key}")  # pragma: no cover - a programming error


def _short(value: Any, limit: int = 80) -> str:
    """A value as the message shows it: repr, cut to `limit` characters (a spec may hold huge values)."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python converts to text
        text = "a value too large to show"
    return text if len(text) <= limit else text[:limit] + "..."


def _require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise SpecError(key, reason)


def _one_of(value: str, allowed: tuple[str, ...], key: str) -> None:
    _require(value in allowed, key, f"must be one of {', '.join(allowed)}; got {_short(value)}")


def _check_section(obj: Any, prefix: str) -> None:
    p = prefix
    if isinstance(obj, ModelSpec):
        _require(len(obj.layers) >= 2, p + "layers", "needs at least [inputs, outputs]")
        _require(all(0 < n <= MAX_LAYER_SIZE for n in obj.layers), p + "layers",
                 f"every size must be in 1..{MAX_LAYER_SIZE}")
        _one_of(obj.activation, ACTIVATIONS, p + "activation")
        _one_of(obj.loss, LOSSES, p + "loss")
    elif isinstance(obj, SyntheticSpec):
        _require(obj.samples >= 2, p + "samples", "must be at least 2")
        _require(obj.features >= 1, p + "features", "must be at least 1")
        _require(2 <= obj.classes <= MAX_LAYER_SIZE, p + "classes", f"must be in 2..{MAX_LAYER_SIZE}")
        _require(obj.seed >= 0, p + "seed", "must not be negative")
        _require(obj.samples * obj.features <= 1 << 31, p + "samples", "samples × features exceeds 2^31")
    elif isinstance(obj, DataSpec):
        _require(obj.source.strip() != "", p + "source", "must not be empty")
        _require(len(obj.source) <= 4096 and "\0" not in obj.source, p + "source",
                 "must be a path of at most 4096 characters, without NUL")
        _require(0.0 <= obj.val_fraction < 1.0, p + "val_fraction", "must be in [0, 1)")
        _require(0 < len(obj.label_column) <= 1024, p + "label_column", "must be 1..1024 characters")
        _require(len(obj.labels) <= 4096 and "\0" not in obj.labels, p + "labels",
                 "must be a path of at most 4096 characters, without NUL")
        _one_of(obj.normalize, NORMALIZATIONS, p + "normalize")
    elif isinstance(obj, TrainSpec):
        _require(obj.epochs >= 0, p + "epochs", "must not be negative")
        _require(obj.steps >= 0, p + "steps", "must not be negative")
        _require((obj.epochs > 0) != (obj.steps > 0), p + "epochs", "set exactly one of epochs or steps")
        _require(obj.batch_size >= 1, p + "batch_size", "must be at least 1")
        _require(obj.seed >= 0, p + "seed", "must not be negative")
        _require(obj.eval_every >= 1, p + "eval_every", "must be at least 1")
        _require(obj.threads_per_rank >= 0, p + "threads_per_rank", "must not be negative (0 = automatic)")
        _require(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", obj.blas_kernel) is not None, p + "blas_kernel",
                 f"must be auto, default or an OpenBLAS core name such as Haswell; got {_short(obj.blas_kernel)}")
    elif isinstance(obj, OptimSpec):
        _one_of(obj.name, OPTIMIZERS, p + "name")
        _require(obj.lr > 0, p + "lr", "must be positive")
        _require(0 <= obj.momentum < 1, p + "momentum", "must be in [0, 1)")
        _require(0 <= obj.beta1 < 1, p + "beta1", "must be in [0, 1)")
        _require(0 <= obj.beta2 < 1, p + "beta2", "must be in [0, 1)")
        _require(obj.eps > 0, p + "eps", "must be positive")
        _require(obj.weight_decay >= 0, p + "weight_decay", "must not be negative")
        _require(obj.clip_norm >= 0, p + "clip_norm", "must not be negative (0 = off)")
        _one_of(obj.schedule, SCHEDULES, p + "schedule")
        _require(obj.warmup_steps >= 0, p + "warmup_steps", "must not be negative")
        _require(obj.step_size >= 1, p + "step_size", "must be at least 1")
        _require(0 < obj.gamma <= 1, p + "gamma", "must be in (0, 1]")
        _require(0 <= obj.min_lr <= obj.lr, p + "min_lr", "must be in [0, lr]")
    elif isinstance(obj, CheckpointSpec):
        _require(obj.every_steps >= 0, p + "every_steps", "must not be negative (0 = only at the end)")
        _require(obj.keep_last >= 1, p + "keep_last", "must be at least 1")
    elif isinstance(obj, FaultSpec):
        _require(0 <= obj.max_restarts <= MAX_RESTARTS, p + "max_restarts", f"must be in 0..{MAX_RESTARTS}")
        _require(0 <= obj.backoff_s <= MAX_BACKOFF_S, p + "backoff_s", f"must be in 0..{MAX_BACKOFF_S:g} seconds")
        _require(0 < obj.hang_timeout_s <= MAX_HANG_TIMEOUT_S, p + "hang_timeout_s",
                 f"must be positive and at most {MAX_HANG_TIMEOUT_S:g} seconds (a week)")
        _require(obj.min_workers >= 0, p + "min_workers", "must not be negative (0 = workers: not elastic)")
    elif isinstance(obj, JobSpec):
        _require(0 < len(obj.name) <= 128, p + "name", "must be 1..128 characters")
        _require(1 <= obj.workers <= 4096, p + "workers", "must be in 1..4096")
        # the API carries a job's priority as an int32 (gradmesh.v1.Job.priority)
        _require(-(1 << 31) <= obj.priority < (1 << 31), p + "priority", "must fit in 32 bits (-2**31..2**31-1)")


def _check_cross_fields(spec: JobSpec) -> None:
    _require(spec.fault.min_workers <= spec.workers, "fault.min_workers",
             f"must be at most workers ({spec.workers}): it is the fewest ranks an elastic job runs on")
    if spec.model.loss == "cross_entropy":
        _require(spec.model.layers[-1] >= 2, "model.layers", "cross_entropy needs at least 2 outputs")
    if spec.data.source == "synthetic":
        syn = spec.data.synthetic
        _require(spec.model.layers[0] == syn.features, "model.layers",
                 f"first size {spec.model.layers[0]} must equal data.synthetic.features {syn.features}")
        if spec.model.loss == "cross_entropy":
            _require(spec.model.layers[-1] == syn.classes, "model.layers",
                     f"last size {spec.model.layers[-1]} must equal data.synthetic.classes {syn.classes}")
    if spec.data.source == "digits":
        _require(spec.model.layers[0] == 64, "model.layers", "digits has 64 features: the first size must be 64")
        if spec.model.loss == "cross_entropy":
            _require(spec.model.layers[-1] == 10, "model.layers", "digits has 10 classes: the last size must be 10")


def with_overrides(spec: JobSpec, **changes: Any) -> JobSpec:
    """A copy with top-level fields replaced (e.g. workers=4), re-validated."""
    raw = spec.to_dict()
    raw.update(changes)
    return parse_spec(raw)
