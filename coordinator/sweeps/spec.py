"""The sweep file: a job spec plus a [sweep] table, read and checked into a frozen `SweepSpec`.

    [sweep]
    method = "asha"              # grid | random | asha
    metric = "val_loss"          # val_loss | val_accuracy | loss (the training loss)
    goal = "minimize"            # minimize | maximize (default: maximize for val_accuracy, else minimize)
    max_trials = 27              # random and asha; grid runs the whole product
    max_concurrent = 2           # trials running at once (default: as many as the slots hold)
    seed = 0
    [sweep.parameters]
    "optim.lr" = { values = [0.3, 0.1, 0.03] }
    "optim.weight_decay" = { low = 1e-5, high = 1e-2, log = true }   # integers when low and high are
    [sweep.asha]
    min_steps = 100              # the first rung; then min_steps * reduction_factor^k, up to train.steps
    reduction_factor = 3
    [sweep.fork]                 # optional: every trial starts from this job's checkpoint at this step (its
                                 # spec is the job's, with this file's settings and the trial's parameters)
    job = "digits-1a2b3c4d"
    step = 200

    sweep, base = parse_sweep(text)          # SpecError naming the key ("sweep.asha.min_steps") when wrong
    sweep.trials                             # how many
    sweep.params(7)                          # {"optim.lr": 0.1, ...}: trial 7's values, the same every time
    trial_spec(base, sweep.params(7))        # the job spec (a plain dict) of trial 7
    sweep.rungs(train_steps=900)             # (100, 300, 900)

A trial's values depend only on the file: a grid enumerates the product (the last parameter varies fastest);
random and asha draw each value from sha256(seed, trial, key), so trial 7 is the same whatever else runs;
over choices alone they take the product's points in an order sorted by sha256(seed, point), each once first.
"""
from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import math
from dataclasses import dataclass
from typing import Any

from worker.spec import JobSpec, SpecError, load_raw, short_repr

METHODS = ("grid", "random", "asha")
METRICS = ("val_loss", "val_accuracy", "loss")
GOALS = ("minimize", "maximize")
MAX_TRIALS = 1000        # trials in one sweep
MAX_VALUES = 1000        # values of one parameter
MAX_PERMUTED = 100_000   # random/asha over choices alone: points of the product taken in a seeded order
_SWEEP_KEYS = {"method", "metric", "goal", "max_trials", "max_concurrent", "seed", "parameters", "asha", "fork"}


@dataclass(frozen=True)
class Param:
    key: str                              # the dotted spec key, e.g. "optim.lr"
    values: tuple[Any, ...] = ()          # a choice among these ...
    low: float = 0.0                      # ... or a range
    high: float = 0.0
    log: bool = False
    integer: bool = False                 # a range of integers (low and high were both integers)

    def pick(self, u: float) -> Any:
        """The value at quantile u in [0, 1)."""
        if self.values:
            return self.values[min(int(u * len(self.values)), len(self.values) - 1)]
        if self.integer:
            if self.log:
                lo, hi = math.log(self.low), math.log(self.high + 1)
                return min(int(self.high), int(math.floor(math.exp(lo + u * (hi - lo)))))
            return int(self.low) + min(int(u * (self.high - self.low + 1)), int(self.high - self.low))
        if self.log:
            return math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return self.low + u * (self.high - self.low)


@dataclass(frozen=True)
class Fork:
    job: str
    step: int


@dataclass(frozen=True)
class SweepSpec:
    method: str
    metric: str
    goal: str
    trials: int                       # how many trials (grid: the size of the product)
    max_concurrent: int               # 0 = as many as the slots hold
    seed: int
    parameters: tuple[Param, ...]
    min_steps: int = 0                # asha
    reduction_factor: int = 3         # asha
    fork: Fork | None = None

    @property
    def minimize(self) -> bool:
        return self.goal == "minimize"

    def params(self, trial: int) -> dict[str, Any]:
        """Trial `trial`'s value of every parameter, in the file's order. random and asha over choices alone
        (`values` only, a product of at most MAX_PERMUTED points) take the points in a seeded order, each once
        before any repeats: independent draws would repeat some and miss others (24 draws from a 24-point space
        hit 18). With a range among the parameters, each value is drawn on its own."""
        if self.method == "grid":
            return self._point(trial)
        size = math.prod(len(p.values) for p in self.parameters)
        if size and size <= MAX_PERMUTED:
            lap, k = divmod(trial, size)
            return self._point(_order(self.seed, lap, size)[k])
        return {p.key: p.pick(_quantile(self.seed, trial, p.key)) for p in self.parameters}

    def _point(self, index: int) -> dict[str, Any]:
        """Point `index` of the product of the parameters' values, the last parameter fastest."""
        out = {}
        for p in reversed(self.parameters):
            index, i = divmod(index, len(p.values))
            out[p.key] = p.values[i]
        return {p.key: out[p.key] for p in self.parameters}

    def rungs(self, train_steps: int) -> tuple[int, ...]:
        """The steps at which a trial is measured: for asha from (fork step +) min_steps, times reduction_factor,
        below train_steps, then train_steps; for grid and random train_steps alone."""
        if self.method != "asha":
            return (train_steps,)
        start = self.fork.step if self.fork else 0
        out, r = [], self.min_steps
        while start + r < train_steps:
            out.append(start + r)
            r *= self.reduction_factor
        return (*out, train_steps)


@functools.lru_cache(maxsize=8)
def _order(seed: int, lap: int, size: int) -> tuple[int, ...]:
    """The points 0..size-1 in the order of their sha256 keys: a function of the seed alone (and which lap)."""
    return tuple(sorted(range(size), key=lambda i: hashlib.sha256(f"gradmesh-sweep/{seed}/order/{lap}/{i}"
                                                                   .encode()).digest()))


def _quantile(seed: int, trial: int, key: str) -> float:
    digest = hashlib.sha256(f"gradmesh-sweep/{seed}/{trial}/{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0 ** 64


def parse_sweep(text: str) -> tuple[SweepSpec, dict]:
    """The [sweep] table checked, and the job spec around it (a plain dict, checked per trial by the caller)."""
    raw = load_raw(text)
    if not isinstance(raw, dict):
        raise SpecError("spec", "must be a table of keys")
    raw = copy.deepcopy(raw)
    table = raw.pop("sweep", None)
    if not isinstance(table, dict):
        raise SpecError("sweep", "a sweep file is a job spec with a [sweep] table (method, metric, parameters)")
    unknown = sorted(set(table) - _SWEEP_KEYS)
    if unknown:
        raise SpecError(f"sweep.{short_repr(unknown[0], 40).strip(chr(39))}",
                        f"unknown key (allowed: {', '.join(sorted(_SWEEP_KEYS))})")
    method = _choice(table, "method", METHODS, None)
    metric = _choice(table, "metric", METRICS, "val_loss")
    goal = _choice(table, "goal", GOALS, "maximize" if metric == "val_accuracy" else "minimize")
    seed = _int(table, "seed", 0, 0)
    max_concurrent = _int(table, "max_concurrent", 0, 1) if "max_concurrent" in table else 0
    parameters = _parameters(table.get("parameters"), grid=method == "grid")
    if method == "grid":
        if "max_trials" in table:
            raise SpecError("sweep.max_trials", "not used: a grid runs the whole product of its values")
        trials = math.prod(len(p.values) for p in parameters)
        if trials > MAX_TRIALS:
            raise SpecError("sweep.parameters", f"the grid has {trials} points; at most {MAX_TRIALS}")
    else:
        if "max_trials" not in table:
            raise SpecError("sweep.max_trials", f"required for method = {method!r}: how many trials to sample")
        trials = _int(table, "max_trials", 0, 1, MAX_TRIALS)
    min_steps, factor = 0, 3
    if method == "asha":
        asha = table.get("asha")
        if not isinstance(asha, dict):
            raise SpecError("sweep.asha", "method = \"asha\" needs [sweep.asha] with min_steps (the first rung)")
        extra = sorted(set(asha) - {"min_steps", "reduction_factor"})
        if extra:
            raise SpecError(f"sweep.asha.{extra[0]}", "unknown key (allowed: min_steps, reduction_factor)")
        if "min_steps" not in asha:
            raise SpecError("sweep.asha.min_steps", "required: the steps of the first rung")
        min_steps = _int(asha, "min_steps", 0, 1, where="sweep.asha.")
        factor = _int(asha, "reduction_factor", 3, 2, 100, where="sweep.asha.")
        if any(p.key == "train.steps" for p in parameters):
            raise SpecError("sweep.parameters.train.steps", "asha measures trials at steps up to train.steps: it "
                                                            "cannot be a parameter")
    elif "asha" in table:
        raise SpecError("sweep.asha", f"not used: only method = \"asha\" has rungs (this sweep's is {method!r})")
    fork = _fork(table.get("fork")) if "fork" in table else None
    spec = SweepSpec(method, metric, goal, trials, max_concurrent, seed, parameters, min_steps, factor, fork)
    if method == "asha":
        steps = raw.get("train", {}).get("steps") if isinstance(raw.get("train"), dict) else None
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
            raise SpecError("train.steps", "an asha sweep counts its rungs in steps: set train.steps (not epochs)")
        start = fork.step if fork else 0
        if start + min_steps >= steps:
            raise SpecError("sweep.asha.min_steps", f"the first rung (step {start + min_steps}) must come before "
                                                    f"train.steps ({steps})")
    return spec, raw


def trial_spec(base: dict, params: dict[str, Any]) -> dict:
    """The job spec of one trial: `base` with each dotted key set to its value."""
    raw = copy.deepcopy(base)
    for key, value in params.items():
        *path, last = key.split(".")
        node = raw
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpecError(key, f"{part} is not a table in the job spec")
        node[last] = value
    return raw


def flat(raw: dict, prefix: str = "") -> dict[str, Any]:
    """A spec dict as dotted keys ({"optim": {"lr": 0.1}} → {"optim.lr": 0.1}): a fork sweep's file applied to
    its parent's spec as settings."""
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def spec_key_exists(key: str) -> bool:
    """Whether `key` ("optim.lr") names a setting of the job spec."""
    cls: Any = JobSpec
    for part in key.split("."):
        if not dataclasses.is_dataclass(cls):
            return False
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return False
        f = fields[part]
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        cls = type(default) if dataclasses.is_dataclass(default) else None
    return cls is None


def _parameters(table: Any, grid: bool) -> tuple[Param, ...]:
    if not isinstance(table, dict) or not table:
        raise SpecError("sweep.parameters", "needs at least one parameter: \"optim.lr\" = { values = [...] } or "
                                            "{ low = ..., high = ... }")
    out = []
    for key, value in table.items():
        where = f"sweep.parameters.{short_repr(key, 60).strip(chr(39))}"
        if not spec_key_exists(key):
            raise SpecError(where, "not a job spec key (write it dotted, e.g. \"optim.lr\" or \"model.layers\")")
        if not isinstance(value, dict):
            raise SpecError(where, "must be a table: { values = [...] } or { low = ..., high = ..., log = false }")
        if "values" in value:
            extra = sorted(set(value) - {"values"})
            if extra:
                raise SpecError(f"{where}.{extra[0]}", "not used with values (a range is low, high and log)")
            values = value["values"]
            if not isinstance(values, list) or not values:
                raise SpecError(f"{where}.values", "must be a non-empty list")
            if len(values) > MAX_VALUES:
                raise SpecError(f"{where}.values", f"at most {MAX_VALUES} values, got {len(values)}")
            out.append(Param(key, tuple(values)))
            continue
        if grid:
            raise SpecError(where, "a grid needs { values = [...] }: it enumerates them")
        extra = sorted(set(value) - {"low", "high", "log"})
        if extra or "low" not in value or "high" not in value:
            raise SpecError(where, "a range is { low = ..., high = ..., log = false } (or give values = [...])")
        low, high, log = value["low"], value["high"], value.get("log", False)
        for name, v in (("low", low), ("high", high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise SpecError(f"{where}.{name}", f"must be a finite number, got {short_repr(v)}")
        if not isinstance(log, bool):
            raise SpecError(f"{where}.log", f"must be true or false, got {short_repr(log)}")
        if not low < high:
            raise SpecError(f"{where}.high", f"must be greater than low ({low})")
        if log and low <= 0:
            raise SpecError(f"{where}.low", "must be positive on a log scale")
        out.append(Param(key, (), float(low), float(high), log, isinstance(low, int) and isinstance(high, int)))
    return tuple(out)


def _fork(table: Any) -> Fork:
    if not isinstance(table, dict) or set(table) != {"job", "step"}:
        raise SpecError("sweep.fork", "must be { job = \"JOB_ID\", step = K }: the checkpoint every trial starts from")
    if not isinstance(table["job"], str) or not table["job"]:
        raise SpecError("sweep.fork.job", "must be a job id")
    return Fork(table["job"], _int(table, "step", 0, 1, where="sweep.fork."))


def _choice(table: dict, key: str, allowed: tuple[str, ...], default: str | None) -> str:
    if key not in table:
        if default is None:
            raise SpecError(f"sweep.{key}", f"required: one of {', '.join(allowed)}")
        return default
    value = table[key]
    if value not in allowed:
        raise SpecError(f"sweep.{key}", f"must be one of {', '.join(allowed)}; got {short_repr(value)}")
    return value


def _int(table: dict, key: str, default: int, low: int, high: int = 1 << 62, where: str = "sweep.") -> int:
    value = table.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{where}{key}", f"must be an integer, got {short_repr(value)}")
    if not low <= value <= high:
        raise SpecError(f"{where}{key}", f"must be in {low}..{high}, got {value}" if high < 1 << 62
                        else f"must be at least {low}, got {value}")
    return value


__all__ = ["SweepSpec", "Param", "Fork", "parse_sweep", "trial_spec", "flat", "spec_key_exists", "METRICS",
           "MAX_TRIALS"]
