"""Optimizers and learning-rate schedules over flat parameter vectors, updated in place.

Every optimizer keeps its state as flat vectors with the layout of the parameters plus a step count,
so its state is checkpointed as a few arrays (`state_arrays()` / `load_state_arrays()`). Semantics follow
PyTorch's `torch.optim` so results are comparable:

  sgd       p -= lr * (g + wd p)
  momentum  v = mu v + (g + wd p);            p -= lr v
  nesterov  v = mu v + (g + wd p);            p -= lr (g + wd p + mu v)
  adam      m, v moments of (g + wd p), bias-corrected;  p -= lr m_hat / (sqrt(v_hat) + eps)
  adamw     as adam on g, with decoupled decay p -= lr wd p

    opt = make_optimizer(spec.optim, params.size, total_steps)
    lr = opt.step(params, grad)        # clips, schedules, updates; returns the lr it used
"""
from __future__ import annotations

import math

import numpy as np

from worker.spec import OptimSpec


def learning_rate(spec: OptimSpec, step: int, total_steps: int) -> float:
    """The learning rate for 0-based `step`: linear warmup, then constant, step decay or cosine decay."""
    if spec.warmup_steps and step < spec.warmup_steps:
        return spec.lr * (step + 1) / spec.warmup_steps
    after = step - spec.warmup_steps
    if spec.schedule == "step":
        return spec.lr * spec.gamma ** (after // spec.step_size)
    if spec.schedule == "cosine":
        span = max(total_steps - spec.warmup_steps, 1)
        progress = min(after / span, 1.0)
        return spec.min_lr + (spec.lr - spec.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))
    return spec.lr


def clip_by_global_norm(grad: np.ndarray, max_norm: float) -> float:
    """Scale `grad` in place so its L2 norm is at most `max_norm`; returns the norm before clipping."""
    norm = math.sqrt(float(np.dot(grad, grad)))
    if max_norm > 0 and norm > max_norm:
        grad *= max_norm / (norm + 1e-6)
    return norm


# The update runs block by block: each optimizer makes several elementwise passes (Adam ~12), and over a
# block that fits in L2 they cost about one pass over memory instead of one each. Elementwise operations
# give the same bits in any blocking, so this changes no result.
BLOCK = 1 << 16


class Optimizer:
    """Base: schedule, clipping and the step count; subclasses implement `_update` on one block."""

    state_names: tuple[str, ...] = ()

    def __init__(self, spec: OptimSpec, size: int, total_steps: int, dtype=np.float32):
        self.spec = spec
        self.total_steps = total_steps
        self.t = 0  # updates applied so far
        self.state = {name: np.zeros(size, dtype) for name in self.state_names}
        self._scratch = np.empty(min(size, BLOCK), dtype)
        self._decay_scratch = np.empty(min(size, BLOCK), dtype) if spec.weight_decay else None

    def step(self, params: np.ndarray, grad: np.ndarray) -> float:
        """Clip `grad` (in place), then update `params` in place. Returns the learning rate used."""
        lr = learning_rate(self.spec, self.t, self.total_steps)
        if self.spec.clip_norm > 0:
            clip_by_global_norm(grad, self.spec.clip_norm)
        self.t += 1
        names = self.state_names
        for start in range(0, params.size, BLOCK):
            stop = min(params.size, start + BLOCK)
            state = {name: self.state[name][start:stop] for name in names}
            self._update(params[start:stop], grad[start:stop], lr, state, self._scratch[:stop - start])
        return lr

    def _decayed(self, params: np.ndarray, grad: np.ndarray) -> np.ndarray:
        """g + wd p (coupled L2 decay) of one block, built in its own buffer when weight decay is on."""
        if self.spec.weight_decay == 0:
            return grad
        out = self._decay_scratch[:grad.size]
        np.multiply(params, self.spec.weight_decay, out=out)
        out += grad
        return out

    def _update(self, params, grad, lr, state, tmp):  # pragma: no cover - abstract
        """Update one block of `params` in place; `state` holds the matching blocks of the state vectors and
        `tmp` is scratch of the block's size."""
        raise NotImplementedError

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Everything needed to continue exactly: the state vectors and the step count."""
        arrays = {f"optim.{k}": v for k, v in self.state.items()}
        arrays["optim.t"] = np.array(self.t, np.int64)
        return arrays

    def load_state_arrays(self, arrays) -> None:
        for name, vec in self.state.items():
            saved = np.asarray(arrays[f"optim.{name}"])
            if saved.shape != vec.shape:
                raise ValueError(f"optimizer state {name} has shape {saved.shape}, expected {vec.shape}")
            vec[...] = saved
        self.t = int(arrays["optim.t"])

    def state_vectors(self) -> list[np.ndarray]:
        return [self.state[k] for k in self.state_names]


class SGD(Optimizer):
    def _update(self, params, grad, lr, state, tmp):
        np.multiply(self._decayed(params, grad), lr, out=tmp)
        params -= tmp


class Momentum(Optimizer):
    state_names = ("velocity",)
    nesterov = False

    def _update(self, params, grad, lr, state, step):
        g = self._decayed(params, grad)
        v = state["velocity"]
        v *= self.spec.momentum
        v += g
        if self.nesterov:
            np.multiply(v, self.spec.momentum, out=step)
            step += g
        else:
            step[...] = v
        step *= lr
        params -= step


class Nesterov(Momentum):
    nesterov = True


class Adam(Optimizer):
    state_names = ("m", "v")
    decoupled = False

    def _update(self, params, grad, lr, state, tmp):
        s = self.spec
        g = grad if self.decoupled else self._decayed(params, grad)
        m, v = state["m"], state["v"]
        np.multiply(g, 1 - s.beta1, out=tmp)
        m *= s.beta1
        m += tmp
        np.multiply(g, g, out=tmp)
        tmp *= 1 - s.beta2
        v *= s.beta2
        v += tmp
        bias1 = 1 - s.beta1 ** self.t
        bias2 = 1 - s.beta2 ** self.t
        if self.decoupled and s.weight_decay:
            params *= 1 - lr * s.weight_decay
        # p -= (lr / bias1) m / (sqrt(v) / sqrt(bias2) + eps)
        np.sqrt(v, out=tmp)
        tmp *= 1 / math.sqrt(bias2)
        tmp += s.eps
        np.divide(m, tmp, out=tmp)
        tmp *= lr / bias1
        params -= tmp


class AdamW(Adam):
    decoupled = True


OPTIMIZERS = {"sgd": SGD, "momentum": Momentum, "nesterov": Nesterov, "adam": Adam, "adamw": AdamW}


def make_optimizer(spec: OptimSpec, size: int, total_steps: int, dtype=np.float32) -> Optimizer:
    return OPTIMIZERS[spec.name](spec, size, total_steps, dtype)
