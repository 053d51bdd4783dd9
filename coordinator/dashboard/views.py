"""The dashboard's JSON: the core's records as plain dicts a page renders, and nothing else.

Pure functions of the core's objects (coordinator.jobs.views.JobView, coordinator.store.records rows), so the HTTP
adapter stays routing and transport. Floats that were not measured (NaN) become null: JSON has no NaN, and
the charts draw null as a gap. Paths on the coordinator's disk are never sent.
"""
from __future__ import annotations

import json
import math
from typing import Any, Sequence

from coordinator.hosts import parse_formatted_hosts
from coordinator.jobs.views import JobView
from coordinator.reports import FailureCause
from coordinator.states import JobState
from coordinator.store.checkpoints import best_of
from coordinator.store.records import AttemptRow, CheckpointRow, JobRow, MetricRow, TransitionRow
from coordinator.supervision.slurm import UNSUBMITTED

LOG_TAIL_MARK = "\nlast lines of "  # where a failure message folds in its log's tail (supervision.outcomes)
MAX_SUMMARY = 300


def number(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) or math.isinf(x) else x


def metric(m: MetricRow) -> dict[str, Any]:
    return {"step": m.step, "epoch": m.epoch, "train_loss": number(m.train_loss), "val_loss": number(m.val_loss),
            "val_accuracy": number(m.val_accuracy), "samples_per_second": number(m.samples_per_second),
            "lr": number(m.lr), "time": m.time_unix, "attempt": m.attempt}


def transition(t: TransitionRow) -> dict[str, Any]:
    return {"id": t.id, "state": t.state.name, "message": t.message, "time": t.time, "attempt": t.attempt}


def summary(v: JobView) -> str:
    """One line that says why the job is where it is: for a failure its cause, rank, host and step (the log's tail
    stays in the log box); otherwise the first line of the job's message (e.g. why it waits in the queue)."""
    j = v.job
    last = v.attempts[-1] if v.attempts else None
    if j.state in (JobState.FAILED, JobState.RESTARTING) and last is not None and last.failure is not None:
        f = last.failure
        rank = f.rank is not None and f.cause is not FailureCause.NAN  # NaN is the allreduced loss: every rank's
        where = " ".join(filter(None, [f"rank {f.rank}" if rank else "", f"on {f.host}" if f.host and rank else "",
                                       f"at step {f.step}" if f.step else ""]))
        what = f"{f.exception_type}: {f.message}" if f.exception_type and not f.message.startswith(f.exception_type) \
            else f.message
        line = f"{f.cause.name.lower().replace('_', ' ')}" + (f" ({where})" if where else "") + \
            (f": {what.strip().splitlines()[0]}" if what.strip() else "")
    else:
        text = j.message.split(LOG_TAIL_MARK, 1)[0].strip()
        line = text.splitlines()[0] if text else ""
    return line if len(line) <= MAX_SUMMARY else line[:MAX_SUMMARY - 1] + "…"


def job(v: JobView) -> dict[str, Any]:
    """A job as the list shows it (and the job page's header)."""
    j: JobRow = v.job
    return {"id": j.id, "name": j.name, "state": j.state.name, "terminal": j.state.is_terminal(),
            "message": j.message, "summary": summary(v), "workers": j.workers, "priority": j.priority, "labels": j.labels,
            "step": j.step, "total_steps": j.total_steps, "epoch": j.epoch, "attempts": j.attempts,
            "restarts": j.restarts, "created": j.created, "started": j.started, "ended": j.ended,
            "cancel_requested": j.cancel_requested, "samples_per_second": number(v.samples_per_second),
            "eta_seconds": v.eta_seconds if v.eta_seconds >= 0 else None,
            "latest": metric(v.latest) if v.latest else None, "best": metric(v.best) if v.best else None,
            "owner": j.owner}


def attempt(a: AttemptRow) -> dict[str, Any]:
    hosts = parse_formatted_hosts(a.hosts)
    failure = None
    if a.failure is not None:
        f = a.failure
        failure = {"cause": f.cause.name, "message": f.message, "rank": f.rank, "host": f.host,
                   "exception_type": f.exception_type, "step": f.step, "headline": f.headline()}
    return {"attempt": a.attempt, "hosts": [h for h, _ in hosts], "ranks": sum(n for _, n in hosts),
            "started": a.started, "ended": a.ended, "exit_code": a.exit_code, "outcome": a.outcome,
            "message": a.message, "failure": failure, "slurm_job": a.slurm_job if a.slurm_job != UNSUBMITTED else ""}


def checkpoint(c: CheckpointRow, evaluated: bool = True, best: bool = False) -> dict[str, Any]:
    """`evaluated`: whether the validation numbers the checkpoint carries were measured at its own step; a
    checkpoint written between evaluations (a cancel's, a SIGTERM's) carries the last evaluation's, which are
    not shown against it."""
    return {"step": c.step, "epoch": c.epoch, "size": c.size, "sha256": c.sha256,
            "val_loss": number(c.val_loss) if evaluated else None,
            "val_accuracy": number(c.val_accuracy) if evaluated else None, "evaluated": evaluated, "best": best,
            "final": c.is_final, "created": c.created, "attempt": c.attempt}


def job_detail(v: JobView, attempts: Sequence[AttemptRow], checkpoints: Sequence[CheckpointRow],
               evaluated_steps: set[int] | None = None) -> dict[str, Any]:
    """Everything of the job page but its metric points and log, which stream ("attempts" stays the count).
    `evaluated_steps`: the checkpoints' steps at which the job has a validation point (None: take them all);
    the best checkpoint is the lowest validation loss among those."""
    try:
        spec = json.loads(v.job.spec_json)
    except ValueError:  # a stored spec that does not read back: the page shows none
        spec = None
    evaluated = [c for c in checkpoints if evaluated_steps is None or c.step in evaluated_steps]
    best = best_of(evaluated)
    return {**job(v), "spec": spec, "history": [transition(t) for t in v.history],
            "attempt_list": [attempt(a) for a in attempts],
            "checkpoints": [checkpoint(c, c in evaluated, best is not None and c.step == best.step)
                            for c in checkpoints]}


def slots(usage: Sequence[tuple[str, int, int]], running: Sequence[AttemptRow]) -> list[dict[str, Any]]:
    """Per host: its slots, how many are in use, and which running job holds how many of them."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for a in running:
        for host, n in parse_formatted_hosts(a.hosts):
            jobs.setdefault(host, []).append({"job": a.job_id, "slots": n})
    return [{"host": host, "slots": total, "in_use": total - free, "jobs": jobs.get(host, [])}
            for host, total, free in usage]
