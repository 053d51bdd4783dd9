"""Checkpoints on the coordinator: files written atomically and verified, their records, retention, and the
one "best" rule.

    checkpoints = Checkpoints(data_dir / "checkpoints", store)
    row = checkpoints.save(job, upload, chunks)        # kept only if size and sha256 match what was announced
    row = checkpoints.choose("digits-1", best=True)    # at a step, the best, or the latest; NotFound otherwise
    for chunk in checkpoints.open(row): ...            # DataLoss at the end if the file no longer matches
    checkpoints.newest_intact("digits-1")              # what a restarted attempt resumes from

Files are DATA_DIR/checkpoints/<job>/step-NNNNNNNN.npz. `write_verified` streams into a temporary file
beside the target, fsyncs it, and renames it into place only when size and sha256 match, so a reader (or a
coordinator restarted after a crash) sees the complete file or none. Files are never modified in place,
so a resumed job may share its seed with the original through a hard link.

"Best" is the lowest validation loss, the earlier step on a tie (`best_of`): retention keeps it, `best=True`
downloads it, and the store's best metric point follows the same rule.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterable, Iterator, Sequence, TypeVar

from coordinator.errors import ChecksumMismatch, InvalidArgument, NotFound
from coordinator.records import CheckpointRow, JobRow
from coordinator.store import Store
from coordinator.wire import CHUNK_BYTES, KIND_CHECKPOINT, Sha256Tally, sha256_of_chunks, verified

log = logging.getLogger("gradmesh.checkpoints")

MAX_CHECKPOINT_BYTES = 4 << 30

Scored = TypeVar("Scored")  # anything with val_loss and step: a CheckpointRow, a MetricRow


def best_of(rows: Iterable[Scored]) -> Scored | None:
    """The row with the lowest validation loss (the earlier step on a tie); None when none was measured."""
    measured = [r for r in rows if not math.isnan(r.val_loss)]  # type: ignore[attr-defined]
    return min(measured, key=lambda r: (r.val_loss, r.step), default=None)  # type: ignore[attr-defined]


class RetentionPolicy:
    """Which checkpoints to keep: the newest `keep_last`, the best, and every final one."""

    def __init__(self, keep_last: int):
        self.keep_last = max(1, keep_last)

    def retained(self, rows: Sequence[CheckpointRow]) -> set[int]:
        keep = {r.step for r in rows if r.is_final}
        keep.update(r.step for r in sorted(rows, key=lambda r: r.step)[-self.keep_last:])
        best = best_of(rows)
        if best is not None:
            keep.add(best.step)
        return keep


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


def write_verified(path: Path, chunks: Iterable[bytes], *, expected_sha256: str,
                   expected_size: int | None) -> tuple[int, str]:
    """Write `chunks` to `path` atomically; ChecksumMismatch (and no file) unless size and sha256 match."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(chunks):x}.tmp")
    tally = Sha256Tally()
    try:
        with open(tmp, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                tally.add(chunk)
            out.flush()
            os.fsync(out.fileno())
        sha = tally.check(expected_sha256, expected_size, what="the received data")
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        return tally.size, sha
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _chunks_of(f: IO[bytes]) -> Iterator[bytes]:
    with f:
        while data := f.read(CHUNK_BYTES):
            yield data


def read_chunks(path: Path) -> Iterator[bytes]:
    """The file's bytes in chunks of at most wire.CHUNK_BYTES. The file is opened now, not at the first chunk,
    so a missing file raises FileNotFoundError here."""
    return _chunks_of(open(path, "rb"))


def sha256_of(path: Path) -> str:
    return sha256_of_chunks(read_chunks(path))


def _capped(chunks: Iterable[bytes], limit: int) -> Iterator[bytes]:
    total = 0
    for chunk in chunks:
        total += len(chunk)
        if total > limit:
            raise InvalidArgument("data", f"the upload exceeds {limit} bytes")
        yield chunk


# ---------------------------------------------------------------- files with their records

class Checkpoints:
    def __init__(self, root: Path, store: Store):
        self.root = Path(root)
        self.store = store

    def path_for(self, job_id: str, step: int) -> Path:
        return self.root / job_id / checkpoint_name(step)

    def save(self, job: JobRow, info: CheckpointUpload, data: Iterable[bytes]) -> CheckpointRow:
        """Store an upload of the job's current attempt, then drop what retention no longer keeps."""
        path = self.path_for(job.id, info.step)
        try:
            size, sha = write_verified(path, _capped(data, MAX_CHECKPOINT_BYTES), expected_sha256=info.sha256,
                                       expected_size=info.size_bytes or None)
        except ChecksumMismatch as err:
            raise InvalidArgument("info.sha256", f"sha256 of the received data does not match info ({err})") from None
        row = CheckpointRow(job_id=job.id, step=info.step, epoch=info.epoch, size=size, sha256=sha,
                            val_loss=info.val_loss, val_accuracy=info.val_accuracy, is_final=info.is_final,
                            created=time.time(), attempt=job.attempts, path=str(path))
        keep_last = json.loads(job.spec_json).get("checkpoint", {}).get("keep_last", 3)
        # records go first, in one transaction; a crash before the unlink leaves a stray file, never a record
        # without its file
        for dropped in self.store.add_checkpoint(row, RetentionPolicy(keep_last)):
            if dropped.path != row.path:
                Path(dropped.path).unlink(missing_ok=True)
        return row

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
            chunks = read_chunks(Path(row.path))
        except FileNotFoundError:
            raise NotFound(f"checkpoint file for step {row.step} of job {row.job_id} is missing on the coordinator "
                           "(removed by retention meanwhile?)", kind=KIND_CHECKPOINT) from None
        return verified(chunks, row.sha256, row.size,
                        what=f"checkpoint at step {row.step} of job {row.job_id} is corrupt on the coordinator's disk")

    def newest_intact(self, job_id: str) -> CheckpointRow | None:
        """The newest stored checkpoint whose file still has its recorded sha256 (a corrupt one is skipped)."""
        for row in reversed(self.store.checkpoints(job_id)):
            try:
                if sha256_of(Path(row.path)) == row.sha256:
                    return row
                log.warning("checkpoint step %d of %s is corrupt (sha256 mismatch); skipping it", row.step, job_id)
            except OSError as err:
                log.warning("checkpoint step %d of %s is unreadable (%s); skipping it", row.step, job_id, err)
        return None

    def seed(self, source: CheckpointRow, job_id: str) -> CheckpointRow:
        """`source` as the first checkpoint of another job (a resumed one): the same file under that job."""
        path = self.path_for(job_id, source.step)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source.path, path)  # files are never modified in place, so sharing is safe
        except OSError:
            shutil.copyfile(source.path, path)
        return dataclasses.replace(source, job_id=job_id, attempt=0, is_final=False, created=time.time(),
                                   path=str(path))
