"""The exact step's probed shortcuts (worker/sgemm.py): the fused weight-gradient add (an sgemm with beta = 1 on
numpy's own OpenBLAS, used only where a probe finds it gives the bits of numpy's matmul followed by numpy's
add), and one GEMM over all of a rank's parts where a probe finds every part's rows keep their own GEMM's bits.

Checked here: the probe's verdict holds on other data (it is not a lucky draw), it is true on this host for
the part sizes bench/step.py runs (else the exact step silently loses the fusion), bad input gets one clear
error, the exact step's gradient has the same bits with the fusion on and off, for equal parts (the numpy
stack), unequal and empty ones, and parts run as one GEMM (24 rows on OpenBLAS's Haswell kernel) keep the bits
of each part alone. Whole runs at 1-4 ranks: tests/test_exact_ranks.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from worker import sgemm
from worker.comm import SerialComm
from worker.mlp import MLP
from worker.mlp_bylayer import parts_by_layer
from worker.stepexact import ExactStep

pytestmark = pytest.mark.skipif(sgemm._function() is None, reason="numpy's BLAS is not OpenBLAS with cblas_sgemm")


@pytest.mark.parametrize("fan_in, fan_out", [(64, 32), (32, 10), (784, 256), (1024, 1024)])
@pytest.mark.parametrize("rows", [1, 7, 8, 16, 32, 64, 1000])
def test_the_probe_verdict_holds_on_other_data(fan_in, fan_out, rows):
    verdict = sgemm.fused_add_is_exact(fan_in, fan_out, rows)
    rng = np.random.default_rng(7)
    a = rng.standard_normal((rows, fan_in), dtype=np.float32) * 3
    delta = rng.standard_normal((rows, fan_out), dtype=np.float32)
    left = rng.standard_normal((fan_in, fan_out), dtype=np.float32) * 0.01
    want = a.T @ delta
    want += left
    sgemm.add_weight_grad(a, delta, left)
    assert np.array_equal(left, want) == verdict
    if rows <= 64:         # one K block: beta = 1 adds the finished product, so the fusion holds on this host
        assert verdict


def test_bad_input_gets_one_clear_error():
    a, delta = np.zeros((4, 3), np.float32), np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="C-contiguous float32"):
        sgemm.add_weight_grad(a, delta, np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        sgemm.add_weight_grad(a.astype(np.float64), delta, np.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="C-contiguous float32"):
        sgemm.add_weight_grad(np.zeros((3, 4), np.float32).T, delta, np.zeros((3, 2), np.float32))


@pytest.mark.parametrize("n", [64, 61, 5], ids=["equal-parts", "unequal-parts", "empty-parts"])
@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_the_exact_step_has_the_same_bits_with_the_fusion_on_and_off(n, activation):
    assert sgemm.worth_fusing(260, 256) and not sgemm.worth_fusing(256, 16)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 260), dtype=np.float32)
    y = rng.integers(0, 10, n)
    grads, steps = [], []
    for fuse in (False, True):
        model = MLP([260, 256, 16, 10], activation=activation, seed=2)   # layer 0 fused by the GEMM, the rest not
        step = ExactStep(model, SerialComm(), 8, fuse=fuse)
        for _ in range(2):                        # the second step reuses buffers and verdicts
            rows = step.rows(np.arange(n))
            step.reduce(step.backward(x[rows], y[rows]))
        grads.append(model.grad.copy())
        steps.append(step)
    assert np.array_equal(grads[0], grads[1])
    assert np.isfinite(grads[1]).all() and np.abs(grads[1]).max() > 0
    assert steps[0]._fuse_checked == {}
    assert steps[1]._fuse_checked and all(steps[1]._fuse_checked.values())   # the fusion really ran


@pytest.mark.parametrize("rows", [24, 32])
def test_parts_run_as_one_gemm_only_where_probed_and_keep_the_bits_of_each_part_alone(rows):
    """Equal parts through worker/mlp_bylayer.py's stack: where the probe allows one GEMM over all the rows it
    is used, and either way each part's gradient equals the part computed alone (MLP.sum_loss_and_grad_parts)."""
    model = MLP([72, 48, 30, 10], seed=4)
    parts = 4
    verdicts = [sgemm.one_gemm_is_exact(i, o, parts, rows) for i, o in zip(model.sizes, model.sizes[1:])]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((parts * rows, 72), dtype=np.float32)
    y = rng.integers(0, 10, parts * rows)
    alone = []
    for k in range(parts):
        out = np.zeros(model.num_params, np.float32)
        views = model.layer_views(out)
        lo, hi = k * rows, (k + 1) * rows
        model.sum_loss_and_grad_parts(x[lo:hi], y[lo:hi], (0, rows), lambda i, j: views[i], lambda i, j: None)
        alone.append(out)
    got = [np.full(model.num_params, np.nan, np.float32) for _ in range(parts)]
    views = [model.layer_views(g) for g in got]
    cache: dict = {}
    parts_by_layer(model, cache, [x[k * rows:(k + 1) * rows] for k in range(parts)],
                   [y[k * rows:(k + 1) * rows] for k in range(parts)], lambda i, k: views[k][i],
                   lambda i, k: None, lambda i: None)
    assert cache[("whole", parts, rows)] == verdicts
    assert all(np.array_equal(a, g) for a, g in zip(alone, got))
    print(f"{rows} rows a part: one GEMM per layer (forward, delta) {verdicts}")
