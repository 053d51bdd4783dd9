"""The store's attempt records: one row per launch of a job, from its start to its end and its first failure.

Separate from `coordinator.store.store` (the jobs) because an attempt has its own life: allocated with a rotated
token, given its process identity or Slurm job id once launched, ended with an outcome, and read back with
the typed worker event and failure (older rows' free-text events are translated here).
"""
from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Sequence

from coordinator.errors import InvalidArgument
from coordinator.store.records import AttemptRow, TransitionRow
from coordinator.reports import FailureCause, WorkerEvent, WorkerFailure, from_legacy
from coordinator.states import JobState, check_transition
from coordinator.store.connection import StoreConnection


class AttemptRecords(StoreConnection):
    @staticmethod
    def _attempt(r: sqlite3.Row) -> AttemptRow:
        failure = None
        if r["failure_cause"]:
            cause = FailureCause.__members__.get(r["failure_cause"], FailureCause.UNSPECIFIED)
            failure = WorkerFailure(cause, r["failure_message"], rank=r["failure_rank"],
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
                          mpi_args=_mpi_args(r["mpi_args"]))

    def waiting_attempt(self, job_id: str, attempt: int) -> str | None:
        """The Slurm job id of the job's attempt when it was submitted and has not ended (its ranks may call
        before the job is RUNNING); None for any other attempt."""
        rows = self._query("SELECT slurm_job FROM attempts WHERE job_id = ? AND attempt = ? AND slurm_job != ''"
                           " AND ended = 0", (job_id, attempt))
        return rows[0]["slurm_job"] if rows else None

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


def _mpi_args(text: str | None) -> tuple[str, ...]:
    """The stored mpirun options; a list that does not read back is shown as none (it was used at launch)."""
    try:
        args = json.loads(text or "[]")
    except ValueError:
        return ()
    return tuple(str(a) for a in args) if isinstance(args, list) else ()
