"""The training loop: one model, N ranks, the same update everywhere.

    python -m worker --spec examples/digits.toml --out runs/digits             # one process
    mpirun -n 4 python -m worker --spec examples/digits.toml --out runs/digits # four ranks, same result

Each step, the global batch is cut into `train.micro_batches` parts; rank r of N computes the gradient of
the SUMMED loss of each of its parts, and the parts are added along one tree over their indices, within
the rank and then across ranks (worker/stepexact.py), with [loss of each part, stop, stop_with_checkpoint]
gathered beside them: every rank gets the mean gradient of the whole global batch, with the same bits as
one process, and applies the same optimizer step, so the replicas never drift (checked with a hash at the
end) and any rank count or elastic resize continues the same trajectory. With `micro_batches = 0`, each
rank sums its slice and one in-place Allreduce adds the ranks (worker/stepsync.py): exact only at a fixed
rank count. `stop` is how a cancel (rank 0's hooks) or a SIGTERM (any rank) becomes a decision every rank
takes at the same step boundary.

Only rank 0 evaluates the reporting, prints, and writes checkpoints; every rank evaluates its shard of
the validation set and the sums are allreduced.

Epochs are published one way everywhere (progress lines, metric points, reports, checkpoint metadata):
the 1-based epoch that the last step done belongs to (`Sampler.epoch_of`), 0 before the first step; the
last point of a 22-epoch run says 22. Resuming needs only the step (`Sampler.locate` turns it into the
0-based epoch and position of the next batch).
"""
from __future__ import annotations

import errno
import math
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from worker import blas, faults
from worker.checkpoint import (Checkpoint, CheckpointError, checkpoint_arrays, load_checkpoint,
                               periodic_name, rotate, save_checkpoint)
from worker.data import Normalizer, Sampler, load_dataset
from worker.hooks import Hooks
from worker.mlp import MLP
from worker.optim import learning_rate, make_optimizer
from worker.spec import BF16_WIRE_NOTE, JobSpec
from worker.stepexact import ExactStep
from worker.stepsync import StepSync


class Divergence(RuntimeError):
    """The loss became NaN or infinite; retrying would diverge again."""

    def __init__(self, step: int, value: float):
        word = "NaN" if math.isnan(value) else "infinite"
        super().__init__(f"loss became {word} at step {step}")
        self.step = step


@dataclass
class Progress:
    """Where the loop is, readable from outside (a failure report names the step it failed at)."""
    step: int = 0               # steps done
    total_steps: int = 0
    sampler: Sampler | None = None

    @property
    def epoch(self) -> int:
        """The published (1-based) epoch of the last step done; 0 before the first."""
        return self.sampler.epoch_of(self.step) if self.sampler is not None else 0


@dataclass
class TrainResult:
    status: str                 # "succeeded" | "stopped" | "finished" (nothing left to do: see train's finished_ok)
    step: int
    epoch: int
    metrics: dict[str, float]
    final_path: Path | None


class _SigtermFlag:
    """SIGTERM asks for a checkpoint and a stop at the next step boundary instead of dying mid-step."""

    def __init__(self):
        self.raised = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. embedded in tests): leave signals alone
            self._previous = None
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def total_steps_for(spec: JobSpec, steps_per_epoch: int) -> int:
    return spec.train.steps if spec.train.steps else spec.train.epochs * steps_per_epoch


def _check_compatible(ckpt: Checkpoint, model: MLP) -> None:
    shapes = [(w.shape, b.shape) for w, b in ckpt.layer_arrays()]
    expected = [(layer.W.shape, layer.b.shape) for layer in model.layers]
    if shapes != expected:
        raise CheckpointError(f"{ckpt.path}: layer shapes {shapes} do not match the spec's model {expected}")


def _restore_and_broadcast(comm, model: MLP, optimizer, resume) -> tuple[Checkpoint | None, int]:
    """Rank 0 loads the checkpoint (if any); every rank leaves with rank 0's parameters, optimizer state and
    step: one Bcast per flat vector. Returns (the checkpoint on rank 0 else None, the step to start from)."""
    ckpt = None
    if comm.rank == 0 and resume is not None:
        ckpt = resume if isinstance(resume, Checkpoint) else load_checkpoint(resume)
        _check_compatible(ckpt, model)
    header = np.zeros(3, np.int64)  # [has checkpoint, step, optimizer updates]
    if ckpt is not None:
        model.params[...] = ckpt.flat_params()
        optimizer.load_state_arrays(ckpt.optimizer_arrays())
        header[:] = (1, ckpt.step, optimizer.t)
    comm.bcast_(header)
    optimizer.t = int(header[2])
    comm.bcast_(model.params)
    for vec in optimizer.state_vectors():
        comm.bcast_(vec)
    return ckpt, int(header[1])


def _shared_normalizer(comm, data, ckpt: Checkpoint | None) -> Normalizer:
    """Input statistics from the checkpoint, or fitted on rank 0 (one pass over the training split), broadcast."""
    stats = np.zeros((2, data.features), np.float32)
    if comm.rank == 0:
        saved = ckpt.normalizer_arrays() if ckpt is not None else None
        fitted = Normalizer(saved["normalize.mean"], saved["normalize.std"]) if saved else Normalizer.fit(data.train)
        stats[0], stats[1] = fitted.mean, fitted.std
    comm.bcast_(stats)
    return Normalizer(stats[0].copy(), stats[1].copy())


FINAL_CHECKPOINT_WAIT_S = 300.0  # the final checkpoint waits this long for a full disk to have room again


def _save_when_space(path: Path, arrays, meta, wait_s: float = FINAL_CHECKPOINT_WAIT_S) -> None:
    """The final checkpoint is the run's result: on a full disk, try again every second (one line said)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            save_checkpoint(path, arrays, meta)
            return
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT) or time.monotonic() > deadline:
                raise
            if deadline - time.monotonic() > wait_s - 1.5:
                print(f"gradmesh: the final checkpoint does not fit ({exc.strerror}); retrying for up to "
                      f"{wait_s:.0f} s", file=sys.stderr, flush=True)
        time.sleep(1.0)


def train(spec: JobSpec, comm, hooks: Hooks | None = None, out_dir: str | Path = "runs/job",
          resume: Checkpoint | str | Path | None = None, threads: tuple[int, str] = (0, "unset"),
          progress: Progress | None = None, finished_ok: bool = False) -> TrainResult:
    """Train `spec` on this rank. `resume` matters on rank 0 only (it broadcasts the state). `progress`, when
    given, is kept up to date (one attribute store per step) for whoever reports a failure.

    `finished_ok` (standalone runs): when the checkpoint resumed from is already at the last step, return at
    once with status "finished", writing nothing, so a second run into the same --out is not mistaken for
    training (the caller says so). Without it, such a resume evaluates and writes the final checkpoint again,
    which a coordinator's attempt that died after its last step needs.

    Raises Divergence on a NaN/inf loss (on every rank), DataError/SpecError/CheckpointError for bad inputs.
    """
    hooks = hooks if (hooks is not None and comm.rank == 0) else Hooks()
    out_dir = Path(out_dir)
    rank, size = comm.rank, comm.size
    t = spec.train

    data = load_dataset(spec.data, spec.model.layers, spec.model.loss, t.seed)
    sampler = Sampler(len(data.train), t.batch_size, t.seed)
    total_steps = total_steps_for(spec, sampler.steps_per_epoch)

    progress = progress if progress is not None else Progress()
    progress.total_steps, progress.sampler = total_steps, sampler

    model = MLP(spec.model.layers, spec.model.activation, spec.model.loss, seed=t.seed)
    P = model.num_params
    # the exact step (the same bits at any rank count) unless the spec asks for per-rank sums
    sync = (ExactStep(model, comm, t.micro_batches, wire=t.wire, choose_overlap=t.overlap == "auto") if t.micro_batches
            else StepSync(model, comm, overlap=t.overlap))
    said = sync.note
    if rank == 0 and said:
        print(f"gradmesh: {said}", flush=True)
    grad = model.grad
    optimizer = make_optimizer(spec.optim, P, total_steps)

    ckpt, start_step = _restore_and_broadcast(comm, model, optimizer, resume)
    if finished_ok and start_step >= total_steps:  # start_step is broadcast: every rank returns here together
        metrics = dict(ckpt.meta.get("metrics") or {}) if ckpt is not None else {}
        return TrainResult("finished", start_step, sampler.epoch_of(start_step), metrics, None)
    normalizer = _shared_normalizer(comm, data, ckpt) if spec.data.normalize == "standard" else None

    val_part = Sampler.rank_slice(np.arange(len(data.val)), rank, size)
    val_x, val_y = data.val.rows(val_part)
    if normalizer is not None:
        val_x = normalizer.apply(val_x)

    has_validation = len(data.val) > 0  # the same on every rank: each loads the whole dataset

    def evaluate() -> tuple[float, float]:
        """(validation loss, accuracy) over every rank's shard; NaN when there is no validation set."""
        if not has_validation:
            return math.nan, math.nan
        sums = np.zeros(3, np.float64)
        if len(val_x):
            loss_sum, correct, count = model.evaluate(val_x, val_y)
            sums[:] = (loss_sum, correct, count)
        comm.allreduce_sum_(sums)
        n = max(sums[2], 1.0)
        accuracy = sums[1] / n if spec.model.loss == "cross_entropy" else math.nan
        return float(sums[0] / n), float(accuracy)

    step = progress.step = start_step
    metrics: dict[str, float] = {}

    skipped: list[int] = []  # steps whose checkpoint did not fit on the disk, since the last one that did

    def write_checkpoint(is_final: bool) -> Path | None:
        if rank != 0:
            return None
        epoch = sampler.epoch_of(step)
        meta = {"spec": spec.to_dict(), "step": step, "epoch": epoch, "position": sampler.locate(step)[1],
                "total_steps": total_steps, "ranks": size, "metrics": metrics, "is_final": is_final,
                "sampler": {"seed": t.seed, "note": "epoch order = permutation from (seed, epoch)"},
                **blas.meta_entry()}   # the BLAS kernel per host, so a resume runs the same one (worker/blas.py)
        path = out_dir / ("final.npz" if is_final else periodic_name(step))
        try:
            if is_final:
                _save_when_space(path, checkpoint_arrays(model, optimizer, normalizer), meta)
            else:
                save_checkpoint(path, checkpoint_arrays(model, optimizer, normalizer), meta)
        except OSError as exc:
            if is_final or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            # A full disk costs this checkpoint, not the run: training goes on and the next one may fit. One
            # line per episode: the log may be on that disk, and mpirun dies when it cannot write its output.
            if not skipped:
                print(f"gradmesh: checkpoint at step {step} skipped: {exc.strerror} ({out_dir}); skipping quietly "
                      "until one fits", file=sys.stderr, flush=True)
            skipped.append(step)
            return None
        if skipped:
            print(f"gradmesh: checkpoints fit again at step {step} ({len(skipped)} skipped)", file=sys.stderr,
                  flush=True)
            skipped.clear()
        if not is_final:
            rotate(out_dir, spec.checkpoint.keep_last)
        hooks.on_checkpoint(path, step=step, epoch=epoch, is_final=is_final, metrics=dict(metrics))
        return path

    info = {"name": spec.name, "ranks": size, "threads_per_rank": threads[0], "threads_source": threads[1],
            "params": P, "train_examples": len(data.train), "val_examples": len(data.val),
            "steps_per_epoch": sampler.steps_per_epoch, "data": data.description,
            "wire_note": BF16_WIRE_NOTE if t.micro_batches and t.wire == "bf16" else ""}
    hooks.on_start(step=step, total_steps=total_steps, epoch=sampler.epoch_of(step), info=info)
    fault = faults.from_environment(rank)

    window_loss, window_count, window_start = 0.0, 0.0, time.perf_counter()
    status = "succeeded"
    stopped_with_checkpoint, stop_reason = False, ""
    with _SigtermFlag() as sigterm:
        while step < total_steps:
            batch_epoch, position = sampler.locate(step)  # 0-based: where this step's batch comes from
            xb, yb = data.train.rows(sync.rows(sampler.global_batch(batch_epoch, position)))
            if normalizer is not None:
                xb = normalizer.apply(xb)
            fault.before_step(step)
            s = sync.backward(xb, yb)
            if rank == 0:
                hooks.on_step(step)
                stop = hooks.poll_stop()
            else:
                stop = None
            total = sync.reduce(s, stop=stop is not None or sigterm.raised,
                                checkpoint=sigterm.raised or (stop is not None and stop.checkpoint))
            news = sync.news() if rank == 0 and hasattr(sync, "news") else ""
            if news:    # e.g. which way the combine runs, once the job has timed both
                print(f"gradmesh: {news}", flush=True)
            loss_sum = fault.corrupt_loss(step, total.loss_sum)
            if not math.isfinite(loss_sum):
                hooks.on_finish(step=step, epoch=sampler.epoch_of(step), status="nan",
                                message=str(Divergence(step, loss_sum)))
                raise Divergence(step, loss_sum)
            lr = optimizer.step(model.params, grad)
            step = progress.step = step + 1
            if rank == 0 and sync.note != said:     # the exact step's first steps may pin BLAS (worker/stepexact.py)
                said = sync.note
                print(f"gradmesh: {said}", flush=True)
            window_loss += loss_sum
            window_count += total.count

            # (a stop with a checkpoint is evaluated too, so the checkpoint carries the metrics of its own step:
            # a sweep decides on the value at the step where a trial paused)
            if step % t.eval_every == 0 or step == total_steps or (total.stop and total.checkpoint):
                val_loss, val_accuracy = evaluate()
                elapsed = time.perf_counter() - window_start
                metrics = {"step": step, "epoch": sampler.epoch_of(step), "train_loss": window_loss / window_count,
                           "val_loss": val_loss, "val_accuracy": val_accuracy,
                           "samples_per_second": window_count / elapsed if elapsed > 0 else 0.0,
                           "lr": lr, "time_unix": time.time()}
                hooks.on_metrics(dict(metrics))
                window_loss, window_count, window_start = 0.0, 0.0, time.perf_counter()

            if total.stop and step < total_steps:
                status = "stopped"
                stopped_with_checkpoint = total.checkpoint
                stop_reason = stop.reason if stop is not None else "SIGTERM" if sigterm.raised else "SIGTERM on another rank"
                if stopped_with_checkpoint:
                    write_checkpoint(is_final=False)
                break
            if spec.checkpoint.every_steps and step % spec.checkpoint.every_steps == 0 and step < total_steps:
                write_checkpoint(is_final=False)

    epoch = sampler.epoch_of(step)
    final_path = None
    if status == "succeeded":
        if not metrics or metrics.get("step") != step:  # resumed at the very end: evaluate what we have
            val_loss, val_accuracy = evaluate()
            metrics = {"step": step, "epoch": epoch, "train_loss": math.nan, "val_loss": val_loss,
                       "val_accuracy": val_accuracy, "samples_per_second": 0.0,
                       "lr": learning_rate(spec.optim, max(step - 1, 0), total_steps), "time_unix": time.time()}
        comm.assert_identical(model.params, "parameters")
        final_path = write_checkpoint(is_final=True)
    stop_message = ""
    if status == "stopped":
        saved = "; checkpoint written" if stopped_with_checkpoint else ""
        stop_message = f"{stop_reason}{saved}"
    hooks.on_finish(step=step, epoch=epoch, status=status, message=stop_message)
    return TrainResult(status, step, epoch, metrics, final_path)
