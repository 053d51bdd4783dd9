"""One round of a sweep: record the values its trials reached, take the decisions (coordinator.sweeps.decisions), and
apply them through the same job operations a client uses.

    drive(ctx, row, parsed)     # called for every RUNNING sweep by coordinator.sweeps.service's thread

Every action follows from the store as it is, so a round may be cut anywhere (a coordinator killed) and the next
one, in this process or a later one, completes it:
    - a value is recorded once per (trial, rung): when the trial's job is held at the rung's step (paused there),
      or SUCCEEDED (the last rung), or ended otherwise (FAILED, CANCELLED by someone else: NaN, never promoted);
    - a trial to start gets its record and its pause before its job, so its first attempt already stops at rung 0;
      a record without a job is a creation cut short, and is created again (same id, same spec: no duplicate);
    - a promoted trial held at its rung is released with the next rung's step (0 for the last: run to the end);
    - a trial stopped by the rule, still held, is CANCELLED with the reason.
What may start is capped by max_concurrent: releases first (highest rung, then trial number), then new trials
in trial-number order. That order shapes only the timing; no decision depends on it.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from typing import Any

from coordinator.access.roles import Caller
from coordinator.errors import GradmeshError, InvalidArgument, ResourceExhausted
from coordinator.jobs import fork
from coordinator.jobs.operations import Jobs
from coordinator.states import IllegalTransition, JobState
from coordinator.store.records import JobRow
from coordinator.store.store import Store
from coordinator.store.sweeps import ResultRow, SweepRow, TrialRow
from coordinator.sweeps import decisions
from coordinator.sweeps.spec import flat, trial_spec
from coordinator.sweeps.views import Parsed, plan_of, results_of

log = logging.getLogger("gradmesh.sweeps")
COLUMN = {"val_loss": "val_loss", "val_accuracy": "val_accuracy", "loss": "train_loss"}
ACTIVE = (JobState.QUEUED, JobState.RUNNING, JobState.RESTARTING)


@dataclass
class Context:
    store: Store
    jobs: Jobs
    total_slots: int
    owner: Caller | None = None   # the sweep's owner: its trials are submitted as (and belong to) this user


def trial_job_id(sweep_id: str, trial: int, trials: int) -> str:
    return f"{sweep_id}-t{trial:0{len(str(max(trials - 1, 0)))}d}"


def trial_labels(sweep_id: str, trial: int) -> dict[str, str]:
    return {"sweep": sweep_id, "trial": str(trial)}


def pause_for(parsed: Parsed, rung: int) -> int:
    """The step a trial heading to `rung` pauses at: the rung's step, or 0 (none) for the last rung."""
    return parsed.rungs[rung] if rung < len(parsed.rungs) - 1 else 0


def drive(ctx: Context, row: SweepRow, parsed: Parsed) -> None:
    store = ctx.store
    trials = {t.trial: t for t in store.trials(row.id)}
    jobs = {t: store.get_job(tr.job_id) for t, tr in trials.items()}
    results = results_of(store, row.id)
    plan = plan_of(parsed, results)
    if _record(ctx, row, parsed, plan, trials, jobs, results):
        plan = plan_of(parsed, results)
    active = 0
    releases: list[tuple[int, int]] = []   # (rung, trial)
    starts: list[tuple[int, int]] = []     # (trial, rung)
    for t, status in enumerate(plan.status):
        job = jobs.get(t)
        if status.state == decisions.STOPPED:
            if job is not None and _held(store, job):
                _stop(ctx, row, parsed, job, status.rung, results.get((t, status.rung), math.nan))
            continue
        if status.state != decisions.RUN:
            continue
        if job is None:  # not started, a creation cut short, or its job deleted: (re)created, from step 0
            starts.append((t, status.rung))
        elif _held(store, job):
            releases.append((status.rung, t))
        elif job.state in ACTIVE:
            active += 1
    room = parsed.max_concurrent(ctx.total_slots) - active
    for rung, t in sorted(releases, key=lambda rt: (-rt[0], rt[1])):
        if room <= 0:
            break
        _release(ctx, row, parsed, jobs[t], rung)
        room -= 1
    for t, rung in starts:
        if room <= 0:
            break
        if _start(ctx, row, parsed, t, trials.get(t), rung):
            room -= 1
        else:
            break  # the queue is full: try again next round
    if plan.finished:
        _finish(ctx, row, parsed, plan, trials, results)


def _held(store: Store, job: JobRow) -> bool:
    if job.state is not JobState.RESTARTING:
        return False
    pause = store.pause_of(job.id)
    return pause is not None and pause.held


def _record(ctx: Context, row: SweepRow, parsed: Parsed, plan: decisions.Plan, trials: dict[int, TrialRow],
            jobs: dict[int, JobRow | None], results: dict[tuple[int, int], float]) -> bool:
    """Record the value of every trial that reached the rung it was running to; True when any was recorded."""
    store, added = ctx.store, False
    for t, status in enumerate(plan.status):
        job = jobs.get(t)
        if status.state != decisions.RUN or job is None:
            continue
        rung = status.rung
        top = rung == len(parsed.rungs) - 1
        if job.state is JobState.SUCCEEDED:
            step = job.step if parsed.spec.method != "asha" else parsed.rungs[rung]
            value = _value(store, parsed, job, step)
        elif _held(store, job) and not top and store.pause_of(job.id).at_step == parsed.rungs[rung]:
            step = parsed.rungs[rung]
            value = _value(store, parsed, job, step)
        elif job.state in (JobState.FAILED, JobState.CANCELLED):
            step, value = job.step, math.nan
        else:
            continue
        if store.add_result(row.id, ResultRow(t, rung, step, value)):
            results[(t, rung)] = value
            added = True
    return added


def _value(store: Store, parsed: Parsed, job: JobRow, step: int) -> float:
    point = store.metric_at(job.id, step)
    if point is not None:
        return point[COLUMN[parsed.spec.metric]]
    if parsed.spec.metric != "loss":  # the point did not arrive: the checkpoint at that step carries the same
        ckpt = next((c for c in store.checkpoints(job.id) if c.step == step), None)
        if ckpt is not None:
            return getattr(ckpt, parsed.spec.metric)
    return math.nan


def _start(ctx: Context, row: SweepRow, parsed: Parsed, t: int, record: TrialRow | None, rung: int = 0) -> bool:
    """Create trial `t`'s job (record and pause first), to run to `rung`; False when the queue is full."""
    spec = parsed.spec
    job_id = record.job_id if record else trial_job_id(row.id, t, spec.trials)
    params = spec.params(t)
    if record is None:
        ctx.store.add_trial(TrialRow(row.id, t, job_id, params))
    ctx.store.set_pause(job_id, pause_for(parsed, rung))
    try:
        raw = trial_spec(parsed.base, params)
        if spec.fork is not None:
            forked, source = fork.fork_spec(ctx.jobs, spec.fork.job, spec.fork.step,
                                            {**flat(parsed.base), **params}, caller=ctx.owner)
            fork.create_fork(ctx.jobs, spec.fork.job, forked, source, new_id=job_id, labels=trial_labels(row.id, t),
                             caller=ctx.owner)
        else:
            ctx.jobs.submit(json.dumps(raw), job_id=job_id, labels=trial_labels(row.id, t), caller=ctx.owner)
        return True
    except ResourceExhausted:
        return False
    except GradmeshError as err:  # valid at submission, not now (a dataset gone, the fork's parent deleted)
        log.warning("sweep %s: trial %d cannot start: %s", row.id, t, err)
        ctx.store.add_result(row.id, ResultRow(t, 0, 0, math.nan))
        ctx.store.set_sweep_message(row.id, f"trial {t} could not start: {err}")
        return False


def _release(ctx: Context, row: SweepRow, parsed: Parsed, job: JobRow, rung: int) -> None:
    """A promoted trial held at rung - 1 runs on to `rung`."""
    ctx.store.release(job.id, pause_for(parsed, rung))
    ctx.store.set_message(job.id, f"promoted by sweep {row.id} to rung {rung} (step {parsed.rungs[rung]}); "
                                  "waiting for slots")
    ctx.jobs.supervisor.forget_restart(job.id)
    ctx.jobs.signal.changed()
    ctx.jobs.wake_scheduler()


def _stop(ctx: Context, row: SweepRow, parsed: Parsed, job: JobRow, rung: int, value: float) -> None:
    spec = parsed.spec
    why = (f"stopped by sweep {row.id} at rung {rung} (step {parsed.rungs[rung]}): its {spec.metric} {value:.6g} is "
           f"not in the best 1/{spec.reduction_factor}" if not math.isnan(value)
           else f"stopped by sweep {row.id} at rung {rung}: no {spec.metric} measured")
    try:
        ctx.store.transition(job.id, JobState.CANCELLED, why, attempt=job.attempts, expect=[JobState.RESTARTING])
    except IllegalTransition:
        return  # released or cancelled meanwhile: the next round sees it
    ctx.jobs.supervisor.forget_restart(job.id)
    ctx.jobs.signal.changed()


def _finish(ctx: Context, row: SweepRow, parsed: Parsed, plan: decisions.Plan, trials: dict[int, TrialRow],
            results: dict[tuple[int, int], float]) -> None:
    if plan.best is None:
        state, message = JobState.FAILED, "no trial produced a value of " + parsed.spec.metric
    else:
        top = len(parsed.rungs) - 1
        value = results.get((plan.best, top), math.nan)
        state = JobState.SUCCEEDED
        message = (f"best: trial {plan.best} (job {trials[plan.best].job_id}), {parsed.spec.metric} {value:.6g} at "
                   f"the end; params {_short(trials[plan.best].params)}")
    if ctx.store.end_sweep(row.id, state, message):
        ctx.jobs.signal.changed()


def _short(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={json.dumps(v)}" for k, v in params.items())[:300]


__all__ = ["drive", "Context", "trial_job_id", "trial_labels", "pause_for", "InvalidArgument"]
