"""What clients see of a sweep: its record, its file's settings, every started trial with its values at each rung,
the promotions, and the best trial so far: built from the store and the pure decisions, never cached.

    view = sweep_view(store, row, parsed, total_slots)
    view.trials[3].status      # pending | run | waiting | stopped | done | failed | cancelled
    view.best_trial            # None before any value
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from coordinator.states import JobState
from coordinator.store.store import Store
from coordinator.store.sweeps import SweepRow
from coordinator.sweeps import decisions
from coordinator.sweeps.decisions import Plan
from coordinator.sweeps.spec import SweepSpec


@dataclass(frozen=True)
class TrialView:
    trial: int
    job_id: str                                  # "" before it started
    params: dict[str, Any]
    status: str
    rung: int
    values: tuple[tuple[int, int, float], ...]   # (rung, step, value) for each rung it reached
    job_state: JobState | None
    step: int


@dataclass(frozen=True)
class SweepView:
    sweep: SweepRow
    spec: SweepSpec
    rungs: tuple[int, ...]
    max_concurrent: int
    trials: tuple[TrialView, ...]
    promotions: tuple[tuple[int, ...], ...]
    best_trial: int | None
    best_job_id: str
    best_value: float


@dataclass(frozen=True)
class Parsed:
    """A sweep file read once: its settings, the job spec around them, its rungs and its default concurrency."""
    spec: SweepSpec
    base: dict
    rungs: tuple[int, ...]
    workers: int

    def max_concurrent(self, total_slots: int) -> int:
        return self.spec.max_concurrent or max(1, min(self.spec.trials, total_slots // max(1, self.workers)))


def results_of(store: Store, sweep_id: str) -> dict[tuple[int, int], float]:
    return {(r.trial, r.rung): r.value for r in store.results(sweep_id)}


def plan_of(parsed: Parsed, results: dict[tuple[int, int], float]) -> Plan:
    return decisions.decide(trials=parsed.spec.trials, rungs=len(parsed.rungs),
                            reduction_factor=parsed.spec.reduction_factor, minimize=parsed.spec.minimize,
                            results=results)


def sweep_view(store: Store, row: SweepRow, parsed: Parsed, total_slots: int) -> SweepView:
    results = {(r.trial, r.rung): r for r in store.results(row.id)}
    plan = plan_of(parsed, {k: r.value for k, r in results.items()})
    trials = []
    for trial in store.trials(row.id):
        job = store.get_job(trial.job_id)
        status = plan.status[trial.trial]
        word = status.state
        mine = tuple((r.rung, r.step, r.value) for (t, _), r in sorted(results.items()) if t == trial.trial)
        if job is None:
            word = "pending"
        elif word == decisions.STOPPED and mine and math.isnan(mine[-1][2]) and job.state is not JobState.RESTARTING:
            word = "failed" if job.state is JobState.FAILED else "cancelled" if job.state is JobState.CANCELLED \
                else word
        trials.append(TrialView(trial.trial, trial.job_id, trial.params, word, status.rung, mine,
                                job.state if job else None, job.step if job else 0))
    best = plan.best
    best_job = next((t.job_id for t in trials if t.trial == best), "") if best is not None else ""
    best_value = math.nan
    if best is not None:
        reached = [r for (t, _), r in results.items() if t == best]
        best_value = max(reached, key=lambda r: r.rung).value if reached else math.nan
    return SweepView(row, parsed.spec, parsed.rungs, parsed.max_concurrent(total_slots), tuple(trials),
                     plan.promoted, best, best_job, best_value)
