"""Checks of request fields, each raising `InvalidArgument(field, reason)` with a reason a person can act on.

Job ids double as directory names under DATA_DIR, so they are restricted to a safe alphabet; dataset
paths in specs must resolve (symlinks followed) to an existing path under one of the data roots.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

from coordinator.errors import InvalidArgument
from coordinator.access.limits import Limits
from worker.spec import INT64_MAX

JOB_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
LABEL_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
USER_RE = re.compile(r"[a-z][a-z0-9_-]{0,31}")  # a user's name: also a Slurm --comment and an audit column
SEQ_RE = re.compile(r"[0-9]{1,18}")  # a page token: a positive int64, in ASCII digits


def shown(text: str, limit: int = 40) -> str:
    """`text` as an error message may echo it: cut to `limit` characters, ASCII only (escapes for the rest),
    since messages and the field name travel in gRPC metadata."""
    cut = text[:limit]
    return ascii(cut)[1:-1] + ("..." if len(text) > limit else "")


def job_id(value: str, field: str = "job_id") -> str:
    if not value:
        raise InvalidArgument(field, "must not be empty")
    if not JOB_ID_RE.fullmatch(value):
        raise InvalidArgument(field, f"'{shown(value, 80)}' is not a job id (1-64 of A-Z a-z 0-9 . _ -, "
                                     "starting with a letter or digit)")
    return value


def user_name(value: str, field: str = "name") -> str:
    if not USER_RE.fullmatch(value or ""):
        raise InvalidArgument(field, f"'{shown(value or '', 80)}' is not a user name (1-32 of a-z 0-9 _ -, starting "
                                     "with a letter)")
    return value


def labels(values: Mapping[str, str], limits: Limits = Limits()) -> dict[str, str]:
    if len(values) > limits.labels:
        raise InvalidArgument("labels", f"at most {limits.labels} labels, got {len(values)}")
    for key, value in values.items():
        if not LABEL_KEY_RE.fullmatch(key) or len(key) > limits.label_key_chars:
            raise InvalidArgument(f"labels[{key[:40]}]", f"a key is 1-{limits.label_key_chars} of A-Z a-z 0-9 . _ / "
                                                         "-, starting with a letter or digit")
        if len(value) > limits.label_value_chars:
            raise InvalidArgument(f"labels[{key}]", f"a value is at most {limits.label_value_chars} characters, "
                                                    f"got {len(value)}")
    return dict(values)


def nesting_depth(raw: object) -> int:
    """How deeply tables and arrays nest in a parsed spec (a table of scalars is 1), without recursion."""
    deepest, todo = 0, [(raw, 1)]
    while todo:
        value, depth = todo.pop()
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else None
        if children is None:
            continue
        deepest = max(deepest, depth)
        todo.extend((child, depth + 1) for child in children)
    return deepest


def non_negative(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(field, f"must not be negative, got {value}")
    if value > INT64_MAX:
        raise InvalidArgument(field, f"must fit in 64 bits, got {value}")
    return value


def page_size(value: int, default: int = 50, limit: int = 1000) -> int:
    if value < 0 or value > limit:
        raise InvalidArgument("page_size", f"must be in 0..{limit} (0 = {default}), got {value}")
    return value or default


def page_token(value: str, call: str = "ListJobs") -> int:
    """Our page tokens are a positive int64 in ASCII digits (ListJobs: the submission sequence number to
    continue below; GetMetrics: the step to continue from); '' = the first page."""
    if not value:
        return 0
    if not SEQ_RE.fullmatch(value) or int(value) <= 0:
        raise InvalidArgument("page_token", f"'{shown(value)}' is not a token returned by {call}")
    return int(value)


def dataset_path(source: str, roots: Sequence[Path]) -> Path:
    """The resolved path of a dataset under a data root. Relative sources are tried against each root."""
    raw = Path(source).expanduser()
    resolved_roots = [r.resolve() for r in roots]
    candidates = [raw] if raw.is_absolute() else [root / raw for root in resolved_roots]
    roots_text = ", ".join(str(r) for r in resolved_roots) or "(none configured)"
    outside = None
    for candidate in candidates:
        try:
            resolved = candidate.resolve()
            if not any(resolved.is_relative_to(r) for r in resolved_roots):
                outside = resolved
                continue
            if resolved.exists():
                return resolved
        except OSError as err:  # a name too long for the filesystem, a loop of links, ...
            raise InvalidArgument("data.source", f"not a usable path ({shown(err.strerror or str(err), 100)}): "
                                                 f"'{shown(source, 60)}'") from None
    if outside is not None:
        raise InvalidArgument("data.source", f"'{shown(source, 200)}' resolves to {shown(str(outside), 200)}, which is outside the data roots "
                                             f"({roots_text})")
    raise InvalidArgument("data.source", f"'{shown(source, 200)}' does not exist under the data roots ({roots_text})")
