"""The store's checkpoint records: which checkpoint files a job has, and which of them retention keeps.

Separate from `coordinator.store.store` (the jobs) and from `coordinator.files.checkpoints` (the files themselves): this
is only the record and the retention rule, changed in one transaction with the retention decision, so the caller deletes the
dropped files after it committed and a crash never leaves a record without its file.
"""
from __future__ import annotations

import math
import sqlite3
from typing import Iterable, Sequence, TypeVar

from coordinator.store.records import CheckpointRow, nan_from_sql, sql_from_nan
from coordinator.store.connection import StoreConnection

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


class CheckpointRecords(StoreConnection):
    @staticmethod
    def _checkpoint(r: sqlite3.Row) -> CheckpointRow:
        return CheckpointRow(job_id=r["job_id"], step=r["step"], epoch=r["epoch"], size=r["size"], sha256=r["sha256"],
                             val_loss=nan_from_sql(r["val_loss"]), val_accuracy=nan_from_sql(r["val_accuracy"]),
                             is_final=bool(r["is_final"]), created=r["created"], attempt=r["attempt"], path=r["path"])

    def add_checkpoint(self, ckpt: CheckpointRow, keep: RetentionPolicy) -> list[CheckpointRow]:
        """Record a checkpoint (replacing one at the same step) and drop the records retention no longer keeps.

        Returns the dropped records; the caller deletes their files after this transaction committed, so a
        crash in between leaves a stray file, never a record without its file.
        """
        with self._tx(f"the record of the checkpoint at step {ckpt.step} of job {ckpt.job_id}") as db:
            self._insert_checkpoint(db, ckpt)
            rows = [self._checkpoint(r) for r in
                    db.execute("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step", (ckpt.job_id,))]
            kept = keep.retained(rows)
            dropped = [r for r in rows if r.step not in kept]
            for r in dropped:
                db.execute("DELETE FROM checkpoints WHERE job_id = ? AND step = ?", (r.job_id, r.step))
        return dropped

    @staticmethod
    def _insert_checkpoint(db: sqlite3.Connection, ckpt: CheckpointRow) -> None:
        db.execute(
            "INSERT OR REPLACE INTO checkpoints (job_id, step, epoch, size, sha256, val_loss, val_accuracy,"
            " is_final, created, attempt, path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (ckpt.job_id, ckpt.step, ckpt.epoch, ckpt.size, ckpt.sha256, sql_from_nan(ckpt.val_loss),
             sql_from_nan(ckpt.val_accuracy), int(ckpt.is_final), ckpt.created, ckpt.attempt, ckpt.path))

    def checkpoints(self, job_id: str) -> list[CheckpointRow]:
        return [self._checkpoint(r) for r in
                self._query("SELECT * FROM checkpoints WHERE job_id = ? ORDER BY step", (job_id,))]
