"""Optimizers against textbook float64 formulas and PyTorch's torch.optim (when installed); schedules; clipping."""
import math

import numpy as np
import pytest

from worker.optim import clip_by_global_norm, learning_rate, make_optimizer
from worker.spec import OptimSpec

CASES = [
    OptimSpec(name="sgd", lr=0.1),
    OptimSpec(name="sgd", lr=0.1, weight_decay=0.01),
    OptimSpec(name="momentum", lr=0.05, momentum=0.9, weight_decay=0.01),
    OptimSpec(name="nesterov", lr=0.05, momentum=0.8),
    OptimSpec(name="adam", lr=0.01, weight_decay=0.02),
    OptimSpec(name="adamw", lr=0.01, weight_decay=0.1, beta1=0.8, beta2=0.99),
]


def reference_run(spec, p, grads):
    """Textbook update rules, written independently of worker/optim.py, in float64."""
    p = p.copy()
    v = np.zeros_like(p)
    m = np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        wd = spec.weight_decay
        if spec.name == "sgd":
            p = p - spec.lr * (g + wd * p)
        elif spec.name in ("momentum", "nesterov"):
            d = g + wd * p
            v = spec.momentum * v + d
            p = p - spec.lr * (d + spec.momentum * v if spec.name == "nesterov" else v)
        else:
            d = g if spec.name == "adamw" else g + wd * p
            m = spec.beta1 * m + (1 - spec.beta1) * d
            v = spec.beta2 * v + (1 - spec.beta2) * d * d
            if spec.name == "adamw":
                p = p * (1 - spec.lr * wd)
            m_hat = m / (1 - spec.beta1 ** t)
            v_hat = v / (1 - spec.beta2 ** t)
            p = p - spec.lr * m_hat / (np.sqrt(v_hat) + spec.eps)
    return p


def grads_and_start(n=50, steps=6):
    rng = np.random.default_rng(0)
    return rng.standard_normal(n), [rng.standard_normal(n) for _ in range(steps)]


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.name}-wd{s.weight_decay}")
def test_matches_textbook_update(spec):
    start, grads = grads_and_start()
    params = start.copy()
    opt = make_optimizer(spec, params.size, total_steps=100, dtype=np.float64)
    for g in grads:
        opt.step(params, g.copy())
    np.testing.assert_allclose(params, reference_run(spec, start, grads), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.name}-wd{s.weight_decay}")
def test_matches_torch_optim(spec):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: this independent check needs it")
    start, grads = grads_and_start()
    params = start.copy()
    opt = make_optimizer(spec, params.size, total_steps=100, dtype=np.float64)
    tp = torch.tensor(start.copy(), requires_grad=True)
    cls = {"sgd": torch.optim.SGD, "momentum": torch.optim.SGD, "nesterov": torch.optim.SGD,
           "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec.name]
    kwargs = {"lr": spec.lr, "weight_decay": spec.weight_decay}
    if spec.name in ("momentum", "nesterov"):
        kwargs.update(momentum=spec.momentum, nesterov=spec.name == "nesterov")
    if spec.name in ("adam", "adamw"):
        kwargs.update(betas=(spec.beta1, spec.beta2), eps=spec.eps)
    topt = cls([tp], **kwargs)
    for g in grads:
        opt.step(params, g.copy())
        tp.grad = torch.tensor(g.copy())
        topt.step()
    np.testing.assert_allclose(params, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_state_round_trip_continues_identically():
    spec = OptimSpec(name="adam", lr=0.01)
    start, grads = grads_and_start(steps=8)
    a = start.astype(np.float32)
    opt_a = make_optimizer(spec, a.size, 100)
    for g in grads:
        opt_a.step(a, g.astype(np.float32))
    b = start.astype(np.float32)
    opt_b = make_optimizer(spec, b.size, 100)
    for g in grads[:3]:
        opt_b.step(b, g.astype(np.float32))
    saved = {k: v.copy() for k, v in opt_b.state_arrays().items()}
    opt_c = make_optimizer(spec, b.size, 100)
    opt_c.load_state_arrays(saved)
    for g in grads[3:]:
        opt_c.step(b, g.astype(np.float32))
    np.testing.assert_array_equal(a, b)  # bit-identical
    assert opt_c.t == 8


def test_schedules():
    const = OptimSpec(lr=0.1, warmup_steps=4)
    assert [learning_rate(const, s, 100) for s in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    step = OptimSpec(lr=1.0, schedule="step", step_size=10, gamma=0.5)
    assert learning_rate(step, 9, 100) == 1.0 and learning_rate(step, 10, 100) == 0.5
    assert learning_rate(step, 25, 100) == 0.25
    cos = OptimSpec(lr=1.0, schedule="cosine", min_lr=0.1, warmup_steps=10)
    assert learning_rate(cos, 10, 110) == pytest.approx(1.0)
    assert learning_rate(cos, 60, 110) == pytest.approx(0.55)
    assert learning_rate(cos, 110, 110) == pytest.approx(0.1)


def test_clip_by_global_norm():
    g = np.array([3.0, 4.0], np.float32)
    assert clip_by_global_norm(g, 1.0) == pytest.approx(5.0)
    assert math.hypot(*g) == pytest.approx(1.0, rel=1e-5)
    h = np.array([0.3, 0.4])
    clip_by_global_norm(h, 1.0)
    np.testing.assert_array_equal(h, [0.3, 0.4])
    opt = make_optimizer(OptimSpec(name="sgd", lr=1.0, clip_norm=1.0), 2, 10, np.float64)
    p = np.zeros(2)
    opt.step(p, np.array([30.0, 40.0]))
    assert np.linalg.norm(p) == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("spec", CASES, ids=lambda s: f"{s.name}-wd{s.weight_decay}")
def test_the_blocked_update_gives_the_same_bits_as_one_block(spec, monkeypatch):
    """The update runs in L2-sized blocks (optim.BLOCK); elementwise math must not notice: a vector spanning
    several blocks and a ragged last one ends bit-identical to the same run done as one block."""
    import worker.optim as optim
    n = 3 * optim.BLOCK + 123
    rng = np.random.default_rng(1)
    start = rng.standard_normal(n).astype(np.float32)
    grads = [rng.standard_normal(n).astype(np.float32) for _ in range(4)]
    finals = {}
    for block in (optim.BLOCK, n):
        monkeypatch.setattr(optim, "BLOCK", block)
        params = start.copy()
        opt = make_optimizer(spec, n, total_steps=100)
        for g in grads:
            opt.step(params, g.copy())
        finals[block] = (params, [v.copy() for v in opt.state_vectors()])
    (blocked, blocked_state), (whole, whole_state) = finals.values()
    assert not np.array_equal(blocked, start)
    assert np.array_equal(blocked, whole)
    for a, b in zip(blocked_state, whole_state):
        assert np.array_equal(a, b)
