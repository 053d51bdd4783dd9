"""The dashboard's sweep page: GET /sweeps/<id> (static/sweep.html) and GET /api/sweeps/<id> (its JSON: the
sweep, every trial with its values at each rung and its curve of the sweep's metric). Route handlers as plain
functions of the request handler, so http.py only lists them."""
from __future__ import annotations

import math
from typing import Any

from coordinator.sweeps.views import SweepView

CURVE = {"val_loss": "val_loss", "val_accuracy": "val_accuracy", "loss": "train_loss"}
CURVE_POINTS = 2000   # points of one trial's curve sent to the page (every n-th beyond that, and the last)


def _num(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else x


def sweep_json(v: SweepView, core, caller=None) -> dict[str, Any]:
    """The sweep as the page shows it; `caller` (the session's user) reads its trials' curves."""
    metric = CURVE[v.spec.metric]
    trials = []
    for t in v.trials:
        curve: list[list[float | None]] = []
        if t.job_id and t.job_state is not None:
            points, _ = core.jobs.metrics(t.job_id, caller=caller)
            points = [p for p in points if not math.isnan(getattr(p, metric))]
            stride = max(1, len(points) // CURVE_POINTS)
            sample = points[::stride]
            if points and sample[-1] is not points[-1]:
                sample.append(points[-1])
            curve = [[p.step, _num(getattr(p, metric))] for p in sample]
        trials.append({"trial": t.trial, "job_id": t.job_id, "params": t.params, "status": t.status, "rung": t.rung,
                       "job_state": t.job_state.name if t.job_state else None, "step": t.step,
                       "values": [{"rung": r, "step": s, "value": _num(x)} for r, s, x in t.values],
                       "curve": curve})
    s = v.sweep
    return {"id": s.id, "name": s.name, "state": s.state.name, "message": s.message, "method": v.spec.method,
            "metric": v.spec.metric, "goal": v.spec.goal, "trials_total": v.spec.trials,
            "max_concurrent": v.max_concurrent, "rungs": list(v.rungs), "promotions": [list(p) for p in v.promotions],
            "best_trial": v.best_trial, "best_job_id": v.best_job_id, "best_value": _num(v.best_value),
            "created": s.created, "ended": s.ended, "owner": s.owner, "trials": trials}


def page(handler, sweep_id: str) -> None:
    handler._static("sweep.html")


def api(handler, sweep_id: str) -> None:
    """As the session's user: a sweep they may not read is 403, as a job is."""
    core = handler.server.app.core
    handler._json(sweep_json(core.sweeps.get(sweep_id, caller=handler.caller), core, handler.caller))
