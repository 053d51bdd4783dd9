"""Reading a job spec and validating it: text → plain structure → the typed, frozen `worker.spec.JobSpec`.

Kept apart from the dataclasses (worker/spec_shape.py, where every key is documented with its default) so
that the spec's shape reads as one page and its checks as another: each key is type-checked against its
default's type (`_coerce`), each section against its ranges and choices (`_check_section`), then the rules
across sections (`_check_cross_fields`) and the settings the chosen options do not use. The first bad key
raises SpecError naming the dotted key and the reason.

Callers import these functions from `worker.spec`, the spec's public face, which imports this module; this
module imports only the shape below it (worker/spec_shape.py).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from pathlib import Path
from typing import Any

from worker.spec_shape import (ACTIVATIONS, INT64_MAX, INT64_MIN, LOSSES, MAX_BACKOFF_S, MAX_HANG_TIMEOUT_S,
                               MAX_LAYER_SIZE, MAX_MICRO_BATCHES, MAX_RESTARTS, NORMALIZATIONS, OPTIMIZERS, SCHEDULES,
                               OVERLAP_WORDS, WIRES,
                               CheckpointSpec, DataSpec, FaultSpec, JobSpec, ModelSpec, OptimSpec, SpecError,
                               SyntheticSpec, TrainSpec, short_repr, unused_settings)


def load_spec(path: str | Path) -> JobSpec:
    """Read a TOML or JSON spec file. Raises SpecError (field "file") when it cannot be read or parsed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise SpecError("file", f"cannot read {path}: {exc.strerror or exc}") from None
    return parse_spec_text(text, json_format=path.suffix.lower() == ".json")


def parse_spec_text(text: str, json_format: bool | None = None) -> JobSpec:
    """Parse spec text; JSON when `json_format` is true, or when None and the text starts with '{'."""
    return parse_spec(load_raw(text, json_format))


def load_raw(text: str, json_format: bool | None = None) -> Any:
    """The plain structure of spec text, not yet validated (SpecError, field "file", when it does not parse)."""
    if json_format is None:
        json_format = text.lstrip().startswith("{")
    kind = "JSON" if json_format else "TOML"
    try:
        return json.loads(text, parse_int=_bounded_int) if json_format else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise SpecError("file", f"not valid {kind}: {exc}") from None
    except SpecError:
        raise
    except ValueError as exc:  # an integer longer than Python converts (TOML; JSON stops at _bounded_int)
        raise SpecError("file", f"not a usable {kind} spec: {str(exc).split(';')[0]}") from None
    except RecursionError:
        raise SpecError("file", "nested too deeply (a job spec is at most a few tables deep)") from None


MAX_INT_DIGITS = 40  # far beyond any setting's range (int64 has 19 digits); longer ones are refused unread


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise SpecError("file", f"an integer of {len(text.lstrip('-'))} digits; a spec's numbers have at most "
                                f"{MAX_INT_DIGITS}")
    return int(text)


def parse_spec(raw: Any) -> JobSpec:
    """Validate a plain dict into a JobSpec, or raise SpecError naming the first bad key."""
    if not isinstance(raw, dict):
        raise SpecError("spec", "must be a table of keys")
    spec = _build(JobSpec, raw, "")
    _check_cross_fields(spec)
    for section, key, reason in unused_settings(spec):
        if isinstance(raw.get(section), dict) and key in raw[section]:
            raise SpecError(f"{section}.{key}", f"not used: {reason}")
    return spec


def drop_unused(raw: dict[str, Any]) -> dict[str, Any]:
    """`raw` without the settings its options do not use: for specs stored before such settings were
    refused (their canonical JSON listed every key). Raises SpecError when `raw` is otherwise invalid."""
    return _without_unused(raw)[0]


def parse_stored_spec(raw: Any) -> tuple[JobSpec, list[str]]:
    """A spec that was accepted once and stored (by a coordinator, in a checkpoint's metadata), read leniently:
    the settings its options do not use are dropped, not refused, and named in the second value ("optim.momentum",
    ...) so the reader can say so. Releases up to 2026-11-28 stored every key with its default. Everything else
    is checked as `parse_spec` checks it; only new submissions are refused for unused settings."""
    cleaned, dropped = _without_unused(raw)
    return parse_spec(cleaned), dropped


def _without_unused(raw: Any) -> tuple[dict[str, Any], list[str]]:
    if not isinstance(raw, dict):
        raise SpecError("spec", "must be a table of keys")
    spec = _build(JobSpec, raw, "")
    cleaned = {k: (dict(v) if isinstance(v, dict) else v) for k, v in raw.items()}
    dropped = []
    for section, key, _reason in unused_settings(spec):
        if isinstance(cleaned.get(section), dict) and key in cleaned[section]:
            del cleaned[section][key]
            dropped.append(f"{section}.{key}")
    return cleaned, dropped


def _build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "spec"
    if not isinstance(raw, dict):
        raise SpecError(where, f"must be a table, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise SpecError(prefix + short_repr(unknown[0], 64).strip("'"), f"unknown key (allowed: {', '.join(sorted(fields))})")
    values = {}
    for name, value in raw.items():
        key = prefix + name
        default = fields[name].default
        if default is dataclasses.MISSING:
            default = fields[name].default_factory()  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            values[name] = _build(type(default), value, key + ".")
        else:
            values[name] = _coerce(key, value, default)
    obj = cls(**values)
    _check_section(obj, prefix)
    return obj


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Type-check one scalar (or list) against the type of its default."""
    if isinstance(default, bool):
        words = OVERLAP_WORDS if key == "train.overlap" else ()
        if isinstance(value, str) and value in words:
            return value
        if not isinstance(value, bool):
            allowed = "true, false or " + " or ".join(f'"{w}"' for w in words) if words else "true or false"
            raise SpecError(key, f"must be {allowed}, got {short_repr(value)}")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise SpecError(key, f"must be an integer, got {short_repr(value)}")
        if not INT64_MIN <= value <= INT64_MAX:
            raise SpecError(key, f"must fit in 64 bits (at most {INT64_MAX}), got {short_repr(value)}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SpecError(key, f"must be a number, got {short_repr(value)}")
        if isinstance(value, int) and not -1e308 < value < 1e308:
            raise SpecError(key, f"must be finite, got {short_repr(value)}")
        if not math.isfinite(value):
            raise SpecError(key, f"must be finite, got {short_repr(value)}")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise SpecError(key, f"must be a string, got {short_repr(value)}")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise SpecError(key, f"must be a list of integers, got {short_repr(value)}")
        if len(value) > 1024:
            raise SpecError(key, f"at most 1024 entries, got {len(value)}")
        return tuple(value)
    raise AssertionError(f"no coercion for {key}")  # pragma: no cover - a programming error


def _require(ok: bool, key: str, reason: str) -> None:
    if not ok:
        raise SpecError(key, reason)


def _one_of(value: str, allowed: tuple[str, ...], key: str) -> None:
    _require(value in allowed, key, f"must be one of {', '.join(allowed)}; got {short_repr(value)}")


def _check_section(obj: Any, prefix: str) -> None:
    p = prefix
    if isinstance(obj, ModelSpec):
        _require(len(obj.layers) >= 2, p + "layers", "needs at least [inputs, outputs]")
        _require(all(0 < n <= MAX_LAYER_SIZE for n in obj.layers), p + "layers",
                 f"every size must be in 1..{MAX_LAYER_SIZE}")
        _one_of(obj.activation, ACTIVATIONS, p + "activation")
        _one_of(obj.loss, LOSSES, p + "loss")
    elif isinstance(obj, SyntheticSpec):
        _require(obj.samples >= 2, p + "samples", "must be at least 2")
        _require(obj.features >= 1, p + "features", "must be at least 1")
        _require(2 <= obj.classes <= MAX_LAYER_SIZE, p + "classes", f"must be in 2..{MAX_LAYER_SIZE}")
        _require(obj.seed >= 0, p + "seed", "must not be negative")
        _require(obj.samples * obj.features <= 1 << 31, p + "samples", "samples × features exceeds 2^31")
    elif isinstance(obj, DataSpec):
        _require(obj.source.strip() != "", p + "source", "must not be empty")
        _require(len(obj.source) <= 4096 and "\0" not in obj.source, p + "source",
                 "must be a path of at most 4096 characters, without NUL")
        _require(0.0 <= obj.val_fraction < 1.0, p + "val_fraction", "must be in [0, 1)")
        _require(0 < len(obj.label_column) <= 1024, p + "label_column", "must be 1..1024 characters")
        _require(len(obj.labels) <= 4096 and "\0" not in obj.labels, p + "labels",
                 "must be a path of at most 4096 characters, without NUL")
        _one_of(obj.normalize, NORMALIZATIONS, p + "normalize")
    elif isinstance(obj, TrainSpec):
        _require(obj.epochs >= 0, p + "epochs", "must not be negative")
        _require(obj.steps >= 0, p + "steps", "must not be negative")
        _require((obj.epochs > 0) != (obj.steps > 0), p + "epochs", "set exactly one of epochs or steps")
        _require(obj.batch_size >= 1, p + "batch_size", "must be at least 1")
        _require(obj.seed >= 0, p + "seed", "must not be negative")
        _require(obj.eval_every >= 1, p + "eval_every", "must be at least 1")
        _require(obj.threads_per_rank >= 0, p + "threads_per_rank", "must not be negative (0 = automatic)")
        _require(0 <= obj.micro_batches <= MAX_MICRO_BATCHES, p + "micro_batches",
                 f"must be in 0..{MAX_MICRO_BATCHES} (0 = per-rank sums, not exact across rank counts)")
        _require(obj.overlap != "auto" or obj.micro_batches > 0, p + "overlap",
                 '"auto" chooses how the exact step combines between hosts: it needs micro_batches > 0')
        _one_of(obj.wire, WIRES, p + "wire")
        _require(obj.wire == "fp32" or obj.micro_batches > 0, p + "wire",
                 "bf16 is the exact step's wire format: it needs micro_batches > 0 (the per-rank sums of "
                 "micro_batches = 0 cross hosts in fp32)")
        _require(re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,31}", obj.blas_kernel) is not None, p + "blas_kernel",
                 f"must be auto, default or an OpenBLAS core name such as Haswell; got {short_repr(obj.blas_kernel)}")
    elif isinstance(obj, OptimSpec):
        _one_of(obj.name, OPTIMIZERS, p + "name")
        _require(obj.lr > 0, p + "lr", "must be positive")
        _require(0 <= obj.momentum < 1, p + "momentum", "must be in [0, 1)")
        _require(0 <= obj.beta1 < 1, p + "beta1", "must be in [0, 1)")
        _require(0 <= obj.beta2 < 1, p + "beta2", "must be in [0, 1)")
        _require(obj.eps > 0, p + "eps", "must be positive")
        _require(obj.weight_decay >= 0, p + "weight_decay", "must not be negative")
        _require(obj.clip_norm >= 0, p + "clip_norm", "must not be negative (0 = off)")
        _one_of(obj.schedule, SCHEDULES, p + "schedule")
        _require(obj.warmup_steps >= 0, p + "warmup_steps", "must not be negative")
        _require(obj.step_size >= 1, p + "step_size", "must be at least 1")
        _require(0 < obj.gamma <= 1, p + "gamma", "must be in (0, 1]")
        _require(0 <= obj.min_lr <= obj.lr, p + "min_lr", "must be in [0, lr]")
    elif isinstance(obj, CheckpointSpec):
        _require(obj.every_steps >= 0, p + "every_steps", "must not be negative (0 = only at the end)")
        _require(obj.keep_last >= 1, p + "keep_last", "must be at least 1")
    elif isinstance(obj, FaultSpec):
        _require(0 <= obj.max_restarts <= MAX_RESTARTS, p + "max_restarts", f"must be in 0..{MAX_RESTARTS}")
        _require(0 <= obj.backoff_s <= MAX_BACKOFF_S, p + "backoff_s", f"must be in 0..{MAX_BACKOFF_S:g} seconds")
        _require(0 < obj.hang_timeout_s <= MAX_HANG_TIMEOUT_S, p + "hang_timeout_s",
                 f"must be positive and at most {MAX_HANG_TIMEOUT_S:g} seconds (a week)")
        _require(obj.min_workers >= 0, p + "min_workers", "must not be negative (0 = workers: not elastic)")
    elif isinstance(obj, JobSpec):
        _require(0 < len(obj.name) <= 128, p + "name", "must be 1..128 characters")
        _require(1 <= obj.workers <= 4096, p + "workers", "must be in 1..4096")
        # the API carries a job's priority as an int32 (gradmesh.v1.Job.priority)
        _require(-(1 << 31) <= obj.priority < (1 << 31), p + "priority", "must fit in 32 bits (-2**31..2**31-1)")


def _check_cross_fields(spec: JobSpec) -> None:
    uri = spec.tracking.mlflow_uri
    _require(not uri or (re.match(r"https?://[^/\s]+", uri) is not None and len(uri) <= 2000), "tracking.mlflow_uri",
             "must be the tracking server's http:// or https:// URL")
    uri = spec.tracking.mlflow_uri
    _require(not uri or (re.match(r"https?://[^/\s]+", uri) is not None and len(uri) <= 2000), "tracking.mlflow_uri",
             "must be the tracking server's http:// or https:// URL")
    _require(spec.fault.min_workers <= spec.workers, "fault.min_workers",
             f"must be at most workers ({spec.workers}): it is the fewest ranks an elastic job runs on")
    if spec.model.loss == "cross_entropy":
        _require(spec.model.layers[-1] >= 2, "model.layers", "cross_entropy needs at least 2 outputs")
    if spec.data.source == "synthetic":
        syn = spec.data.synthetic
        _require(spec.model.layers[0] == syn.features, "model.layers",
                 f"first size {spec.model.layers[0]} must equal data.synthetic.features {syn.features}")
        if spec.model.loss == "cross_entropy":
            _require(spec.model.layers[-1] == syn.classes, "model.layers",
                     f"last size {spec.model.layers[-1]} must equal data.synthetic.classes {syn.classes}")
    if spec.data.source == "digits":
        _require(spec.model.layers[0] == 64, "model.layers", "digits has 64 features: the first size must be 64")
        if spec.model.loss == "cross_entropy":
            _require(spec.model.layers[-1] == 10, "model.layers", "digits has 10 classes: the last size must be 10")


def with_overrides(spec: JobSpec, **changes: Any) -> JobSpec:
    """A copy with top-level fields replaced (e.g. workers=4), re-validated."""
    raw = spec.to_dict()
    raw.update(changes)
    return parse_spec(raw)
