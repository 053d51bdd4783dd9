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
"""
from __future__ import annotations

import math
import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import grpc

from coordinator.errors import ChecksumMismatch
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.wire import CHUNK_BYTES, JOB_TOKEN_HEADER, sha256_of_chunks, verified
from worker.coordinator_link import Backoff, CoordinatorRefused, failure_request, open_channel, say
from worker.hooks import Hooks, StopRequest

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# The coordinator no longer knows this attempt (a newer one holds the token): stop training.
DISOWNED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
FINISH_EVENTS = {"succeeded": pb.WORKER_EVENT_FINISHED, "stopped": pb.WORKER_EVENT_STOPPED}  # "nan": a failure
FETCH_TIMEOUT_S = 30.0            # FetchJob: a coordinator that is restarting gets this long to come back
FAILURE_REPORT_TIMEOUT_S = 1.0    # rank 0's failure report, on its open channel


@dataclass
class _Upload:
    path: Path          # our own hard link (or copy) of the checkpoint
    step: int
    epoch: int
    is_final: bool
    val_loss: float
    val_accuracy: float
    backoff: Backoff = field(default_factory=Backoff)


def _f(point: dict[str, Any], key: str) -> float:
    value = point.get(key, math.nan)
    return math.nan if value is None else float(value)


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK_BYTES), b"")


class CoordinatorHooks(Hooks):
    def __init__(self, address: str, job_id: str, token: str, attempt: int, workdir: Path,
                 tls_ca: Path | None = None, *, heartbeat_s: float = 1.0, rpc_timeout_s: float = 10.0,
                 max_upload_tries: int = 6):
        self.address = address
        self.job_id = job_id
        self.attempt = attempt
        self.workdir = Path(workdir)
        self.heartbeat_s = heartbeat_s
        self.rpc_timeout_s = rpc_timeout_s
        self.max_upload_tries = max_upload_tries
        self._channel = open_channel(address, tls_ca)
        self._stub = rpc.WorkerServiceStub(self._channel)
        self._metadata = ((JOB_TOKEN_HEADER, token),)
        self._lock = threading.Lock()
        self._points: list[pb.MetricPoint] = []
        # events still to deliver, oldest first: (WorkerEvent, message, WorkerFailure or None)
        self._events: deque[tuple[int, str, pb.WorkerFailure | None]] = deque()
        self._uploads: deque[_Upload] = deque()
        self._progress = (0, 0, 0)  # step, total_steps, epoch
        self._stop: StopRequest | None = None
        self._wake = threading.Event()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._report_failures = 0
        self._close_deadline = math.inf
        self._pending_dir = self.workdir / ".pending-uploads"

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
        resume = None
        if reply.HasField("resume_from") and reply.resume_from.sha256:
            resume = self._fetch_checkpoint(reply.resume_from)
        self._start_thread()
        return reply.spec_json, resume

    def _fetch_checkpoint(self, info: pb.CheckpointInfo) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        target = self.workdir / f"resume-step-{info.step}.npz"
        backoff = Backoff(tries=5)
        while True:
            try:
                self._download(info, target)
                return target
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or not backoff.failed():
                    raise CoordinatorRefused(f"FetchCheckpoint step {info.step}: {err.code().name}: {err.details()}",
                                             err.code()) from None
            backoff.wait()

    def _download(self, info: pb.CheckpointInfo, target: Path) -> None:
        """One FetchCheckpoint into `target`, through a temporary file; sha256 and size checked at the end."""
        tmp = target.with_suffix(".npz.part")
        stream = self._stub.FetchCheckpoint(pb.FetchCheckpointRequest(job_id=self.job_id, step=info.step),
                                            timeout=self.rpc_timeout_s + info.size_bytes / 20e6,
                                            metadata=self._metadata, wait_for_ready=True)
        try:
            with open(tmp, "wb") as out:
                for data in verified((chunk.data for chunk in stream), info.sha256, info.size_bytes,
                                     what=f"the checkpoint of step {info.step}"):
                    out.write(data)
        except (grpc.RpcError, ChecksumMismatch, OSError):
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)

    # ------------------------------------------------------------ Hooks (called by train() on rank 0)

    def on_start(self, *, step, total_steps, epoch, info):
        ranks = f"{info.get('ranks', '?')} rank(s)"
        with self._lock:
            self._progress = (step, total_steps, epoch)
            self._events.append((pb.WORKER_EVENT_STARTED, f"{ranks}, resumed at step {step}" if step else ranks, None))
        self._start_thread()
        self._wake.set()

    def on_metrics(self, point):
        msg = pb.MetricPoint(step=int(point["step"]), epoch=int(point.get("epoch", 0)),
                             train_loss=_f(point, "train_loss"), val_loss=_f(point, "val_loss"),
                             val_accuracy=_f(point, "val_accuracy"),
                             samples_per_second=_f(point, "samples_per_second"), lr=_f(point, "lr"),
                             time_unix=float(point.get("time_unix") or time.time()), attempt=self.attempt)
        with self._lock:
            self._points.append(msg)
            step, total, epoch = self._progress
            self._progress = (max(step, msg.step), total, max(epoch, msg.epoch))

    def on_checkpoint(self, path, *, step, epoch, is_final, metrics):
        self._pending_dir.mkdir(parents=True, exist_ok=True)
        own = self._pending_dir / f"step-{step}-{time.monotonic_ns()}.npz"
        try:
            os.link(path, own)
        except OSError:
            shutil.copyfile(path, own)
        upload = _Upload(own, int(step), int(epoch), bool(is_final), _f(metrics or {}, "val_loss"),
                         _f(metrics or {}, "val_accuracy"), Backoff(tries=self.max_upload_tries))
        with self._lock:
            self._uploads.append(upload)
        self._start_thread()
        self._wake.set()

    def on_step(self, step):
        with self._lock:
            done, total, epoch = self._progress
            if step > done:  # the heartbeat carries it: the coordinator's hang watchdog sees steps between evals
                self._progress = (step, total, epoch)

    def poll_stop(self):
        return self._stop

    def on_finish(self, *, step, epoch, status, message=""):
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
        with self._lock:
            step, total, epoch = self._progress
            points = list(self._points)
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
        """One ReportProgress with everything buffered. Returns 0 when it failed, else 1 + the number of uploads
        that were queued when the points were taken (their points have now been delivered)."""
        with self._lock:
            uploads_covered = len(self._uploads)
            points = list(self._points)
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
            if err.code() in DISOWNED:
                self._stop = StopRequest(checkpoint=False, reason=f"the coordinator refused this attempt: {err.details()}")
                self._drop_all()
            elif err.code() not in RETRYABLE:
                say(f"ReportProgress refused ({err.code().name}: {err.details()}); dropping {len(points)} point(s)")
                self._forget(len(points), bool(event))
            elif self._report_failures in (1, 5) or self._report_failures % 30 == 0:
                say(f"ReportProgress failed ({err.code().name}); will retry")
            return 0
        self._report_failures = 0
        self._forget(len(points), bool(event))
        if reply.cancel_requested and self._stop is None:
            self._stop = StopRequest(checkpoint=reply.checkpoint_requested, reason="cancelled by the coordinator")
        return 1 + uploads_covered

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

    def _upload_due(self, ready: int) -> None:
        """Upload (at most ready - 1) queued checkpoints, oldest first, stopping at one in backoff or failing."""
        for _ in range(ready - 1):
            with self._lock:
                upload = self._uploads[0] if self._uploads else None
            if upload is None or not upload.backoff.ready():
                return
            ok = self._upload(upload)
            with self._lock:
                if ok or upload.backoff.exhausted:
                    if self._uploads and self._uploads[0] is upload:
                        self._uploads.popleft()
                    upload.path.unlink(missing_ok=True)
                    if not ok:
                        say(f"giving up uploading the checkpoint of step {upload.step}")
                if not ok:
                    return

    def _upload(self, upload: _Upload) -> bool:
        """One UploadCheckpoint; on failure, `upload.backoff` says when (and whether) to try again."""
        try:
            size = upload.path.stat().st_size
            sha256 = sha256_of_chunks(_file_blocks(upload.path))
        except OSError as err:
            say(f"cannot read the checkpoint of step {upload.step}: {err}")
            upload.backoff.give_up()
            return False
        info = pb.CheckpointInfo(step=upload.step, epoch=upload.epoch, size_bytes=size, sha256=sha256,
                                 val_loss=upload.val_loss, val_accuracy=upload.val_accuracy, is_final=upload.is_final,
                                 attempt=self.attempt)

        def messages():
            yield pb.UploadCheckpointRequest(job_id=self.job_id, attempt=self.attempt, info=info)
            for block in _file_blocks(upload.path):
                yield pb.UploadCheckpointRequest(data=block)

        try:
            self._stub.UploadCheckpoint(messages(), timeout=self.rpc_timeout_s + size / 10e6, metadata=self._metadata,
                                        wait_for_ready=True)
            return True
        except grpc.RpcError as err:
            if err.code() in DISOWNED or err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                say(f"checkpoint of step {upload.step} refused: {err.code().name}: {err.details()}")
                upload.backoff.give_up()
                if err.code() in DISOWNED:
                    self._stop = StopRequest(checkpoint=False, reason=f"the coordinator refused this attempt: {err.details()}")
            elif upload.backoff.failed():
                say(f"upload of step {upload.step} failed ({err.code().name}: {err.details()}); will retry")
            return False
