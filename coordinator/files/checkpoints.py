"""Checkpoints on the coordinator: files written atomically and verified, their records, retention, and the
one "best" rule.

    checkpoints = Checkpoints(data_dir / "checkpoints", store)
    row = checkpoints.save(job, upload, chunks)        # kept only if size and sha256 match what was announced
    row = checkpoints.choose("digits-1", best=True)    # at a step, the best, or the latest; NotFound otherwise
    for chunk in checkpoints.open(row): ...            # DataLoss at the end if the file no longer matches
    checkpoints.newest_intact("digits-1")              # what a restarted attempt resumes from

Files are DATA_DIR/checkpoints/<job>/step-NNNNNNNN.npz (a re-upload of a recorded step with other bytes
gets step-NNNNNNNN.<sha12>.npz, so a recorded file is never replaced before its new record commits). An
upload streams into a temporary file beside the target and fsyncs it; only when size and sha256 match is it
renamed into place and recorded, by one writer per job at a time (two uploads of the same step cannot
interleave their renames and records). Files are never modified in place, so a resumed job may share its
seed with the original through a hard link, and a link is always put in place by rename, never written
through.

What a crash can leave (a temporary file; a renamed file whose record never committed; a seed link of a
resume that never committed) is removed by `sweep()` at start-up: files that no record names.

A full disk: an upload larger than the free space (less DISK_RESERVE_BYTES) is refused before it is read,
and one that fills the disk mid-way is dropped; both raise ResourceExhausted (kind "disk") with the free
space and what was refused, and leave neither a partial file nor a record.

"Best" is the lowest validation loss, the earlier step on a tie (`best_of`): retention keeps it, `best=True`
downloads it, and the store's best metric point follows the same rule.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from coordinator.errors import ChecksumMismatch, InvalidArgument, NotFound, ResourceExhausted
from coordinator.store.checkpoints import RetentionPolicy, best_of
from coordinator.store.records import CheckpointRow, JobRow
from coordinator.store.store import Store
from coordinator.files.verified import VerifiedFiles
from coordinator.wire import KIND_CHECKPOINT, Sha256Tally

log = logging.getLogger("gradmesh.checkpoints")

MAX_CHECKPOINT_BYTES = 4 << 30
DISK_RESERVE_BYTES = 1 << 20  # an upload must leave this much free: the store's next writes need room too
KIND_DISK = "disk"            # the kind of ResourceExhausted for a full disk: retry later, nothing is wrong with the call
DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
_TEMPORARY = re.compile(r"^\.(.+)\.([0-9]{1,10})\.[0-9a-f]+\.tmp$")   # .NAME.PID.ID.tmp, as write_verified names them


def free_bytes(directory: Path) -> int:
    """Bytes an unprivileged writer may still use on `directory`'s filesystem (-1 when unknown)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return -1
    return st.f_bavail * st.f_frsize


def disk_full(directory: Path, refused: str) -> ResourceExhausted:
    """The error for a write refused because `directory`'s filesystem is full."""
    return ResourceExhausted(f"the coordinator's disk is full ({free_bytes(directory)} bytes free in {directory}); "
                             f"refused: {refused}; retry when space is freed", kind=KIND_DISK)

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


# ---------------------------------------------------------------- files

def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}.npz"


def temporary_beside(path: Path, token: object) -> Path:
    """A temporary name beside `path` that `sweep()` recognises (and knows the writing process of)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{id(token):x}.tmp")


def receive(tmp: Path, chunks: Iterable[bytes], *, expected_sha256: str, expected_size: int | None) -> tuple[int, str]:
    """Stream `chunks` into `tmp` and fsync it; ChecksumMismatch unless size and sha256 match. The caller
    renames or removes `tmp`."""
    tmp.parent.mkdir(parents=True, exist_ok=True)
    tally = Sha256Tally()
    with open(tmp, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
            tally.add(chunk)
        out.flush()
        os.fsync(out.fileno())
    return tally.size, tally.check(expected_sha256, expected_size, what="the received data")


def write_verified(path: Path, chunks: Iterable[bytes], *, expected_sha256: str,
                   expected_size: int | None) -> tuple[int, str]:
    """Write `chunks` to `path` atomically; ChecksumMismatch (and no file) unless size and sha256 match."""
    tmp = temporary_beside(path, chunks)
    try:
        size, sha = receive(tmp, chunks, expected_sha256=expected_sha256, expected_size=expected_size)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return size, sha
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def capped(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    """An upload's chunks, refused as soon as they exceed `limit` bytes (before they reach the disk)."""
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise InvalidArgument("data", f"the upload exceeds the {limit} bytes announced or allowed for it")
        yield chunk


# ---------------------------------------------------------------- files with their records

class Checkpoints:
    def __init__(self, root: Path, store: Store):
        self.root = Path(root)
        self.store = store
        self._locks_guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}  # job id → its one writer (rename, record, retention)
        self.verified = VerifiedFiles()   # files hashed since they last changed: downloads skip hashing them

    def path_for(self, job_id: str, step: int) -> Path:
        return self.root / job_id / checkpoint_name(step)

    @contextlib.contextmanager
    def _writer(self, job_id: str):
        with self._locks_guard:
            lock = self._locks.setdefault(job_id, threading.Lock())
        with lock:
            yield

    def writing(self, job_id: str):
        """Hold the job's writer: no upload, retention or sweep touches its files meanwhile (for DeleteJob)."""
        return self._writer(job_id)

    def forget(self, job_id: str) -> None:
        """Drop what is kept in memory for a job that was deleted."""
        with self._locks_guard:
            self._locks.pop(job_id, None)
        self.verified.forget_under(self.root / job_id)

    def save(self, job: JobRow, info: CheckpointUpload, data: Iterable[bytes]) -> CheckpointRow:
        """Store an upload of the job's current attempt, then drop what retention no longer keeps.

        ResourceExhausted (kind "disk") when the disk cannot hold it; InvalidArgument when the bytes do not
        match `info`. In every failure, nothing of the upload is left: no file, no record."""
        refused = f"the checkpoint of step {info.step} of job {job.id} ({info.size_bytes or 'unknown'} bytes)"
        directory = self.root / job.id
        directory.mkdir(parents=True, exist_ok=True)
        free = free_bytes(directory)
        if info.size_bytes and 0 <= free < info.size_bytes + DISK_RESERVE_BYTES:
            raise disk_full(directory, refused)
        tmp = temporary_beside(self.path_for(job.id, info.step), data)
        try:
            try:
                size, sha = receive(tmp, capped(data, MAX_CHECKPOINT_BYTES), expected_sha256=info.sha256,
                                    expected_size=info.size_bytes or None)
            except ChecksumMismatch as err:
                raise InvalidArgument("info.sha256", f"sha256 of the received data does not match info ({err})") from None
            except OSError as err:
                if err.errno in DISK_FULL_ERRNOS:
                    raise disk_full(directory, refused) from None
                raise
            with self._writer(job.id):
                return self._install(job, info, tmp, size, sha)
        finally:
            tmp.unlink(missing_ok=True)

    def _install(self, job: JobRow, info: CheckpointUpload, tmp: Path, size: int, sha: str) -> CheckpointRow:
        """Under the job's writer lock: rename the received file into place and record it, or undo the rename."""
        previous = next((r for r in self.store.checkpoints(job.id) if r.step == info.step), None)
        if previous is not None and previous.sha256 == sha and Path(previous.path).exists():
            return previous  # the same bytes again (a retried upload): nothing to change
        path = self.path_for(job.id, info.step)
        if path.exists():  # recorded with other bytes, or a crash's leftover: never replace it before the record
            path = path.with_name(f"{path.stem}.{sha[:12]}.npz")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        self.verified.remember(path, sha)   # hashed as it was received
        row = CheckpointRow(job_id=job.id, step=info.step, epoch=info.epoch, size=size, sha256=sha,
                            val_loss=info.val_loss, val_accuracy=info.val_accuracy, is_final=info.is_final,
                            created=time.time(), attempt=job.attempts, path=str(path))
        keep_last = json.loads(job.spec_json).get("checkpoint", {}).get("keep_last", 3)
        try:
            dropped = self.store.add_checkpoint(row, RetentionPolicy(keep_last))
        except BaseException:
            path.unlink(missing_ok=True)  # no record names it: it must not stay (the previous file is untouched)
            self.verified.forget(path)
            raise
        # records went first, in one transaction; a crash before these unlinks leaves files no record names,
        # which sweep() removes at the next start
        if previous is not None and previous.path != row.path:
            dropped.append(previous)
        for old in dropped:
            if old.path != row.path:
                Path(old.path).unlink(missing_ok=True)
                self.verified.forget(old.path)
        return row

    def sweep(self) -> list[Path]:
        """At start-up: remove what a crash can leave under the checkpoint root, i.e. temporary files of other
        processes and checkpoint files that no record names (renamed, but the record never committed; or a
        resume's seed link whose job was never created). Returns what was removed."""
        removed = []
        if not self.root.is_dir():
            return removed
        for directory in self.root.iterdir():
            if not directory.is_dir() or directory.is_symlink():
                continue
            with self._writer(directory.name):
                named = {Path(r.path).name for r in self.store.checkpoints(directory.name)}
                for file in directory.iterdir():
                    temporary = _TEMPORARY.match(file.name)
                    if temporary and int(temporary.group(2)) == os.getpid():
                        continue  # an upload of this process, in flight
                    if temporary or (file.suffix == ".npz" and file.name not in named):
                        file.unlink(missing_ok=True)
                        removed.append(file)
        if removed:
            log.warning("removed %d file(s) left by a crash under %s: %s", len(removed), self.root,
                        ", ".join(str(p.relative_to(self.root)) for p in removed[:10]))
        return removed

    def choose(self, job_id: str, *, step: int | None = None, best: bool = False) -> CheckpointRow:
        """The record at `step`, the best one, or (neither) the latest; NotFound (kind "checkpoint") when absent."""
        rows = self.store.checkpoints(job_id)
        if step is not None:
            chosen = next((r for r in rows if r.step == step), None)
            if chosen is None:
                have = ", ".join(str(r.step) for r in rows) or "none"
                raise NotFound(f"checkpoint at step {step} not found for job {job_id} (stored steps: {have})",
                               kind=KIND_CHECKPOINT)
            return chosen
        if best:
            chosen = best_of(rows)
            if chosen is None:
                raise NotFound(f"checkpoint: job {job_id} has no checkpoint with a validation loss yet",
                               kind=KIND_CHECKPOINT)
            return chosen
        if not rows:
            raise NotFound(f"checkpoint: job {job_id} has no checkpoints yet", kind=KIND_CHECKPOINT)
        return rows[-1]

    def open(self, row: CheckpointRow) -> Iterator[bytes]:
        """The file's chunks, opened now (retention may delete it any time after the record was read: then
        NotFound), failing with DataLoss at the end when the bytes no longer have the recorded sha256."""
        try:
            return self.verified.chunks(row.path, row.sha256, row.size, what=f"checkpoint at step {row.step} of job "
                                        f"{row.job_id} is corrupt on the coordinator's disk")
        except FileNotFoundError:
            raise NotFound(f"checkpoint file for step {row.step} of job {row.job_id} is missing on the coordinator "
                           "(removed by retention meanwhile?)", kind=KIND_CHECKPOINT) from None

    def newest_intact(self, job_id: str) -> CheckpointRow | None:
        """The newest stored checkpoint whose file still has its recorded sha256 (a corrupt one is skipped)."""
        for row in reversed(self.store.checkpoints(job_id)):
            try:
                if self.verified.intact(row.path, row.sha256):
                    return row
                log.warning("checkpoint step %d of %s is corrupt (sha256 mismatch); skipping it", row.step, job_id)
            except OSError as err:
                log.warning("checkpoint step %d of %s is unreadable (%s); skipping it", row.step, job_id, err)
        return None

    def seed(self, source: CheckpointRow, job_id: str) -> CheckpointRow:
        """`source` as the first checkpoint of another job (a resumed one): the same file under that job.

        The link (or copy) is made under a temporary name and renamed into place, so a leftover at the target
        (a crash between an earlier seed and its job's record) is replaced, never written through."""
        path = self.path_for(job_id, source.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = temporary_beside(path, source)
        tmp.unlink(missing_ok=True)
        try:
            try:
                os.link(source.path, tmp)  # files are never modified in place, so sharing is safe
            except OSError:
                shutil.copyfile(source.path, tmp)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return dataclasses.replace(source, job_id=job_id, attempt=0, is_final=False, created=time.time(),
                                   path=str(path))
