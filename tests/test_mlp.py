"""The backprop math against independent references: float64 finite differences, and PyTorch autograd when installed."""
import itertools

import numpy as np
import pytest

from worker.mlp import ACTIVATIONS, LOSSES, MLP

SIZES = [5, 7, 6, 4]


def make_batch(loss, n=9, seed=1, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, SIZES[0])).astype(dtype)
    if loss == "cross_entropy":
        y = rng.integers(0, SIZES[-1], n)
    else:
        y = rng.standard_normal((n, SIZES[-1])).astype(dtype)
    return x, y


def mean_loss(model, x, y):
    loss_sum, _, n = model.evaluate(x, y)
    return loss_sum / n


@pytest.mark.parametrize("activation,loss", list(itertools.product(ACTIVATIONS, LOSSES)))
def test_gradient_matches_centred_finite_differences_layer_by_layer(activation, loss):
    model = MLP(SIZES, activation=activation, loss=loss, seed=3, dtype=np.float64)
    model.params += 0.05 * np.random.default_rng(4).standard_normal(model.num_params)  # nonzero biases too
    x, y = make_batch(loss)
    _, grad = model.loss_and_grad(x, y)
    analytic = grad.copy()
    numeric = np.empty_like(analytic)
    eps = 1e-6
    for j in range(model.num_params):
        saved = model.params[j]
        model.params[j] = saved + eps
        up = mean_loss(model, x, y)
        model.params[j] = saved - eps
        down = mean_loss(model, x, y)
        model.params[j] = saved
        numeric[j] = (up - down) / (2 * eps)
    for i, part in enumerate(model.layer_slices()):
        a, n = analytic[part], numeric[part]
        rel = np.linalg.norm(a - n) / max(np.linalg.norm(a), np.linalg.norm(n), 1e-12)
        assert rel < 1e-6, f"layer {i} ({activation}, {loss}): relative error {rel:.2e}"


def test_params_are_one_vector_and_layers_are_views():
    model = MLP([3, 4, 2])
    assert model.params.ndim == 1 and model.params.size == 3 * 4 + 4 + 4 * 2 + 2
    assert model.layers[0].W.shape == (3, 4) and model.layers[1].b.shape == (2,)
    model.params[:] = 0
    assert not model.layers[0].W.any()
    model.layers[1].b[:] = 7
    assert model.params[-1] == 7 and model.params[-3] == 0
    assert model.params.dtype == np.float32 and model.grad.dtype == np.float32


def test_summed_gradient_is_mean_gradient_times_count():
    model = MLP([6, 8, 3], seed=0, dtype=np.float64)
    x, y = np.random.default_rng(0).standard_normal((10, 6)), np.arange(10) % 3
    s = model.sum_loss_and_grad(x, y)
    summed = s.grad.copy()
    mean, grad = model.loss_and_grad(x, y)
    assert s.count == 10
    np.testing.assert_allclose(summed / 10, grad, rtol=1e-12)
    np.testing.assert_allclose(s.loss_sum / 10, mean, rtol=1e-12)


def test_gradient_of_split_batch_adds_up_to_whole_batch():
    """Data parallelism in miniature: summed grads of two halves equal the summed grad of the batch."""
    model = MLP([6, 16, 16, 4], activation="tanh", seed=2, dtype=np.float64)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((11, 6)), rng.integers(0, 4, 11)
    whole = model.sum_loss_and_grad(x, y).grad.copy()
    first = model.sum_loss_and_grad(x[:4], y[:4]).grad.copy()
    second = model.sum_loss_and_grad(x[4:], y[4:]).grad.copy()
    np.testing.assert_allclose(first + second, whole, rtol=1e-10, atol=1e-12)


def test_float32_stays_float32_and_buffers_are_reused():
    model = MLP([20, 32, 5])
    x = np.random.default_rng(0).standard_normal((16, 20)).astype(np.float32)
    y = np.arange(16) % 5
    model.sum_loss_and_grad(x, y)
    first_buffer = model._buffers[16].acts[0]
    model.sum_loss_and_grad(x, y)
    assert model._buffers[16].acts[0] is first_buffer
    assert model.forward(x).dtype == np.float32 and model.grad.dtype == np.float32


def test_layer_callback_runs_last_layer_first_after_its_gradient_is_final():
    model = MLP([4, 5, 6, 3], seed=1)
    x, y = np.random.default_rng(0).standard_normal((7, 4)).astype(np.float32), np.arange(7) % 3
    seen = []
    model.sum_loss_and_grad(x, y, on_layer_grad=lambda i: seen.append((i, model.layers[i].gW.copy())))
    assert [i for i, _ in seen] == [2, 1, 0]
    for i, snapshot in seen:
        np.testing.assert_array_equal(snapshot, model.layers[i].gW)


def test_empty_batch_gives_zero_gradient():
    model = MLP([4, 3, 2])
    model.grad[:] = 1
    s = model.sum_loss_and_grad(np.zeros((0, 4), np.float32), np.zeros(0, np.int64))
    assert s.count == 0 and s.loss_sum == 0 and not s.grad.any()


def test_bad_inputs_are_refused_with_a_reason():
    model = MLP([4, 3, 2])
    with pytest.raises(ValueError, match="shape"):
        model.forward(np.zeros((2, 5)))
    with pytest.raises(ValueError, match="labels"):
        model.loss_and_grad(np.zeros((2, 4)), np.array([0, 2]))
    with pytest.raises(ValueError, match="activation"):
        MLP([4, 2], activation="swish")


@pytest.mark.parametrize("activation,loss", list(itertools.product(ACTIVATIONS, LOSSES)))
def test_matches_pytorch_autograd(activation, loss):
    torch = pytest.importorskip("torch", reason="PyTorch not installed: this independent-autograd check needs it")
    model = MLP(SIZES, activation=activation, loss=loss, seed=7, dtype=np.float64)
    model.params += 0.05 * np.random.default_rng(8).standard_normal(model.num_params)
    x, y = make_batch(loss, n=12, seed=9)
    ours_loss, ours_grad = model.loss_and_grad(x, y)

    act = {"relu": torch.nn.ReLU(), "tanh": torch.nn.Tanh(), "sigmoid": torch.nn.Sigmoid(),
           "gelu": torch.nn.GELU(approximate="tanh")}[activation]
    weights = [torch.tensor(layer.W.copy(), requires_grad=True) for layer in model.layers]
    biases = [torch.tensor(layer.b.copy(), requires_grad=True) for layer in model.layers]
    h = torch.tensor(x)
    for i, (w, b) in enumerate(zip(weights, biases)):
        h = h @ w + b
        if i < len(weights) - 1:
            h = act(h)
    if loss == "cross_entropy":
        ref = torch.nn.functional.cross_entropy(h, torch.tensor(y))
    else:
        ref = torch.nn.functional.mse_loss(h, torch.tensor(y))
    ref.backward()
    assert ours_loss == pytest.approx(ref.item(), rel=1e-12)
    for layer, w, b in zip(model.layers, weights, biases):
        np.testing.assert_allclose(layer.gW, w.grad.numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(layer.gb, b.grad.numpy(), rtol=1e-10, atol=1e-13)
