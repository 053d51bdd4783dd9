"""The job spec: a declarative description of one training job, validated into typed, frozen dataclasses.

A spec arrives as TOML (or the same structure as JSON), from a file or from the coordinator. Every key is
checked: an unknown key or a bad value raises `SpecError` naming the dotted key and the reason, so a
person can fix the file without reading code. The coordinator imports this module to refuse bad jobs at
submission, so it and the two below it must stay free of numpy, MPI and gRPC.

    spec = load_spec("examples/digits.toml")
    spec.train.batch_size            # 64
    spec.to_dict()                   # plain dict, round-trips through parse_spec()

This module is the spec's public face: import from here. It defines nothing; it gathers
  worker/spec_shape.py     the shape: every key with its default (the dataclasses), the choices and limits,
                           SpecError, and the settings an option does not use (`unused_settings`)
  worker/spec_parsing.py   reading and checking: text → plain structure → JobSpec (`load_spec`, `parse_spec`,
                           `parse_spec_text`, `load_raw`, `drop_unused`, `parse_stored_spec`,
                           `with_overrides`)
spec_parsing imports spec_shape, spec_shape imports neither, and nothing below imports this module.
"""
from __future__ import annotations

from worker.spec_parsing import (drop_unused, load_raw, load_spec, parse_spec, parse_spec_text, parse_stored_spec,
                                 with_overrides)
from worker.spec_shape import (ACTIVATIONS, BF16_WIRE_NOTE, BUILTIN_SOURCES, INT64_MAX, INT64_MIN, LOSSES,
                               MAX_BACKOFF_S, MAX_HANG_TIMEOUT_S, MAX_LAYER_SIZE, MAX_RESTARTS, NORMALIZATIONS, OPTIMIZERS,
                               SCHEDULES, WIRES, CheckpointSpec, DataSpec, FaultSpec, JobSpec, ModelSpec, OptimSpec,
                               SpecError, SyntheticSpec, TrackingSpec, TrainSpec, is_csv_source, is_idx_file_source,
                               short_repr, unused_settings)

__all__ = [
    # the shape (worker/spec_shape.py)
    "JobSpec", "ModelSpec", "DataSpec", "SyntheticSpec", "TrainSpec", "OptimSpec", "CheckpointSpec", "FaultSpec",
    "TrackingSpec",
    "SpecError", "unused_settings", "is_csv_source", "is_idx_file_source", "short_repr",
    "ACTIVATIONS", "LOSSES", "OPTIMIZERS", "SCHEDULES", "NORMALIZATIONS", "BUILTIN_SOURCES", "WIRES", "BF16_WIRE_NOTE",
    "MAX_LAYER_SIZE", "MAX_RESTARTS", "MAX_BACKOFF_S", "MAX_HANG_TIMEOUT_S", "INT64_MIN", "INT64_MAX",
    # reading and checking (worker/spec_parsing.py)
    "load_spec", "parse_spec_text", "load_raw", "parse_spec", "drop_unused", "parse_stored_spec", "with_overrides",
]
