"""Rank 0's link to the coordinator: fetch the job, report progress, upload checkpoints, hear cancels.

`python -m worker --coordinator HOST:PORT --job ID --attempt K --out DIR` uses it on rank 0 only:

    hooks = CoordinatorHooks("127.0.0.1:50051", "digits-1", os.environ["GRADMESH_JOB_TOKEN"], 1, Path(DIR))
    spec_json, resume_path = hooks.fetch()          # FetchJob (+ FetchCheckpoint, sha256-verified)
    train(spec, comm, hooks=hooks, out_dir=DIR, resume=resume_path)
    hooks.close(timeout=60)                         # deliver every buffered point and upload
    # on an error instead: hooks.report_failure("data", "cannot read x.npz: ...")

The training loop never waits for the network: `on_metrics` and `on_checkpoint` only buffer (a
checkpoint is hard-linked — or copied — into DIR/.pending-uploads first, because keep_last rotation may
delete the original), and `poll_stop`, called every step, returns the answer of the last ReportProgress.
A background thread sends a ReportProgress about every second (the heartbeat, with any buffered points
and events) and uploads checkpoints in 1 MiB chunks. Every call has a deadline; failed deliveries are
retried with exponential backoff and the points stay buffered until the coordinator has them (it
ignores duplicates, so a retry after a lost reply is harmless).
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from worker.hooks import Hooks, StopRequest

CHUNK_BYTES = 1 << 20
JOB_TOKEN_HEADER = "x-gradmesh-job-token"
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# The coordinator no longer knows this attempt (a newer one holds the token): stop training.
DISOWNED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
FINISH_EVENTS = {"succeeded": "finished", "stopped": "stopped", "nan": "nan"}
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 8 << 20),
    ("grpc.max_receive_message_length", 8 << 20),
    ("grpc.keepalive_time_ms", 30000),
    ("grpc.keepalive_timeout_ms", 10000),
    ("grpc.http2.ping_timeout_ms", 10000),
    ("grpc.keepalive_permit_without_calls", 1),
    # find a restarted coordinator within a couple of seconds instead of gRPC's default backoff (up to 120 s)
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
]


class CoordinatorError(RuntimeError):
    """The coordinator refused or could not be reached for a call the worker cannot do without."""


@dataclass
class _Upload:
    path: Path          # our own hard link (or copy) of the checkpoint
    step: int
    epoch: int
    is_final: bool
    val_loss: float
    val_accuracy: float
    tries: int = 0
    not_before: float = 0.0


def _f(point: dict[str, Any], key: str) -> float:
    value = point.get(key, math.nan)
    return math.nan if value is None else float(value)


def _say(text: str) -> None:
    print(f"gradmesh report {time.strftime('%H:%M:%S')}: {text}", file=sys.stderr, flush=True)


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
        if tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self._channel = grpc.secure_channel(address, creds, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._stub = rpc.WorkerServiceStub(self._channel)
        self._metadata = ((JOB_TOKEN_HEADER, token),)
        self._lock = threading.Lock()
        self._points: list[pb.MetricPoint] = []
        self._events: deque[tuple[str, str]] = deque()
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
        """The job's spec JSON, and the verified checkpoint to resume from (or None). Raises CoordinatorError."""
        reply = self._call_with_retry(self._stub.FetchJob, pb.FetchJobRequest(job_id=self.job_id, attempt=self.attempt))
        self.attempt = reply.attempt or self.attempt
        resume = None
        if reply.HasField("resume_from") and reply.resume_from.sha256:
            resume = self._fetch_checkpoint(reply.resume_from)
        self._start_thread()
        return reply.spec_json, resume

    def _fetch_checkpoint(self, info: pb.CheckpointInfo) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        target = self.workdir / f"resume-step-{info.step}.npz"
        tmp = target.with_suffix(".npz.part")
        for tries in range(5):
            digest = hashlib.sha256()
            try:
                with open(tmp, "wb") as out:
                    for chunk in self._stub.FetchCheckpoint(pb.FetchCheckpointRequest(job_id=self.job_id, step=info.step),
                                                            timeout=self.rpc_timeout_s + info.size_bytes / 20e6,
                                                            metadata=self._metadata, wait_for_ready=True):
                        out.write(chunk.data)
                        digest.update(chunk.data)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or tries == 4:
                    raise CoordinatorError(f"FetchCheckpoint step {info.step}: {err.code().name}: {err.details()}") from None
                time.sleep(0.5 * 2 ** tries)
                continue
            if digest.hexdigest() != info.sha256:
                tmp.unlink(missing_ok=True)
                raise CoordinatorError(f"checkpoint at step {info.step} arrived with sha256 {digest.hexdigest()}, "
                                       f"expected {info.sha256}")
            os.replace(tmp, target)
            return target
        raise CoordinatorError("unreachable")  # pragma: no cover

    def _call_with_retry(self, method, request, tries: int = 6):
        delay = 0.2
        for attempt in range(tries):
            try:
                return method(request, timeout=self.rpc_timeout_s, metadata=self._metadata, wait_for_ready=True)
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or attempt == tries - 1:
                    raise CoordinatorError(f"{type(request).__name__[:-7]} at {self.address}: "
                                           f"{err.code().name}: {err.details()}") from None
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        raise CoordinatorError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------ Hooks (called by train() on rank 0)

    def on_start(self, *, step, total_steps, epoch, info):
        with self._lock:
            self._progress = (step, total_steps, epoch)
            self._events.append(("started", f"{info.get('ranks', '?')} rank(s), resumed at step {step}" if step
                                 else f"{info.get('ranks', '?')} rank(s)"))
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
                         _f(metrics or {}, "val_accuracy"))
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
            self._events.append((FINISH_EVENTS.get(status, "error"), message))
        self._wake.set()

    # ------------------------------------------------------------ after training

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
            _say(f"could not deliver everything to {self.address} within {timeout:.0f} s")
        self._channel.close()
        return done

    def report_failure(self, kind: str, message: str) -> None:
        """Tell the coordinator why this attempt is failing ("spec" | "data" | "nan" | "error"). Best effort."""
        with self._lock:
            step, total, epoch = self._progress
            points = list(self._points)
        request = pb.ReportProgressRequest(job_id=self.job_id, attempt=self.attempt, points=points, step=step,
                                           total_steps=total, epoch=epoch, event=kind, message=message[:4000])
        try:
            self._stub.ReportProgress(request, timeout=3.0, metadata=self._metadata)
        except grpc.RpcError as err:
            _say(f"could not report the failure: {err.code().name}: {err.details()}")
        except ValueError:  # the channel was already closed
            pass

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
            event, message = self._events[0] if self._events else ("", "")
            step, total, epoch = self._progress
        request = pb.ReportProgressRequest(job_id=self.job_id, attempt=self.attempt, points=points, step=step,
                                           total_steps=total, epoch=epoch, event=event, message=message)
        try:
            reply = self._stub.ReportProgress(request, timeout=self.rpc_timeout_s, metadata=self._metadata,
                                              wait_for_ready=True)
        except grpc.RpcError as err:
            self._report_failures += 1
            if err.code() in DISOWNED:
                self._stop = StopRequest(checkpoint=False, reason=f"the coordinator refused this attempt: {err.details()}")
                self._drop_all()
            elif err.code() not in RETRYABLE:
                _say(f"ReportProgress refused ({err.code().name}: {err.details()}); dropping {len(points)} point(s)")
                self._forget(len(points), bool(event))
            elif self._report_failures in (1, 5) or self._report_failures % 30 == 0:
                _say(f"ReportProgress failed ({err.code().name}); will retry")
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
            if upload is None or upload.not_before > time.monotonic():
                return
            ok = self._upload(upload)
            with self._lock:
                if ok or upload.tries >= self.max_upload_tries:
                    if self._uploads and self._uploads[0] is upload:
                        self._uploads.popleft()
                    upload.path.unlink(missing_ok=True)
                    if not ok:
                        _say(f"giving up uploading the checkpoint of step {upload.step}")
                if not ok:
                    return

    def _upload(self, upload: _Upload) -> bool:
        upload.tries += 1
        try:
            size = upload.path.stat().st_size
            digest = hashlib.sha256()
            with open(upload.path, "rb") as f:
                for block in iter(lambda: f.read(CHUNK_BYTES), b""):
                    digest.update(block)
        except OSError as err:
            _say(f"cannot read the checkpoint of step {upload.step}: {err}")
            upload.tries = self.max_upload_tries
            return False
        info = pb.CheckpointInfo(step=upload.step, epoch=upload.epoch, size_bytes=size, sha256=digest.hexdigest(),
                                 val_loss=upload.val_loss, val_accuracy=upload.val_accuracy, is_final=upload.is_final,
                                 attempt=self.attempt)

        def messages():
            yield pb.UploadCheckpointRequest(job_id=self.job_id, attempt=self.attempt, info=info)
            with open(upload.path, "rb") as f:
                for block in iter(lambda: f.read(CHUNK_BYTES), b""):
                    yield pb.UploadCheckpointRequest(data=block)

        try:
            self._stub.UploadCheckpoint(messages(), timeout=self.rpc_timeout_s + size / 10e6, metadata=self._metadata,
                                        wait_for_ready=True)
            return True
        except grpc.RpcError as err:
            if err.code() in DISOWNED or err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                _say(f"checkpoint of step {upload.step} refused: {err.code().name}: {err.details()}")
                upload.tries = self.max_upload_tries
                if err.code() in DISOWNED:
                    self._stop = StopRequest(checkpoint=False, reason=f"the coordinator refused this attempt: {err.details()}")
            else:
                _say(f"upload of step {upload.step} failed ({err.code().name}: {err.details()}); will retry")
                upload.not_before = time.monotonic() + min(0.5 * 2 ** upload.tries, 10.0)
            return False
