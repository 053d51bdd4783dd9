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

Parts of equal size (the usual case: a batch that the micro-batch count divides) go through numpy as one
stack: each layer's forward product and delta product is a single `np.matmul` over a (parts, rows, n) array,
and the activations and the loss run once over all the rows. numpy's matmul computes a stack slice by slice,
one BLAS call per slice with that slice's shapes, so every part still gets the GEMM it gets alone (checked bit
for bit by tests/test_exact_overlap.py); what goes is the Python and numpy overhead of calling each part's
forward, loss and deltas one by one, which dominates when parts are a few rows (the digits demo: 4 rows).
Where worker/sgemm.py's probe finds that one GEMM over all the rows gives each part's rows those same bits
(part sizes that fill the kernel's tiles), that product runs as one 2-D GEMM instead.
The weight gradients stay one GEMM per part: each is a sum over its own part's rows. The caller's `runs` cut
the parts into runs whose weight gradients (and after_part calls) may go side by side on its pool's threads,
a run's parts in order on one thread; the caller gives each run memory of its own. A part for which
`adds_into(k)` is true has its gradient added into what grads_of(i, k) already holds (its left sibling, for
the caller's tree): by the GEMM itself (worker/sgemm.py, beta = 1) on layers large enough to gain from it, one
pass over the matrix instead of three, with the bits of writing it and adding after, which the caller checks
per shape before it asks; on smaller layers through a scratch matrix, GEMM then add.

The math of worker/mlp.py, reached through its private pieces (the buffers, forward, loss and activation
derivative) on purpose: one implementation of each, so the two paths cannot drift apart. No MPI here.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from worker.mlp import MLP, _Buffers
from worker.sgemm import add_weight_grad, one_gemm_is_exact, worth_fusing


def _no_adds(k: int) -> bool:
    return False


def _weight_grad(a_prev: np.ndarray, delta: np.ndarray, gW: np.ndarray, gb: np.ndarray, add: bool,
                 cache: dict, run: int = 0) -> None:
    """(gW, gb) = one part's (a_prev^T delta, column sums of delta), or, with `add`, those added into (gW, gb):
    by the GEMM itself on a layer worth it, else through a scratch matrix (the reference: GEMM, then add)."""
    if add:
        if worth_fusing(*gW.shape):
            add_weight_grad(a_prev, delta, gW)
        else:
            scratch = cache.get(("scratch", gW.shape, run))     # one per run: runs may go side by side
            if scratch is None:
                scratch = cache[("scratch", gW.shape, run)] = np.empty_like(gW)
            np.matmul(a_prev.T, delta, out=scratch)
            gW += scratch
        gb += np.add.reduce(delta, axis=0)
    else:
        np.matmul(a_prev.T, delta, out=gW)
        np.add.reduce(delta, axis=0, out=gb)   # np.sum itself (a plain sum down the rows), without its wrapper


def parts_by_layer(model: MLP, cache: dict, xs: Sequence, ys: Sequence,
                   grads_of: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                   after_part: Callable[[int, int], None], on_layer: Callable[[int], None],
                   adds_into: Callable[[int], bool] = _no_adds, pool=None,
                   runs: Sequence[tuple[int, int]] = (), tree=None) -> list[float]:
    """Each part's summed loss, in order; the gradients go where grads_of says (see the module docstring).
    `cache` keeps each part's buffers between calls (keyed by part and rows): pass the same dict each step.
    `pool` ((a concurrent.futures executor, its threads), BLAS at one thread): equal parts' forward and delta
    products run in groups side by side on its threads and this one; each part keeps its own GEMM: the same bits.
    `runs` (part ranges [lo, hi) that tile the parts; default one run): the weight gradients of one run go in part
    order on one thread, each followed by its after_part, and with a pool the runs of a large layer go side by
    side (the caller's after_part must then touch, per run, memory no other run touches).
    `tree(i, G)` (optional): where equal parts go as a stack, a small layer's weight gradients (under the fused
    GEMM's and the threads' sizes) are all computed by one matmul into a (parts, layer size) stack G, row k part
    k's (W, b) laid out as in the flat vector, and handed to tree instead of going part by part to grads_of and
    after_part: the same GEMM per part, so the same bits, with one call instead of a few per part."""
    gelu = model.activation == "gelu"
    xs = [model._as_input(x) for x in xs]
    rows = {x.shape[0] for x in xs}
    if len(xs) > 1 and len(rows) == 1 and 0 not in rows:
        return _stacked(model, cache, xs, ys, grads_of, after_part, on_layer, adds_into, pool, runs, tree)
    runs = runs or [(0, len(xs))]
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
    total_rows = sum(x.shape[0] for x in xs)
    for i in range(len(model.layers) - 1, -1, -1):
        def one_part(k: int, run: int) -> None:
            gW, gb = grads_of(i, k)
            if state[k] is None:
                gW[...] = 0
                gb[...] = 0
            else:
                x, buf, delta = state[k]
                _weight_grad(x if i == 0 else buf.acts[i - 1], delta, gW, gb, adds_into(k), cache, run)
            after_part(i, k)
        _in_runs(pool if _worth(total_rows, model.layers[i].W) else None, runs, one_part)
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


def _stacked(model: MLP, cache: dict, xs: Sequence[np.ndarray], ys: Sequence,
             grads_of: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
             after_part: Callable[[int, int], None], on_layer: Callable[[int], None],
             adds_into: Callable[[int], bool], pool=None, runs: Sequence[tuple[int, int]] = (),
             tree=None) -> list[float]:
    """parts_by_layer for k non-empty parts of r rows each, as (k, r, n) stacks (see the module docstring)."""
    k, r = len(xs), xs[0].shape[0]
    key = ("stack", k, r)
    held = cache.get(key)
    if held is None:
        held = cache[key] = (_Buffers(k * r, model.sizes, model.dtype, keep_preactivation=model.activation == "gelu"),
                             np.empty((k, r, model.sizes[0]), model.dtype))
    buf, x3 = held
    whole = cache.get(("whole", k, r))     # per layer: may its forward / delta products run as one GEMM?
    if whole is None:
        whole = cache[("whole", k, r)] = [one_gemm_is_exact(i, o, k, r) for i, o in zip(model.sizes, model.sizes[1:])]
    for j, x in enumerate(xs):
        x3[j] = x
    last = len(model.layers) - 1
    a3 = x3
    for i, layer in enumerate(model.layers):
        z = buf.acts[i]
        z3 = z.reshape(k, r, -1)
        if pool is not None and _worth(k * r, layer.W):
            _side_by_side(pool, a3, layer.W, z3)
        elif whole[i][0]:
            np.matmul(a3.reshape(k * r, -1), layer.W, out=z)   # probed: each part's rows have their own GEMM's bits
        else:
            np.matmul(a3, layer.W, out=z3)    # slice by slice: each part's own GEMM
        z += layer.b
        if i < last:
            model._activate(z, i, buf)       # element-wise: the same on a part's rows alone
        a3 = z3
    y = np.concatenate([np.asarray(v) for v in ys])
    losses, _ = model._loss_delta(buf.acts[last], y, buf, edges=[j * r for j in range(k + 1)])
    delta = buf.acts[last]
    x2 = x3.reshape(k * r, -1)
    adding = [adds_into(j) for j in range(k)]
    runs = runs or [(0, k)]
    for i in range(last, -1, -1):
        a_prev = x2 if i == 0 else buf.acts[i - 1]

        def one_part(j: int, run: int) -> None:
            gW, gb = grads_of(i, j)
            _weight_grad(a_prev[j * r:(j + 1) * r], delta[j * r:(j + 1) * r], gW, gb, adding[j], cache, run)
            after_part(i, j)
        w = model.layers[i].W
        threads = pool is not None and _worth(k * r, w)
        if tree is not None and not threads and not worth_fusing(*w.shape):
            tree(i, _stacked_grads(cache, a_prev.reshape(k, r, -1), delta.reshape(k, r, -1), w.shape))
        else:
            _in_runs(pool if threads else None, runs, one_part)
        on_layer(i)
        if i == 0:
            break
        d_prev = buf.deltas[i - 1]
        if pool is not None and _worth(k * r, model.layers[i].W):
            _side_by_side(pool, delta.reshape(k, r, -1), model.layers[i].W.T, d_prev.reshape(k, r, -1))
        elif whole[i][1]:
            np.matmul(delta, model.layers[i].W.T, out=d_prev)
        else:
            np.matmul(delta.reshape(k, r, -1), model.layers[i].W.T, out=d_prev.reshape(k, r, -1))
        model._activation_backward(d_prev, i - 1, buf)
        delta = d_prev
    return losses


def _stacked_grads(cache: dict, a3: np.ndarray, d3: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Every part's (a^T delta, column sums of delta) of one layer, as rows of a (parts, fan_in*fan_out + fan_out)
    stack: numpy's matmul calls each slice's own GEMM, the one a part gets alone (a.T of a C-contiguous part, so
    the same transposed call), and the sums run down each part's rows as np.add.reduce does on the part alone."""
    k, (fan_in, fan_out) = a3.shape[0], shape
    size = fan_in * fan_out + fan_out
    held = cache.get(("tree", k))
    if held is None or held.size < k * size:
        held = cache[("tree", k)] = np.empty(k * size, a3.dtype)
    stack = held[:k * size].reshape(k, size)
    np.matmul(a3.transpose(0, 2, 1), d3, out=stack[:, :fan_in * fan_out].reshape(k, fan_in, fan_out))
    np.add.reduce(d3, axis=1, out=stack[:, fan_in * fan_out:])
    return stack


# Below this many multiply-adds a layer's products run on this thread alone: handing half of them to another
# thread cost more than it saved (measured 2026-12-07, AMD EPYC VM: 784-256-256-10 at batch 128 went from
# 3.2 to 3.8 ms a step with every layer split; 784-1024-1024-10 at 256 from 38.3 to 30.6 ms, 2 threads).
# The weight gradients' runs use the same line: their GEMMs have the products' multiply-adds (not measured apart).
SIDE_BY_SIDE_MIN_MACS = 1 << 25


def _worth(rows: int, w: np.ndarray) -> bool:
    """Are a layer's products over `rows` rows (a GEMM with `w`, or a weight gradient of w's shape) worth threads?"""
    return rows * w.shape[0] * w.shape[1] >= SIDE_BY_SIDE_MIN_MACS


def _in_runs(pool, runs: Sequence[tuple[int, int]], one_part: Callable[[int, int], None]) -> None:
    """one_part(part, run) for every part, in part order within each run: the runs one after another, or, with a
    pool, side by side (the first on this thread)."""
    if pool is None or len(runs) < 2:
        for run, (lo, hi) in enumerate(runs):
            for j in range(lo, hi):
                one_part(j, run)
        return

    def whole(run: int) -> None:
        for j in range(*runs[run]):
            one_part(j, run)
    pending = [pool[0].submit(whole, run) for run in range(1, len(runs))]
    try:
        whole(0)
    finally:
        for done in pending:
            done.result()


def _side_by_side(pool, a3: np.ndarray, w: np.ndarray, out3: np.ndarray) -> None:
    """np.matmul(a3, w, out=out3) for a (k, r, n) stack, its parts cut into one group per thread (the pool's and
    this one): every slice is still its own GEMM, and numpy lets go of the GIL inside each."""
    executor, threads = pool
    k = a3.shape[0]
    groups = min(k, threads + 1)
    cuts = [g * k // groups for g in range(groups + 1)]
    pending = [executor.submit(np.matmul, a3[lo:hi], w, out=out3[lo:hi]) for lo, hi in zip(cuts[1:-1], cuts[2:])]
    np.matmul(a3[:cuts[1]], w, out=out3[:cuts[1]])
    for done in pending:
        done.result()
