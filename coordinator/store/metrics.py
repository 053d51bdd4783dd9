"""The store's metric points: one row per (job, step), as the workers report them.

Separate from `coordinator.store.store` (the jobs) because points are the store's bulk, written in batches and
read in step order by watchers and pages: retried reports insert nothing twice (a (job, step) already
present is ignored), and NaN (not measured at that step) is stored as NULL.
"""
from __future__ import annotations

import sqlite3
from typing import Iterable

from coordinator.store.records import MetricRow, nan_from_sql, sql_from_nan
from coordinator.store.connection import StoreConnection


class MetricRecords(StoreConnection):
    @staticmethod
    def _metric(r: sqlite3.Row) -> MetricRow:
        return MetricRow(step=r["step"], epoch=r["epoch"], train_loss=nan_from_sql(r["train_loss"]),
                         val_loss=nan_from_sql(r["val_loss"]), val_accuracy=nan_from_sql(r["val_accuracy"]),
                         samples_per_second=nan_from_sql(r["samples_per_second"]), lr=nan_from_sql(r["lr"]),
                         time_unix=nan_from_sql(r["time"]), attempt=r["attempt"])

    def add_metrics(self, job_id: str, points: Iterable[MetricRow]) -> int:
        """Insert points; a (job, step) already present is ignored (reports are retried). Returns rows added."""
        added = 0
        points = list(points)
        with self._tx(f"{len(points)} metric point(s) of job {job_id}") as db:
            for p in points:
                cur = db.execute(
                    "INSERT OR IGNORE INTO metrics (job_id, step, epoch, train_loss, val_loss, val_accuracy,"
                    " samples_per_second, lr, time, attempt) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (job_id, p.step, p.epoch, sql_from_nan(p.train_loss), sql_from_nan(p.val_loss), sql_from_nan(p.val_accuracy),
                     sql_from_nan(p.samples_per_second), sql_from_nan(p.lr), p.time_unix, p.attempt))
                added += cur.rowcount
        return added

    def count_metrics(self, job_id: str) -> int:
        return self._query("SELECT COUNT(*) FROM metrics WHERE job_id = ?", (job_id,))[0][0]

    def metrics(self, job_id: str, from_step: int = 0, limit: int = -1) -> list[MetricRow]:
        rows = self._query("SELECT * FROM metrics WHERE job_id = ? AND step >= ? ORDER BY step LIMIT ?",
                           (job_id, from_step, limit))
        return [self._metric(r) for r in rows]

    def latest_metric(self, job_id: str) -> MetricRow | None:
        rows = self._query("SELECT * FROM metrics WHERE job_id = ? ORDER BY step DESC LIMIT 1", (job_id,))
        return self._metric(rows[0]) if rows else None

    def best_metric(self, job_id: str) -> MetricRow | None:
        """The point checkpoints.best_of would choose (lowest val_loss, then earliest), as SQL on the index."""
        rows = self._query("SELECT * FROM metrics WHERE job_id = ? AND val_loss IS NOT NULL"
                           " ORDER BY val_loss ASC, step ASC LIMIT 1", (job_id,))
        return self._metric(rows[0]) if rows else None
