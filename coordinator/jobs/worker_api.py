"""The core of the WorkerService: what the ranks of a running attempt may ask and tell, free of gRPC.

    api = WorkerApi(store, checkpoints, supervisor, signal)
    spec_json, attempt, resume_from = api.fetch_job("digits-1", token, attempt=1)
    cancel, checkpoint = api.report_progress("digits-1", token, ProgressReport(attempt=1, step=120, ...))
    row = api.upload_checkpoint("digits-1", token, info, chunks)
    row, chunks = api.fetch_checkpoint("digits-1", token, step=100)
    held = api.append_log("digits-1", token, attempt=1, offset=0, data=b"step 10 ...\n")   # the ranks' output

Every call carries the job token of the attempt, good for that job only and only while that attempt runs:
the store knows the token by its hash, and the job must be RUNNING with this attempt as its current one.
An unknown job id and a wrong token get the same UNAUTHENTICATED answer, so a token holder cannot probe
which jobs exist, and a job that ended takes no more writes (an upload is checked again after its last
byte, before it is stored). Rank 0 reports progress; any rank may report its own failure (a rank that
raises, or whose hang watchdog fires, tells why before it aborts), which is stored on the attempt and
touches neither metrics nor progress.

AppendLog carries what the ranks print to the attempt's log on the coordinator's disk, for `gradmesh logs`
and the dashboard, when they run where that disk is not (Slurm: worker/slurm_step.py forwards the batch
step's output). It is accepted while the attempt has not been settled (its last lines come after the ranks
exited, before Slurm ends the job), at most APPEND_MAX_BYTES a call and LOG_MAX_BYTES an attempt log.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from coordinator.access import footprint, validate
from coordinator.supervision.supervisor import Supervisor
from coordinator.files.checkpoints import MAX_CHECKPOINT_BYTES, CheckpointUpload, Checkpoints, capped
from coordinator.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unauthenticated
from coordinator.access.limits import Limits
from coordinator.events import ChangeSignal
from coordinator.reports import FailureCause, WorkerEvent, WorkerFailure
from coordinator.supervision.launcher import Exit
from coordinator.store.records import EXTERNAL, CheckpointRow, JobRow, MetricRow
from coordinator.store.store import Store
from coordinator.states import JobState
from coordinator.access.tokens import matches
from coordinator.wire import JOB_TOKEN_HEADER, KIND_ATTEMPT, KIND_CHECKPOINT, KIND_TOKEN
from worker.spec import drop_unused, parse_spec

SHA256_RE = re.compile(r"[0-9a-f]{64}")
MAX_TEXT = 4000  # characters of a worker's message kept
MAX_STEP = 1 << 53  # steps and epochs a worker may report: beyond any real job, exact as a float, and room
                    # for `step + 1` in SQLite's int64 (a watch resumes at the next step)
CHECKPOINT_SLACK_BYTES = 4 << 20
KIND_POINTS = "points"  # a ResourceExhausted: the job stored all the metric points it may
KIND_LOG = "log"        # a ResourceExhausted: the attempt's log holds LOG_MAX_BYTES
APPEND_MAX_BYTES = 256 << 10   # one AppendLog
LOG_MAX_BYTES = 64 << 20       # one attempt's log on the coordinator's disk, whoever writes it


def checkpoint_limit(spec_json: str) -> int:
    """The largest upload accepted as a checkpoint of this spec: the size it implies, 1/8 more, and
    CHECKPOINT_SLACK_BYTES (metadata grows with the metrics it carries)."""
    expected = footprint.checkpoint_bytes(parse_spec(drop_unused(json.loads(spec_json))))
    return min(expected + expected // 8 + CHECKPOINT_SLACK_BYTES, MAX_CHECKPOINT_BYTES)


@dataclass(frozen=True)
class ProgressReport:
    """One ReportProgress: rank 0's progress and events, or any rank's own failure (event FAILING)."""
    attempt: int = 0
    rank: int = 0
    points: Sequence[MetricRow] = field(default_factory=tuple)
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    event: WorkerEvent = WorkerEvent.UNSPECIFIED
    message: str = ""
    failure: WorkerFailure | None = None
    exit_code: int | None = None  # a registered run's last report: its rank 0 exits with this code


class WorkerApi:
    def __init__(self, store: Store, checkpoints: Checkpoints, supervisor: Supervisor, signal: ChangeSignal,
                 limits: Limits = Limits()):
        self.limits = limits
        self.store = store
        self.checkpoints = checkpoints
        self.supervisor = supervisor
        self.signal = signal
        self._log_lock = threading.Lock()
        self._log_held: dict[tuple[str, int], int] = {}  # (job, attempt) → bytes of the forwarded output held

    def authorize(self, job_id: str, token: str) -> JobRow:
        """The job, RUNNING, whose current attempt holds `token`; Unauthenticated otherwise, with the same
        words whether the job exists or not."""
        validate.job_id(job_id)
        job = self.store.get_job(job_id)
        if job is not None and job.state in (JobState.QUEUED, JobState.RESTARTING) and matches(token, job.token_hash) \
                and self.store.waiting_attempt(job_id, job.attempts) is not None:
            # the first call of ranks that waited in Slurm's queue: the job is RUNNING from now on
            self.supervisor.ranks_called(job)
            job = self.store.get_job(job_id)
        if job is None or job.state is not JobState.RUNNING or not matches(token, job.token_hash):
            raise Unauthenticated(f"{JOB_TOKEN_HEADER}: not the token of a running attempt of job {job_id}",
                                  kind=KIND_TOKEN)
        return job

    def fetch_job(self, job_id: str, token: str, attempt: int) -> tuple[str, int, CheckpointRow | None]:
        """The spec, the attempt number and the checkpoint to resume from (the newest intact one, if any)."""
        job = self.authorize(job_id, token)
        validate.non_negative(attempt, "attempt")
        if attempt and attempt != job.attempts:
            raise FailedPrecondition(f"attempt: attempt {attempt} of job {job.id} is over (the current attempt "
                                     f"is {job.attempts})", kind=KIND_ATTEMPT)
        return job.spec_json, job.attempts, self.checkpoints.newest_intact(job_id)

    def pause_at(self, job_id: str) -> int:
        """The step the job's ranks are to pause at (coordinator.store.pauses), 0 for none; asked after fetch_job."""
        pause = self.store.pause_of(job_id)
        return pause.at_step if pause is not None and not pause.held else 0

    def report_progress(self, job_id: str, token: str, report: ProgressReport) -> tuple[bool, bool]:
        """Store points (duplicates ignored), progress and events; answer (cancel_requested, checkpoint_requested)."""
        job = self.authorize(job_id, token)
        _check(report)
        if len(report.points) > self.limits.points_per_report:
            raise InvalidArgument("points", f"{len(report.points)} points in one report; at most "
                                            f"{self.limits.points_per_report} (send the rest in the next report)")
        if report.attempt and report.attempt != job.attempts:
            return True, False  # a report that names another attempt than its token's: tell its ranks to stop
        number = job.attempts
        changed = False
        if report.failure is not None:
            failure = dataclasses.replace(report.failure, message=report.failure.message[:MAX_TEXT],
                                          host=report.failure.host[:256],
                                          exception_type=report.failure.exception_type[:200])
            changed = self.store.record_failure(job_id, number, failure)
        if report.rank == 0:
            changed = self._progress(job, number, report) or changed
        if changed:
            self.signal.changed()
        if job.executor == EXTERNAL and (report.failure is not None or (report.rank == 0 and
                                                                        report.exit_code is not None)):
            # a registered run ends when rank 0 says it exits, or a rank says it fails: nobody else can see it end
            exit = Exit(report.exit_code, "the registered run", "" if report.exit_code is not None
                        else "a rank reported a failure")
            self.supervisor.end_external(job_id, number, exit)
        resize = self.supervisor.stop_requested(job.id)  # an elastic job growing back: stop with a checkpoint
        return job.cancel_requested or resize, job.checkpoint_requested or resize

    def _progress(self, job: JobRow, number: int, report: ProgressReport) -> bool:
        rows = [dataclasses.replace(p, attempt=number) for p in report.points]
        if rows:
            stored = self.store.count_metrics(job.id)
            if stored + len(rows) > self.limits.points_per_job:
                raise ResourceExhausted(f"points: job {job.id} has stored {stored} metric points, and may store "
                                        f"{self.limits.points_per_job} (--max-points-per-job); these {len(rows)} are "
                                        "refused", kind=KIND_POINTS)
        changed = self.store.add_metrics(job.id, rows) > 0
        last = max([report.step] + [p.step for p in rows])
        if last > job.step or report.total_steps != job.total_steps or report.epoch > job.epoch:
            self.store.update_progress(job.id, step=last, total_steps=report.total_steps, epoch=report.epoch)
            changed = True
        self.supervisor.saw_progress(job.id, last, event=report.event is not WorkerEvent.UNSPECIFIED)
        if report.event is not WorkerEvent.UNSPECIFIED:
            self.store.set_worker_event(job.id, number, report.event, report.message[:MAX_TEXT])
        return changed

    def upload_checkpoint(self, job_id: str, token: str, info: CheckpointUpload | None,
                          data: Iterator[bytes]) -> CheckpointRow:
        job = self.authorize(job_id, token)
        if info is None:
            raise InvalidArgument("info", "the first message of an upload must carry info (step, sha256, size)")
        _step(info.step, "info.step")
        _step(info.epoch, "info.epoch")
        validate.non_negative(info.size_bytes, "info.size_bytes")
        if not SHA256_RE.fullmatch(info.sha256):
            raise InvalidArgument("info.sha256", "must be 64 lowercase hex digits")
        limit = checkpoint_limit(job.spec_json)
        if info.size_bytes > limit:
            raise InvalidArgument("info.size_bytes", f"{info.size_bytes} bytes is not a checkpoint of this job: its "
                                                     f"spec implies at most {limit}")
        if info.attempt and info.attempt != job.attempts:
            raise FailedPrecondition(f"attempt: attempt {info.attempt} of job {job_id} is over", kind=KIND_ATTEMPT)
        stored = self.store.checkpoints(job_id)
        cap = self.limits.checkpoints_per_job
        if len(stored) >= cap and all(r.step != info.step for r in stored):
            raise ResourceExhausted(f"checkpoint: job {job_id} holds {len(stored)} checkpoints, the most a job may "
                                    "(--max-checkpoints-per-job)", kind=KIND_CHECKPOINT)
        row = self.checkpoints.save(job, info, self._while_authorized(job_id, token,
                                                                     capped(data, info.size_bytes or limit)))
        self.signal.changed()
        return row

    def _while_authorized(self, job_id: str, token: str, data: Iterator[bytes]) -> Iterator[bytes]:
        """`data`, then the token checked again: an attempt that ended during a slow upload stores nothing."""
        yield from data
        self.authorize(job_id, token)

    def fetch_checkpoint(self, job_id: str, token: str, step: int) -> tuple[CheckpointRow, Iterator[bytes]]:
        self.authorize(job_id, token)
        _step(step, "step")
        row = self.checkpoints.choose(job_id, step=step)
        return row, self.checkpoints.open(row)


    def append_log(self, job_id: str, token: str, attempt: int, offset: int, data: bytes,
                   ended_with: int | None = None) -> int:
        """Append `data` (bytes `offset`.. of the attempt's forwarded output) to the attempt's log; returns how
        much of that output the coordinator holds. What it already holds is not written again. `ended_with`:
        the batch step's last call, srun's exit code (the supervisor may settle the attempt on it)."""
        validate.job_id(job_id)
        job = self.store.get_job(job_id)
        if job is not None and job.state in (JobState.QUEUED, JobState.RESTARTING):
            job = self.authorize(job_id, token)  # the batch step runs: so does the job, from now on
        if job is None or not matches(token, job.token_hash):
            raise Unauthenticated(f"{JOB_TOKEN_HEADER}: not the token of a running attempt of job {job_id}",
                                  kind=KIND_TOKEN)
        validate.non_negative(attempt, "attempt")
        validate.non_negative(offset, "offset")
        if offset > MAX_STEP:  # offset + data must fit the answer's int64
            raise InvalidArgument("offset", f"must be at most 2**53, got {offset}")
        if len(data) > APPEND_MAX_BYTES:
            raise InvalidArgument("data", f"{len(data)} bytes in one call; at most {APPEND_MAX_BYTES}")
        row = self.store.attempt(job_id, job.attempts)
        if (attempt and attempt != job.attempts) or row is None or row.ended:
            raise FailedPrecondition(f"attempt: attempt {attempt or job.attempts} of job {job_id} is over",
                                     kind=KIND_ATTEMPT)
        key = (job_id, job.attempts)
        with self._log_lock:
            held = self._log_held.get(key, offset)  # a coordinator restarted meanwhile takes the sender's word
            end = offset + len(data)
            if end <= held and ended_with is None:
                return held
            data = data[max(0, held - offset):]
            note = (f"gradmesh: [{offset - held} bytes of the ranks' output did not reach the coordinator]\n"
                    .encode() if offset > held else b"")
            path = row.log_path
            size = os.path.getsize(path) if os.path.exists(path) else 0
            if size + len(note) + len(data) > LOG_MAX_BYTES:
                raise ResourceExhausted(f"log: the log of job {job_id} attempt {job.attempts} holds {size} bytes, "
                                        f"the most an attempt's log may ({LOG_MAX_BYTES})", kind=KIND_LOG)
            try:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "ab") as f:
                    f.write(note + data)
            except OSError as err:  # a full disk: the sender keeps it and tries again
                raise ResourceExhausted(f"disk: the log of job {job_id} could not be written ({err.strerror})",
                                        kind="disk") from None
            end = max(end, held)
            self._log_held[key] = end
            if len(self._log_held) > 4096:  # attempts long over: forget the oldest
                self._log_held.pop(next(iter(self._log_held)))
        if ended_with is not None:
            self.supervisor.step_ended(job_id, job.attempts, ended_with)
        return end


def _step(value: int, field: str) -> None:
    validate.non_negative(value, field)
    if value > MAX_STEP:
        raise InvalidArgument(field, f"must be at most 2**53, got {value}")


def _check(report: ProgressReport) -> None:
    for name, value in (("step", report.step), ("total_steps", report.total_steps), ("epoch", report.epoch)):
        _step(value, name)
    for name, value in (("attempt", report.attempt), ("rank", report.rank)):
        validate.non_negative(value, name)
    for i, p in enumerate(report.points):
        if not (0 <= p.step <= MAX_STEP and 0 <= p.epoch <= MAX_STEP):
            raise InvalidArgument(f"points[{i}].step", "step and epoch must be in 0..2**53")
    if (report.event is WorkerEvent.FAILING) != (report.failure is not None):
        raise InvalidArgument("failure", "is sent with worker_event FAILING, and only with it")
    if report.failure is not None and report.failure.cause is FailureCause.UNSPECIFIED:
        raise InvalidArgument("failure.cause", "must say why the run fails (a FailureCause other than UNSPECIFIED)")
    if report.rank != 0 and report.failure is None:
        raise InvalidArgument("rank", f"rank {report.rank} may only report its own failure; progress comes from "
                                      "rank 0")
