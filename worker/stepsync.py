"""The step's one reduction: [gradient | loss_sum, count, stop, stop_with_checkpoint], summed over ranks.

    sync = StepSync(model, comm, overlap=spec.train.overlap)   # model.grad now lives inside sync.buffer
    s = sync.backward(x, y)                       # forward + backward of this rank's slice (summed loss)
    total = sync.reduce(s, stop=False, checkpoint=False)       # model.grad is now the global MEAN gradient
    optimizer.step(model.params, model.grad)

Each rank computes the gradient of its SUMMED loss; one in-place Allreduce of the vector gives every rank
the global sums, and dividing the gradient by the global count gives exactly the mean gradient one process
would compute on the whole batch (up to float rounding), for any number of ranks and uneven or short
batches. `stop` and `checkpoint` ride in the same reduction, so a cancel (rank 0) or a SIGTERM (any rank)
becomes a decision every rank takes at the same step boundary, at no extra latency.

With `overlap`, `backward` starts one nonblocking allreduce per layer as soon as backpropagation has
finished that layer's gradient (last layer first), and `reduce` adds one for the four scalars and waits
for all of them: the same sums, computed while the earlier layers are still being differentiated.

worker/train.py and bench/scaling.py both call this, so the benchmark times the training loop's own step.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from worker.mlp import MLP, SumResult

# positions of the reduced scalars after the gradient
LOSS, COUNT, STOP, STOP_CHECKPOINT = range(4)
SCALARS = 4


class Reduced(NamedTuple):
    """The global sums of one step, the same on every rank."""
    loss_sum: float
    count: float
    stop: bool           # some rank asked to stop at this step boundary
    checkpoint: bool     # ... and to write a checkpoint first


class StepSync:
    """The buffer one step reduces, and the two halves of the step that fill and reduce it."""

    def __init__(self, model: MLP, comm, overlap: bool = False):
        self.model = model
        self.comm = comm
        self.overlap = overlap
        P = model.num_params
        self.buffer = comm.reduction_buffer(P + SCALARS, model.dtype)   # collective: every rank, same size
        model.use_grad_buffer(self.buffer[:P])   # backward writes the gradient straight into the buffer
        self.scalars = self.buffer[P:]
        self._layer_slices = model.layer_slices()
        self._pending: list = []

    @property
    def note(self) -> str:
        """How the step's sum runs, for rank 0 to print ("" when there is nothing to say)."""
        if self.overlap and self.comm.size > 1:  # per-layer MPI calls: the communicator's own path is not used
            return "step sum by one nonblocking MPI allreduce per layer during backward (train.overlap)"
        return self.comm.reduction_note

    def rows(self, batch: np.ndarray) -> np.ndarray:
        """This rank's contiguous share of the global batch (sizes differ by at most one)."""
        n, rank, size = len(batch), self.comm.rank, self.comm.size
        return batch[rank * n // size:(rank + 1) * n // size]

    def backward(self, x, y) -> SumResult:
        """Forward and backward on this rank's batch: model.grad = d(summed loss)/d(params)."""
        if not self.overlap:
            return self.model.sum_loss_and_grad(x, y)
        buffer, slices, pending, comm = self.buffer, self._layer_slices, self._pending, self.comm
        return self.model.sum_loss_and_grad(x, y, on_layer_grad=lambda i: pending.append(
            comm.iallreduce_sum_(buffer[slices[i]])))

    def reduce(self, s: SumResult, *, stop: bool = False, checkpoint: bool = False) -> Reduced:
        """Sum the gradient and the scalars over every rank; divide the gradient by the global count."""
        scalars = self.scalars
        scalars[LOSS] = s.loss_sum
        scalars[COUNT] = s.count
        scalars[STOP] = 1.0 if stop else 0.0
        scalars[STOP_CHECKPOINT] = 1.0 if checkpoint else 0.0
        if self.overlap:
            self._pending.append(self.comm.iallreduce_sum_(scalars))
            for handle in self._pending:
                handle.wait()
            self._pending.clear()
        else:
            self.comm.allreduce_sum_(self.buffer)
        count = float(scalars[COUNT])
        self.model.grad *= np.float32(1.0 / count)
        return Reduced(float(scalars[LOSS]), count, bool(scalars[STOP] > 0), bool(scalars[STOP_CHECKPOINT] > 0))
