"""Every cap the coordinator enforces, in one place: its default, its `gradmesh serve` flag, what it bounds.

A coordinator shared by a team must not let one careless (or hostile) submission exhaust the host's memory,
disk or database. Each cap below is checked where the thing it bounds enters: at SubmitJob (spec, labels,
queue, the job's memory and metric points), at ReportProgress (points per report and per job) and at
UploadCheckpoint (size and count). A request over a cap gets INVALID_ARGUMENT naming the field when the
request itself is wrong (a spec too large, a model that cannot fit) and RESOURCE_EXHAUSTED when a quota
of the coordinator is used up (the queue is full, the job stored all the points it may).

    limits = Limits(queued_jobs=500)               # or Limits.from_args(args) after add_arguments(parser)
    limits.memory_per_slot_or(default=12 << 30)    # the bytes one rank may use

Fixed rules that are part of the spec itself (layer sizes, workers, restarts, backoff, hang timeout, int64)
live in `worker.spec` (checked in `worker.spec_parsing`); docs/security.md's table of caps lists both.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass, fields

_SIZE = re.compile(r"([0-9]{1,18})\s*([KMGT]?)(i?B)?", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


@dataclass(frozen=True)
class Limits:
    memory_per_slot: int = 0          # bytes one rank may need (its estimate); 0 = this host's memory / slots
    spec_bytes: int = 64 << 10        # size of a spec's text
    spec_depth: int = 8               # nesting of tables/arrays in a spec (a real one is 3 deep)
    labels: int = 64                  # labels per job
    label_key_chars: int = 63         # characters of a label key (A-Z a-z 0-9 . _ / -)
    label_value_chars: int = 256      # characters of a label value
    queued_jobs: int = 1000           # jobs waiting (QUEUED) at once; more submissions get RESOURCE_EXHAUSTED
    points_per_report: int = 1000     # metric points in one ReportProgress
    points_per_job: int = 100_000     # metric points one job may store (train.steps / train.eval_every)
    checkpoints_per_job: int = 32     # checkpoint records per job; checkpoint.keep_last <= this - 2 (best, final)

    def __post_init__(self):
        if self.checkpoints_per_job < 3:
            raise ValueError("the checkpoints per job must be at least 3 (the newest, the best and the final)")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The serve flags, one per cap, in their own group (defaults shown by --help)."""
        group = parser.add_argument_group("limits", "caps that keep one job or user from exhausting the "
                                                    "coordinator (see docs/security.md)")
        for f in fields(Limits):
            default = f.default
            kind = parse_size if f.name == "memory_per_slot" else _positive_int
            shown = "this host's memory / its slots" if f.name == "memory_per_slot" else default
            group.add_argument(FLAGS[f.name], dest=f"limit_{f.name}", type=kind, default=None,
                               metavar="N", help=f"{HELP[f.name]} (default {shown})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "Limits":
        given = {f.name: getattr(args, f"limit_{f.name}", None) for f in fields(cls)}
        return cls(**{k: v for k, v in given.items() if v is not None})

    def memory_per_slot_or(self, default: int) -> int:
        return self.memory_per_slot or default


FLAGS = {
    "memory_per_slot": "--memory-per-slot",
    "spec_bytes": "--max-spec-bytes",
    "spec_depth": "--max-spec-depth",
    "labels": "--max-labels",
    "label_key_chars": "--max-label-key",
    "label_value_chars": "--max-label-value",
    "queued_jobs": "--max-queued-jobs",
    "points_per_report": "--max-points-per-report",
    "points_per_job": "--max-points-per-job",
    "checkpoints_per_job": "--max-checkpoints-per-job",
}

HELP = {
    "memory_per_slot": "memory one rank may use, e.g. 4G; a job whose estimate per rank is larger is refused",
    "spec_bytes": "bytes of a job spec's text",
    "spec_depth": "nesting depth of a job spec",
    "labels": "labels per job",
    "label_key_chars": "characters of a label key",
    "label_value_chars": "characters of a label value",
    "queued_jobs": "jobs queued at once (further submissions get RESOURCE_EXHAUSTED)",
    "points_per_report": "metric points in one progress report",
    "points_per_job": "metric points one job may store (a job needing more is refused at submission)",
    "checkpoints_per_job": "checkpoints one job may hold (keep_last at most this minus 2)",
}


def parse_size(text: str) -> int:
    """Bytes from "4294967296", "4G", "512MiB", "64k"; argparse shows the ValueError as a usage error."""
    found = _SIZE.fullmatch(text.strip())
    if not found:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size (e.g. 4G, 512M, 1048576)")
    value = int(found.group(1)) * _UNITS[found.group(2).upper()]
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,18}", text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number in digits 0-9")
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def host_memory_bytes() -> int:
    """This host's physical memory (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
