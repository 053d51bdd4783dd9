"""The coordinator's SQLite schema, and the in-place migration of databases written by older versions.

`Store` applies `SCHEMA` (idempotent) and then `migrate` every time it opens a database, so a coordinator
upgraded in place keeps its jobs, attempts, metrics and checkpoint records; then `versions.upgrade` sets the
store's format version (PRAGMA user_version) and follows a data directory that moved.
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

-- dashboard sessions ended by logout before their expiry: refused until `expires`, across restarts
CREATE TABLE IF NOT EXISTS revoked_sessions (
    nonce TEXT PRIMARY KEY,
    expires REAL NOT NULL
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
    ended REAL NOT NULL DEFAULT 0,
    owner TEXT NOT NULL DEFAULT 'admin'         -- the user who submitted it (its trials are that user's jobs)
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
    for step in TEAM_STEPS:
        step(conn)


# ---------------------------------------------------------------- a service for a team: users, owners, audit
# Each step is idempotent (a table or index created if missing, a column added if missing), so it runs at
# every open, in any order relative to the steps others add.

USERS_TABLE = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,                         -- admin | member | viewer (coordinator.access.roles.Role)
    token_hash TEXT NOT NULL,                   -- sha256 of the user's token; the token itself is never stored
    max_slots INTEGER NOT NULL DEFAULT 0,       -- worker slots the user's jobs may hold at once; 0 = no cap
    created REAL NOT NULL,
    token_created REAL NOT NULL,
    expires REAL NOT NULL DEFAULT 0             -- when the token stops working; 0 = never
);
-- every client call is authenticated by its token's hash, before any message is read
CREATE UNIQUE INDEX IF NOT EXISTS users_by_token ON users(token_hash);
"""

AUDIT_TABLE = """
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time REAL NOT NULL,
    user TEXT NOT NULL,                         -- who (a user's name; users may be removed, their rows stay)
    action TEXT NOT NULL,                       -- submit, cancel, resume, delete, drain, users.add, ...
    target TEXT NOT NULL DEFAULT '',            -- the job, host or user acted on
    address TEXT NOT NULL DEFAULT '',           -- where the call came from (gRPC peer, dashboard client)
    outcome TEXT NOT NULL DEFAULT 'ok',         -- ok | denied
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS audit_by_user ON audit(user, id);
CREATE INDEX IF NOT EXISTS audit_by_time ON audit(time);
"""

# Who a job belongs to. Jobs stored before there were users belong to the first administrator.
JOB_OWNER_COLUMNS = {
    "owner": "TEXT NOT NULL DEFAULT 'admin'",
}


def _users(conn: sqlite3.Connection) -> None:
    conn.executescript(USERS_TABLE)


def _audit(conn: sqlite3.Connection) -> None:
    conn.executescript(AUDIT_TABLE)


def _job_owner(conn: sqlite3.Connection) -> None:
    have = {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    for name, decl in JOB_OWNER_COLUMNS.items():
        if name not in have:
            conn.execute(f"ALTER TABLE jobs ADD COLUMN {name} {decl}")
    conn.execute("CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs(owner, seq)")


def _sweep_owner(conn: sqlite3.Connection) -> None:
    """Who a sweep belongs to (SWEEPS creates the column; a sweeps table made before owners gets it here)."""
    conn.executescript(SWEEPS)
    have = {r[1] for r in conn.execute("PRAGMA table_info(sweeps)")}
    if "owner" not in have:
        conn.execute(f"ALTER TABLE sweeps ADD COLUMN owner {JOB_OWNER_COLUMNS['owner']}")
    conn.execute("CREATE INDEX IF NOT EXISTS sweeps_by_owner ON sweeps(owner, seq)")


TEAM_STEPS = (_users, _audit, _job_owner, _sweep_owner)
