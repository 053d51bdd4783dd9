"""The store's record of sweeps (coordinator.sweeps): the sweep file, its trials, and each trial's metric value
at each rung.

Those values and the file are the only inputs of a sweep's decisions (coordinator.sweeps.decisions), so after a
coordinator restart the same decisions follow from this record. A value is written once per (trial, rung) and
never changed: `add_result` ignores a second one.
"""
from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field

from coordinator.states import JobState
from coordinator.store.connection import StoreConnection
from coordinator.store.records import nan_from_sql, sql_from_nan


@dataclass(frozen=True)
class SweepRow:
    id: str
    name: str
    text: str
    state: JobState
    message: str = ""
    created: float = 0.0
    ended: float = 0.0
    seq: int = 0
    owner: str = "admin"   # the user who submitted it (coordinator.access.roles.BOOTSTRAP_ADMIN before users)


@dataclass(frozen=True)
class TrialRow:
    sweep_id: str
    trial: int
    job_id: str
    params: dict = field(default_factory=dict)
    created: float = 0.0


@dataclass(frozen=True)
class ResultRow:
    trial: int
    rung: int
    step: int
    value: float     # NaN: none (failed, cancelled, not measured)
    time: float = 0.0


class SweepRecords(StoreConnection):
    @staticmethod
    def _sweep(r: sqlite3.Row) -> SweepRow:
        return SweepRow(id=r["id"], name=r["name"], text=r["text"], state=JobState[r["state"]], message=r["message"],
                        created=r["created"], ended=r["ended"], seq=r["seq"], owner=r["owner"])

    def create_sweep(self, sweep: SweepRow) -> tuple[SweepRow, bool]:
        """Insert a RUNNING sweep; an existing id is returned with created=False."""
        with self._tx(f"the record of sweep {sweep.id}") as db:
            found = db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep.id,)).fetchone()
            if found is not None:
                return self._sweep(found), False
            db.execute("INSERT INTO sweeps (id, name, text, state, message, created, owner) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (sweep.id, sweep.name, sweep.text, JobState.RUNNING.name, sweep.message,
                        sweep.created or time.time(), sweep.owner))
            return self._sweep(db.execute("SELECT * FROM sweeps WHERE id = ?", (sweep.id,)).fetchone()), True

    def get_sweep(self, sweep_id: str) -> SweepRow | None:
        rows = self._query("SELECT * FROM sweeps WHERE id = ?", (sweep_id,))
        return self._sweep(rows[0]) if rows else None

    def list_sweeps(self, limit: int = 50, before_seq: int = 0, running_only: bool = False,
                    owner: str = "") -> list[SweepRow]:
        """Newest first; `before_seq` > 0 continues a previous page; `owner`: only that user's."""
        sql, args = "SELECT * FROM sweeps WHERE 1=1", []
        if owner:
            sql += " AND owner = ?"
            args.append(owner)
        if running_only:
            sql += " AND state = ?"
            args.append(JobState.RUNNING.name)
        if before_seq > 0:
            sql += " AND seq < ?"
            args.append(before_seq)
        return [self._sweep(r) for r in self._query(sql + " ORDER BY seq DESC LIMIT ?", (*args, limit))]

    def end_sweep(self, sweep_id: str, state: JobState, message: str) -> bool:
        """Move a RUNNING sweep to its terminal state; False when it had ended already."""
        with self._tx(f"the end of sweep {sweep_id}") as db:
            cur = db.execute("UPDATE sweeps SET state = ?, message = ?, ended = ? WHERE id = ? AND state = ?",
                             (state.name, message, time.time(), sweep_id, JobState.RUNNING.name))
            return cur.rowcount > 0

    def delete_sweep(self, sweep_id: str) -> bool:
        """Delete an ended sweep's record (its trials' rows and values go with it); False when there is no such
        ended sweep. Its trial jobs are deleted one by one before (coordinator.sweeps.service)."""
        with self._tx(f"the deletion of sweep {sweep_id}") as db:
            cur = db.execute("DELETE FROM sweeps WHERE id = ? AND state != ?", (sweep_id, JobState.RUNNING.name))
            return cur.rowcount > 0

    def set_sweep_message(self, sweep_id: str, message: str) -> None:
        with self._tx(f"the message of sweep {sweep_id}") as db:
            db.execute("UPDATE sweeps SET message = ? WHERE id = ?", (message, sweep_id))

    def add_trial(self, trial: TrialRow) -> None:
        with self._tx(f"trial {trial.trial} of sweep {trial.sweep_id}") as db:
            db.execute("INSERT OR IGNORE INTO sweep_trials (sweep_id, trial, job_id, params_json, created) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (trial.sweep_id, trial.trial, trial.job_id, json.dumps(trial.params, sort_keys=True),
                        trial.created or time.time()))

    def trials(self, sweep_id: str) -> list[TrialRow]:
        rows = self._query("SELECT * FROM sweep_trials WHERE sweep_id = ? ORDER BY trial", (sweep_id,))
        return [TrialRow(r["sweep_id"], r["trial"], r["job_id"], json.loads(r["params_json"]), r["created"])
                for r in rows]

    def add_result(self, sweep_id: str, result: ResultRow) -> bool:
        """Record a trial's value at a rung, once: False when one was recorded already (it stays)."""
        with self._tx(f"a result of sweep {sweep_id}") as db:
            cur = db.execute("INSERT OR IGNORE INTO sweep_results (sweep_id, trial, rung, step, value, time) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (sweep_id, result.trial, result.rung, result.step,
                                                           sql_from_nan(result.value), result.time or time.time()))
            return cur.rowcount > 0

    def results(self, sweep_id: str) -> list[ResultRow]:
        rows = self._query("SELECT * FROM sweep_results WHERE sweep_id = ? ORDER BY trial, rung", (sweep_id,))
        return [ResultRow(r["trial"], r["rung"], r["step"], nan_from_sql(r["value"]), r["time"]) for r in rows]

    def metric_at(self, job_id: str, step: int) -> dict[str, float] | None:
        """The job's metric point at exactly `step` ({train_loss, val_loss, val_accuracy}), None when there is none."""
        rows = self._query("SELECT train_loss, val_loss, val_accuracy FROM metrics WHERE job_id = ? AND step = ?",
                           (job_id, step))
        if not rows:
            return None
        return {k: nan_from_sql(rows[0][k]) for k in ("train_loss", "val_loss", "val_accuracy")}
