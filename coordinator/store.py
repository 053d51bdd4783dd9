"""The coordinator's durable record: jobs, attempts, state transitions, metrics, checkpoint records.

One SQLite database, DATA_DIR/gradmesh.db, in WAL mode with foreign keys on. A single connection is
shared by all threads behind a lock (SQLite serialises writers anyway, and reads here are tiny); every
change that touches more than one row runs in one `BEGIN IMMEDIATE` transaction, so a coordinator
killed at any moment leaves either the old or the new state, never half of one.

    store = Store(Path("/var/lib/gradmesh/gradmesh.db"))
    job, created = store.create_job(JobRow(...))
    store.transition("job-1", JobState.RUNNING, "launched on localhost:2", attempt=1)
    store.add_metrics("job-1", [MetricRow(step=10, attempt=1, ...)])  # duplicates (job, step) are ignored

The state machine lives in `coordinator.states`; `transition()` enforces it inside the transaction.
Floats that are NaN (metrics not measured at a step) are stored as NULL and read back as NaN.

A full disk: a write that SQLite cannot make ("database or disk is full") is rolled back whole and raised
as ResourceExhausted (kind "disk") saying what was refused and how much space is free, so callers can
answer RESOURCE_EXHAUSTED and try again later. Progress (the newest step) is the one write dropped
silently instead: every heartbeat carries it again, and refusing it would refuse the heartbeat.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Iterator, Sequence

from coordinator.errors import InvalidArgument, ResourceExhausted
from coordinator.records import (AttemptRow, CheckpointRow, JobRow, MetricRow, TransitionRow, nan_from_sql,
                                 sql_from_nan)
from coordinator.reports import FailureCause, WorkerEvent, WorkerFailure, from_legacy
from coordinator.schema import SCHEMA, migrate
from coordinator.states import IllegalTransition, JobState, check_transition

if TYPE_CHECKING:
    from coordinator.checkpoints import RetentionPolicy

log = logging.getLogger("gradmesh.store")
KIND_DISK = "disk"  # as coordinator.checkpoints.KIND_DISK: the disk is full, retry later


def is_disk_full(err: BaseException) -> bool:
    """Whether SQLite (or the OS under it) failed for want of space."""
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(err)
    return isinstance(err, OSError) and err.errno in (28, 122)  # ENOSPC, EDQUOT


class Store:
    def __init__(self, db_path: Path):
        self.path = Path(db_path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every multi-row change is explicit.
        self._conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False, timeout=30)
        self._conn.row_factory = sqlite3.Row
        self._lock = threading.RLock()
        with self._lock:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            self._conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL is durable across process crashes
            self._conn.executescript(SCHEMA)
            migrate(self._conn)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    @contextlib.contextmanager
    def _tx(self, refused: str = "a change to the job records") -> Iterator[sqlite3.Connection]:
        with self._lock, self._disk_full_as(refused):
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:  # SQLite may have rolled back already (a full disk does)
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        log.exception("rollback failed")
                raise

    @contextlib.contextmanager
    def _disk_full_as(self, refused: str) -> Iterator[None]:
        """Turn SQLite's "database or disk is full" into ResourceExhausted naming what was refused."""
        try:
            yield
        except (sqlite3.Error, OSError) as err:
            if not is_disk_full(err):
                raise
            try:
                st = os.statvfs(self.path.parent)
                free = f"{st.f_bavail * st.f_frsize} bytes free"
            except OSError:
                free = "free space unknown"
            raise ResourceExhausted(f"the coordinator's disk is full ({free} in {self.path.parent}); refused: "
                                    f"{refused}; retry when space is freed", kind=KIND_DISK) from None

    def _query(self, sql: str, args: Iterable = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._conn.execute(sql, tuple(args)).fetchall()

    def integrity_ok(self) -> bool:
        return self._query("PRAGMA integrity_check")[0][0] == "ok"

    # ------------------------------------------------------------ jobs

    @staticmethod
    def _job(row: sqlite3.Row) -> JobRow:
        return JobRow(
            id=row["id"], name=row["name"], spec_json=row["spec_json"], state=JobState[row["state"]],
            workers=row["workers"], priority=row["priority"], labels=json.loads(row["labels_json"]),
            message=row["message"], created=row["created"], started=row["started"], ended=row["ended"],
            step=row["step"], total_steps=row["total_steps"], epoch=row["epoch"], attempts=row["attempts"],
            restarts=row["restarts"], cancel_requested=bool(row["cancel_requested"]),
            checkpoint_requested=bool(row["checkpoint_requested"]), token_hash=row["token_hash"], seq=row["seq"],
            executor=row["executor"])

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
                " total_steps, executor) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (job.id, job.name, job.spec_json, JobState.QUEUED.name, message, job.workers, job.priority,
                 json.dumps(job.labels, sort_keys=True), now, job.total_steps, job.executor))
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

    def waiting_attempt(self, job_id: str, attempt: int) -> str | None:
        """The Slurm job id of the job's attempt when it was submitted and has not ended (its ranks may call
        before the job is RUNNING); None for any other attempt."""
        rows = self._query("SELECT slurm_job FROM attempts WHERE job_id = ? AND attempt = ? AND slurm_job != ''"
                           " AND ended = 0", (job_id, attempt))
        return rows[0]["slurm_job"] if rows else None

    def set_message(self, job_id: str, message: str, *, restarted: bool = False) -> None:
        """Say why the job is where it is without a state change (e.g. Slurm's pending reason); `restarted`
        counts a restart of a job whose attempt ended before it ever ran (it stays QUEUED or RESTARTING)."""
        with self._lock, self._disk_full_as(f"the message of job {job_id}"):
            self._conn.execute("UPDATE jobs SET message = ?, restarts = restarts + ? WHERE id = ?",
                               (message, int(restarted), job_id))

    def get_job(self, job_id: str) -> JobRow | None:
        rows = self._query("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return self._job(rows[0]) if rows else None

    def list_jobs(self, states: Iterable[JobState] = (), limit: int = 50, before_seq: int = 0) -> list[JobRow]:
        """Newest first; `before_seq` > 0 continues a previous page."""
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        states = list(states)
        if states:
            sql += f" AND state IN ({','.join('?' * len(states))})"
            args += [s.name for s in states]
        if before_seq > 0:
            sql += " AND seq < ?"
            args.append(before_seq)
        sql += " ORDER BY seq DESC LIMIT ?"
        args.append(limit)
        return [self._job(r) for r in self._query(sql, args)]

    def count_jobs(self, *states: JobState) -> int:
        """How many jobs are in these states (the queue cap counts QUEUED ones)."""
        marks = ",".join("?" * len(states))
        return self._query(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", [s.name for s in states])[0][0]

    def jobs_in(self, *states: JobState) -> list[JobRow]:
        """Jobs in these states in scheduling order: higher priority first, FIFO within a priority."""
        marks = ",".join("?" * len(states))
        rows = self._query(f"SELECT * FROM jobs WHERE state IN ({marks}) ORDER BY priority DESC, seq ASC",
                           [s.name for s in states])
        return [self._job(r) for r in rows]

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
        return [TransitionRow(r["id"], r["job_id"], JobState[r["state"]], r["message"], r["time"], r["attempt"])
                for r in rows]

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

    def request_cancel(self, job_id: str, checkpoint: bool) -> None:
        with self._lock, self._disk_full_as(f"the cancel of job {job_id}"):
            self._conn.execute("UPDATE jobs SET cancel_requested = 1, checkpoint_requested = ? WHERE id = ?",
                               (int(checkpoint), job_id))

    # ------------------------------------------------------------ attempts

    @staticmethod
    def _attempt(r: sqlite3.Row) -> AttemptRow:
        failure = None
        if r["failure_cause"]:
            failure = WorkerFailure(FailureCause[r["failure_cause"]], r["failure_message"], rank=r["failure_rank"],
                                    host=r["failure_host"], exception_type=r["failure_exception"],
                                    step=r["failure_step"])
        event_name = r["worker_event"]
        if event_name in WorkerEvent.__members__:
            event = WorkerEvent[event_name]
        else:  # written before typed events: "started", "nan", ... (an unknown word reads as a heartbeat)
            try:
                event, legacy_failure = from_legacy(event_name, r["worker_message"])
            except InvalidArgument:
                event, legacy_failure = WorkerEvent.UNSPECIFIED, None
            failure = failure or legacy_failure
        return AttemptRow(job_id=r["job_id"], attempt=r["attempt"], log_path=r["log_path"], workdir=r["workdir"],
                          started=r["started"], hosts=r["hosts"], pid=r["pid"], pgid=r["pgid"],
                          start_ticks=r["start_ticks"], boot_id=r["boot_id"], slurm_job=r["slurm_job"], ended=r["ended"],
                          exit_code=r["exit_code"], outcome=r["outcome"], message=r["message"],
                          worker_event=event, worker_message=r["worker_message"], failure=failure,
                          mpi_args=tuple(json.loads(r["mpi_args"] or "[]")))

    def begin_attempt(self, job_id: str, *, hosts: str, log_dir: Path, run_dir: Path, token_hash: str,
                      message: str, now: float | None = None,
                      running: bool = True, mpi_args: Sequence[str] = ()) -> tuple[AttemptRow, TransitionRow | None]:
        """Allocate the next attempt number, rotate the job token and move the job to RUNNING, atomically.

        `running=False` (an attempt handed to Slurm's queue): the job keeps its state (QUEUED or RESTARTING)
        with `message`, until its ranks first call (`transition` to RUNNING then); no transition is returned.
        `mpi_args` are the options `gradmesh serve --mpirun-arg` gave this attempt's mpirun."""
        now = time.time() if now is None else now
        with self._tx() as db:
            row = db.execute("SELECT state, attempts, started FROM jobs WHERE id = ?", (job_id,)).fetchone()
            old = JobState[row["state"]]
            check_transition(old, JobState.RUNNING)
            if not running:
                number = row["attempts"] + 1
                # slurm_job '?': handed to Slurm, its id not known yet (its ranks may call before sbatch answers)
                db.execute("INSERT INTO attempts (job_id, attempt, hosts, started, log_path, workdir, slurm_job,"
                           " mpi_args) VALUES (?, ?, ?, ?, ?, ?, '?', ?)",
                           (job_id, number, hosts, now, str(log_dir / f"attempt-{number}.log"),
                            str(run_dir / f"attempt-{number}"), json.dumps(list(mpi_args))))
                db.execute("UPDATE jobs SET message = ?, attempts = ?, token_hash = ? WHERE id = ?",
                           (message, number, token_hash, job_id))
                return self._attempt(db.execute("SELECT * FROM attempts WHERE job_id = ? AND attempt = ?",
                                                (job_id, number)).fetchone()), None
            number = row["attempts"] + 1
            log_path = str(log_dir / f"attempt-{number}.log")
            workdir = str(run_dir / f"attempt-{number}")
            db.execute("INSERT INTO attempts (job_id, attempt, hosts, started, log_path, workdir, mpi_args)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (job_id, number, hosts, now, log_path, workdir, json.dumps(list(mpi_args))))
            db.execute("UPDATE jobs SET state = ?, message = ?, attempts = ?, token_hash = ?,"
                       " started = CASE WHEN started = 0 THEN ? ELSE started END WHERE id = ?",
                       (JobState.RUNNING.name, message, number, token_hash, now, job_id))
            cur = db.execute("INSERT INTO transitions (job_id, state, message, time, attempt) VALUES (?, ?, ?, ?, ?)",
                             (job_id, JobState.RUNNING.name, message, now, number))
            attempt = self._attempt(db.execute("SELECT * FROM attempts WHERE job_id = ? AND attempt = ?",
                                               (job_id, number)).fetchone())
        return attempt, TransitionRow(cur.lastrowid, job_id, JobState.RUNNING, message, now, number)

    def record_launch(self, job_id: str, attempt: int, pid: int, pgid: int, start_ticks: int = 0,
                      boot_id: str = "") -> None:
        """mpirun's pid, group and identity (start time, boot id): what a later coordinator checks before it
        trusts the group as this attempt's."""
        with self._lock, self._disk_full_as(f"the process record of job {job_id} attempt {attempt}"):
            self._conn.execute("UPDATE attempts SET pid = ?, pgid = ?, start_ticks = ?, boot_id = ?"
                               " WHERE job_id = ? AND attempt = ?", (pid, pgid, start_ticks, boot_id, job_id, attempt))

    def record_slurm_job(self, job_id: str, attempt: int, slurm_job: str) -> None:
        """The Slurm job id an attempt was submitted as: how a later coordinator finds it again."""
        with self._lock, self._disk_full_as(f"the Slurm job record of job {job_id} attempt {attempt}"):
            self._conn.execute("UPDATE attempts SET slurm_job = ? WHERE job_id = ? AND attempt = ?",
                               (slurm_job, job_id, attempt))

    def end_attempt(self, job_id: str, attempt: int, *, exit_code: int | None, outcome: str, message: str,
                    now: float | None = None) -> None:
        now = time.time() if now is None else now
        with self._lock, self._disk_full_as(f"the end of job {job_id} attempt {attempt}"):
            self._conn.execute("UPDATE attempts SET ended = ?, exit_code = ?, outcome = ?, message = ?"
                               " WHERE job_id = ? AND attempt = ?", (now, exit_code, outcome, message, job_id, attempt))

    def set_worker_event(self, job_id: str, attempt: int, event: WorkerEvent, message: str) -> None:
        with self._lock, self._disk_full_as(f"the worker event of job {job_id}"):
            self._conn.execute("UPDATE attempts SET worker_event = ?, worker_message = ? WHERE job_id = ? AND attempt = ?",
                               (event.name, message, job_id, attempt))

    def record_failure(self, job_id: str, attempt: int, failure: WorkerFailure) -> bool:
        """Keep the first failure reported for the attempt (the root cause; later ones are its echoes, e.g.
        rank 0's broken collective after rank 1 raised). Returns whether this one was kept."""
        with self._lock, self._disk_full_as(f"the failure report of job {job_id}"):
            cur = self._conn.execute(
                "UPDATE attempts SET failure_cause = ?, failure_rank = ?, failure_host = ?, failure_exception = ?,"
                " failure_message = ?, failure_step = ? WHERE job_id = ? AND attempt = ? AND failure_cause = ''",
                (failure.cause.name, failure.rank, failure.host, failure.exception_type, failure.message,
                 failure.step, job_id, attempt))
            return cur.rowcount > 0

    def attempts(self, job_id: str) -> list[AttemptRow]:
        return [self._attempt(r) for r in
                self._query("SELECT * FROM attempts WHERE job_id = ? ORDER BY attempt", (job_id,))]

    def attempt(self, job_id: str, attempt: int) -> AttemptRow | None:
        rows = self._query("SELECT * FROM attempts WHERE job_id = ? AND attempt = ?", (job_id, attempt))
        return self._attempt(rows[0]) if rows else None

    # ------------------------------------------------------------ metrics

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

    # ------------------------------------------------------------ checkpoints

    @staticmethod
    def _checkpoint(r: sqlite3.Row) -> CheckpointRow:
        return CheckpointRow(job_id=r["job_id"], step=r["step"], epoch=r["epoch"], size=r["size"], sha256=r["sha256"],
                             val_loss=nan_from_sql(r["val_loss"]), val_accuracy=nan_from_sql(r["val_accuracy"]),
                             is_final=bool(r["is_final"]), created=r["created"], attempt=r["attempt"], path=r["path"])

    def add_checkpoint(self, ckpt: CheckpointRow, keep: "RetentionPolicy") -> list[CheckpointRow]:
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



__all__ = ["Store"]
