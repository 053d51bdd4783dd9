"""What clients see of a job: its record found by id, the view built from it, and the ETA in that view.

    job = find_job(store, "digits-1")       # InvalidArgument for a malformed id, NotFound (kind "job")
    view = job_view(store, job)             # record + history, latest and best points, throughput, attempts
    view.eta_seconds                        # the server computes the ETA; clients only show it

Shared by the client operations (coordinator.jobs.operations), the streams (coordinator.jobs.streams), the gRPC conversion
(coordinator.api.convert) and the dashboard, which all answer with the same view of a job.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from coordinator.access import validate
from coordinator.errors import NotFound
from coordinator.store.records import AttemptRow, JobRow, MetricRow, TransitionRow
from coordinator.states import JobState
from coordinator.store.store import Store
from coordinator.wire import KIND_JOB


@dataclass(frozen=True)
class JobView:
    """A job as clients see it: the record plus what is derived from its history and metrics."""
    job: JobRow
    history: list[TransitionRow]
    latest: MetricRow | None
    best: MetricRow | None
    samples_per_second: float
    eta_seconds: float  # -1 when unknown
    attempts: list[AttemptRow] = field(default_factory=list)  # oldest first: rank counts and hosts of each


def find_job(store: Store, job_id: str) -> JobRow:
    """The job's record; InvalidArgument for a malformed id, NotFound (kind "job") for an unknown one."""
    validate.job_id(job_id)
    job = store.get_job(job_id)
    if job is None:
        raise NotFound(f"job {job_id} not found", kind=KIND_JOB)
    return job


def eta_seconds(job: JobRow, samples_per_second: float) -> float:
    """Seconds until a running job is done at its current throughput; 0 when it succeeded, -1 when unknown."""
    if job.state is JobState.SUCCEEDED:
        return 0.0
    if job.state is JobState.RUNNING and samples_per_second > 0 and job.total_steps > 0:
        try:
            batch = json.loads(job.spec_json).get("train", {}).get("batch_size", 0)
        except (ValueError, AttributeError):  # a stored spec that does not read back: no ETA
            batch = 0
        if isinstance(batch, int) and batch > 0:
            return max(0, job.total_steps - job.step) * batch / samples_per_second
    return -1.0


def job_view(store: Store, job: JobRow) -> JobView:
    """The view of `job` as the store holds it now (four queries: see Jobs.get for the cached one)."""
    latest = store.latest_metric(job.id)
    sps = latest.samples_per_second if latest and not math.isnan(latest.samples_per_second) else 0.0
    return JobView(job=job, history=store.transitions(job.id), latest=latest,
                   best=store.best_metric(job.id), samples_per_second=sps, eta_seconds=eta_seconds(job, sps),
                   attempts=store.attempts(job.id))
