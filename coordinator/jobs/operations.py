"""Client operations on jobs, free of gRPC: submit, register, get, list, cancel, resume, delete, metrics, checkpoints.

    jobs = Jobs(store, checkpoints, supervisor, signal, wake_scheduler=scheduler.wake, total_slots=4,
                data_roots=[Path.cwd()])
    view, created = jobs.submit(spec_text, job_id="digits-1", labels={}, workers=0)
    jobs.get("digits-1").eta_seconds        # the server computes the ETA; clients only show it
    jobs.cancel("digits-1", checkpoint=True)
    points, next_token = jobs.metrics("digits-1", page_size=0, page_token="")

Lifecycle of a job: QUEUED → the scheduler launches an attempt (RUNNING) → the supervisor
(coordinator.supervision.supervisor) settles its end: SUCCEEDED, FAILED, or RESTARTING and relaunched from the newest
intact checkpoint after its backoff. ResumeJob continues a FAILED/CANCELLED job as a new job "<id>-r<N>"
from its checkpoint (terminal states stay final). What a new job must pass before it is stored (the caps of
coordinator.access.limits, a rank's memory, its points and checkpoints) is coordinator.jobs.submission; what clients see
of a job (JobView, its ETA, find_job) is coordinator.jobs.views, whose names this module also exports. Errors
are the typed ones of coordinator.errors, whose `kind` says what a NOT_FOUND or FAILED_PRECONDITION is about.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from coordinator.access import validate
from coordinator.access.roles import SYSTEM, Action, Caller, check, may
from coordinator.supervision.supervisor import Supervisor
from coordinator.files.checkpoints import Checkpoints
from coordinator.errors import AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound
from coordinator.events import ChangeSignal
from coordinator.files.job_files import JobFiles
from coordinator.hosts import InvalidHosts, format_hosts, parse_registered_hosts
from coordinator.jobs.views import JobView, eta_seconds, find_job, job_view
from coordinator.access.limits import Limits
from coordinator.store.records import EXTERNAL, AttemptRow, CheckpointRow, JobRow, MetricRow
from coordinator.states import IllegalTransition, JobState
from coordinator.store.store import Store
from coordinator.jobs.submission import SubmissionChecks, new_job_id
from coordinator.team.accounts import Accounts
from coordinator.access.tokens import hash_token, new_token
from coordinator.wire import KIND_JOB, METRICS_PAGE
from worker.spec import JobSpec, SpecError, drop_unused, parse_stored_spec

__all__ = ["Jobs", "DeletedJob", "LIST_PAGE_MAX", "JobView", "eta_seconds", "find_job"]

log = logging.getLogger("gradmesh.jobs")
LIST_PAGE_MAX = 200   # jobs in one ListJobs reply (the client's own page size)
CANCEL_WAIT_S = 10.0  # a plain cancel: how long the ranks get to stop at a step boundary before SIGTERM


@dataclass(frozen=True)
class DeletedJob:
    """What DeleteJob removed."""
    job_id: str
    checkpoints: int     # checkpoint records
    files: int           # files of every kind
    bytes_freed: int


class Jobs:
    def __init__(self, store: Store, checkpoints: Checkpoints, supervisor: Supervisor, signal: ChangeSignal, *,
                 wake_scheduler: Callable[[], None], total_slots: int, data_roots: Sequence[Path],
                 cancel_checkpoint_wait_s: float = 30.0, limits: Limits = Limits(), memory_per_slot: int = 0,
                 accounts: Accounts | None = None, private_jobs: bool = False):
        self.store = store
        self.accounts = accounts or Accounts(store)   # the audit trail (and who callers are)
        self.private_jobs = private_jobs              # members and viewers read only their own jobs
        self.checkpoints = checkpoints
        self.supervisor = supervisor
        self.signal = signal
        self.wake_scheduler = wake_scheduler
        self.cancel_checkpoint_wait_s = cancel_checkpoint_wait_s
        self.checks = SubmissionChecks(store, limits=limits, total_slots=total_slots, data_roots=data_roots,
                                       memory_per_slot=memory_per_slot)
        self._creating = threading.Lock()      # the queue cap's count and the insert, as one step
        self._lineage = threading.Lock()       # a resume's link to its source's checkpoint vs. that job's deletion
        self.files = JobFiles(supervisor.data_dir)
        self._views: dict[str, tuple[int, JobView]] = {}  # job id → (signal version, view at that version)
        self._views_lock = threading.Lock()

    # ------------------------------------------------------------ who may

    def allow(self, caller: Caller | None, action: Action, job: JobRow | None = None, target: str = "") -> Caller:
        """The caller (SYSTEM when None: the coordinator's own operations) when roles.may allows the action;
        else PermissionDenied naming the owner, and a refusal to change something is audited (`target`: what
        it was about, when not a job)."""
        caller = caller or SYSTEM
        if may(caller, action, job, private_jobs=self.private_jobs):
            return caller
        if action is not Action.READ:
            self.accounts.record(caller, action.value, job.id if job is not None else target, outcome="denied")
        check(caller, action, job, private_jobs=self.private_jobs)
        return caller

    def readable(self, job_id: str, caller: Caller | None) -> JobRow:
        """The job's record when the caller may read it (WatchJob, StreamLogs and the dashboard ask first)."""
        job = find_job(self.store, job_id)
        self.allow(caller, Action.READ, job)
        return job

    def within_cap(self, owner: str, workers: int) -> None:
        """A job its owner's --max-slots could never let start is refused now rather than queued for ever."""
        cap = self.accounts.max_slots().get(owner, 0)
        if cap and workers > cap:
            raise InvalidArgument("workers", f"{workers} workers, but {owner}'s jobs may hold at most {cap} slot(s) "
                                             "at once (gradmesh users set --max-slots)")

    # ------------------------------------------------------------ operations

    def submit(self, spec_text: str, *, job_id: str = "", labels: Mapping[str, str] | None = None,
               workers: int = 0, caller: Caller | None = None) -> tuple[JobView, bool]:
        caller = self.allow(caller, Action.SUBMIT)
        labels, raw = self.checks.request(spec_text, job_id, labels, workers)
        spec = self.checks.runnable_spec(raw, workers)
        self.within_cap(caller.name, spec.workers)
        spec_json = spec.to_json()
        new_id = job_id or new_job_id(spec.name)
        row = JobRow(id=new_id, name=spec.name, spec_json=spec_json, state=JobState.QUEUED, workers=spec.workers,
                     priority=spec.priority, labels=labels, created=time.time(), total_steps=spec.train.steps,
                     owner=caller.name)
        with self._creating:
            if self.store.get_job(new_id) is None:
                self.checks.check_queue()
            stored, created = self.store.create_job(row)
        if not created and stored.spec_json != spec_json and _canonical(stored.spec_json) != spec_json:
            raise AlreadyExists(f"job_id: job {new_id} already exists with a different spec; choose another id "
                                "or resubmit the identical spec", kind=KIND_JOB)
        if not created and stored.owner != caller.name and not caller.is_admin:  # a resubmission is its owner's
            raise AlreadyExists(f"job_id: job {new_id} already exists and belongs to {stored.owner}; choose another "
                                "id", kind=KIND_JOB)
        if created:
            self.accounts.record(caller, "submit", new_id, detail=f"{spec.workers} worker(s), priority {spec.priority}")
            self.signal.changed()
            self.wake_scheduler()
        return self.view(stored), created

    def register(self, spec_text: str, *, job_id: str = "", labels: Mapping[str, str] | None = None,
                 workers: int = 0, hosts: str = "", caller: Caller | None = None) -> tuple[JobView, str]:
        """A run its user launched (`python -m worker --spec ... --register`): a job with executor "external",
        RUNNING at once with attempt 1, and the worker token of that attempt. The run reads its own spec and
        data: the dataset path is not checked against this coordinator's data roots, nor the workers against
        its slots; the caps on spec, labels, points and checkpoints hold as for any job."""
        caller = self.allow(caller, Action.SUBMIT)
        if len(hosts) > 1000:
            raise InvalidArgument("hosts", "at most 1000 characters")
        try:  # stored as the normalised list: every later reader adds its counts up
            hosts = format_hosts(parse_registered_hosts(hosts))
        except InvalidHosts as err:
            raise InvalidArgument("hosts", f"{err}; write HOST:RANKS,HOST:RANKS") from None
        labels, raw = self.checks.request(spec_text, job_id, labels, workers)
        spec = self.checks.registered_spec(raw, workers)
        new_id = job_id or new_job_id(spec.name)
        row = JobRow(id=new_id, name=spec.name, spec_json=spec.to_json(), state=JobState.QUEUED, workers=spec.workers,
                     priority=spec.priority, labels=labels, created=time.time(), total_steps=spec.train.steps,
                     executor=EXTERNAL, owner=caller.name)
        with self._creating:
            stored, created = self.store.create_job(row, message="registered by its launcher")
        if not created:
            raise AlreadyExists(f"job_id: job {new_id} already exists; a registered run needs a new id", kind=KIND_JOB)
        token = new_token()
        where = hosts or f"{spec.workers} rank(s)"
        self.store.begin_attempt(new_id, hosts=hosts, log_dir=self.supervisor.data_dir / "logs" / new_id,
                                 run_dir=self.supervisor.data_dir / "runs" / new_id, token_hash=hash_token(token),
                                 message=f"running outside the coordinator ({where}); launched and restarted by its user")
        job = find_job(self.store, new_id)
        self.accounts.record(caller, "register", new_id, detail=where)
        self.supervisor.track_external(job)
        self.signal.changed()
        return self.view(job), token

    def get(self, job_id: str, caller: Caller | None = None) -> JobView:
        # Every visible write bumps the change signal, so a view built at the current version is still
        # exact; polling clients (GetJob in a loop) then cost a dict lookup instead of four queries.
        validate.job_id(job_id)
        version = self.signal.version
        with self._views_lock:
            cached = self._views.get(job_id)
        if cached is not None and cached[0] == version:
            view = cached[1]
        else:
            view = self.view(find_job(self.store, job_id))
            with self._views_lock:
                if len(self._views) > 10000:
                    self._views.clear()
                self._views[job_id] = (version, view)
        if caller is not None:
            self.allow(caller, Action.READ, view.job)
        return view

    def list(self, states: Sequence[int], page_size: int, page_token: str, *, owner: str = "",
             caller: Caller | None = None) -> tuple[list[JobView], str]:
        """A page of jobs, newest first; `owner` only that user's (with --private-jobs, a member or viewer
        sees only their own whatever they ask)."""
        if owner:
            validate.user_name(owner, "owner")
        caller = caller or SYSTEM
        if self.private_jobs and not caller.is_admin:
            owner = caller.name
        wanted: set[JobState] = set()  # each state once: a filter repeating one 250,000 times is still one
        for value in states:
            try:
                wanted.add(JobState(value))
            except ValueError:
                raise InvalidArgument("states", f"{value} is not a job state (use QUEUED..CANCELLED)") from None
        # each job comes with its history (bounded by fault.max_restarts): pages stay small enough to build at once
        size = validate.page_size(page_size, limit=LIST_PAGE_MAX)
        before = validate.page_token(page_token)
        rows = self.store.list_jobs(sorted(wanted), limit=size, before_seq=before, owner=owner)
        token = str(rows[-1].seq) if len(rows) == size else ""
        return [v for v in map(self._listed, rows) if v is not None], token

    def _listed(self, row: JobRow) -> JobView | None:
        """The view of a listed job; None (said in the log) when its stored records cannot be read, so that one
        bad row leaves the others listed."""
        try:
            return self.view(row)
        except (ValueError, TypeError, KeyError, DataLoss) as err:
            log.warning("job %s left out of a listing: its stored records cannot be read (%s: %s)",
                        row.id, type(err).__name__, err)
            return None

    def cancel(self, job_id: str, checkpoint: bool = False, caller: Caller | None = None) -> JobView:
        job = find_job(self.store, job_id)
        caller = self.allow(caller, Action.CANCEL, job)
        view = self._cancel(job_id, checkpoint)
        self.accounts.record(caller, "cancel", job_id, detail="with a checkpoint" if checkpoint else "")
        return view

    def _cancel(self, job_id: str, checkpoint: bool) -> JobView:
        job = find_job(self.store, job_id)
        if job.state is JobState.QUEUED and not self.supervisor.is_active(job.id):  # (active: in Slurm's queue)
            try:
                self.store.transition(job.id, JobState.CANCELLED, "cancelled before it started",
                                      expect=[JobState.QUEUED])
            except IllegalTransition:
                return self._cancel(job_id, checkpoint)  # it started meanwhile: cancel the running job
            if self.supervisor.is_active(job.id):  # handed to Slurm meanwhile (it stays QUEUED there): scancel it
                self.supervisor.request_stop(job.id, 0.0)
            self.signal.changed()
            self.wake_scheduler()
            return self.get(job_id)
        if job.state is JobState.RESTARTING and not self.supervisor.is_active(job.id):
            try:
                self.store.transition(job.id, JobState.CANCELLED, "cancelled while waiting to restart",
                                      attempt=job.attempts, expect=[JobState.RESTARTING])
            except IllegalTransition:
                return self._cancel(job_id, checkpoint)  # relaunched meanwhile: cancel the running job
            self.supervisor.forget_restart(job.id)
            self.signal.changed()
            return self.get(job_id)
        if job.state is JobState.CANCELLED:
            return self.view(job)
        if job.state.is_terminal():
            raise FailedPrecondition(f"job_id: job {job.id} already ended {job.state.name}; only a queued or "
                                     "running job can be cancelled", kind=KIND_JOB)
        self.store.request_cancel(job.id, checkpoint)
        # The ranks learn of the cancel from their next progress report and stop at that step boundary: with a
        # checkpoint (written and uploaded first) when asked for one, without one otherwise. Only ranks that
        # have not stopped by then get SIGTERM (grace, SIGKILL), whose handler saves one as a preemption does:
        # signalling at once made every plain cancel write a checkpoint.
        self.supervisor.request_stop(job.id, self.cancel_checkpoint_wait_s if checkpoint else CANCEL_WAIT_S)
        self.wake_scheduler()
        self.signal.changed()
        return self.get(job_id)

    def resume(self, job_id: str, workers: int = 0, caller: Caller | None = None) -> JobView:
        """Run a FAILED or CANCELLED job again from its newest intact checkpoint, optionally on another number
        of workers. Terminal states stay final: the run is a NEW job, "<id>-r<N>", labelled resumed_from=<id>,
        whose first checkpoint is that one (so its ranks resume from it). Returns the new job."""
        job = find_job(self.store, job_id)
        caller = self.allow(caller, Action.RESUME, job)
        validate.non_negative(workers, "workers")
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            raise FailedPrecondition(f"job_id: job {job_id} is {job.state.name}; only a FAILED or CANCELLED job "
                                     "can be resumed", kind=KIND_JOB)
        source = self.checkpoints.newest_intact(job_id)
        if source is None:
            raise FailedPrecondition(f"job_id: job {job_id} has no intact checkpoint to resume from", kind=KIND_JOB)
        try:  # a spec stored before unused settings were refused still lists them: drop them
            raw = drop_unused(json.loads(job.spec_json))
        except SpecError as err:
            raise InvalidArgument(err.field, err.reason) from None
        spec = self.checks.runnable_spec(raw, workers)
        self.within_cap(job.owner, spec.workers)
        self.checks.check_queue()
        base = job_id[:58]
        with self._lineage:  # not while the source is being deleted: its checkpoint is linked, not copied
            view = self._resume_as_new_job(job, spec, source, base)
        self.accounts.record(caller, "resume", job_id, detail=f"as {view.job.id} from step {source.step}")
        return view

    def _resume_as_new_job(self, job: JobRow, spec: JobSpec, source: CheckpointRow, base: str) -> JobView:
        job_id = job.id
        find_job(self.store, job_id)  # deleted since it was read: its checkpoint is gone too
        for n in range(1, 10000):
            new_id = f"{base}-r{n}"
            if self.store.get_job(new_id) is not None:
                continue
            seed = self.checkpoints.seed(source, new_id)
            row = JobRow(id=new_id, name=spec.name, spec_json=spec.to_json(), state=JobState.QUEUED,
                         workers=spec.workers, priority=spec.priority,
                         labels={**job.labels, "resumed_from": job_id}, created=time.time(),
                         total_steps=spec.train.steps, owner=job.owner)   # the same run goes on: same owner
            stored, created = self.store.create_job(
                row, message=f"resumed from job {job_id} at step {source.step}", seed=seed)
            if created:
                self.signal.changed()
                self.wake_scheduler()
                return self.view(stored)
        raise FailedPrecondition(f"job_id: job {job_id} has been resumed too often", kind=KIND_JOB)

    def delete(self, job_id: str, caller: Caller | None = None) -> DeletedJob:
        """Remove an ended job and everything kept of it (coordinator.files.job_files says how, crash-safely)."""
        job = find_job(self.store, job_id)
        caller = self.allow(caller, Action.DELETE, job)
        if not job.state.is_terminal():
            raise FailedPrecondition(f"job_id: job {job_id} is {job.state.name}; only an ended job (SUCCEEDED, "
                                     "FAILED or CANCELLED) can be deleted: cancel it first", kind=KIND_JOB)
        if self.supervisor.is_active(job_id):
            raise FailedPrecondition(f"job_id: job {job_id} is {job.state.name}, and its ranks are still being "
                                     "stopped; delete it once they are", kind=KIND_JOB)
        with self._lineage, self.checkpoints.writing(job_id), self.files.moved_aside(job_id) as removal:
            checkpoints = self.store.delete_job(job_id)
            if checkpoints is None:  # deleted by another call since it was read (its files are back: none)
                raise NotFound(f"job {job_id} not found", kind=KIND_JOB)
        self.checkpoints.forget(job_id)
        self.signal.changed()
        self.accounts.record(caller, "delete", job_id, detail=f"{removal.files} file(s), {removal.bytes_freed} bytes")
        return DeletedJob(job_id, checkpoints, removal.files, removal.bytes_freed)

    def metrics(self, job_id: str, from_step: int = 0, page_size: int = 0, page_token: str = "",
                caller: Caller | None = None) -> tuple[list[MetricRow], str]:
        """A page of the job's points in step order, from `from_step` (or from where `page_token` says), and
        the token of the next page ("" on the last one). At most wire.METRICS_PAGE points per page."""
        validate.non_negative(from_step, "from_step")
        validate.non_negative(page_size, "page_size")
        if page_token:
            from_step = validate.page_token(page_token, call="GetMetrics")
        size = min(page_size or METRICS_PAGE, METRICS_PAGE)
        self.readable(job_id, caller)
        points = self.store.metrics(job_id, from_step, limit=size + 1)
        if len(points) > size:
            return points[:size], str(points[size - 1].step + 1)
        return points, ""

    def list_checkpoints(self, job_id: str, caller: Caller | None = None) -> list[CheckpointRow]:
        self.readable(job_id, caller)
        return self.store.checkpoints(job_id)

    def attempts(self, job_id: str, caller: Caller | None = None) -> list[AttemptRow]:
        """The job's attempts, oldest first: hosts, exit, outcome and failure of each (for the dashboard)."""
        self.readable(job_id, caller)
        return self.store.attempts(job_id)

    def open_checkpoint(self, job_id: str, *, step: int | None = None, best: bool = False,
                        caller: Caller | None = None) -> tuple[CheckpointRow, Iterator[bytes]]:
        """The record and the file's chunks: at `step`, the best (checkpoints.best_of), or the latest."""
        self.readable(job_id, caller)
        if step is not None:
            validate.non_negative(step, "step")
        row = self.checkpoints.choose(job_id, step=step, best=best)
        return row, self.checkpoints.open(row)

    def view(self, job: JobRow) -> JobView:
        return job_view(self.store, job)


def _canonical(stored_json: str) -> str:
    """A stored spec as today's submission would store it: an older release stored every key with its default,
    so the same spec resubmitted under the same id is still the same job after an upgrade."""
    try:
        return parse_stored_spec(json.loads(stored_json))[0].to_json()
    except (SpecError, ValueError):
        return stored_json
