"""What the `gradmesh` command prints: pure formatting functions and the live progress view of `watch`.

Everything shown is the coordinator's: the ETA is `Job.eta_seconds`, "best" is `Job.best` (the point with the
lowest validation loss, so it is named by its val loss), epochs are the worker's own numbers. A job whose
spec holds no validation data (`data.val_fraction = 0` and points without validation figures) says
"no validation set" instead of empty figures.

Whatever a job's submitter chose (its name, labels, messages that quote them, hosts a registered run
named) goes through `clean` before it reaches the terminal: control characters (newlines, CR, ANSI
escapes, DEL, C1) and bidirectional overrides print as escapes, so one user's job cannot forge rows or
colours in another user's terminal.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys
import time
from datetime import datetime
from typing import Any, Sequence, TextIO

from coordinator.client import JobInfo, JobState, MetricPoint, StateChange

NO_VALIDATION = "no validation set"
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def clean(text: object, indent: int | None = None) -> str:
    """`text` safe to print on a terminal: control characters and bidi overrides as escapes (\\n, \\x1b, \\u202e).
    With `indent`, a newline stays one (a message quoting a log's last lines) and the lines after it are indented
    by that many spaces, so they cannot pass for rows of their own."""
    escape = lambda m: m.group().encode("unicode_escape").decode("ascii")  # noqa: E731
    if indent is None:
        return _UNSAFE.sub(escape, str(text))
    return ("\n" + " " * indent).join(_UNSAFE.sub(escape, line) for line in str(text).split("\n"))


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_time(unix: float | None) -> str:
    if not unix:
        return "-"
    return datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S")


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def fmt_num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def progress_bar(step: int, total: int, width: int = 24) -> str:
    if total <= 0:
        return "[" + "?" * width + "]"
    filled = min(width, int(width * step / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def has_validation(job: JobInfo) -> bool:
    """False when the job holds out nothing for validation: its spec's `data.val_fraction` is 0 and no point
    the coordinator has carries a validation loss (a data file may bring its own validation split)."""
    if job.spec.get("data", {}).get("val_fraction") != 0:
        return True
    return any(p is not None and p.val_loss is not None for p in (job.latest, job.best))


def progress_line(*, state: JobState | str, step: int, total: int, loss: float | None, val_accuracy: float | None,
                  eta: float | None, samples_per_second: float = 0.0, width: int = 24,
                  validation: bool = True) -> str:
    """One line: bar, step/total, percent, loss, val acc (or "no validation set"), throughput, ETA (while the
    job runs), state."""
    state_name = state.name if isinstance(state, JobState) else str(state)
    pct = f"{100 * step / total:5.1f}%" if total > 0 else "    ?%"
    parts = [f"{progress_bar(step, total, width)} {step}/{total if total > 0 else '?'} {pct}",
             f"loss {fmt_num(loss)}",
             f"val acc {fmt_pct(val_accuracy)}" if validation or val_accuracy is not None else NO_VALIDATION]
    if samples_per_second > 0:
        parts.append(f"{samples_per_second:,.0f} samples/s")
    if not (isinstance(state, JobState) and state.is_terminal()):
        parts.append(f"ETA {fmt_duration(eta)}")
    parts.append(state_name)
    return " | ".join(parts)


def best_text(job: JobInfo) -> str:
    """"best val loss 0.1234 (acc 97.00%) at step 200": the coordinator's best point, chosen by val loss."""
    if job.best is None or job.best.val_loss is None:
        return "no best point yet" if has_validation(job) else NO_VALIDATION
    acc = f" (acc {fmt_pct(job.best.val_accuracy)})" if job.best.val_accuracy is not None else ""
    return f"best val loss {fmt_num(job.best.val_loss)}{acc} at step {job.best.step}"


def summary_line(job: JobInfo, best: bool = True) -> str:
    """The last line of `watch`: state, step, how long it ran and (with `best`) the best point."""
    took = ""
    if job.started_unix and job.ended_unix:
        took = f" in {fmt_duration(job.ended_unix - job.started_unix)}"
    return f"{clean(job.id)} {job.state.name} at step {job.step}/{job.total_steps}{took}" + (
        f", {best_text(job)}" if best else "")


def job_table(jobs: Sequence[JobInfo]) -> str:
    rows = [("ID", "STATE", "STEP", "VAL ACC", "WORKERS", "NAME", "OWNER", "CREATED")]
    for job in jobs:
        acc = job.best.val_accuracy if job.best else (job.latest.val_accuracy if job.latest else None)
        rows.append((clean(job.id), job.state.name, f"{job.step}/{job.total_steps or '?'}", fmt_pct(acc),
                     str(job.workers), clean(job.name), clean(job.owner) or "-", fmt_time(job.created_unix)))
    return table(rows)


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def describe_job(job: JobInfo) -> str:
    lines = [f"job        {clean(job.id)}  ({clean(job.name)}, owner {clean(job.owner) or '-'})",
             f"state      {job.state.name}   attempts {job.attempts}, restarts {job.restarts}"]
    if job.message:
        lines.append(f"message    {clean(job.message, indent=11)}")
    pct = f" ({100 * job.step / job.total_steps:.1f}%)" if job.total_steps else ""
    lines.append(f"progress   step {job.step}/{job.total_steps or '?'}{pct}  epoch {job.epoch}"
                 f"  ETA {fmt_duration(job.eta_seconds) if not job.is_terminal() else '-'}")
    validation = has_validation(job)
    if job.latest:
        p = job.latest
        val = (f"val_loss {fmt_num(p.val_loss)}  val_acc {fmt_pct(p.val_accuracy)}" if validation
               else NO_VALIDATION)
        lines.append(f"latest     step {p.step}  epoch {p.epoch}  loss {fmt_num(p.train_loss)}  {val}"
                     f"  {p.samples_per_second:,.0f} samples/s")
    if job.best and job.best.val_loss is not None:
        p = job.best
        lines.append(f"best       step {p.step}  val_loss {fmt_num(p.val_loss)}  val_acc {fmt_pct(p.val_accuracy)}"
                     f"  (the lowest val_loss)")
    elif not validation:
        lines.append(f"best       - ({NO_VALIDATION})")
    labels = clean(",".join(f"{k}={v}" for k, v in sorted(job.labels.items())) or "-")
    lines.append(f"workers    {job.workers}   priority {job.priority}   labels {labels}")
    lines.append(f"times      created {fmt_time(job.created_unix)}   started {fmt_time(job.started_unix)}"
                 f"   ended {fmt_time(job.ended_unix)}")
    for i, a in enumerate(job.attempt_history):  # every launch: an elastic job's resizes show here
        head = "attempts" if i == 0 else ""
        ended = fmt_time(a.ended_unix) if a.ended_unix else "running"
        slurm = f"  Slurm job {a.slurm_job}" if a.slurm_job else ""
        lines.append(f"{head:<10} #{a.attempt}  {a.ranks} rank(s) on {clean(a.hosts) or '-'}  "
                     f"{clean(a.outcome) or 'running'}  {fmt_time(a.started_unix)} .. {ended}{clean(slurm)}")
        if a.outcome and a.outcome not in ("succeeded", "resized") and a.message and a.message != job.message:
            lines.append(f"{'':<10}     why: {clean(a.message, indent=20)}")  # the cause, as --json has it
    return "\n".join(lines)


def print_json(value: Any, stream: TextIO | None = None) -> None:
    """Results are dicts of plain values (`to_dict()`); anything else (a Path) prints as its str."""
    print(json.dumps(value, default=str, indent=2, sort_keys=True), file=stream or sys.stdout)


class ProgressView:
    """Renders watch events: one line redrawn in place on a TTY (at most every `min_interval` s), plain lines
    otherwise (at most one progress line every `plain_interval` s, so a log stays readable; the last is kept).
    A terminal state prints the final progress line first, then the outcome."""

    def __init__(self, stream: TextIO, tty: bool | None = None, min_interval: float = 0.1,
                 plain_interval: float = 1.0):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.min_interval = min_interval
        self.plain_interval = plain_interval
        self._last_plain = -math.inf
        self._pending_plain = False
        self.state: JobState | None = None
        self.step = self.total = 0
        self.loss: float | None = None
        self.val_accuracy: float | None = None
        self.validation = True
        self.samples_per_second = 0.0
        self.eta: float | None = None
        self._drawn = False
        self._last_draw = 0.0

    def on_snapshot(self, job: JobInfo) -> None:
        self.state, self.step = job.state, job.step
        self.validation = has_validation(job)
        self.on_job(job)
        if job.latest:
            self._take_point(job.latest)
        self.samples_per_second = job.samples_per_second or self.samples_per_second
        if not self.tty:
            self._line(f"{clean(job.id)}: {job.state.name} at step {job.step}/{job.total_steps or '?'}"
                       + (f" — {clean(job.message, indent=2)}" if job.message else ""))
        self.draw(force=True)

    def on_job(self, job: JobInfo) -> None:
        """Take the coordinator's newer step count and ETA (from a snapshot or a GetJob while watching)."""
        self.total = job.total_steps or self.total
        self.eta = job.eta_seconds

    def on_state(self, change: StateChange) -> None:
        self.state = change.state
        outcome = f"{change.state.name}" + (f": {clean(change.message, indent=2)}" if change.message else "")
        if self.tty:
            if change.state.is_terminal():  # the final progress line stays, the outcome goes below it
                self.stream.write("\r\x1b[K" + self.render() + "\n")
                self._drawn = False
                self._line(outcome)
            else:
                self._line(outcome)
                self.draw(force=True)
        else:
            if self._pending_plain:  # the progress up to this change, before it
                self._plain_progress()
            self._line(outcome)

    def on_metric(self, point: MetricPoint) -> None:
        self._take_point(point)
        if self.tty:
            self.draw()
        elif time.monotonic() - self._last_plain >= self.plain_interval:
            self._plain_progress()
        else:
            self._pending_plain = True

    def _plain_progress(self) -> None:
        self._last_plain = time.monotonic()
        self._pending_plain = False
        self._line(self.render())

    def _take_point(self, point: MetricPoint) -> None:
        self.step = max(self.step, point.step)
        self.validation = self.validation or point.val_loss is not None
        self.loss = point.train_loss if point.train_loss is not None else self.loss
        if point.val_accuracy is not None:
            self.val_accuracy = point.val_accuracy
        if point.samples_per_second > 0:
            self.samples_per_second = point.samples_per_second

    def render(self) -> str:
        width = shutil.get_terminal_size((100, 20)).columns if self.tty else 100
        bar = max(10, min(30, width - 90))
        line = progress_line(state=self.state if self.state is not None else "?", step=self.step, total=self.total,
                             loss=self.loss, val_accuracy=self.val_accuracy, eta=self.eta,
                             samples_per_second=self.samples_per_second, width=bar, validation=self.validation)
        return line[: width - 1] if self.tty else line

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        self.stream.write("\r\x1b[K" + self.render())
        self.stream.flush()
        self._drawn = True

    def _line(self, text: str) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._pending_plain:
            self._plain_progress()
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K" + self.render() + "\n")
            self.stream.flush()
            self._drawn = False
