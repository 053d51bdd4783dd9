"""What a job will cost before it runs: each rank's memory, the size of its checkpoints, its metric points.

Every rank holds the whole model, its optimizer state, activations for its share of the global batch and
(built-in sources) the whole dataset, so a spec is enough to know whether a rank fits in its slot. The
coordinator refuses a job that cannot fit at submission (coordinator.jobs.submission), instead of letting its ranks
allocate until the kernel kills something (maybe the coordinator), and retrying that twice.

    fp = rank_memory(spec, dataset_path)           # dataset_path: the resolved file/dir of a path source
    fp.total, fp.describe()                        # bytes, "2.1 GiB per rank: parameters and gradients ..."
    checkpoint_bytes(spec)                         # an upload much larger than this is not a checkpoint of it
    metric_points(spec, train_rows(spec, dataset_path))   # None when the number of steps is not known

The numbers follow the worker's allocations (worker.mlp, worker.optim, worker.stepsync, worker.data): float32
everywhere, so 4 bytes per value. They are estimates with the big terms exact; RUNTIME_BYTES covers the
interpreter, numpy, MPI and gRPC of a rank.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass
from pathlib import Path

from worker.spec import JobSpec, is_csv_source, is_idx_file_source

F32 = 4
RUNTIME_BYTES = 160 << 20      # python + numpy + mpi4py + grpc in one rank, measured ~120 MiB
EVAL_CHUNK = 1024              # worker.mlp.evaluate's batch: a second set of activation buffers
DIGITS_ROWS, DIGITS_FEATURES = 1797, 64
# per hidden unit and example: activations, deltas, pre-activations, scratch, relu's zeros (float32) + mask (bool)
HIDDEN_BYTES_PER_UNIT = 5 * F32 + 1
_OPTIMIZER_VECTORS = {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2}


def parameter_count(layers: tuple[int, ...]) -> int:
    return sum(i * o + o for i, o in zip(layers[:-1], layers[1:]))


@dataclass(frozen=True)
class Footprint:
    """One rank's memory, by what holds it (bytes)."""
    parameters: int        # the model's parameter count
    model: int             # parameters, two gradient vectors, optimizer state and its scratch, a loaded checkpoint
    activations: int       # training buffers for the rank's share of the batch, and evaluation buffers
    data: int              # the dataset as a rank holds it
    runtime: int = RUNTIME_BYTES

    @property
    def total(self) -> int:
        return self.model + self.activations + self.data + self.runtime

    def describe(self) -> str:
        return (f"about {human(self.total)} per rank: {self.parameters:,} parameters with their gradients and "
                f"optimizer state {human(self.model)}, activations {human(self.activations)}, data "
                f"{human(self.data)}, runtime {human(self.runtime)}")


def rank_memory(spec: JobSpec, dataset: Path | None = None) -> Footprint:
    layers = spec.model.layers
    params = parameter_count(layers)
    vectors = _OPTIMIZER_VECTORS.get(spec.optim.name, 2)
    # params + model.grad + the step buffer the gradient moves into + optimizer state + its scratch vector +
    # a checkpoint's arrays (parameters and optimizer state) while a resumed rank loads it
    model = F32 * params * (3 + vectors + 1 + (1 + vectors))
    share = -(-spec.train.batch_size // spec.workers)
    rows = train_rows(spec, dataset)
    chunk = min(EVAL_CHUNK, rows) if rows else EVAL_CHUNK
    hidden, outputs = sum(layers[1:-1]), layers[-1]
    activations = (share + chunk) * (HIDDEN_BYTES_PER_UNIT * hidden + 2 * F32 * outputs)
    return Footprint(parameters=params, model=model, activations=activations, data=data_bytes(spec, dataset))


def data_bytes(spec: JobSpec, dataset: Path | None = None) -> int:
    """The dataset in a rank's memory: built-in sources are generated whole by every rank; an .npz is read
    whole (its uncompressed size); a directory of .npy files is memory-mapped (pages the kernel may drop)."""
    source = spec.data.source
    if source == "digits":
        return DIGITS_ROWS * DIGITS_FEATURES * (8 + F32) + DIGITS_ROWS * 8
    if source == "synthetic":
        s = spec.data.synthetic
        # x, the centres[y] temporary added to it, the labels (int64) and the class centres
        return 2 * F32 * s.samples * s.features + 8 * s.samples + F32 * s.classes * s.features
    if is_csv_source(source) or is_idx_file_source(source):
        return 0  # memory-mapped like a directory of .npy (a CSV through its converted cache)
    if dataset is not None and dataset.is_file():
        try:
            with zipfile.ZipFile(dataset) as z:
                return sum(info.file_size for info in z.infolist())
        except (OSError, zipfile.BadZipFile):
            return dataset.stat().st_size
    return 0


def train_rows(spec: JobSpec, dataset: Path | None = None) -> int | None:
    """Training examples (after the validation split), when known without reading the data."""
    source = spec.data.source
    if source == "digits":
        rows = DIGITS_ROWS
    elif source == "synthetic":
        rows = spec.data.synthetic.samples
    else:
        return None  # a file's row count needs its header; the runtime caps still hold
    held_out = max(1, round(rows * spec.data.val_fraction)) if spec.data.val_fraction > 0 else 0
    return max(1, rows - held_out)


def total_steps(spec: JobSpec, rows: int | None) -> int | None:
    if spec.train.steps:
        return spec.train.steps
    if rows is None:
        return None
    return spec.train.epochs * -(-rows // spec.train.batch_size)


def metric_points(spec: JobSpec, rows: int | None) -> int | None:
    """Points the job will report: one every eval_every steps, and one at the end."""
    steps = total_steps(spec, rows)
    return None if steps is None else steps // spec.train.eval_every + 1


def checkpoint_bytes(spec: JobSpec) -> int:
    """The size a checkpoint of this spec has (uncompressed .npz): parameters, optimizer state, the
    normalizer, and the metadata (the spec, the metrics) with the zip's per-member overhead."""
    layers = spec.model.layers
    arrays = 2 * (len(layers) - 1) + _OPTIMIZER_VECTORS.get(spec.optim.name, 2) + 4
    values = parameter_count(layers) * (1 + _OPTIMIZER_VECTORS.get(spec.optim.name, 2)) + 2 * layers[0]
    return F32 * values + arrays * 512 + len(spec.to_json()) + (64 << 10)


def human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"  # pragma: no cover
