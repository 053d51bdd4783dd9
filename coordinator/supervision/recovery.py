"""Re-adoption after a coordinator (re)start: the attempts an earlier coordinator left behind are watched
again, and what attempts that no longer run left on disk is swept.

    for run in readopt(store, local_executor=..., executor=..., external=..., settlement=..., progress=...):
        ...                               # the supervisor watches `run` from now on
    sweep_pending_uploads(data_dir / "runs", live={(job_id, attempt), ...})

Every RUNNING job (and every QUEUED/RESTARTING one whose attempt waits in Slurm's queue) gets a handle on its
attempt: by its Slurm job id, or by mpirun's process group. Live ones are re-adopted; the ones that ended while
no coordinator watched come back already ended and are settled at the first reap. Runs registered by their
users are only watched for progress again (coordinator.supervision.external_runs).
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Iterator

from coordinator.supervision.executors import Ended, Executor, Handle, LocalExecutor
from coordinator.supervision.external_runs import ExternalRuns
from coordinator.hosts import parse_formatted_hosts
from coordinator.supervision.launcher import Exit
from coordinator.store.records import EXTERNAL, AttemptRow, JobRow
from coordinator.supervision.running import Running, hang_timeout_s
from coordinator.supervision.settlement import Settlement
from coordinator.states import JobState
from coordinator.store.store import Store
from coordinator.supervision.watchdog import ProgressWatch

log = logging.getLogger("gradmesh.attempts")


def readopt(store: Store, *, local_executor: LocalExecutor, executor: Executor, external: ExternalRuns,
            settlement: Settlement, progress: ProgressWatch) -> Iterator[Running]:
    """Each attempt left behind, as soon as it is found (live ones on the hang watch `progress`); a RUNNING job
    without an attempt record is FAILED, a registered run is tracked by `external`."""
    waiting = [j for j in store.jobs_in(JobState.QUEUED, JobState.RESTARTING)
               if j.attempts and store.waiting_attempt(j.id, j.attempts) is not None]
    for job in store.jobs_in(JobState.RUNNING) + waiting:
        if job.executor == EXTERNAL:
            external.track(job)
            continue
        attempt = store.attempt(job.id, job.attempts)
        if attempt is None:
            settlement.fail(job.id, "coordinator restarted: the job was RUNNING without an attempt record", 0)
            continue
        allocation = parse_formatted_hosts(attempt.hosts) or [("localhost", job.workers)]
        process = adopt(job, attempt, local_executor=local_executor, executor=executor)
        run = Running(job.id, attempt.attempt, process, allocation, waiting=job.state is not JobState.RUNNING)
        if process.alive():
            log.info("re-adopting %s attempt %d (%s)", job.id, attempt.attempt, process.where())
            if not run.waiting:
                progress.started(job.id, hang_timeout_s(job))
        else:
            run.end_note = "coordinator restarted while the job ran: "
        yield run


def adopt(job: JobRow, attempt: AttemptRow, *, local_executor: LocalExecutor, executor: Executor) -> Handle:
    """The handle of a live attempt an earlier coordinator started: by its Slurm job id, or mpirun's group (the
    local executor re-adopts mpirun attempts whatever this coordinator's executor is)."""
    if not attempt.slurm_job:
        return local_executor.adopt(job, attempt)
    if executor.queues:
        return executor.adopt(job, attempt)
    return Ended(Exit(None, "the Slurm job", f"submitted to Slurm as job {attempt.slurm_job}, and this "
                                             "coordinator runs without --executor slurm: not watched"))


def sweep_pending_uploads(runs: Path, live: set[tuple[str, int]]) -> None:
    """Remove the upload queues (.pending-uploads: links to checkpoints rank 0 had not sent yet) and partial
    downloads left in the working directories (`runs`/<job>/attempt-<n>) of attempts not in `live`: nobody
    will send them, and they hold disk space."""
    if not runs.is_dir():
        return
    for job_dir in runs.iterdir():
        for workdir in job_dir.glob("attempt-*") if job_dir.is_dir() else ():
            number = workdir.name.removeprefix("attempt-")
            if not (number.isascii() and number.isdigit() and len(number) < 10) or (job_dir.name, int(number)) in live:
                continue
            pending = workdir / ".pending-uploads"
            if pending.is_dir() and not pending.is_symlink():
                shutil.rmtree(pending, ignore_errors=True)
            for part in workdir.glob("*.part"):
                part.unlink(missing_ok=True)
