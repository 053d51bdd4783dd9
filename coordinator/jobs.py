"""The coordinator's core: every operation of both services, free of gRPC.

`coordinator.servicer` turns requests into calls on `Coordinator` and its results into messages; this
module validates, reads and writes the store, files checkpoints and drives the scheduler. It raises the
typed errors of `coordinator.errors`, which the servicer maps to status codes. Tests may call it
directly, but the service tests go through a real server.

    core = Coordinator(data_dir, store, SlotPool.local_pool(4), data_roots=[Path.cwd()])
    core.address = "127.0.0.1:50051"       # where the ranks reach us (known once the port is bound)
    core.start()                             # re-read the store, start the scheduler thread
    view, created = core.submit(spec_text, job_id="digits-1", labels={}, workers=0)
    for kind, value in core.watch("digits-1", from_step=0): ...
    core.close()

Lifecycle of a job: QUEUED → the scheduler launches an attempt (RUNNING, a fresh job token, `mpirun` in its
own session) → the attempt's end is classified (coordinator.outcomes): SUCCEEDED only on exit 0 with the
final checkpoint uploaded; a retryable failure (exit 1, a signal, a hang the watchdog caught, a group that
died while no coordinator watched) goes to RESTARTING and is relaunched after fault.backoff_s·2^restarts,
resuming from the newest checkpoint whose sha256 still matches, until fault.max_restarts; bad spec/data and
NaN fail at once. ResumeJob continues a FAILED/CANCELLED job as a new job "<id>-r<N>" from its checkpoint.

Files under DATA_DIR:
    gradmesh.db                       the store (coordinator.store)
    checkpoints/<job>/step-N.npz      uploaded checkpoints, retained per the job's keep_last + best + final
    logs/<job>/attempt-K.log          stdout+stderr of mpirun and every rank of attempt K
    runs/<job>/attempt-K/             the ranks' working directory (--out)
"""
from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

from coordinator import validate
from coordinator.checkpoint_files import ChecksumMismatch, checkpoint_name, read_chunks, sha256_of, write_verified
from coordinator.errors import (AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument, NotFound,
                                Unauthenticated, Unavailable)
from coordinator.events import ChangeSignal
from coordinator.launcher import (Exit, WorkerProcess, build_mpirun_argv, build_worker_env, find_mpirun,
                                  format_hosts, log_tail, parse_formatted_hosts)
from coordinator.outcomes import classify, decide
from coordinator.scheduler import Allocation, Running, Scheduler, SlotPool
from coordinator.states import IllegalTransition, JobState
from coordinator.store import CheckpointRow, JobRow, MetricRow, RetentionPolicy, Store, TransitionRow
from coordinator.watchdog import ProgressWatch
from worker.spec import JobSpec, SpecError, parse_spec, parse_spec_text

log = logging.getLogger("gradmesh.coordinator")

SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_CHECKPOINT_BYTES = 4 << 30
LOG_CHUNK_BYTES = 64 << 10
WORKER_EVENTS = {"", "started", "finished", "stopped", "nan", "spec", "data", "error"}


@dataclass(frozen=True)
class JobView:
    """A job as clients see it: the record plus what is derived from its history and metrics."""
    job: JobRow
    history: list[TransitionRow]
    latest: MetricRow | None
    best: MetricRow | None
    samples_per_second: float
    eta_seconds: float


@dataclass(frozen=True)
class CheckpointUpload:
    """The `info` of an upload's first message."""
    step: int
    epoch: int
    size_bytes: int
    sha256: str
    val_loss: float
    val_accuracy: float
    is_final: bool
    attempt: int


METRICS_PAGE = 20000  # points per GetMetrics reply (~1.3 MB); the client pages past it


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def attempt_tag(token_hash: str) -> str:
    """The attempt's process tag: derived from its token hash, which the store keeps, so a restarted
    coordinator finds the processes of the attempt it re-adopts."""
    return token_hash[:32]


def _slug(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40].strip("-")
    return slug or "job"


class Coordinator:
    def __init__(self, data_dir: Path, store: Store, pool: SlotPool, *, data_roots: Sequence[Path],
                 tls_ca: Path | None = None, stop_grace_s: float = 5.0, cancel_checkpoint_wait_s: float = 30.0,
                 mpi_args: Sequence[str] = ()):
        self.data_dir = Path(data_dir)
        self.store = store
        self.pool = pool
        self.data_roots = [Path(r) for r in data_roots]
        self.tls_ca = tls_ca
        self.stop_grace_s = stop_grace_s
        self.cancel_checkpoint_wait_s = cancel_checkpoint_wait_s
        self.mpi_args = tuple(mpi_args)
        self.address = ""  # set by the server once bound: what the ranks dial
        self.signal = ChangeSignal()
        self.scheduler = Scheduler(store, pool, launch=self.launch_attempt, finish=self.finish_attempt,
                                   on_tick=self._supervise, ready=self._ready)
        self._stops: dict[str, float] = {}  # job id → monotonic time at which to signal its process group
        self._stops_lock = threading.Lock()
        self._stopper_threads: list[threading.Thread] = []
        self._views: dict[str, tuple[int, JobView]] = {}  # job id → (signal version, view at that version)
        self._restart_at: dict[str, float] = {}  # RESTARTING job → monotonic time its backoff ends
        self._killed: dict[str, tuple[str, str]] = {}  # job id → (outcome, why) when we stopped it ourselves
        self._tokens: dict[str, str] = {}        # job id → token of the attempt this coordinator launched
        self.progress = ProgressWatch()

    # ================================================================ lifecycle

    def start(self) -> None:
        self.recover()
        self.scheduler.start()

    def close(self, stop_jobs: bool = False) -> None:
        """Stop streams and the scheduler. Running jobs keep running (their own sessions) unless `stop_jobs`."""
        self.signal.close()
        self.scheduler.stop()
        if stop_jobs:
            runs = list(self.scheduler.running.values())
            for run in runs:
                self._killed[run.job_id] = ("interrupted", "the coordinator shut down and stopped the job")
            stoppers = [threading.Thread(target=r.process.stop, args=(self.stop_grace_s,), daemon=True) for r in runs]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(timeout=self.stop_grace_s + 5)
            for run in runs:  # recorded like any other end, so the next coordinator restarts them if allowed
                exit = run.process.poll()
                if exit is not None:
                    self.finish_attempt(run, exit)
        for t in self._stopper_threads:
            t.join(timeout=self.stop_grace_s + 2)

    def recover(self) -> None:
        """Re-read the store after a (re)start: adopt running process groups that are still alive, and
        settle the ones that ended while no coordinator was watching."""
        for job in self.store.jobs_in(JobState.RUNNING):
            attempt = self.store.attempt(job.id, job.attempts)
            if attempt is None:
                self._fail(job.id, "coordinator restarted: the job was RUNNING without an attempt record", 0)
                continue
            alloc = parse_formatted_hosts(attempt.hosts) or [("localhost", job.workers)]
            process = WorkerProcess.adopt(attempt.pid, attempt.pgid, tag=attempt_tag(job.token_hash))
            run = Running(job.id, attempt.attempt, process, alloc)
            if process.alive():
                log.info("re-adopting %s attempt %d (process group %d)", job.id, attempt.attempt, attempt.pgid)
                self.scheduler.adopt(run)
                self.progress.started(job.id, _fault(job).get("hang_timeout_s", 60.0))
            else:
                self.finish_attempt(run, Exit(None), prefix="coordinator restarted while the job ran: ")
        self.signal.changed()

    # ================================================================ client operations

    def submit(self, spec_text: str, *, job_id: str = "", labels: Mapping[str, str] | None = None,
               workers: int = 0) -> tuple[JobView, bool]:
        if not spec_text.strip():
            raise InvalidArgument("spec", "must not be empty (send the TOML or JSON text of a job spec)")
        if len(spec_text.encode()) > validate.MAX_SPEC_BYTES:
            raise InvalidArgument("spec", f"is larger than {validate.MAX_SPEC_BYTES} bytes")
        if job_id:
            validate.job_id(job_id)
        labels = validate.labels(labels or {})
        validate.non_negative(workers, "workers")
        try:
            raw = parse_spec_text(spec_text).to_dict()
        except SpecError as err:
            # exactly str(SpecError) (parse errors name the field "file"), as clients parse the field from it
            raise InvalidArgument(err.field, err.reason) from None
        spec = self._runnable_spec(raw, workers)
        spec_json = spec.to_json()
        new_id = job_id or f"{_slug(spec.name)}-{secrets.token_hex(4)}"
        row = JobRow(id=new_id, name=spec.name, spec_json=spec_json, state=JobState.QUEUED, workers=spec.workers,
                     priority=spec.priority, labels=labels, created=time.time(), total_steps=spec.train.steps)
        stored, created = self.store.create_job(row)
        if not created and stored.spec_json != spec_json:
            raise AlreadyExists(f"job_id: job {new_id} already exists with a different spec; choose another id "
                                "or resubmit the identical spec")
        if created:
            self.signal.changed()
            self.scheduler.wake()
        return self.view(stored), created

    def get(self, job_id: str) -> JobView:
        # Every visible write bumps the change signal, so a view built at the current version is still
        # exact; polling clients (GetJob in a loop) then cost a dict lookup instead of four queries.
        validate.job_id(job_id)
        version = self.signal.version
        cached = self._views.get(job_id)
        if cached is not None and cached[0] == version:
            return cached[1]
        view = self.view(self._job(job_id))
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
        size = validate.page_size(page_size)
        before = validate.page_token(page_token)
        rows = self.store.list_jobs(wanted, limit=size, before_seq=before)
        token = str(rows[-1].seq) if len(rows) == size else ""
        return [self.view(r) for r in rows], token

    def cancel(self, job_id: str, checkpoint: bool = False) -> JobView:
        job = self._job(job_id)
        if job.state is JobState.QUEUED:
            try:
                self.store.transition(job.id, JobState.CANCELLED, "cancelled before it started",
                                      expect=[JobState.QUEUED])
            except IllegalTransition:
                return self.cancel(job_id, checkpoint)  # it started meanwhile: cancel the running job
            self.signal.changed()
            self.scheduler.wake()
            return self.get(job_id)
        if job.state is JobState.RESTARTING and self.scheduler.get_running(job.id) is None:
            try:
                self.store.transition(job.id, JobState.CANCELLED, "cancelled while waiting to restart",
                                      attempt=job.attempts, expect=[JobState.RESTARTING])
            except IllegalTransition:
                return self.cancel(job_id, checkpoint)  # relaunched meanwhile: cancel the running job
            self._restart_at.pop(job.id, None)
            self.signal.changed()
            return self.get(job_id)
        if job.state is JobState.CANCELLED:
            return self.view(job)
        if job.state.is_terminal():
            raise FailedPrecondition(f"job_id: job {job.id} already ended {job.state.name}; only a queued or "
                                     "running job can be cancelled")
        self.store.request_cancel(job.id, checkpoint)
        # Without a checkpoint the group is signalled at once; with one, the ranks first get the time to
        # see cancel_requested at a step boundary and write it (then SIGTERM, grace, SIGKILL as usual).
        delay = self.cancel_checkpoint_wait_s if checkpoint else 0.0
        with self._stops_lock:
            self._stops.setdefault(job.id, time.monotonic() + delay)
        self.scheduler.wake()
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
                spec = parse_spec(raw)
        except SpecError as err:
            raise InvalidArgument(err.field, err.reason) from None
        if spec.workers > self.pool.total:
            raise InvalidArgument("workers", f"the job needs {spec.workers} worker slots but this coordinator has "
                                             f"{self.pool.total} in all")
        return spec

    def resume(self, job_id: str, workers: int = 0) -> JobView:
        """Run a FAILED or CANCELLED job again from its newest intact checkpoint, optionally on another number
        of workers. Terminal states stay final: the run is a NEW job, "<id>-r<N>", labelled resumed_from=<id>,
        whose first checkpoint is that one (so its ranks resume from it). Returns the new job."""
        job = self._job(job_id)
        validate.non_negative(workers, "workers")
        if job.state not in (JobState.FAILED, JobState.CANCELLED):
            raise FailedPrecondition(f"job_id: job {job_id} is {job.state.name}; only a FAILED or CANCELLED job "
                                     "can be resumed")
        source = self._newest_good_checkpoint(job_id)
        if source is None:
            raise FailedPrecondition(f"job_id: job {job_id} has no intact checkpoint to resume from")
        spec = self._runnable_spec(json.loads(job.spec_json), workers)
        base = job_id[:58]
        for n in range(1, 10000):
            new_id = f"{base}-r{n}"
            if self.store.get_job(new_id) is not None:
                continue
            path = self.data_dir / "checkpoints" / new_id / checkpoint_name(source.step)
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(source.path, path)  # checkpoint files are never modified in place, so sharing is safe
            except OSError:
                shutil.copyfile(source.path, path)
            seed = dataclasses.replace(source, job_id=new_id, attempt=0, is_final=False, created=time.time(),
                                       path=str(path))
            row = JobRow(id=new_id, name=spec.name, spec_json=spec.to_json(), state=JobState.QUEUED,
                         workers=spec.workers, priority=spec.priority,
                         labels={**job.labels, "resumed_from": job_id}, created=time.time(),
                         total_steps=spec.train.steps)
            stored, created = self.store.create_job(
                row, message=f"resumed from job {job_id} at step {source.step}", seed=seed)
            if created:
                self.signal.changed()
                self.scheduler.wake()
                return self.view(stored)
        raise FailedPrecondition(f"job_id: job {job_id} has been resumed too often")

    def metrics(self, job_id: str, from_step: int = 0) -> list[MetricRow]:
        """At most METRICS_PAGE points from `from_step`: a long history would exceed the message size limit,
        so callers ask again from the step after the last one they got until a reply is shorter."""
        validate.non_negative(from_step, "from_step")
        self._job(job_id)
        return self.store.metrics(job_id, from_step, limit=METRICS_PAGE)

    def watch(self, job_id: str, from_step: int = 0, is_active: Callable[[], bool] = lambda: True,
              poll_s: float = 1.0) -> Iterator[tuple[str, object]]:
        """("snapshot", JobView), then ("metric", MetricRow) from `from_step`, then live ("state", TransitionRow)
        and metrics. Always ends with the state event of the terminal state (re-sent when the job had already
        ended), so a clean end of the stream means the job ended."""
        validate.non_negative(from_step, "from_step")
        view = self.get(job_id)
        yield "snapshot", view
        last_transition = view.history[-1].id if view.history else 0
        next_step = from_step
        if view.job.state.is_terminal():
            for point in self.store.metrics(job_id, next_step):
                yield "metric", point
            yield "state", view.history[-1]
            return
        while is_active():
            if self.signal.closed:
                raise Unavailable("coordinator is shutting down; watch again from your last step")
            seen = self.signal.version
            # Transitions first, then metrics: every point committed before the terminal state is sent before it.
            transitions = self.store.transitions(job_id, last_transition)
            for point in self.store.metrics(job_id, next_step):
                next_step = point.step + 1
                yield "metric", point
            for change in transitions:
                last_transition = change.id
                yield "state", change
                if change.state.is_terminal():
                    return
            self.signal.wait(seen, poll_s)

    def logs(self, job_id: str, *, follow: bool = False, attempt: int = 0,
             is_active: Callable[[], bool] = lambda: True, poll_s: float = 0.25) -> Iterator[tuple[int, bytes]]:
        """(attempt, bytes) chunks of an attempt's log. With `follow`, keep reading until the job ends; when
        following the latest attempt (attempt=0), continue into the next attempt after a restart."""
        validate.non_negative(attempt, "attempt")
        job = self._job(job_id)
        if attempt > job.attempts:
            raise InvalidArgument("attempt", f"job {job_id} has {job.attempts} attempt(s), there is no attempt {attempt}")
        number = attempt or job.attempts
        offset = 0
        while is_active():
            if self.signal.closed:
                raise Unavailable("coordinator is shutting down")
            seen = self.signal.version
            job = self._job(job_id)
            row = self.store.attempt(job_id, number) if number else None
            if row is not None:
                offset, chunks = _read_from(Path(row.log_path), offset)
                for chunk in chunks:
                    yield number, chunk
            if not follow:
                return
            if number == 0 and job.attempts > 0:
                number = job.attempts
                continue
            if row is not None and row.ended and attempt == 0 and job.attempts > number:
                number, offset = number + 1, 0
                continue
            if job.state.is_terminal() and (row is None or row.ended):
                if row is not None:
                    offset, chunks = _read_from(Path(row.log_path), offset)
                    for chunk in chunks:
                        yield number, chunk
                return
            self.signal.wait(seen, poll_s)

    def list_checkpoints(self, job_id: str) -> list[CheckpointRow]:
        self._job(job_id)
        return self.store.checkpoints(job_id)

    def open_checkpoint(self, job_id: str, *, step: int | None = None, best: bool = False) -> tuple[CheckpointRow, Iterator[bytes]]:
        """The record and the file's chunks: at `step`, the best by validation loss, or (neither) the latest."""
        self._job(job_id)
        rows = self.store.checkpoints(job_id)
        if step is not None:
            validate.non_negative(step, "step")
            chosen = next((r for r in rows if r.step == step), None)
            if chosen is None:
                have = ", ".join(str(r.step) for r in rows) or "none"
                raise NotFound(f"checkpoint at step {step} not found for job {job_id} (stored steps: {have})")
        elif best:
            measured = [r for r in rows if not math.isnan(r.val_loss)]
            if not measured:
                raise NotFound(f"checkpoint: job {job_id} has no checkpoint with a validation loss yet")
            chosen = min(measured, key=lambda r: (r.val_loss, r.step))
        else:
            if not rows:
                raise NotFound(f"checkpoint: job {job_id} has no checkpoints yet")
            chosen = rows[-1]
        path = Path(chosen.path)
        if not path.is_file():
            raise NotFound(f"checkpoint file for step {chosen.step} of job {job_id} is missing on the coordinator")
        return chosen, _verified(read_chunks(path), chosen)

    # ================================================================ worker operations

    def authorize_worker(self, job_id: str, token: str) -> JobRow:
        validate.job_id(job_id)
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        if not token or not job.token_hash or not hmac.compare_digest(hash_token(token), job.token_hash):
            raise Unauthenticated(f"x-gradmesh-job-token: not a valid token for job {job_id}")
        return job

    def job_token(self, job_id: str) -> str:
        """The plain token of the attempt this coordinator launched for `job_id` (tests and benchmarks act as its
        rank 0 with it; the store keeps only its hash). KeyError when this process launched none."""
        return self._tokens[job_id]

    def _current_attempt(self, job: JobRow, attempt: int) -> int:
        validate.non_negative(attempt, "attempt")
        if attempt and attempt != job.attempts:
            raise FailedPrecondition(f"attempt: attempt {attempt} of job {job.id} is over (the current attempt "
                                     f"is {job.attempts})")
        return job.attempts

    def fetch_job(self, job_id: str, token: str, attempt: int) -> tuple[str, int, CheckpointRow | None]:
        """The spec and the checkpoint to resume from (the newest one stored, if any)."""
        job = self.authorize_worker(job_id, token)
        number = self._current_attempt(job, attempt)
        if job.state.is_terminal():
            raise FailedPrecondition(f"job_id: job {job_id} already ended {job.state.name}")
        return job.spec_json, number, self._newest_good_checkpoint(job_id)

    def _newest_good_checkpoint(self, job_id: str) -> CheckpointRow | None:
        """The newest stored checkpoint whose file still has its recorded sha256 (a corrupt one is skipped)."""
        for row in reversed(self.store.checkpoints(job_id)):
            try:
                if sha256_of(Path(row.path)) == row.sha256:
                    return row
                log.warning("checkpoint step %d of %s is corrupt (sha256 mismatch); skipping it", row.step, job_id)
            except OSError as err:
                log.warning("checkpoint step %d of %s is unreadable (%s); skipping it", row.step, job_id, err)
        return None

    def report_progress(self, job_id: str, token: str, *, attempt: int, points: Sequence[MetricRow], step: int,
                        total_steps: int, epoch: int, event: str, message: str) -> tuple[bool, bool]:
        """Store points (duplicates ignored) and progress; answer (cancel_requested, checkpoint_requested)."""
        job = self.authorize_worker(job_id, token)
        if event not in WORKER_EVENTS:
            raise InvalidArgument("event", f"{event[:40]!r} is not one of {', '.join(sorted(WORKER_EVENTS - {''}))}")
        for name, value in (("step", step), ("total_steps", total_steps), ("epoch", epoch)):
            validate.non_negative(value, name)
        for i, p in enumerate(points):
            if p.step < 0 or p.epoch < 0:
                raise InvalidArgument(f"points[{i}].step", "step and epoch must not be negative")
        validate.non_negative(attempt, "attempt")
        if (attempt and attempt != job.attempts) or job.state.is_terminal():
            return True, False  # a stale attempt or an ended job: tell its ranks to stop
        number = job.attempts
        rows = [dataclasses.replace(p, attempt=number) for p in points]
        changed = self.store.add_metrics(job_id, rows) > 0
        last = max([step] + [p.step for p in rows])
        if last > job.step or total_steps != job.total_steps or epoch > job.epoch:
            self.store.update_progress(job_id, step=last, total_steps=total_steps, epoch=epoch)
            changed = True
        self.progress.progress(job_id, last, event=bool(event))
        if event:
            self.store.set_worker_event(job_id, number, event, message[:4000])
        if changed:
            self.signal.changed()
        return job.cancel_requested, job.checkpoint_requested

    def upload_checkpoint(self, job_id: str, token: str, info: CheckpointUpload | None,
                          data: Iterator[bytes]) -> CheckpointRow:
        job = self.authorize_worker(job_id, token)
        if info is None:
            raise InvalidArgument("info", "the first message of an upload must carry info (step, sha256, size)")
        validate.non_negative(info.step, "info.step")
        validate.non_negative(info.epoch, "info.epoch")
        validate.non_negative(info.size_bytes, "info.size_bytes")
        if not SHA256_RE.fullmatch(info.sha256):
            raise InvalidArgument("info.sha256", "must be 64 lowercase hex digits")
        if info.size_bytes > MAX_CHECKPOINT_BYTES:
            raise InvalidArgument("info.size_bytes", f"checkpoints are limited to {MAX_CHECKPOINT_BYTES} bytes")
        if info.attempt and info.attempt != job.attempts:
            raise FailedPrecondition(f"attempt: attempt {info.attempt} of job {job_id} is over")
        path = self.data_dir / "checkpoints" / job_id / checkpoint_name(info.step)
        try:
            size, sha = write_verified(path, _capped(data, MAX_CHECKPOINT_BYTES), expected_sha256=info.sha256,
                                       expected_size=info.size_bytes or None)
        except ChecksumMismatch as err:
            raise InvalidArgument("info.sha256", str(err)) from None
        row = CheckpointRow(job_id=job_id, step=info.step, epoch=info.epoch, size=size, sha256=sha,
                            val_loss=info.val_loss, val_accuracy=info.val_accuracy, is_final=info.is_final,
                            created=time.time(), attempt=job.attempts, path=str(path))
        keep_last = json.loads(job.spec_json).get("checkpoint", {}).get("keep_last", 3)
        for dropped in self.store.add_checkpoint(row, RetentionPolicy(keep_last)):
            if dropped.path != row.path:
                Path(dropped.path).unlink(missing_ok=True)
        self.signal.changed()
        return row

    def fetch_checkpoint(self, job_id: str, token: str, step: int) -> tuple[CheckpointRow, Iterator[bytes]]:
        self.authorize_worker(job_id, token)
        return self.open_checkpoint(job_id, step=step)

    # ================================================================ attempts (called by the scheduler)

    def launch_attempt(self, job: JobRow, alloc: Allocation) -> Running | None:
        token = secrets.token_hex(32)
        token_hash = hash_token(token)
        hosts = format_hosts(alloc)
        try:
            attempt, _ = self.store.begin_attempt(
                job.id, hosts=hosts, log_dir=self.data_dir / "logs" / job.id, run_dir=self.data_dir / "runs" / job.id,
                token_hash=token_hash,
                message=f"running on {hosts}" + (f" (restart {job.restarts})" if job.restarts else ""))
        except IllegalTransition:
            return None  # cancelled between the scheduler's read and now
        self.signal.changed()
        log_path, workdir = Path(attempt.log_path), Path(attempt.workdir)
        try:
            argv = build_mpirun_argv(mpirun=find_mpirun(), python=sys.executable, workers=job.workers,
                                     hosts=None if self.pool.local else alloc, coordinator=self.address,
                                     job_id=job.id, attempt=attempt.attempt, workdir=workdir, mpi_args=self.mpi_args)
            env = build_worker_env(os.environ, job_token=token, attempt_tag=attempt_tag(token_hash), tls_ca=self.tls_ca)
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as f:
                f.write(f"gradmesh: attempt {attempt.attempt} of {job.id}: {' '.join(argv)}\n")
            process = WorkerProcess.start(argv, env, log_path, cwd=workdir)
        except OSError as err:
            message = f"could not start mpirun: {err}"
            self.store.end_attempt(job.id, attempt.attempt, exit_code=None, outcome="launch-failed", message=message)
            self._fail(job.id, message, attempt.attempt)
            return None
        self.store.record_launch(job.id, attempt.attempt, process.pid, process.pgid)
        self._tokens[job.id] = token
        self._restart_at.pop(job.id, None)
        self.progress.started(job.id, _fault(job).get("hang_timeout_s", 60.0))
        return Running(job.id, attempt.attempt, process, alloc)

    def finish_attempt(self, run: Running, exit: Exit, prefix: str = "") -> None:
        with self._stops_lock:
            self._stops.pop(run.job_id, None)
        self.progress.forget(run.job_id)
        killed = self._killed.pop(run.job_id, None)
        job = self.store.get_job(run.job_id)
        attempt = self.store.attempt(run.job_id, run.attempt)
        if job is None or attempt is None:
            return
        ours = [c for c in self.store.checkpoints(job.id) if c.attempt == run.attempt]
        finals = [c.step for c in ours if c.is_final]
        log_path = Path(attempt.log_path)
        outcome = classify(exit, cancel_requested=job.cancel_requested,
                           final_checkpoint_step=max(finals) if finals else None,
                           worker_event=attempt.worker_event, worker_message=attempt.worker_message,
                           tail=log_tail(log_path), log_name=log_path.name, killed=killed,
                           last_checkpoint_step=max(c.step for c in ours) if ours else None)
        if prefix and outcome.state is not JobState.SUCCEEDED:
            outcome = dataclasses.replace(outcome, message=prefix + outcome.message)
        self.store.end_attempt(job.id, run.attempt, exit_code=exit.code, outcome=outcome.outcome,
                               message=outcome.message)
        fault = _fault(job)
        decision = decide(outcome, attempt=run.attempt, restarts=job.restarts,
                          max_restarts=fault.get("max_restarts", 2), backoff_s=fault.get("backoff_s", 1.0))
        if decision.state is JobState.RESTARTING:
            self._restart_at[job.id] = time.monotonic() + decision.delay_s
        try:
            self.store.transition(job.id, decision.state, decision.message, attempt=run.attempt,
                                  expect=[JobState.RUNNING])
        except IllegalTransition:
            log.warning("job %s attempt %d ended (%s) but the job is no longer RUNNING", job.id, run.attempt,
                        exit.describe())
        self.signal.changed()
        self.scheduler.wake()

    def _ready(self, job: JobRow) -> bool:
        """QUEUED jobs may start at once; RESTARTING ones after their backoff."""
        return job.state is not JobState.RESTARTING or time.monotonic() >= self._restart_at.get(job.id, 0.0)

    def _supervise(self) -> None:
        """Each scheduler round: signal cancelled jobs whose grace is over, and kill hung attempts."""
        for job_id, message in self.progress.overdue():
            run = self.scheduler.get_running(job_id)
            if run is not None:
                log.warning("job %s: %s", job_id, message)
                self._killed[job_id] = ("hung", message)
                self._stop_in_background(run)
        self._due_stops()

    def _stop_in_background(self, run: Running) -> None:
        thread = threading.Thread(target=run.process.stop, args=(self.stop_grace_s,), name=f"stop-{run.job_id}",
                                  daemon=True)
        thread.start()
        self._stopper_threads = [t for t in self._stopper_threads if t.is_alive()] + [thread]

    def _due_stops(self) -> None:
        """Signal the process groups of cancelled jobs whose wait for a cooperative stop is over."""
        now = time.monotonic()
        with self._stops_lock:
            due = [job_id for job_id, at in self._stops.items() if at <= now]
        for job_id in due:
            run = self.scheduler.get_running(job_id)
            if run is None:
                continue  # launching right now, or already reaped; retried on the next round
            with self._stops_lock:
                self._stops[job_id] = math.inf  # signalled once; finish_attempt removes the entry
            self._stop_in_background(run)

    # ================================================================ views and helpers

    def _job(self, job_id: str) -> JobRow:
        validate.job_id(job_id)
        job = self.store.get_job(job_id)
        if job is None:
            raise NotFound(f"job {job_id} not found")
        return job

    def _fail(self, job_id: str, message: str, attempt: int) -> None:
        try:
            self.store.transition(job_id, JobState.FAILED, message, attempt=attempt)
        except IllegalTransition:
            log.warning("could not mark %s FAILED (%s)", job_id, message)
        self.signal.changed()

    def view(self, job: JobRow) -> JobView:
        latest = self.store.latest_metric(job.id)
        best = self.store.best_metric(job.id)
        sps = latest.samples_per_second if latest and not math.isnan(latest.samples_per_second) else 0.0
        eta = -1.0
        if job.state is JobState.SUCCEEDED:
            eta = 0.0
        elif job.state is JobState.RUNNING and sps > 0 and job.total_steps > 0:
            batch = json.loads(job.spec_json).get("train", {}).get("batch_size", 0)
            if batch:
                eta = max(0, job.total_steps - job.step) * batch / sps
        return JobView(job=job, history=self.store.transitions(job.id), latest=latest, best=best,
                       samples_per_second=sps, eta_seconds=eta)


def _fault(job: JobRow) -> dict:
    return json.loads(job.spec_json).get("fault", {})


def _verified(chunks: Iterator[bytes], row: CheckpointRow) -> Iterator[bytes]:
    """Pass chunks through, and fail the stream at its end when the file no longer has its recorded sha256."""
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        yield chunk
    if digest.hexdigest() != row.sha256:
        raise DataLoss(f"checkpoint at step {row.step} of job {row.job_id} is corrupt on the coordinator's disk "
                       f"(sha256 {digest.hexdigest()}, recorded {row.sha256})")


def _read_from(path: Path, offset: int) -> tuple[int, list[bytes]]:
    chunks = []
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            while True:
                data = f.read(LOG_CHUNK_BYTES)
                if not data:
                    break
                chunks.append(data)
                offset += len(data)
    except FileNotFoundError:
        pass
    return offset, chunks


def _capped(chunks: Iterator[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise InvalidArgument("data", f"the upload exceeds {limit} bytes")
        yield chunk
