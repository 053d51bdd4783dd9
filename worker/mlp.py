"""A multilayer perceptron trained by backpropagation, in numpy, over one flat parameter vector.

The network is a stack of affine layers `y = x @ W + b` (W has shape (fan_in, fan_out)) with a
nonlinearity after every layer but the last. Training needs two passes:

  forward:   a_0 = x,  z_i = a_{i-1} @ W_i + b_i,  a_i = f(z_i)  (the last layer stays linear)
  backward:  delta_L = dLoss/dz_L (softmax-cross-entropy and MSE have closed forms),
             dW_i = a_{i-1}^T @ delta_i,  db_i = sum over the batch of delta_i,
             delta_{i-1} = (delta_i @ W_i^T) * f'(z_{i-1})

All weights and biases are views into ONE contiguous vector `params`, and all their gradients into a
second vector `grad` with the same layout, so a data-parallel step needs a single allreduce and a
checkpoint a handful of arrays. This module knows nothing of MPI, gRPC or files.

Speed comes from discipline, not cleverness: float32 end to end, every matrix product a BLAS call writing
into a preallocated buffer (`np.matmul(..., out=)`), activations and their derivatives applied in place,
the bias gradient as a matrix-vector product, and softmax fused with the cross-entropy gradient.

    model = MLP([64, 128, 10], activation="relu", loss="cross_entropy", seed=0)
    loss, grad = model.loss_and_grad(x, y)          # mean loss; grad of the mean
    s = model.sum_loss_and_grad(x, y)               # s.loss_sum, s.count; model.grad = d(sum)/dparams
    model.params -= 0.1 * grad                      # W and b views see the change
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np

ACTIVATIONS = ("relu", "tanh", "sigmoid", "gelu")
LOSSES = ("cross_entropy", "mse")
_GELU_C = np.sqrt(2.0 / np.pi)
_GELU_K = 0.044715


@dataclass
class Layer:
    """One affine layer; `W`, `b`, `gW`, `gb` are views into the model's flat vectors."""
    W: np.ndarray
    b: np.ndarray
    gW: np.ndarray
    gb: np.ndarray


class SumResult(NamedTuple):
    """The summed loss over a batch, the gradient of that sum (the model's `grad`), and the example count."""
    loss_sum: float
    grad: np.ndarray
    count: int


class _Buffers:
    """Activation and delta buffers for one batch size, reused across steps."""

    def __init__(self, batch: int, sizes: list[int], dtype, keep_preactivation: bool):
        outs = sizes[1:]
        self.acts = [np.empty((batch, n), dtype) for n in outs]
        self.deltas = [np.empty((batch, n), dtype) for n in outs[:-1]]
        self.pre = [np.empty((batch, n), dtype) for n in outs[:-1]] if keep_preactivation else None
        self.scratch = [np.empty((batch, n), dtype) for n in outs[:-1]] if keep_preactivation else None
        self.ones = np.ones(batch, dtype)
        self.rows = np.arange(batch)
        # relu against an array of zeros and its derivative as a bool mask: numpy's scalar maximum and
        # np.sign are many times slower than these (measured: bench/step.py, tests keep them exact)
        self.zeros = {n: np.zeros((batch, n), dtype) for n in set(outs[:-1])}
        self.mask = {n: np.empty((batch, n), bool) for n in set(outs[:-1])}


class MLP:
    """Fully connected network over one flat float vector. See the module docstring."""

    def __init__(self, sizes, activation: str = "relu", loss: str = "cross_entropy", seed: int = 0,
                 dtype=np.float32):
        sizes = [int(n) for n in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ValueError(f"sizes must be [inputs, hidden..., outputs] of positive ints, got {sizes}")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.sizes = sizes
        self.activation = activation
        self.loss = loss
        self.dtype = np.dtype(dtype)
        self.num_params = sum(i * o + o for i, o in zip(sizes[:-1], sizes[1:]))
        self.params = np.zeros(self.num_params, self.dtype)
        self.grad = np.zeros(self.num_params, self.dtype)
        self.layers: list[Layer] = []
        self._bind()
        self.init_params(seed)
        self._buffers: dict[int, _Buffers] = {}

    # ---------------------------------------------------------------- layout

    def _segments(self):
        offset = 0
        for fan_in, fan_out in zip(self.sizes[:-1], self.sizes[1:]):
            w_end = offset + fan_in * fan_out
            yield (offset, w_end, w_end + fan_out, fan_in, fan_out)
            offset = w_end + fan_out

    def _bind(self) -> None:
        self.layers = [
            Layer(W=self.params[a:b].reshape(i, o), b=self.params[b:c],
                  gW=self.grad[a:b].reshape(i, o), gb=self.grad[b:c])
            for a, b, c, i, o in self._segments()
        ]

    def layer_views(self, vec: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """(W-shaped, b-shaped) views of each layer's part of a flat vector laid out like `params`."""
        return [(vec[a:b].reshape(i, o), vec[b:c]) for a, b, c, i, o in self._segments()]

    def layer_slices(self) -> list[slice]:
        """The slice of the flat vectors that each layer's W and b occupy, in layer order."""
        return [slice(a, c) for a, _, c, _, _ in self._segments()]

    def use_grad_buffer(self, buffer: np.ndarray) -> None:
        """Make `grad` (and every layer's gW, gb) views into `buffer`, e.g. a slice of a larger sync vector."""
        if buffer.shape != (self.num_params,) or buffer.dtype != self.dtype or not buffer.flags.c_contiguous:
            raise ValueError(f"grad buffer must be a contiguous {self.dtype} vector of {self.num_params}")
        self.grad = buffer
        for layer, (a, b, c, i, o) in zip(self.layers, self._segments()):
            layer.gW = buffer[a:b].reshape(i, o)
            layer.gb = buffer[b:c]

    def init_params(self, seed: int) -> None:
        """He init for relu/gelu, Xavier (Glorot normal) for tanh/sigmoid; zero biases; drawn from `seed`."""
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            fan_in, fan_out = layer.W.shape
            if self.activation in ("relu", "gelu"):
                std = np.sqrt(2.0 / fan_in)
            else:
                std = np.sqrt(2.0 / (fan_in + fan_out))
            layer.W[...] = rng.standard_normal((fan_in, fan_out)) * std
            layer.b[...] = 0

    # ---------------------------------------------------------------- passes

    def _buffers_for(self, batch: int) -> _Buffers:
        buffers = self._buffers.get(batch)
        if buffers is None:
            if len(self._buffers) >= 8:  # full batch, short last batch, eval batch, micro-batches: a few sizes
                self._buffers.pop(next(iter(self._buffers)))
            buffers = _Buffers(batch, self.sizes, self.dtype, keep_preactivation=self.activation == "gelu")
            self._buffers[batch] = buffers
        return buffers

    def _as_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.sizes[0]:
            raise ValueError(f"x must have shape (batch, {self.sizes[0]}), got {x.shape}")
        if x.dtype != self.dtype or not x.flags.c_contiguous:
            x = np.ascontiguousarray(x, dtype=self.dtype)
        return x

    def _forward(self, x: np.ndarray, buf: _Buffers) -> np.ndarray:
        a = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            z = buf.acts[i]
            np.matmul(a, layer.W, out=z)
            z += layer.b
            if i < last:
                self._activate(z, i, buf)
            a = z
        return a

    def _activate(self, z: np.ndarray, i: int, buf: _Buffers) -> None:
        act = self.activation
        if act == "relu":
            np.maximum(z, buf.zeros[z.shape[1]], out=z)
        elif act == "tanh":
            np.tanh(z, out=z)
        elif act == "sigmoid":
            with np.errstate(over="ignore"):
                np.negative(z, out=z)
                np.exp(z, out=z)
            z += 1
            np.reciprocal(z, out=z)
        else:  # gelu, tanh approximation: 0.5 z (1 + tanh(c (z + k z^3)))
            pre, t = buf.pre[i], buf.scratch[i]
            pre[...] = z
            np.multiply(z, z, out=t)
            t *= _GELU_K * _GELU_C
            t += _GELU_C
            t *= z
            np.tanh(t, out=t)
            np.multiply(pre, t, out=z)
            z += pre
            z *= 0.5

    def _activation_backward(self, delta: np.ndarray, i: int, buf: _Buffers) -> None:
        """delta *= f'(z_i), using what the forward pass kept; may overwrite the layer's activation."""
        a = buf.acts[i]
        act = self.activation
        if act == "relu":
            mask = buf.mask[a.shape[1]]
            np.greater(a, 0, out=mask)
            np.multiply(delta, mask, out=delta)
        elif act == "tanh":
            np.multiply(a, a, out=a)
            np.subtract(1, a, out=a)
            delta *= a
        elif act == "sigmoid":
            delta *= a
            np.subtract(1, a, out=a)
            delta *= a
        else:  # gelu: 0.5 (1 + t) + 0.5 z (1 - t^2) c (1 + 3 k z^2), with t kept in scratch
            z, t = buf.pre[i], buf.scratch[i]
            np.multiply(z, z, out=a)
            a *= 3 * _GELU_K * _GELU_C
            a += _GELU_C
            a *= z
            a *= 0.5
            np.multiply(t, t, out=z)      # z is no longer needed: reuse it for 1 - t^2
            np.subtract(1, z, out=z)
            a *= z
            t += 1
            t *= 0.5
            a += t
            delta *= a

    def _loss_delta(self, out: np.ndarray, y, buf: _Buffers, count_correct: bool = False,
                    edges: Sequence[int] | None = None) -> tuple[list[float], int]:
        """Summed loss of each part (rows edges[j]:edges[j+1]; default one part, the whole batch) and (with
        `count_correct`, for evaluation) the correct count, else 0; turns `out` in place into d(summed
        loss)/d(out). Training steps skip the count: an argmax per step nobody reads."""
        n = out.shape[0]
        edges = (0, n) if edges is None else edges
        bounds = list(zip(edges[:-1], edges[1:]))
        if self.loss == "cross_entropy":
            y = np.asarray(y)
            if y.shape != (n,) or y.dtype.kind not in "iu":
                raise ValueError(f"cross_entropy needs integer labels of shape ({n},), got {y.dtype} {y.shape}")
            if n and (y.min() < 0 or y.max() >= out.shape[1]):
                raise ValueError(f"labels must be in 0..{out.shape[1] - 1}")
            rows = buf.rows[:n]
            correct = int(np.count_nonzero(out.argmax(axis=1) == y)) if count_correct else 0
            out -= out.max(axis=1, keepdims=True)
            picked = out[rows, y]
            np.exp(out, out=out)
            sums = out.sum(axis=1, keepdims=True)
            logs = np.log(sums)
            losses = [float(logs[a:b].sum(dtype=np.float64) - picked[a:b].sum(dtype=np.float64)) for a, b in bounds]
            out /= sums
            out[rows, y] -= 1            # softmax - onehot: the fused gradient
            return losses, correct
        y = np.asarray(y, dtype=self.dtype)
        if y.ndim == 1 and out.shape[1] == 1:
            y = y[:, None]
        if y.shape != out.shape:
            raise ValueError(f"mse targets must have shape {out.shape}, got {y.shape}")
        k = out.shape[1]
        out -= y
        # per example: mean over outputs; summed over examples (in float64 by numpy, not BLAS's threaded dot)
        losses = [float(np.square(out[a:b], dtype=np.float64).sum()) / k for a, b in bounds]
        out *= 2.0 / k
        return losses, 0

    def sum_loss_and_grad(self, x, y, on_layer_grad: Callable[[int], None] | None = None) -> SumResult:
        """Forward and backward on a batch; `self.grad` becomes the gradient of the SUMMED loss.

        Data parallelism needs sums, not means: ranks add their sums and divide by the global count.
        `on_layer_grad(i)` is called as soon as layer i's gradient is final (last layer first), so a
        caller can start communicating it while earlier layers are still being computed.
        """
        x = self._as_input(x)
        n = x.shape[0]
        if n == 0:
            self.grad[...] = 0
            if on_layer_grad:
                for i in reversed(range(len(self.layers))):
                    on_layer_grad(i)
            return SumResult(0.0, self.grad, 0)
        buf = self._buffers_for(n)
        out = self._forward(x, buf)
        (loss_sum,), _ = self._loss_delta(out, y, buf)
        delta = out
        ones = buf.ones
        for i in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[i]
            a_prev = x if i == 0 else buf.acts[i - 1]
            np.matmul(a_prev.T, delta, out=layer.gW)
            np.matmul(ones, delta, out=layer.gb)
            if i > 0:
                d_prev = buf.deltas[i - 1]
                np.matmul(delta, layer.W.T, out=d_prev)
                self._activation_backward(d_prev, i - 1, buf)
                delta = d_prev
            if on_layer_grad:
                on_layer_grad(i)
        return SumResult(loss_sum, self.grad, n)

    def sum_loss_and_grad_parts(self, x, y, edges: Sequence[int],
                                grads_of: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                                after_part: Callable[[int, int], None],
                                on_layer_grad: Callable[[int], None] | None = None) -> list[float]:
        """As sum_loss_and_grad, with the parameter gradient of each part (rows edges[j]:edges[j+1]) on its
        own: for layer i (last first) and part j it is written to grads_of(i, j) = (gW, gb), then
        after_part(i, j) runs (where a caller adds the parts up, in an order of its own). The forward pass
        and the deltas run on all rows at once; a BLAS may round a row differently in GEMMs of different row
        counts (OpenBLAS does), so worker/stepexact.py calls this on one part at a time. Returns each part's
        summed loss."""
        x = self._as_input(x)
        n = x.shape[0]
        parts = range(len(edges) - 1)
        if n == 0:
            losses = [0.0 for _ in parts]
            delta = a_prev = None
        else:
            buf = self._buffers_for(n)
            delta = self._forward(x, buf)
            losses, _ = self._loss_delta(delta, y, buf, edges=edges)
        for i in range(len(self.layers) - 1, -1, -1):
            if n:
                a_prev = x if i == 0 else buf.acts[i - 1]
            for j in parts:
                gW, gb = grads_of(i, j)
                lo, hi = edges[j], edges[j + 1]
                if lo == hi:
                    gW[...] = 0
                    gb[...] = 0
                else:
                    np.matmul(a_prev[lo:hi].T, delta[lo:hi], out=gW)
                    np.sum(delta[lo:hi], axis=0, out=gb)     # a plain sum down the rows, whatever the BLAS
                after_part(i, j)
            if i > 0 and n:
                d_prev = buf.deltas[i - 1]
                np.matmul(delta, self.layers[i].W.T, out=d_prev)
                self._activation_backward(d_prev, i - 1, buf)
                delta = d_prev
            if on_layer_grad:
                on_layer_grad(i)
        return losses

    def loss_and_grad(self, x, y) -> tuple[float, np.ndarray]:
        """Mean loss over the batch and its gradient (the model's `grad`, scaled in place)."""
        s = self.sum_loss_and_grad(x, y)
        if s.count:
            self.grad *= 1.0 / s.count
        return s.loss_sum / max(s.count, 1), self.grad

    def forward(self, x) -> np.ndarray:
        """The network's outputs (logits for cross_entropy) for a batch, as a new array."""
        x = self._as_input(x)
        if x.shape[0] == 0:
            return np.zeros((0, self.sizes[-1]), self.dtype)
        return self._forward(x, self._buffers_for(x.shape[0])).copy()

    def evaluate(self, x, y, batch_size: int = 1024) -> tuple[float, int, int]:
        """(summed loss, correct count, example count) over a dataset, without touching `grad`."""
        total_loss, total_correct, total = 0.0, 0, 0
        for start in range(0, len(x), batch_size):
            xb = self._as_input(x[start:start + batch_size])
            yb = y[start:start + batch_size]
            buf = self._buffers_for(xb.shape[0])
            out = self._forward(xb, buf)
            (loss_sum,), correct = self._loss_delta(out, yb, buf, count_correct=True)
            total_loss += loss_sum
            total_correct += correct
            total += xb.shape[0]
        return total_loss, total_correct, total

    def predict(self, x) -> np.ndarray:
        """Class predictions (argmax of the outputs)."""
        return self.forward(x).argmax(axis=1)
