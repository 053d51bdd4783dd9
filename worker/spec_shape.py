"""The job spec's shape: every key with its default and a comment, as typed, frozen dataclasses.

    spec = JobSpec()                 # every default
    spec.train.batch_size            # 64
    spec.to_dict()                   # plain dict, round-trips through worker.spec.parse_spec()

Also here: the choices and limits the checks use (ACTIVATIONS, MAX_LAYER_SIZE, INT64_MAX, ...), SpecError,
and `unused_settings`: a setting the chosen option does not use (`momentum` for `[optim] name = "sgd"`,
`[data.synthetic]` for a file source, ...) is refused like an unknown key rather than silently ignored, so
`to_dict()` leaves such settings out, and the canonical JSON a coordinator stores parses again.

The bottom of the spec's three modules: it imports nothing of gradmesh. worker/spec_parsing.py (reading and
checking) imports it, and worker/spec.py, the public face, imports both; callers import from `worker.spec`.
"""
from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from typing import Any

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")
LOSSES = ("cross_entropy", "mse")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw")
SCHEDULES = ("constant", "step", "cosine")
NORMALIZATIONS = ("none", "standard")
BUILTIN_SOURCES = ("digits", "synthetic")
MAX_LAYER_SIZE = 1 << 20
MAX_RESTARTS = 1000             # a retry policy beyond this is a loop, not a policy
MAX_BACKOFF_S = 3600.0          # the first relaunch waits at most an hour (coordinator.supervision.outcomes caps the doubling)
MAX_HANG_TIMEOUT_S = 7 * 86400.0
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1   # the store's integers are SQLite's int64
MICRO_BATCHES_DEFAULT = 8       # enough parts for 8 ranks; more parts cost more per step (docs/cost-model.md)
MAX_MICRO_BATCHES = 1024
OVERLAP_WORDS = ("auto",)       # what train.overlap takes beside true and false
WIRES = ("fp32", "bf16")       # train.wire: what the exact step's combine sends between hosts
BF16_WIRE_NOTE = "bf16 wire: not exact across rank counts"   # said wherever a job's run is described


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
    overlap: bool | str = False   # per-layer MPI allreduces during backward; slower than the default
                                  # host-shared-memory sum when ranks share a host (bench/scaling.py).
                                  # "auto" (the exact step, micro_batches > 0): between hosts, time the combine
                                  # layer by layer and in one piece on the job, keep the faster (same bits)
    blas_kernel: str = "auto"     # OpenBLAS kernel: auto (fastest measured on each host, worker/blas.py) | default | a core name
    micro_batches: int = MICRO_BATCHES_DEFAULT  # the global batch in this many parts summed in a fixed order:
                                  # the same bits at any rank count (worker/stepexact.py); 0 = per-rank sums
                                  # (the path before: faster, exact only at a fixed rank count)
    wire: str = "fp32"            # fp32 | bf16: the exact step's sums cross hosts as bfloat16, half the bytes for
                                  # slow links; leaves the exact path (~3 significant digits per sum, and the
                                  # bits depend on the rank count). Sums within a host stay fp32


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
class TrackingSpec:
    mlflow_uri: str = ""          # log this job as a run on this MLflow tracking server (http(s)://HOST:PORT);
                                  # "" = the coordinator's --mlflow-uri, if any
    mlflow_experiment: str = ""   # the experiment's name ("" = the coordinator's, "gradmesh" by default)


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
    tracking: TrackingSpec = field(default_factory=TrackingSpec)

    def to_dict(self) -> dict[str, Any]:
        """Every setting the job uses, as plain values (settings its options do not use are left out)."""
        raw = _plain(dataclasses.asdict(self))
        for section, key, _reason in unused_settings(self):
            del raw[section][key]
        if not self.fault.min_workers:  # the default (not elastic) is left out: older specs keep their JSON
            del raw["fault"]["min_workers"]
        if self.train.micro_batches == MICRO_BATCHES_DEFAULT:   # likewise
            del raw["train"]["micro_batches"]
        if self.train.wire == "fp32":   # likewise
            del raw["train"]["wire"]
        if self.tracking == TrackingSpec():  # likewise no [tracking] section unless it says something
            del raw["tracking"]
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


# (section, key, the option that would use it): a setting is refused when its option is not chosen
def unused_settings(spec: JobSpec) -> list[tuple[str, str, str]]:
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
                                            f'job\'s source is {short_repr(spec.data.source)}'))
    if not is_csv_source(spec.data.source):
        unused.append(("data", "label_column", f"only a .csv source has a label column; this job's source is "
                                               f"{short_repr(spec.data.source)}"))
    if not is_idx_file_source(spec.data.source):
        unused.append(("data", "labels", f"only an IDX images file (train-images-idx3-ubyte[.gz]) takes a labels "
                                         f"file; this job's source is {short_repr(spec.data.source)}"))
    if spec.fault.max_restarts == 0:
        unused.append(("fault", "backoff_s", "max_restarts = 0: there is no relaunch to wait for"))
    return unused


def is_csv_source(source: str) -> bool:
    """A CSV source is named by its suffix (the worker reads it: worker.csvsource)."""
    return source.lower().endswith(".csv")


def is_idx_file_source(source: str) -> bool:
    """An IDX file is named as published: ...idx3-ubyte[.gz] (the worker reads it: worker.idx)."""
    return re.search(r"idx\d-ubyte(\.gz)?$", source) is not None


def short_repr(value: Any, limit: int = 80) -> str:
    """A value as the message shows it: repr, cut to `limit` characters (a spec may hold huge values)."""
    try:
        text = repr(value)
    except ValueError:  # an integer with more digits than Python converts to text
        text = "a value too large to show"
    return text if len(text) <= limit else text[:limit] + "..."
