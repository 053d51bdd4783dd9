"""Checks of request fields, each raising `InvalidArgument(field, reason)` with a reason a person can act on.

Job ids double as directory names under DATA_DIR, so they are restricted to a safe alphabet; dataset
paths in specs must resolve (symlinks followed) to an existing path under one of the data roots.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from coordinator.errors import InvalidArgument

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
MAX_SPEC_BYTES = 1 << 20
MAX_LABELS = 64
MAX_LABEL_VALUE = 256


def job_id(value: str, field: str = "job_id") -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if not JOB_ID_RE.fullmatch(value):
        raise InvalidArgument(field, f"{value[:80]!r} is not a job id (1-64 of A-Z a-z 0-9 . _ -, "
                                     "starting with a letter or digit)")
    return value


def labels(values: Mapping[str, str]) -> dict[str, str]:
    if len(values) > MAX_LABELS:
        raise InvalidArgument("labels", f"at most {MAX_LABELS} labels, got {len(values)}")
    for key, value in values.items():
        if not LABEL_KEY_RE.fullmatch(key):
            raise InvalidArgument(f"labels[{key[:40]}]", "a key is 1-63 of A-Z a-z 0-9 . _ / -, starting with a "
                                                         "letter or digit")
        if len(value) > MAX_LABEL_VALUE:
            raise InvalidArgument(f"labels[{key}]", f"a value is at most {MAX_LABEL_VALUE} characters")
    return dict(values)


def non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative, got {value}")
    return value


def page_size(value: int, default: int = 50, limit: int = 1000) -> int:
    if value < 0 or value > limit:
        raise InvalidArgument("page_size", f"must be in 0..{limit} (0 = {default}), got {value}")
    return value or default


def page_token(value: str) -> int:
    """Our page tokens are the submission sequence number to continue below; '' = the first page."""
    if not value:
        return 0
    if not value.isdigit() or int(value) <= 0:
        raise InvalidArgument("page_token", f"{value[:40]!r} is not a token returned by ListJobs")
    return int(value)


def dataset_path(source: str, roots: Sequence[Path]) -> Path:
    """The resolved path of a dataset under a data root. Relative sources are tried against each root."""
    raw = Path(source).expanduser()
    resolved_roots = [r.resolve() for r in roots]
    candidates = [raw] if raw.is_absolute() else [root / raw for root in resolved_roots]
    roots_text = ", ".join(str(r) for r in resolved_roots) or "(none configured)"
    outside = None
    for candidate in candidates:
        resolved = candidate.resolve()
        if not any(resolved.is_relative_to(r) for r in resolved_roots):
            outside = resolved
            continue
        if resolved.exists():
            return resolved
    if outside is not None:
        raise InvalidArgument("data.source", f"{source!r} resolves to {outside}, which is outside the data roots "
                                             f"({roots_text})")
    raise InvalidArgument("data.source", f"{source!r} does not exist under the data roots ({roots_text})")
