"""Elastic jobs: on how many ranks a job starts, and when a running one grows back. Pure decisions.

    [fault]
    min_workers = 2      # workers = 4: run on 2..4 ranks; 0 (the default) = workers, not elastic

    launch_size(workers=4, min_workers=2, usable_capacity=2)  → 2     (a host of 2 slots is lost)
    launch_size(workers=4, min_workers=4, usable_capacity=2)  → None  (not elastic: wait for the host)
    should_grow(ranks=2, workers=4, usable_free=2, own_usable=2) → True  (stop with a checkpoint, relaunch on 4)

A job shrinks only because hosts are unusable (quarantined, drained), never because other jobs hold the
slots: then it waits its turn at full size, as before. It restarts from its newest checkpoint with the same
global batch (train.batch_size is global; each rank takes its slice), and gradmesh's reduction is a sum
divided by the global count over a rank-count-independent sampler, so the trajectory is the same on any
rank count, up to float rounding. Growing back is a graceful stop with a checkpoint at the next step
boundary (the cancel-with-checkpoint path, not a cancel) and a relaunch on `workers` ranks from that
checkpoint: no step is lost or repeated.
"""
from __future__ import annotations

import json

from coordinator.store.records import JobRow


def min_workers(job: JobRow) -> int:
    """The fewest ranks the job runs on (= workers unless [fault] min_workers says otherwise)."""
    m = json.loads(job.spec_json).get("fault", {}).get("min_workers", 0)
    return min(m, job.workers) if m else job.workers


def is_elastic(job: JobRow) -> bool:
    return min_workers(job) < job.workers


def launch_size(workers: int, min_workers: int, usable_capacity: int) -> int | None:
    """Ranks to launch with, given the slots of the usable hosts (free or not); None = the job cannot run
    until hosts come back."""
    if usable_capacity >= workers:
        return workers
    if usable_capacity >= min_workers:
        return usable_capacity
    return None


def job_launch_size(job: JobRow, usable_capacity: int) -> int | None:
    return launch_size(job.workers, min_workers(job), usable_capacity)


def should_grow(ranks: int, workers: int, usable_free: int, own_usable: int) -> bool:
    """A job running on fewer ranks than it wants grows back when the free slots of usable hosts and its own
    slots there (`own_usable`; a drained host's are not counted) make up `workers`."""
    return ranks < workers and usable_free + own_usable >= workers
