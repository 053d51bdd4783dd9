"""Rank 0's link to the coordinator: fetch the job, report progress, upload checkpoints, hear cancels.

`python -m worker --coordinator HOST:PORT --job ID --attempt K --out DIR` uses it:

    hooks = CoordinatorHooks("127.0.0.1:50051", "digits-1", os.environ["GRADMESH_JOB_TOKEN"], 1, Path(DIR))
    spec_json, resume_path = hooks.fetch()          # FetchJob (+ FetchCheckpoint, sha256-verified)
    train(spec, comm, hooks=hooks, out_dir=DIR, resume=resume_path)
    hooks.close(timeout=60)                         # deliver every buffered point and upload
    # on a failure instead: hooks.report_failure(pb.WorkerFailure(cause=..., rank=0, ...))   (worker/failure.py)

(The other ranks only ever report their own failure: `worker.coordinator_link.RankFailureHooks`.)

The training loop never waits for the network: `on_metrics` and `on_checkpoint` only buffer (a
checkpoint is hard-linked — or copied — into DIR/.pending-uploads first, because keep_last rotation may
delete the original), and `poll_stop`, called every step, returns the answer of the last ReportProgress.
A background thread sends a ReportProgress about every second (the heartbeat, with any buffered points
and the next event: STARTED, FINISHED or STOPPED) and uploads checkpoints in 1 MiB chunks. Points stay
buffered until the coordinator has them (it ignores duplicates, so resending after a lost reply is
harmless): the heartbeat itself is the retry of the progress report.

Retries (worker/coordinator_link.py): gRPC's own retry policy for the unary calls, `Backoff` for the
streams. A failure report is one ReportProgress with WORKER_EVENT_FAILING, under a short deadline.

This module is the progress buffer and the thread that delivers it; `CoordinatorHooks` also takes in the
upload queue (worker/checkpoint_uploads.py: `on_checkpoint` and the uploads the thread makes) and the
download of the checkpoint to resume from (worker/checkpoint_fetch.py, called by `fetch`).

Bounds: one report carries at most MAX_POINTS_PER_REPORT points (the coordinator's cap); the buffer holds
at most MAX_BUFFERED_POINTS (the oldest are dropped, with one line, if the coordinator stays unreachable).
A report refused for its size (RESOURCE_EXHAUSTED or INVALID_ARGUMENT with several points) is split: the
next calls carry half as many points, down to one; a single point refused so is dropped with one line. A
full disk on the coordinator (RESOURCE_EXHAUSTED, kind "disk") refuses nothing for good: points are kept
and retried after DISK_FULL_PAUSE_S while the heartbeats go on without them, and a checkpoint that cannot be
stored is retried with backoff, or skipped (one line) once a newer one waits behind it.

The coordinator keeps the checkpoint history, so under it rank 0 keeps only its newest local checkpoint:
older ones (and the downloaded one it resumed from) are deleted when a new one is written.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from pathlib import Path

import grpc

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.wire import JOB_TOKEN_HEADER
from worker.checkpoint_fetch import CheckpointFetch
from worker.checkpoint_uploads import CheckpointUploads, PendingUpload
from worker.coordinator_link import (DISOWNED, KIND_DISK, RETRYABLE, CoordinatorRefused, failure_request,
                                     metric_float, open_channel, refusal_kind, say)
from worker.hooks import ConsoleHooks, Hooks, StopRequest

FINISH_EVENTS = {"succeeded": pb.WORKER_EVENT_FINISHED, "stopped": pb.WORKER_EVENT_STOPPED}  # "nan": a failure
FETCH_TIMEOUT_S = 30.0            # FetchJob: a coordinator that is restarting gets this long to come back
FAILURE_REPORT_TIMEOUT_S = 1.0    # rank 0's failure report, on its open channel
MAX_POINTS_PER_REPORT = 1000      # points in one ReportProgress: the coordinator's cap per report
MAX_BUFFERED_POINTS = 10_000      # points kept while the coordinator cannot take them; the oldest go first
DISK_FULL_PAUSE_S = 5.0           # after the coordinator's disk was full: heartbeats without points this long
# RESOURCE_EXHAUSTED kinds that say the coordinator is busy, not that the call is too big: retried as they are.
# Any other kind (a cap on what the call carries, e.g. "points") gets a single refused point dropped.
CAPACITY_KINDS = ("", "capacity", KIND_DISK)


class CoordinatorHooks(CheckpointFetch, CheckpointUploads, Hooks):
    def __init__(self, address: str, job_id: str, token: str, attempt: int, workdir: Path,
                 tls_ca: Path | None = None, *, heartbeat_s: float = 1.0, rpc_timeout_s: float = 10.0,
                 max_upload_tries: int = 6):
        self.address = address
        self.job_id = job_id
        self.attempt = attempt
        self.workdir = Path(workdir)
        self.heartbeat_s = heartbeat_s
        self._stepped = False   # has this attempt produced its first metric point yet (it is sent at once)
        self.rpc_timeout_s = rpc_timeout_s
        self.max_upload_tries = max_upload_tries
        self._console = ConsoleHooks()  # rank 0's progress lines, printed into the attempt log
        self._channel = open_channel(address, tls_ca)
        self._stub = rpc.WorkerServiceStub(self._channel)
        self._metadata = ((JOB_TOKEN_HEADER, token),)
        self._lock = threading.Lock()
        self._console = ConsoleHooks()  # the progress lines of a standalone run, into the attempt log
        self._points: list[pb.MetricPoint] = []
        # events still to deliver, oldest first: (WorkerEvent, message, WorkerFailure or None)
        self._events: deque[tuple[int, str, pb.WorkerFailure | None]] = deque()
        self._uploads: deque[PendingUpload] = deque()
        self._progress = (0, 0, 0)  # step, total_steps, epoch
        self._stop: StopRequest | None = None
        self.pause_at = 0          # FetchJob's pause_at_step: stop there with a checkpoint (0: no pause)
        self._computing = -1       # the step on_step last announced
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._report_failures = 0
        self._close_deadline = math.inf
        self._pending_dir = self.workdir / ".pending-uploads"
        self._max_points = MAX_POINTS_PER_REPORT   # halved when a report is refused for its size
        self._points_paused_until = 0.0            # the coordinator's disk was full: send no points until then
        self._dropped_points = 0                   # buffer overflow, said once per episode
        self._skipping_uploads = False             # checkpoints skipped for a full disk, said once per episode

    # ------------------------------------------------------------ before training

    def fetch(self) -> tuple[str, Path | None]:
        """The job's spec JSON, and the verified checkpoint to resume from (or None).

        Raises CoordinatorRefused, or ChecksumMismatch when the checkpoint arrives damaged."""
        try:
            reply = self._stub.FetchJob(pb.FetchJobRequest(job_id=self.job_id, attempt=self.attempt),
                                        timeout=FETCH_TIMEOUT_S, metadata=self._metadata, wait_for_ready=True)
        except grpc.RpcError as err:
            raise CoordinatorRefused(f"FetchJob at {self.address}: {err.code().name}: {err.details()}",
                                     err.code()) from None
        self.attempt = reply.attempt or self.attempt
        self.pause_at = reply.pause_at_step  # a sweep's rung: stop at exactly this step with a checkpoint
        self._clear_stale_uploads()
        resume = None
        if reply.HasField("resume_from") and reply.resume_from.sha256:
            resume = self._fetch_checkpoint(reply.resume_from)
        self._start_thread()
        return reply.spec_json, resume

    # ------------------------------------------------------------ Hooks (called by train() on rank 0)
    # (on_checkpoint is CheckpointUploads': it only queues the file)

    def on_start(self, *, step, total_steps, epoch, info):
        # the attempt's log (`gradmesh logs -f`, the dashboard) shows what a standalone run prints, as it is printed
        self._console.on_start(step=step, total_steps=total_steps, epoch=epoch, info=info)
        ranks = f"{info.get('ranks', '?')} rank(s)" + (f", {info['wire_note']}" if info.get("wire_note") else "")
        with self._lock:
            self._progress = (step, total_steps, epoch)
            self._events.append((pb.WORKER_EVENT_STARTED, f"{ranks}, resumed at step {step}" if step else ranks, None))
        self._start_thread()
        self._wake.set()

    def on_metrics(self, point):
        self._console.on_metrics(point)
        msg = pb.MetricPoint(step=int(point["step"]), epoch=int(point.get("epoch", 0)),
                             train_loss=metric_float(point, "train_loss"), val_loss=metric_float(point, "val_loss"),
                             val_accuracy=metric_float(point, "val_accuracy"),
                             samples_per_second=metric_float(point, "samples_per_second"),
                             lr=metric_float(point, "lr"),
                             time_unix=float(point.get("time_unix") or time.time()), attempt=self.attempt)
        with self._lock:
            self._points.append(msg)
            if len(self._points) > MAX_BUFFERED_POINTS:
                del self._points[0]
                self._dropped_points += 1
                if self._dropped_points == 1:
                    say(f"more than {MAX_BUFFERED_POINTS} points wait for the coordinator; dropping the oldest")
            step, total, epoch = self._progress
            self._progress = (max(step, msg.step), total, max(epoch, msg.epoch))
            first, self._stepped = not self._stepped, True
        if first:  # the attempt's first point (and so its first reported step) goes out at once, not at the
            self._wake.set()  # next heartbeat: submit -> first step. Later ones ride the heartbeat.

    def on_step(self, step):
        self._console.on_step(step)
        self._computing = step  # the step being computed: steps done before it
        with self._lock:
            done, total, epoch = self._progress
            if step > done:  # the heartbeat carries it: the coordinator's hang watchdog sees steps between evals
                self._progress = (step, total, epoch)

    def poll_stop(self):
        # A pause is taken after exactly pause_at steps (the stop applies after the step being computed), so a
        # paused trial and an uninterrupted run share every step up to it, and its checkpoint is at pause_at.
        if self.pause_at and self._computing + 1 == self.pause_at:
            return StopRequest(checkpoint=True, reason=f"paused at step {self.pause_at}")
        return self._stop

    def on_finish(self, *, step, epoch, status, message=""):
        self._console.on_finish(step=step, epoch=epoch, status=status, message=message)
        with self._lock:
            s, total, e = self._progress
            self._progress = (max(s, step), total, max(e, epoch))
            if status in FINISH_EVENTS:  # a NaN ends in report_failure, which says more
                self._events.append((FINISH_EVENTS[status], message, None))
        self._wake.set()

    # ------------------------------------------------------------ the end

    def report_failure(self, failure: pb.WorkerFailure) -> None:
        """Tell the coordinator at once why this attempt is failing (one call, short deadline). If that call
        fails, the report waits in the queue for `close()` to deliver it."""
        self._let_queued_events_go_first(FAILURE_REPORT_TIMEOUT_S)
        with self._lock:
            step, total, epoch = self._progress
            points = self._points[:self._max_points]
        request = failure_request(self.job_id, self.attempt, failure, points=points,
                                   step=max(step, failure.step), total_steps=total, epoch=epoch)
        try:
            self._stub.ReportProgress(request, timeout=FAILURE_REPORT_TIMEOUT_S, metadata=self._metadata)
            return
        except grpc.RpcError as err:
            say(f"could not report the failure now ({err.code().name}: {err.details()}); queued")
        except ValueError:  # the channel was already closed
            return
        with self._lock:
            self._events.append((pb.WORKER_EVENT_FAILING, failure.message, failure))

    def _let_queued_events_go_first(self, timeout: float) -> None:
        """Wait (at most `timeout`) for the background thread to deliver the events queued before a failure,
        so the coordinator hears STARTED before FAILING even when a NaN comes within the first heartbeat."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self._thread is not None and time.monotonic() < deadline:
            with self._lock:
                if not self._events:
                    return
            time.sleep(0.005)

    def close(self, timeout: float = 60.0) -> bool:
        """Deliver everything buffered (uploads first), then stop the thread. True when all was delivered."""
        self._close_deadline = time.monotonic() + timeout
        self._closing.set()
        self._wake.set()
        if self._thread is None:
            self._start_thread()
        self._thread.join(timeout)
        with self._lock:
            done = not (self._points or self._events or self._uploads)
        if not done:
            say(f"could not deliver everything to {self.address} within {timeout:.0f} s")
        self._channel.close()
        return done

    # ------------------------------------------------------------ the background thread

    def _start_thread(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="gradmesh-report", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            # Points first: a checkpoint must never reach the coordinator before the points up to its step, or a
            # crash in between would leave a gap that the resumed attempt (starting after that step) never fills.
            ready = self._report()
            if ready:
                self._upload_due(ready)
            with self._lock:
                idle = not (self._points or self._events or self._uploads)
            if self._closing.is_set() and (idle or time.monotonic() >= self._close_deadline):
                return
            self._wake.wait(0.05 if self._closing.is_set() else self.heartbeat_s)
            self._wake.clear()

    def _report(self) -> int:
        """One ReportProgress with what is buffered (at most `_max_points` points). Returns 0 when it failed,
        else 1 + the number of uploads whose points have now all been delivered (those queued when the points
        were taken, provided no point was held back)."""
        with self._lock:
            uploads_covered = len(self._uploads)
            held_back = time.monotonic() < self._points_paused_until
            points = [] if held_back else self._points[:self._max_points]
            all_points = len(points) == len(self._points)
            event, message, failure = self._events[0] if self._events else (pb.WORKER_EVENT_UNSPECIFIED, "", None)
            step, total, epoch = self._progress
        if failure is not None:
            request = failure_request(self.job_id, self.attempt, failure, points=points, step=step,
                                       total_steps=total, epoch=epoch)
        else:
            request = pb.ReportProgressRequest(job_id=self.job_id, attempt=self.attempt, points=points, step=step,
                                               total_steps=total, epoch=epoch, worker_event=event, message=message)
        try:
            reply = self._stub.ReportProgress(request, timeout=self.rpc_timeout_s, metadata=self._metadata,
                                              wait_for_ready=True)
        except grpc.RpcError as err:
            self._report_failures += 1
            self._refused(err, len(points), bool(event))
            return 0
        self._report_failures = 0
        self._forget(len(points), bool(event))
        if reply.cancel_requested and self._stop is None:
            self._stop = StopRequest(checkpoint=reply.checkpoint_requested, reason="cancelled by the coordinator")
        return 1 + uploads_covered if all_points else 1

    def _refused(self, err: grpc.RpcError, n_points: int, event_sent: bool) -> None:
        """What a refused report means for what it carried: never retry an oversized call as it was."""
        code = err.code()
        if code in DISOWNED:
            self._stop = StopRequest(checkpoint=False, reason=f"the coordinator refused this attempt: {err.details()}")
            self._drop_all()
        elif code == grpc.StatusCode.RESOURCE_EXHAUSTED and refusal_kind(err) == KIND_DISK:
            if n_points:  # keep them; heartbeats go on without them until the pause is over
                self._points_paused_until = time.monotonic() + DISK_FULL_PAUSE_S
                if self._report_failures == 1:  # once: this log may be on that disk
                    say(f"the coordinator's disk is full; keeping {n_points} point(s) to send later")
        elif code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INVALID_ARGUMENT) and n_points > 1:
            self._max_points = max(1, n_points // 2)
            say(f"ReportProgress with {n_points} points refused ({code.name}: {err.details()}); sending at most "
                f"{self._max_points} per call")
        elif code not in RETRYABLE or (code == grpc.StatusCode.RESOURCE_EXHAUSTED and n_points
                                       and refusal_kind(err) not in CAPACITY_KINDS):
            say(f"ReportProgress refused ({code.name}: {err.details()}); dropping {n_points} point(s)")
            self._forget(n_points, event_sent)
        elif self._report_failures in (1, 5) or self._report_failures % 30 == 0:
            say(f"ReportProgress failed ({code.name}); will retry")

    def _forget(self, n_points: int, event_sent: bool) -> None:
        with self._lock:
            del self._points[:n_points]
            if event_sent and self._events:
                self._events.popleft()

    def _drop_all(self) -> None:
        with self._lock:
            self._points.clear()
            self._events.clear()
            for u in self._uploads:
                u.path.unlink(missing_ok=True)
            self._uploads.clear()

