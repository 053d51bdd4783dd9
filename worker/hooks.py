"""What the training loop tells the outside world, and what it asks of it.

`worker.train.train()` calls these methods on rank 0 only (other ranks get `Hooks()` that do nothing).
Standalone runs use `ConsoleHooks`, which prints one progress line per evaluation; coordinator runs use
`worker.report.CoordinatorHooks`, which also reports to the coordinator over gRPC and uploads
checkpoints. Keeping this surface small is what keeps `train.py` free of gRPC.

A metric point is a plain dict with the keys of `MetricPoint` in the proto:
    step, epoch, train_loss, val_loss, val_accuracy, samples_per_second, lr, time_unix
(val_loss / val_accuracy are NaN when not measured at that step, or when there is no validation set;
`epoch` is the 1-based epoch of the step, see worker/train.py).

`__main__` also calls `report_failure` (on every rank: a `WorkerFailure` saying why the run is ending)
and `close` (rank 0, after training); both are no-ops here, so it never needs to ask which hooks it has.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:  # the proto message, built by worker.failure; hooks themselves need no protobuf
    from coordinator.rpc.gradmesh_pb2 import WorkerFailure


@dataclass(frozen=True)
class StopRequest:
    """Ask the loop to stop at the next step boundary; with `checkpoint`, write one first."""
    checkpoint: bool = True
    reason: str = "stop requested"


class Hooks:
    """Every callback a no-op: the base class and the hooks of ranks other than 0."""

    def on_start(self, *, step: int, total_steps: int, epoch: int, info: dict[str, Any]) -> None:
        """Training is about to run its first step (after any resume). `info` describes the run."""

    def on_metrics(self, point: dict[str, float]) -> None:
        """A progress/evaluation point (every `eval_every` steps and at the end)."""

    def on_checkpoint(self, path: Path, *, step: int, epoch: int, is_final: bool, metrics: dict[str, float]) -> None:
        """A checkpoint file was written atomically at `path` (it stays there until keep_last rotates it)."""

    def on_step(self, step: int) -> None:
        """Called once per step on rank 0 with the number of steps done so far; must return at once."""

    def poll_stop(self) -> StopRequest | None:
        """Called once per step on rank 0; a StopRequest makes every rank stop at this step boundary."""
        return None

    def on_finish(self, *, step: int, epoch: int, status: str, message: str = "") -> None:
        """The loop ended. status: "succeeded" | "stopped" (a StopRequest or SIGTERM) | "nan"."""

    def report_failure(self, failure: "WorkerFailure") -> None:
        """The run is ending in failure, for the reason given; must return within about a second."""

    def close(self, timeout: float = 60.0) -> bool:
        """Deliver whatever is buffered; True when everything was delivered."""
        return True


NO_VALIDATION = "no validation set"


def format_point(point: dict[str, float], total_steps: int, has_validation: bool = True) -> str:
    point = {"epoch": 0, "train_loss": math.nan, "samples_per_second": math.nan, "lr": math.nan, **point}
    parts = [f"step {int(point['step'])}/{total_steps}", f"epoch {int(point['epoch'])}",
             f"loss {point['train_loss']:.4f}"]
    if not has_validation:
        parts.append(NO_VALIDATION)
    if not math.isnan(point.get("val_loss", math.nan)):
        parts.append(f"val_loss {point['val_loss']:.4f}")
    if not math.isnan(point.get("val_accuracy", math.nan)):
        parts.append(f"val_acc {100 * point['val_accuracy']:.2f}%")
    parts.append(f"{point.get('samples_per_second', 0.0):,.0f} samples/s")
    parts.append(f"lr {point.get('lr', math.nan):.3g}")
    return " | ".join(parts)


PROGRESS_EVERY_S = 10.0  # between evaluations, a "gradmesh: at step S/T" line at most this often (the log shows
                         # that it trains; eval lines alone start with "step ")
PROGRESS_ENV = "GRADMESH_PROGRESS_EVERY_S"  # overrides it (seconds; tests make it short)


def progress_every_s_default() -> float:
    try:
        return max(0.0, float(os.environ.get(PROGRESS_ENV, PROGRESS_EVERY_S)))
    except ValueError:
        return PROGRESS_EVERY_S


class ConsoleHooks(Hooks):
    """Standalone output: one line per evaluation, one per checkpoint, flushed so `tail -f` and mpirun show them;
    between evaluations farther apart than PROGRESS_EVERY_S, a short progress line. Rank 0 under a coordinator
    prints the same lines into its attempt log (worker.report.CoordinatorHooks), which the dashboard follows."""

    def __init__(self, stream: TextIO | None = None, progress_every_s: float | None = None):
        self.stream = stream or sys.stdout
        self.total_steps = 0
        self.has_validation = True
        self.progress_every_s = progress_every_s_default() if progress_every_s is None else progress_every_s
        self._said_at = time.monotonic()
        self._said_step = 0

    def _say(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def on_start(self, *, step, total_steps, epoch, info):
        self.total_steps = total_steps
        self._said_at, self._said_step = time.monotonic(), step
        self.has_validation = info.get("val_examples", 1) > 0
        resumed = f", resumed at step {step}" if step else ""
        examples = (f"{info.get('train_examples', 0):,} train / {info.get('val_examples', 0):,} val examples"
                    if self.has_validation else f"{info.get('train_examples', 0):,} train examples, {NO_VALIDATION}")
        self._say(f"gradmesh: {info.get('name', 'job')}: {info.get('ranks', 1)} rank(s) × "
                  f"{info.get('threads_per_rank', '?')} BLAS thread(s), {info.get('params', 0):,} parameters, "
                  f"{examples}, {total_steps} steps{resumed}"
                  f"{'; ' + info['wire_note'] if info.get('wire_note') else ''}")

    def on_metrics(self, point):
        self._say(format_point(point, self.total_steps, self.has_validation))
        self._said_at, self._said_step = time.monotonic(), int(point["step"])

    def on_step(self, step):
        now = time.monotonic()
        if now - self._said_at >= self.progress_every_s:
            rate = (step - self._said_step) / (now - self._said_at)
            self._say(f"gradmesh: at step {step}/{self.total_steps}, {rate:,.1f} steps/s")
            self._said_at, self._said_step = now, step

    def on_checkpoint(self, path, *, step, epoch, is_final, metrics):
        self._say(f"checkpoint {'(final) ' if is_final else ''}{path}")

    def on_finish(self, *, step, epoch, status, message=""):
        if status != "succeeded":
            self._say(f"gradmesh: {status} at step {step}: {message}")
