"""The fused weight-gradient add (worker/sgemm.py): an sgemm with beta = 1 on numpy's own OpenBLAS, used by the
exact step only where a probe finds it gives the bits of numpy's matmul followed by numpy's add.

Checked here: the probe's verdict holds on other data (it is not a lucky draw), it is true on this host for
the part sizes bench/step.py runs (else the exact step silently loses the fusion), bad input gets one clear
error, and the exact step's gradient has the same bits with the fusion on and off, for equal parts (the numpy
stack), unequal and empty ones. Whole runs at 1-4 ranks: tests/test_exact_ranks.py.
"""
from __future__ import annotations

import numpy as np
import pytest

from worker import sgemm
from worker.comm import SerialComm
from worker.mlp import MLP
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
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 40), dtype=np.float32)
    y = rng.integers(0, 10, n)
    grads, steps = [], []
    for fuse in (False, True):
        model = MLP([40, 48, 32, 10], activation=activation, seed=2)
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
