"""Rank 0's checkpoint upload queue: a checkpoint the loop wrote is queued at once and uploaded later.

A part of `worker.report.CoordinatorHooks`, kept apart from its progress buffer because a checkpoint has a
life of its own: `on_checkpoint` hard-links (or copies) the file into DIR/.pending-uploads, since keep_last
rotation may delete the original, and deletes the older local checkpoints (the coordinator keeps the
history); the reporting thread calls `_upload_due` only for checkpoints whose points have all been delivered,
and sends each in CHUNK_BYTES blocks with its sha256, retried with its own `Backoff`. A full disk on the
coordinator skips a checkpoint (one line per episode) once a newer one waits behind it; a refusal that
disowns the attempt stops training.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import grpc

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.wire import CHUNK_BYTES, sha256_of_chunks
from worker.checkpoint import list_checkpoints
from worker.coordinator_link import DISOWNED, KIND_DISK, Backoff, metric_float, refusal_kind, say
from worker.hooks import StopRequest


@dataclass
class PendingUpload:
    path: Path          # our own hard link (or copy) of the checkpoint
    step: int
    epoch: int
    is_final: bool
    val_loss: float
    val_accuracy: float
    backoff: Backoff = field(default_factory=Backoff)
    superseded: bool = False  # skipped for a newer one (the coordinator's disk was full): already said


def _file_blocks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(CHUNK_BYTES), b"")


class CheckpointUploads:
    """Mixed into CoordinatorHooks, whose __init__ sets the state these methods share with its reporting
    thread (under `_lock`)."""

    job_id: str
    attempt: int
    workdir: Path
    rpc_timeout_s: float
    max_upload_tries: int
    _stub: rpc.WorkerServiceStub
    _metadata: tuple[tuple[str, str], ...]
    _lock: threading.Lock
    _wake: threading.Event
    _uploads: deque[PendingUpload]
    _pending_dir: Path
    _skipping_uploads: bool
    _stop: StopRequest | None
    _start_thread: Callable[[], None]

    def on_checkpoint(self, path, *, step, epoch, is_final, metrics):
        self._pending_dir.mkdir(parents=True, exist_ok=True)
        own = self._pending_dir / f"step-{step}-{time.monotonic_ns()}.npz"
        try:
            os.link(path, own)
        except OSError:
            shutil.copyfile(path, own)
        self._keep_only(Path(path))
        upload = PendingUpload(own, int(step), int(epoch), bool(is_final), metric_float(metrics or {}, "val_loss"),
                               metric_float(metrics or {}, "val_accuracy"), Backoff(tries=self.max_upload_tries))
        with self._lock:
            self._uploads.append(upload)
        self._start_thread()
        self._wake.set()

    def _keep_only(self, newest: Path) -> None:
        """Delete the local checkpoints older than `newest` (the coordinator holds the history; our upload
        queue holds its own links), so one disk does not store every checkpoint twice."""
        for _, older in list_checkpoints(newest.parent):
            if older != newest:
                older.unlink(missing_ok=True)
        for resumed in self.workdir.glob("resume-step-*.npz"):
            resumed.unlink(missing_ok=True)

    def _clear_stale_uploads(self) -> None:
        """Links an earlier process left in our upload queue (it crashed before sending them): not ours to send."""
        if self._pending_dir.is_dir():
            for stale in self._pending_dir.iterdir():
                stale.unlink(missing_ok=True)

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
                    if not ok and not upload.superseded:
                        say(f"giving up uploading the checkpoint of step {upload.step}")
                if not ok:
                    return

    def _upload(self, upload: PendingUpload) -> bool:
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
            self._skipping_uploads = False
            return True
        except grpc.RpcError as err:
            with self._lock:
                superseded = len(self._uploads) > 1
            if err.code() in DISOWNED or err.code() == grpc.StatusCode.INVALID_ARGUMENT:
                say(f"checkpoint of step {upload.step} refused: {err.code().name}: {err.details()}")
                upload.backoff.give_up()
                if err.code() in DISOWNED:
                    self._stop = StopRequest(checkpoint=False, reason=f"the coordinator refused this attempt: {err.details()}")
            elif err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and superseded:
                if not self._skipping_uploads:  # one line per episode: this log may be on that full disk
                    say(f"checkpoint of step {upload.step} skipped: {err.details()} (a newer checkpoint waits; "
                        "further ones are skipped quietly until one is stored)")
                self._skipping_uploads = True
                upload.superseded = True
                upload.backoff.give_up()
            elif upload.backoff.failed() and (upload.backoff.failures == 1 or refusal_kind(err) != KIND_DISK):
                say(f"upload of step {upload.step} failed ({err.code().name}: {err.details()}); will retry")
            return False
