"""ForkJob: a new job from another job's checkpoint at step K, with changed settings that keep the parameters'
shapes, its metric history up to K copied from the parent's.

    spec, source = fork_spec(jobs, "digits-1", 200, {"optim.lr": 0.01}, caller=ana)   # checked, nothing created
    view = create_fork(jobs, "digits-1", spec, source, new_id="", labels={}, caller=ana)  # "digits-1-f1", QUEUED
    view = fork(jobs, "digits-1", 200, {"optim.lr": 0.01}, caller=ana)                  # both

Who may: a fork makes a new job from the parent's checkpoint, so it is guarded as a resume is
(coordinator.access.roles: the parent's owner or an administrator); the new job belongs to the caller, counts
against the caller's --max-slots and fair share, and the audit trail records a "fork". `caller` None is the
coordinator's own (SYSTEM).

The checkpoint is linked into the new job as its first one (as ResumeJob does), so its ranks start from it:
parameters, optimizer state, step and data position; the settings change what happens from K on. Refused
(INVALID_ARGUMENT naming the key): model.layers (the parameters' shapes), optim.name (the optimizer state's),
a train.steps not beyond K, and anything a submitted spec could not have. The parent may be in any state.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any, Mapping

from coordinator.access import validate
from coordinator.access.roles import SYSTEM, Action, Caller
from coordinator.errors import FailedPrecondition, InvalidArgument, NotFound
from coordinator.jobs.views import JobView, find_job
from coordinator.states import JobState
from coordinator.store.records import CheckpointRow, JobRow
from coordinator.wire import KIND_CHECKPOINT, KIND_JOB
from worker.spec import JobSpec, SpecError, drop_unused, parse_spec

if TYPE_CHECKING:
    from coordinator.jobs.operations import Jobs

# settings a fork may not change, and why: the checkpoint's arrays would not fit
KEEP = {"model.layers": "sets the parameters' shapes", "optim.name": "sets the optimizer state's arrays"}
MAX_SETTINGS = 64


def apply_settings(raw: dict, settings: Mapping[str, Any]) -> dict:
    """`raw` (a spec dict) with each dotted key set; InvalidArgument naming a key that is not a spec table's."""
    if len(settings) > MAX_SETTINGS:
        raise InvalidArgument("settings", f"at most {MAX_SETTINGS} settings, got {len(settings)}")
    out = json.loads(json.dumps(raw))
    for key, value in settings.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise InvalidArgument(key[:200], f"{part} is not a table of the job spec")
        node[last] = value
    return out


def fork_spec(jobs: Jobs, job_id: str, from_step: int, settings: Mapping[str, Any],
              workers: int = 0, caller: Caller | None = None) -> tuple[JobSpec, CheckpointRow]:
    """The new job's spec, checked as a submission's, and the parent's checkpoint at `from_step`; PermissionDenied
    when the caller may not fork the parent (as for a resume: its owner or an administrator)."""
    parent = find_job(jobs.store, job_id)
    caller = jobs.allow(caller, Action.RESUME, parent)
    validate.non_negative(from_step, "from_step")
    validate.non_negative(workers, "workers")
    source = next((c for c in jobs.store.checkpoints(job_id) if c.step == from_step), None)
    if source is None:
        have = ", ".join(str(c.step) for c in jobs.store.checkpoints(job_id)) or "none"
        raise NotFound(f"from_step: job {job_id} has no checkpoint at step {from_step} (stored steps: {have})",
                       kind=KIND_CHECKPOINT)
    try:
        before = drop_unused(json.loads(parent.spec_json))
        old = parse_spec(before).to_dict()
        for key, why in KEEP.items():  # first: a changed optimizer would otherwise be refused for its unused keys
            section, name = key.split(".")
            if key in settings and json.dumps(settings[key]) != json.dumps(old[section][name]):
                raise InvalidArgument(key, f"a fork keeps it ({why}: the checkpoint at step {from_step} would not "
                                           "fit); submit a new job instead")
        spec = parse_spec(apply_settings(before, settings))
    except SpecError as err:
        raise InvalidArgument(err.field, err.reason) from None
    if spec.train.steps and spec.train.steps <= from_step:
        raise InvalidArgument("train.steps", f"must be beyond the fork's step {from_step}, got {spec.train.steps}")
    spec = jobs.checks.runnable_spec(spec.to_dict(), workers)
    jobs.within_cap(caller.name, spec.workers)
    return spec, source


def create_fork(jobs: Jobs, job_id: str, spec: JobSpec, source: CheckpointRow, *, new_id: str = "",
                labels: Mapping[str, str] | None = None, caller: Caller | None = None) -> JobView:
    """Create the fork (QUEUED, its first checkpoint the parent's at source.step, owned by the caller) and copy the
    parent's points up to that step. An existing `new_id` with the same spec and owner is returned as it is (a
    sweep retries its creations)."""
    caller = caller or SYSTEM
    if new_id:
        validate.job_id(new_id, "new_job_id")
    jobs.checks.check_queue()
    with jobs._lineage:  # not while the parent is being deleted: its checkpoint is linked, not copied
        parent = find_job(jobs.store, job_id)
        candidates = [new_id] if new_id else [f"{job_id[:56]}-f{n}" for n in range(1, 10000)]
        for candidate in candidates:
            existing = jobs.store.get_job(candidate)
            if existing is not None:
                if new_id and existing.spec_json == spec.to_json() and existing.owner == caller.name:
                    return jobs.view(existing)
                if new_id:
                    raise FailedPrecondition(f"new_job_id: job {new_id} exists already", kind=KIND_JOB)
                continue
            seed = jobs.checkpoints.seed(source, candidate)
            row = JobRow(id=candidate, name=spec.name, spec_json=spec.to_json(), state=JobState.QUEUED,
                         workers=spec.workers, priority=spec.priority,
                         labels={**dict(labels or {}), "forked_from": job_id, "fork_step": str(source.step)},
                         created=time.time(), total_steps=spec.train.steps, owner=caller.name)
            history = [p for p in jobs.store.metrics(parent.id, 0) if p.step <= source.step]
            stored, created = jobs.store.create_job(row, message=f"forked from job {job_id} at step {source.step}",
                                                    seed=seed)
            if created:
                jobs.store.add_metrics(candidate, history)  # the shared history; the ranks report from K on
                jobs.accounts.record(caller, "fork", job_id, detail=f"as {candidate} from step {source.step}")
                jobs.signal.changed()
                jobs.wake_scheduler()
                return jobs.view(stored)
        raise FailedPrecondition(f"job_id: job {job_id} has been forked too often", kind=KIND_JOB)


def fork(jobs: Jobs, job_id: str, from_step: int, settings: Mapping[str, Any], *, new_id: str = "",
         workers: int = 0, labels: Mapping[str, str] | None = None, caller: Caller | None = None) -> JobView:
    spec, source = fork_spec(jobs, job_id, from_step, settings, workers, caller=caller)
    return create_fork(jobs, job_id, spec, source, new_id=new_id, labels=labels, caller=caller)


def settings_from_json(settings: Mapping[str, str]) -> dict[str, Any]:
    """ForkJobRequest.settings (values as JSON text) as plain values; InvalidArgument naming a bad one."""
    out = {}
    for key, text in settings.items():
        try:
            out[key] = json.loads(text)
        except ValueError:
            raise InvalidArgument(f"settings[{key[:100]}]", f"the value must be JSON (e.g. 0.01, \"cosine\", "
                                                            f"[64, 32, 10]); got {validate.shown(text)}") from None
    return out
