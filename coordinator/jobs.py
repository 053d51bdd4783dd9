"""Client operations on jobs, free of gRPC: submit, get, list, cancel, resume, metrics and checkpoints.

    jobs = Jobs(store, checkpoints, supervisor, signal, wake_scheduler=scheduler.wake, total_slots=4,
                data_roots=[Path.cwd()])
    view, created = jobs.submit(spec_text, job_id="digits-1", labels={}, workers=0)
    jobs.get("digits-1").eta_seconds        # the server computes the ETA; clients only show it
    jobs.cancel("digits-1", checkpoint=True)
    points, next_token = jobs.metrics("digits-1", page_size=0, page_token="")

Lifecycle of a job: QUEUED → the scheduler launches an attempt (RUNNING) → the supervisor
(coordinator.attempts) settles its end: SUCCEEDED, FAILED, or RESTARTING and relaunched from the newest
intact checkpoint after its backoff. ResumeJob continues a FAILED/CANCELLED job as a new job "<id>-r<N>"
from its checkpoint (terminal states stay final). Submission enforces coordinator.limits: the spec's size
and depth, labels, the queue, and (coordinator.footprint) a rank's memory, the job's metric points and its
checkpoints. Errors are the typed ones of coordinator.errors, whose
`kind` says what a NOT_FOUND or FAILED_PRECONDITION is about.
"""
from __future__ import annotations

import json
import math
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from coordinator import footprint, validate
from coordinator.attempts import Supervisor
from coordinator.checkpoints import Checkpoints
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from coordinator.job_files import JobFiles
from coordinator.limits import Limits
from coordinator.events import ChangeSignal
from coordinator.states import IllegalTransition, JobState
from coordinator.records import EXTERNAL, AttemptRow, CheckpointRow, JobRow, MetricRow, TransitionRow
from coordinator.tokens import hash_token, new_token
from coordinator.store import Store
from coordinator.wire import KIND_JOB, METRICS_PAGE

KIND_QUEUE = "queue"  # a ResourceExhausted about the queue of jobs
LIST_PAGE_MAX = 200   # jobs in one ListJobs reply (the client's own page size)
from worker.spec import JobSpec, SpecError, drop_unused, load_raw, parse_spec


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


@dataclass(frozen=True)
class DeletedJob:
    """What DeleteJob removed."""
    job_id: str
    checkpoints: int     # checkpoint records
    files: int           # files of every kind
    bytes_freed: int


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
        batch = json.loads(job.spec_json).get("train", {}).get("batch_size", 0)
        if batch:
            return max(0, job.total_steps - job.step) * batch / samples_per_second
    return -1.0


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "job"


class Jobs:
    def __init__(self, store: Store, checkpoints: Checkpoints, supervisor: Supervisor, signal: ChangeSignal, *,
                 wake_scheduler: Callable[[], None], total_slots: int, data_roots: Sequence[Path],
                 cancel_checkpoint_wait_s: float = 30.0, limits: Limits = Limits(), memory_per_slot: int = 0):
        self.store = store
        self.checkpoints = checkpoints
        self.supervisor = supervisor
        self.signal = signal
        self.wake_scheduler = wake_scheduler
        self.total_slots = total_slots
        self.data_roots = [Path(r) for r in data_roots]
        self.cancel_checkpoint_wait_s = cancel_checkpoint_wait_s
        self.limits = limits
        self.memory_per_slot = memory_per_slot  # bytes a rank may use; 0 = not checked
        self._creating = threading.Lock()      # the queue cap's count and the insert, as one step
        self._lineage = threading.Lock()       # a resume's link to its source's checkpoint vs. that job's deletion
        self.files = JobFiles(supervisor.data_dir)
        self._views: dict[str, tuple[int, JobView]] = {}  # job id → (signal version, view at that version)
        self._views_lock = threading.Lock()

    def submit(self, spec_text: str, *, job_id: str = "", labels: Mapping[str, str] | None = None,
               workers: int = 0) -> tuple[JobView, bool]:
        labels, raw = self._checked_request(spec_text, job_id, labels, workers)
        spec = self._runnable_spec(raw, workers)
        spec_json = spec.to_json()
        new_id = job_id or f"{_slug(spec.name)}-{secrets.token_hex(4)}"
        row = JobRow(id=new_id, name=spec.name, spec_json=spec_json, state=JobState.QUEUED, workers=spec.workers,
                     priority=spec.priority, labels=labels, created=time.time(), total_steps=spec.train.steps)
        with self._creating:
            if self.store.get_job(new_id) is None:
                self._check_queue()
            stored, created = self.store.create_job(row)
        if not created and stored.spec_json != spec_json:
            raise AlreadyExists(f"job_id: job {new_id} already exists with a different spec; choose another id "
                                "or resubmit the identical spec", kind=KIND_JOB)
        if created:
            self.signal.changed()
            self.wake_scheduler()
        return self.view(stored), created

    def _checked_request(self, spec_text: str, job_id: str, labels: Mapping[str, str] | None,
                         workers: int) -> tuple[dict[str, str], dict]:
        """The checks SubmitJob and RegisterRun share: sizes, id, labels, workers, and the spec parsed (its
        canonical dict). Returns the validated labels and that dict."""
        if not spec_text.strip():
            raise InvalidArgument("spec", "must not be empty (send the TOML or JSON text of a job spec)")
        size = len(spec_text.encode("utf-8", "surrogatepass"))
        if size > self.limits.spec_bytes:
            raise InvalidArgument("spec", f"is {size} bytes; this coordinator takes at most {self.limits.spec_bytes} "
                                          "(--max-spec-bytes)")
        if job_id:
            validate.job_id(job_id)
        checked_labels = validate.labels(labels or {}, self.limits)
        validate.non_negative(workers, "workers")
        try:
            raw = load_raw(spec_text)
            depth = validate.nesting_depth(raw)
            if depth > self.limits.spec_depth:
                raise SpecError("file", f"nested {depth} deep; at most {self.limits.spec_depth} (--max-spec-depth)")
            return checked_labels, parse_spec(raw).to_dict()
        except SpecError as err:
            # exactly str(SpecError) (parse errors name the field "file"), as clients parse the field from it
            raise InvalidArgument(err.field, err.reason) from None

    def register(self, spec_text: str, *, job_id: str = "", labels: Mapping[str, str] | None = None,
                 workers: int = 0, hosts: str = "") -> tuple[JobView, str]:
        """A run its user launched (`python -m worker --spec ... --register`): a job with executor "external",
        RUNNING at once with attempt 1, and the worker token of that attempt. The run reads its own spec and
        data: the dataset path is not checked against this coordinator's data roots, nor the workers against
        its slots; the caps on spec, labels, points and checkpoints hold as for any job."""
        if len(hosts) > 1000:
            raise InvalidArgument("hosts", "at most 1000 characters")
        labels, raw = self._checked_request(spec_text, job_id, labels, workers)
        try:
            if workers:
                raw["workers"] = workers
            spec = parse_spec(raw)
        except SpecError as err:
            raise InvalidArgument(err.field, err.reason) from None
        if not spec.source_is_path:
            self._check_size(spec)
        new_id = job_id or f"{_slug(spec.name)}-{secrets.token_hex(4)}"
        row = JobRow(id=new_id, name=spec.name, spec_json=spec.to_json(), state=JobState.QUEUED, workers=spec.workers,
                     priority=spec.priority, labels=labels, created=time.time(), total_steps=spec.train.steps,
                     executor=EXTERNAL)
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
        self.supervisor.track_external(job)
        self.signal.changed()
        return self.view(job), token

    def get(self, job_id: str) -> JobView:
        # Every visible write bumps the change signal, so a view built at the current version is still
        # exact; polling clients (GetJob in a loop) then cost a dict lookup instead of four queries.
        validate.job_id(job_id)
        version = self.signal.version
        with self._views_lock:
            cached = self._views.get(job_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        view = self.view(find_job(self.store, job_id))
        with self._views_lock:
            if len(self._views) > 10000:
                self._views.clear()
            self._views[job_id] = (version, view)
        return view

    def list(self, states: Sequence[int], page_size: int, page_token: str) -> tuple[list[JobView], str]:
        wanted = []
        for value in states:
            try:
                wanted.append(JobState(value))
            except ValueError:
                raise InvalidArgument("states", f"{value} is not a job state (use QUEUED..CANCELLED)") from None
        # each job comes with its history (bounded by fault.max_restarts): pages stay small enough to build at once
        size = validate.page_size(page_size, limit=LIST_PAGE_MAX)
        before = validate.page_token(page_token)
        rows = self.store.list_jobs(wanted, limit=size, before_seq=before)
        token = str(rows[-1].seq) if len(rows) == size else ""
        return [self.view(r) for r in rows], token

    def cancel(self, job_id: str, checkpoint: bool = False) -> JobView:
        job = find_job(self.store, job_id)
        if job.state is JobState.QUEUED and not self.supervisor.is_active(job.id):  # (active: in Slurm's queue)
            try:
                self.store.transition(job.id, JobState.CANCELLED, "cancelled before it started",
                                      expect=[JobState.QUEUED])
            except IllegalTransition:
                return self.cancel(job_id, checkpoint)  # it started meanwhile: cancel the running job
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
                return self.cancel(job_id, checkpoint)  # relaunched meanwhile: cancel the running job
            self.supervisor.forget_restart(job.id)
            self.signal.changed()
            return self.get(job_id)
        if job.state is JobState.CANCELLED:
            return self.view(job)
        if job.state.is_terminal():
            raise FailedPrecondition(f"job_id: job {job.id} already ended {job.state.name}; only a queued or "
                                     "running job can be cancelled", kind=KIND_JOB)
        self.store.request_cancel(job.id, checkpoint)
        # Without a checkpoint the group is signalled at once; with one, the ranks first get the time to
        # see cancel_requested at a step boundary and write it (then SIGTERM, grace, SIGKILL as usual).
        self.supervisor.request_stop(job.id, self.cancel_checkpoint_wait_s if checkpoint else 0.0)
        self.wake_scheduler()
        self.signal.changed()
        return self.get(job_id)

    def _runnable_spec(self, raw: dict, workers: int) -> JobSpec:
        """The spec with its workers override, its dataset path made absolute under a data root, validated,
        and checked to fit this coordinator's slots."""
        try:
            if workers:
                raw["workers"] = workers
            spec = parse_spec(raw)
            if spec.source_is_path:
                raw["data"]["source"] = str(validate.dataset_path(spec.data.source, self.data_roots))
                if spec.data.labels:  # an IDX images file's labels file, held to the same roots
                    raw["data"]["labels"] = str(validate.dataset_path(spec.data.labels, self.data_roots))
                spec = parse_spec(raw)
        except SpecError as err:
            raise InvalidArgument(err.field, err.reason) from None
        if spec.workers > self.total_slots:
            raise InvalidArgument("workers", f"the job needs {spec.workers} worker slots but this coordinator has "
                                             f"{self.total_slots} in all")
        self._check_size(spec)
        return spec

    def _check_size(self, spec: JobSpec) -> None:
        """Refuse a job that cannot fit a slot's memory, or would store more points or checkpoints than a job may."""
        dataset = Path(spec.data.source) if spec.source_is_path else None
        need = footprint.rank_memory(spec, dataset)
        if self.memory_per_slot and need.total > self.memory_per_slot:
            raise InvalidArgument("model.layers", f"the job needs {need.describe()}; this coordinator allows "
                                                  f"{footprint.human(self.memory_per_slot)} per rank "
                                                  "(--memory-per-slot): use smaller layers, a smaller batch per "
                                                  "rank or less data")
        points = footprint.metric_points(spec, footprint.train_rows(spec, dataset))
        cap = self.limits.points_per_job
        if points is not None and points > cap:
            steps = footprint.total_steps(spec, footprint.train_rows(spec, dataset)) or 0
            raise InvalidArgument("train.eval_every", f"the job would report {points} metric points ({steps} steps, "
                                                      f"one every {spec.train.eval_every}); this coordinator keeps at "
                                                      f"most {cap} per job (--max-points-per-job): set eval_every to "
                                                      f"at least {-(-steps // (cap - 1))}")
        keep = self.limits.checkpoints_per_job - 2
        if spec.checkpoint.keep_last > keep:
            raise InvalidArgument("checkpoint.keep_last", f"at most {keep} on this coordinator (it keeps "
                                                          f"{self.limits.checkpoints_per_job} checkpoints per job, "
                                                          "--max-checkpoints-per-job, with the best and the final)")

    def _check_queue(self) -> None:
        queued = self.store.count_jobs(JobState.QUEUED)
        if queued >= self.limits.queued_jobs:
            raise ResourceExhausted(f"jobs: {queued} jobs are queued, the most this coordinator takes "
                                    "(--max-queued-jobs); submit again when some have started", kind=KIND_QUEUE)

    def resume(self, job_id: str, workers: int = 0) -> JobView:
        """Run a FAILED or CANCELLED job again from its newest intact checkpoint, optionally on another number
        of workers. Terminal states stay final: the run is a NEW job, "<id>-r<N>", labelled resumed_from=<id>,
        whose first checkpoint is that one (so its ranks resume from it). Returns the new job."""
        job = find_job(self.store, job_id)
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
        spec = self._runnable_spec(raw, workers)
        self._check_queue()
        base = job_id[:58]
        with self._lineage:  # not while the source is being deleted: its checkpoint is linked, not copied
            return self._resume_as_new_job(job, spec, source, base)

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
                         total_steps=spec.train.steps)
            stored, created = self.store.create_job(
                row, message=f"resumed from job {job_id} at step {source.step}", seed=seed)
            if created:
                self.signal.changed()
                self.wake_scheduler()
                return self.view(stored)
        raise FailedPrecondition(f"job_id: job {job_id} has been resumed too often", kind=KIND_JOB)

    def delete(self, job_id: str) -> DeletedJob:
        """Remove an ended job and everything kept of it (coordinator.job_files says how, crash-safely)."""
        job = find_job(self.store, job_id)
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
        return DeletedJob(job_id, checkpoints, removal.files, removal.bytes_freed)

    def metrics(self, job_id: str, from_step: int = 0, page_size: int = 0,
                page_token: str = "") -> tuple[list[MetricRow], str]:
        """A page of the job's points in step order, from `from_step` (or from where `page_token` says), and
        the token of the next page ("" on the last one). At most wire.METRICS_PAGE points per page."""
        validate.non_negative(from_step, "from_step")
        validate.non_negative(page_size, "page_size")
        if page_token:
            from_step = validate.page_token(page_token, call="GetMetrics")
        size = min(page_size or METRICS_PAGE, METRICS_PAGE)
        find_job(self.store, job_id)
        points = self.store.metrics(job_id, from_step, limit=size + 1)
        if len(points) > size:
            return points[:size], str(points[size - 1].step + 1)
        return points, ""

    def list_checkpoints(self, job_id: str) -> list[CheckpointRow]:
        find_job(self.store, job_id)
        return self.store.checkpoints(job_id)

    def attempts(self, job_id: str) -> list[AttemptRow]:
        """The job's attempts, oldest first: hosts, exit, outcome and failure of each (for the dashboard)."""
        find_job(self.store, job_id)
        return self.store.attempts(job_id)

    def open_checkpoint(self, job_id: str, *, step: int | None = None,
                        best: bool = False) -> tuple[CheckpointRow, Iterator[bytes]]:
        """The record and the file's chunks: at `step`, the best (checkpoints.best_of), or the latest."""
        find_job(self.store, job_id)
        if step is not None:
            validate.non_negative(step, "step")
        row = self.checkpoints.choose(job_id, step=step, best=best)
        return row, self.checkpoints.open(row)

    def view(self, job: JobRow) -> JobView:
        latest = self.store.latest_metric(job.id)
        sps = latest.samples_per_second if latest and not math.isnan(latest.samples_per_second) else 0.0
        return JobView(job=job, history=self.store.transitions(job.id), latest=latest,
                       best=self.store.best_metric(job.id), samples_per_second=sps, eta_seconds=eta_seconds(job, sps),
                       attempts=self.store.attempts(job.id))
