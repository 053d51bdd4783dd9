"""The coordinator's SQLite schema, and the in-place migration of databases written by older versions.

`Store` applies `SCHEMA` (idempotent) and then `migrate` every time it opens a database, so a coordinator
upgraded in place keeps its jobs, attempts, metrics and checkpoint records.
"""
from __future__ import annotations

import sqlite3

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,      -- submission order: FIFO and paging
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    workers INTEGER NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    labels_json TEXT NOT NULL DEFAULT '{}',
    created REAL NOT NULL,
    started REAL NOT NULL DEFAULT 0,
    ended REAL NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    checkpoint_requested INTEGER NOT NULL DEFAULT 0,
    token_hash TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state, priority, seq);
-- every worker call is authenticated by its token's hash (Store.job_of_token), before any message is read
CREATE INDEX IF NOT EXISTS jobs_by_token ON jobs(token_hash);

CREATE TABLE IF NOT EXISTS attempts (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    attempt INTEGER NOT NULL,
    hosts TEXT NOT NULL DEFAULT '',
    pid INTEGER NOT NULL DEFAULT 0,
    pgid INTEGER NOT NULL DEFAULT 0,
    started REAL NOT NULL,
    ended REAL NOT NULL DEFAULT 0,
    exit_code INTEGER,                          -- NULL while running or when unknown
    outcome TEXT NOT NULL DEFAULT '',           -- '', succeeded, failed, cancelled, ...
    message TEXT NOT NULL DEFAULT '',
    log_path TEXT NOT NULL,
    workdir TEXT NOT NULL,
    worker_event TEXT NOT NULL DEFAULT '',      -- the last event rank 0 reported: a WorkerEvent name
    worker_message TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (job_id, attempt)
);

CREATE TABLE IF NOT EXISTS transitions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    message TEXT NOT NULL,
    time REAL NOT NULL,
    attempt INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transitions_by_job ON transitions(job_id, id);

CREATE TABLE IF NOT EXISTS metrics (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    train_loss REAL,
    val_loss REAL,
    val_accuracy REAL,
    samples_per_second REAL,
    lr REAL,
    time REAL,
    attempt INTEGER NOT NULL,
    PRIMARY KEY (job_id, step)
);
-- GetJob shows the best point (lowest val_loss) on every call; without this index it is a scan of the
-- job's whole history under the store lock (measured 25 ms at 110k points by bench/service.py)
CREATE INDEX IF NOT EXISTS metrics_best ON metrics(job_id, val_loss, step) WHERE val_loss IS NOT NULL;

CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    step INTEGER NOT NULL,
    epoch INTEGER NOT NULL,
    size INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    val_loss REAL,
    val_accuracy REAL,
    is_final INTEGER NOT NULL,
    created REAL NOT NULL,
    attempt INTEGER NOT NULL,
    path TEXT NOT NULL,
    PRIMARY KEY (job_id, step)
);

-- hosts an operator drained (DrainHost): the hold outlives a restart of the coordinator
CREATE TABLE IF NOT EXISTS drained_hosts (
    host TEXT PRIMARY KEY,
    since REAL NOT NULL
);
"""

# A job told to pause at a step (a sweep's trial at its rung): its ranks stop there with a checkpoint, and the
# job then waits, RESTARTING and held, until released with the next step to pause at (0 = run to the end).
# No foreign key: a sweep writes the pause before it creates the trial's job, so the first attempt sees it.
PAUSES = """
CREATE TABLE IF NOT EXISTS pauses (
    job_id TEXT PRIMARY KEY,
    at_step INTEGER NOT NULL,                   -- 0 = no pause: run to train.steps
    held INTEGER NOT NULL DEFAULT 0             -- 1 = paused at at_step, waiting to be released
);
"""

# Sweeps (coordinator.sweeps): the sweep file as submitted, its trials (ordinary jobs), and the metric value of
# each trial at each rung, the only inputs of its decisions besides the file.
SWEEPS = """
CREATE TABLE IF NOT EXISTS sweeps (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    text TEXT NOT NULL,                         -- the sweep file as submitted
    state TEXT NOT NULL,                        -- a JobState name: RUNNING, SUCCEEDED, FAILED, CANCELLED
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    ended REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS sweep_trials (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    trial INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    params_json TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (sweep_id, trial)
);
CREATE TABLE IF NOT EXISTS sweep_results (
    sweep_id TEXT NOT NULL REFERENCES sweeps(id) ON DELETE CASCADE,
    trial INTEGER NOT NULL,
    rung INTEGER NOT NULL,
    step INTEGER NOT NULL,
    value REAL,                                 -- NULL: no value (the trial failed or was cancelled)
    time REAL NOT NULL,
    PRIMARY KEY (sweep_id, trial, rung)
);
"""


# Why an attempt failed, as the first rank that reported a failure said it (reports.WorkerFailure).
# Added after the first release: older databases get them by ALTER TABLE when opened.
ATTEMPT_FAILURE_COLUMNS = {
    "failure_cause": "TEXT NOT NULL DEFAULT ''",  # a FailureCause name; '' = no failure reported
    "failure_rank": "INTEGER",                     # NULL when the report did not say
    "failure_host": "TEXT NOT NULL DEFAULT ''",
    "failure_exception": "TEXT NOT NULL DEFAULT ''",
    "failure_message": "TEXT NOT NULL DEFAULT ''",
    "failure_step": "INTEGER NOT NULL DEFAULT 0",
}


# Who mpirun was, recorded at launch with its pid and pgid (processes.Identity): a later coordinator trusts
# the stored pgid only while the process holding that pid still has this start time and boot id.
ATTEMPT_LAUNCH_COLUMNS = {
    "start_ticks": "INTEGER NOT NULL DEFAULT 0",   # /proc/PID/stat starttime of mpirun; 0 = not recorded
    "boot_id": "TEXT NOT NULL DEFAULT ''",          # /proc/sys/kernel/random/boot_id at launch
}


# Where an attempt runs when not under this coordinator's own mpirun: the Slurm job it was submitted as (the
# handle a later coordinator re-adopts it by, no PIDs involved).
ATTEMPT_SLURM_COLUMNS = {
    "slurm_job": "TEXT NOT NULL DEFAULT ''",        # Slurm's job id ('' = launched by mpirun here)
}

# Who runs a job's attempts: '' = this coordinator's executor (local mpirun or Slurm), 'external' = a run its
# user launched and registered (python -m worker --register): never launched, restarted or killed by us.
JOB_EXECUTOR_COLUMNS = {
    "executor": "TEXT NOT NULL DEFAULT ''",
}

# The options `gradmesh serve --mpirun-arg` passed to this attempt's mpirun (a JSON list), kept with it.
ATTEMPT_MPI_COLUMNS = {
    "mpi_args": "TEXT NOT NULL DEFAULT '[]'",
}


def migrate(conn: sqlite3.Connection) -> None:
    """Add the tables and columns newer than the database (SQLite adds a column in place, rows keep their values)."""
    conn.executescript(PAUSES)
    conn.executescript(SWEEPS)
    for table, columns in (("attempts", {**ATTEMPT_FAILURE_COLUMNS, **ATTEMPT_LAUNCH_COLUMNS, **ATTEMPT_SLURM_COLUMNS,
                                         **ATTEMPT_MPI_COLUMNS}),
                           ("jobs", JOB_EXECUTOR_COLUMNS)):
        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
        for name, decl in columns.items():
            if name not in have:
                conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {decl}")
