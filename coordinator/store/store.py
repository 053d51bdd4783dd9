"""The coordinator's durable record: jobs, attempts, state transitions, metrics, checkpoint records.

One SQLite database, DATA_DIR/gradmesh.db, in WAL mode with foreign keys on. A single connection is
shared by all threads behind a lock (SQLite serialises writers anyway, and reads here are tiny); every
change that touches more than one row runs in one `BEGIN IMMEDIATE` transaction, so a coordinator
killed at any moment leaves either the old or the new state, never half of one.

    store = Store(Path("/var/lib/gradmesh/gradmesh.db"))
    job, created = store.create_job(JobRow(...))
    store.transition("job-1", JobState.RUNNING, "launched on localhost:2", attempt=1)
    store.add_metrics("job-1", [MetricRow(step=10, attempt=1, ...)])  # duplicates (job, step) are ignored

`Store` is one object made of its record groups: this module holds the jobs and their transitions; the
attempts, metric points and checkpoint records are in `store_attempts`, `store_metrics` and
`store_checkpoints`, all on the connection and transactions of `store_connection`.

The state machine lives in `coordinator.states`; `transition()` enforces it inside the transaction.
Floats that are NaN (metrics not measured at a step) are stored as NULL and read back as NaN.

A full disk: a write that SQLite cannot make ("database or disk is full") is rolled back whole and raised
as ResourceExhausted (kind "disk") saying what was refused and how much space is free, so callers can
answer RESOURCE_EXHAUSTED and try again later. Progress (the newest step) is the one write dropped
silently instead: every heartbeat carries it again, and refusing it would refuse the heartbeat.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import time
from typing import Iterable

from coordinator.errors import DataLoss, ResourceExhausted
from coordinator.store.records import CheckpointRow, JobRow, TransitionRow
from coordinator.states import TERMINAL, IllegalTransition, JobState, check_transition
from coordinator.store.attempts import AttemptRecords
from coordinator.store.checkpoints import CheckpointRecords
from coordinator.store.drains import HostHolds
from coordinator.store.feed import Feed
from coordinator.store.metrics import MetricRecords
from coordinator.store.pauses import PauseRecords
from coordinator.store.sessions import SessionRevocations
from coordinator.store.sweeps import SweepRecords
from coordinator.store.users import UserRecords

log = logging.getLogger("gradmesh.store")
_ENDED = sorted(s.name for s in TERMINAL)   # the terminal states' names, as the jobs table stores them
_REPORTED: set[str] = set()                 # unreadable job rows already said in the log


class UnreadableRow(DataLoss):
    """A stored job row that is not a job record (answered DATA_LOSS, kind "job", naming the job)."""

    def __init__(self, job_id: object, why: str):
        self.job_id = str(job_id)
        super().__init__(f"job {ascii(self.job_id)[1:-1][:80]}: its stored record cannot be read ({why[:200]}); "
                         "repair or delete its row in DATA_DIR/gradmesh.db", kind="job")


def _int(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{value!r:.40} where a whole number belongs")
    return value


def _float(value: object) -> float:
    if value is None:
        return 0.0
    if not isinstance(value, (int, float)):
        raise TypeError(f"{value!r:.40} where a time belongs")
    return float(value)


class Store(AttemptRecords, MetricRecords, CheckpointRecords, HostHolds, SessionRevocations, UserRecords,
            Feed, PauseRecords, SweepRecords):
    """The jobs and their transitions, with the attempt, metric, checkpoint, host, session, user, pause and sweep
    records and the transition feed of the base classes."""

    # ------------------------------------------------------------ jobs

    @staticmethod
    def _job(row: sqlite3.Row) -> JobRow:
        """The record of a row. A row that cannot be one (a state no release wrote, a NULL where a number
        belongs: written by hand or by a bug) raises UnreadableRow; what can be read around is (labels)."""
        try:
            labels = json.loads(row["labels_json"] or "{}")
            labels = {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
        except ValueError:
            labels = {}
        try:
            return JobRow(
                id=row["id"], name=str(row["name"]), spec_json=str(row["spec_json"]), state=JobState[row["state"]],
                workers=_int(row["workers"]), priority=_int(row["priority"]), labels=labels,
                message=str(row["message"]), created=_float(row["created"]), started=_float(row["started"]),
                ended=_float(row["ended"]), step=_int(row["step"]), total_steps=_int(row["total_steps"]),
                epoch=_int(row["epoch"]), attempts=_int(row["attempts"]), restarts=_int(row["restarts"]),
                cancel_requested=bool(row["cancel_requested"]), checkpoint_requested=bool(row["checkpoint_requested"]),
                token_hash=str(row["token_hash"]), seq=_int(row["seq"]), executor=str(row["executor"]),
                owner=str(row["owner"] or ""))
        except (KeyError, TypeError, ValueError) as err:
            raise UnreadableRow(row["id"], f"{type(err).__name__}: {err}") from None

    def _jobs(self, rows: Iterable[sqlite3.Row]) -> list[JobRow]:
        """The records of the rows that can be read; one that cannot is left out (and said once in the log),
        so one bad row never takes a listing or the scheduler down."""
        jobs = []
        for row in rows:
            try:
                jobs.append(self._job(row))
            except UnreadableRow as err:
                if err.job_id not in _REPORTED:
                    _REPORTED.add(err.job_id)
                    log.warning("%s; it is left out of listings", err)
        return jobs

    def create_job(self, job: JobRow, message: str = "queued",
                   seed: CheckpointRow | None = None) -> tuple[JobRow, bool]:
        """Insert a QUEUED job and its first transition; if the id exists, return it and created=False.

        `seed` is a checkpoint record inserted in the same transaction (a resumed job starts from it), so the
        scheduler can never launch the job before its checkpoint is there."""
        now = job.created or time.time()
        with self._tx() as db:
            existing = db.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone()
            if existing is not None:
                return self._job(existing), False
            db.execute(
                "INSERT INTO jobs (id, name, spec_json, state, message, workers, priority, labels_json, created,"
                " total_steps, executor, owner) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.name, job.spec_json, JobState.QUEUED.name, message, job.workers, job.priority,
                 json.dumps(job.labels, sort_keys=True), now, job.total_steps, job.executor, job.owner))
            db.execute("INSERT INTO transitions (job_id, state, message, time, attempt) VALUES (?, ?, ?, ?, 0)",
                       (job.id, JobState.QUEUED.name, message, now))
            if seed is not None:
                self._insert_checkpoint(db, seed)
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job.id,)).fetchone()
        return self._job(row), True

    def job_of_token(self, token_hash: str) -> tuple[str, int] | None:
        """(job id, attempt) of the RUNNING job whose current attempt holds the token with this hash; None for
        any other token: a worker token lives exactly as long as its attempt (begin_attempt rotates it, and
        the job leaves RUNNING when the attempt ends). An index lookup: the server asks it for every worker call.

        An attempt submitted to Slurm holds its token from submission: its job stays QUEUED (or RESTARTING)
        while Slurm keeps it PENDING, and the ranks' first call is what moves it to RUNNING (`waiting_attempt`)."""
        if not token_hash:
            return None
        rows = self._query("SELECT id, attempts, state FROM jobs WHERE token_hash = ? AND state IN (?, ?, ?)",
                           (token_hash, JobState.RUNNING.name, JobState.QUEUED.name, JobState.RESTARTING.name))
        if not rows:
            return None
        job_id, number, state = rows[0]["id"], rows[0]["attempts"], rows[0]["state"]
        if state != JobState.RUNNING.name and self.waiting_attempt(job_id, number) is None:
            return None
        return job_id, number

    def set_message(self, job_id: str, message: str, *, restarted: bool = False) -> None:
        """Say why the job is where it is without a state change (e.g. Slurm's pending reason); `restarted`
        counts a restart of a job whose attempt ended before it ever ran (it stays QUEUED or RESTARTING)."""
        with self._lock, self._disk_full_as(f"the message of job {job_id}"):
            self._conn.execute("UPDATE jobs SET message = ?, restarts = restarts + ? WHERE id = ?",
                               (message, int(restarted), job_id))

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._job(rows[0]) if rows else None  # UnreadableRow (DATA_LOSS) for a row that is no job

    def list_jobs(self, states: Iterable[JobState] = (), limit: int = 50, before_seq: int = 0,
                  owner: str = "") -> list[JobRow]:
        """Newest first; `before_seq` > 0 continues a previous page; `owner` only that user's jobs."""
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if owner:
            sql += " AND owner = ?"
            args.append(owner)
        states = list(states)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += [s.name for s in states]
        if before_seq > 0:
            sql += " AND seq < ?"
            args.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return self._jobs(self._query(sql, args))

    def count_jobs(self, *states: JobState) -> int:
        """How many jobs are in these states (the queue cap counts QUEUED ones)."""
        marks = ",".join("?" * len(states))
        return self._query(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", [s.name for s in states])[0][0]

    def jobs_in(self, *states: JobState) -> list[JobRow]:
        """Jobs in these states in scheduling order: higher priority first, FIFO within a priority."""
        marks = ",".join("?" * len(states))
        rows = self._query(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY priority DESC, seq ASC",
                           [s.name for s in states])
        return self._jobs(rows)

    def transition(self, job_id: str, new: JobState, message: str, *, attempt: int = 0,
                   now: float | None = None, expect: Iterable[JobState] | None = None,
                   count_restart: bool = True) -> TransitionRow:
        """Move a job to `new` (legality checked inside the transaction) and record the transition.

        `expect`, when given, makes the change conditional: if the job is not in one of those states the
        transition is refused with IllegalTransition, which lets racing threads (reaper vs cancel) agree.
        `count_restart` False: a RESTARTING that is no failure (an elastic job's resize) spends no restart.
        """
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT state, started FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            old = JobState[row["state"]]
            check_transition(old, new)
            if expect is not None and old not in set(expect):
                raise IllegalTransition(old, new)
            sets = ["state = ?", "message = ?"]
            args: list = [new.name, message]
            if new is JobState.RUNNING and not row["started"]:
                sets.append("started = ?")
                args.append(now)
            if new.is_terminal():
                sets.append("ended = ?")
                args.append(now)
            if new is JobState.RESTARTING and count_restart:
                sets.append("restarts = restarts + 1")
            db.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
            cur = db.execute("INSERT INTO transitions (job_id, state, message, time, attempt) VALUES (?, ?, ?, ?, ?)",
                             (job_id, new.name, message, now, attempt))
            return TransitionRow(cur.lastrowid, job_id, new, message, now, attempt)

    def transitions(self, job_id: str, after_id: int = 0) -> list[TransitionRow]:
        rows = self._query("SELECT * FROM transitions WHERE job_id = ? AND id > ? ORDER BY id", (job_id, after_id))
        # a transition to a state no release wrote is left out: the job's history reads around it
        return [TransitionRow(r["id"], r["job_id"], JobState[r["state"]], str(r["message"]), _float(r["time"]),
                              r["attempt"] if isinstance(r["attempt"], int) else 0)
                for r in rows if r["state"] in JobState.__members__]

    def update_progress(self, job_id: str, *, step: int, total_steps: int, epoch: int) -> None:
        """Raise the job's progress. On a full disk the write is skipped (logged): the next heartbeat repeats it."""
        try:
            with self._lock, self._disk_full_as(f"progress of job {job_id}"):
                self._conn.execute(
                    "UPDATE jobs SET step = MAX(step, ?), total_steps = CASE WHEN ? > 0 THEN ? ELSE total_steps END,"
                    " epoch = MAX(epoch, ?) WHERE id = ?", (step, total_steps, total_steps, epoch, job_id))
        except ResourceExhausted as err:
            log.warning("%s", err)

    def note(self, job_id: str, message: str, states: Iterable[JobState]) -> bool:
        """Set the job's message without a transition (why a pending job waits) while it is in `states`."""
        names = [s.name for s in states]
        with self._lock, self._disk_full_as(f"the message of job {job_id}"):
            cur = self._conn.execute(f"UPDATE jobs SET message = ? WHERE id = ? AND state IN ({','.join('?' * len(names))})",
                                     (message, job_id, *names))
            return cur.rowcount > 0

    def ended_before(self, when: float) -> list[tuple[str, float]]:
        """(id, ended) of the jobs that ended before `when`, oldest first (coordinator.files.expiry)."""
        ended = _ENDED
        rows = self._query(f"SELECT id, ended FROM jobs WHERE state IN ({','.join('?' * len(ended))}) "
                           "AND ended > 0 AND ended < ? ORDER BY ended", (*ended, when))
        return [(r["id"], r["ended"]) for r in rows]

    def delete_job(self, job_id: str) -> int | None:
        """Delete an ended job with its attempts, transitions, metrics and checkpoint records (one transaction);
        the number of checkpoint records it had, or None when there is no such ended job."""
        ended = _ENDED
        with self._tx(f"the deletion of job {job_id}") as conn:
            checkpoints = conn.execute("SELECT COUNT(*) FROM checkpoints WHERE job_id = ?", (job_id,)).fetchone()[0]
            cur = conn.execute(f"DELETE FROM jobs WHERE id = ? AND state IN ({','.join('?' * len(ended))})",
                               (job_id, *ended))
            if cur.rowcount:   # no foreign key holds a pause (it may precede its job): a new job of this id starts free
                conn.execute("DELETE FROM pauses WHERE job_id = ?", (job_id,))
            return checkpoints if cur.rowcount else None

    def request_cancel(self, job_id: str, checkpoint: bool) -> None:
        with self._lock, self._disk_full_as(f"the cancel of job {job_id}"):
            self._conn.execute("UPDATE jobs SET cancel_requested = 1, checkpoint_requested = ? WHERE id = ?",
                               (int(checkpoint), job_id))


__all__ = ["Store"]
