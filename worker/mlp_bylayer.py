"""Several micro-batches through the MLP layer by layer, so a layer's gradient is final before the next one.

    losses = parts_by_layer(model, cache, xs, ys, grads_of, after_part, on_layer)

worker/stepexact.py computes each part alone (OpenBLAS rounds a row differently in GEMMs of other row
counts), one whole part after another, so no layer's sum over the parts is final until the last part's
backward pass ends. Here every part's forward pass runs first, each in buffers of its own; then, for layer
i from the last: every part's (dW_i, db_i) is written to grads_of(i, k) and after_part(i, k) runs (where
the caller adds it along its tree, on that layer's slice), then on_layer(i) (where the caller can start
sending layer i), then every part's delta for layer i-1. Each part goes through exactly the GEMMs and
element-wise operations of `MLP.sum_loss_and_grad_parts` on that part alone, on arrays of the same shapes,
so each gradient has the same bits; only the order in which the parts' layers run changes.

The math of worker/mlp.py, reached through its private pieces (the buffers, forward, loss and activation
derivative) on purpose: one implementation of each, so the two paths cannot drift apart. No MPI here.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from worker.mlp import MLP, _Buffers


def parts_by_layer(model: MLP, cache: dict, xs: Sequence, ys: Sequence,
                   grads_of: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                   after_part: Callable[[int, int], None], on_layer: Callable[[int], None]) -> list[float]:
    """Each part's summed loss, in order; the gradients go where grads_of says (see the module docstring).
    `cache` keeps each part's buffers between calls (keyed by part and rows): pass the same dict each step."""
    gelu = model.activation == "gelu"
    xs = [model._as_input(x) for x in xs]
    state = []                                   # per part: (input, buffers, current delta) or None if empty
    losses = []
    for k, (x, y) in enumerate(zip(xs, ys)):
        n = x.shape[0]
        if n == 0:
            state.append(None)
            losses.append(0.0)
            continue
        buf = cache.get((k, n))
        if buf is None:
            buf = cache[(k, n)] = _Buffers(n, model.sizes, model.dtype, keep_preactivation=gelu)
        delta = model._forward(x, buf)
        (loss,), _ = model._loss_delta(delta, y, buf, edges=(0, n))
        losses.append(loss)
        state.append([x, buf, delta])
    for i in range(len(model.layers) - 1, -1, -1):
        for k, part in enumerate(state):
            gW, gb = grads_of(i, k)
            if part is None:
                gW[...] = 0
                gb[...] = 0
            else:
                x, buf, delta = part
                a_prev = x if i == 0 else buf.acts[i - 1]
                np.matmul(a_prev.T, delta, out=gW)
                np.sum(delta, axis=0, out=gb)     # as sum_loss_and_grad_parts: a plain sum down the rows
            after_part(i, k)
        on_layer(i)
        if i == 0:
            break
        for part in state:
            if part is not None:
                x, buf, delta = part
                d_prev = buf.deltas[i - 1]
                np.matmul(delta, model.layers[i].W.T, out=d_prev)
                model._activation_backward(d_prev, i - 1, buf)
                part[2] = d_prev
    return losses
