"""The store's format version, and what opening a database written by an older release does to it.

    PRAGMA user_version   0 = releases up to 2026-11-28 (they never set it); STORE_VERSION = this format
    store_info            key/value rows; 'data_dir': where the data directory was when it was last opened

Opening a database (coordinator.store.connection) runs, in order: `schema.SCHEMA` (tables created if missing)
and `schema.migrate` (columns added if missing), both idempotent and independent of order, so a column or
table added by any release is simply there; then `upgrade` here, in one transaction:

  - a database whose user_version is newer than STORE_VERSION is refused (StoreVersionError, one line): a
    newer release wrote it and this one might misread it. Going back means restoring the copy taken before
    the upgrade (docs/operations-upgrade.md).
  - the data directory may have moved (restored from a backup elsewhere, a new disk): the paths the store
    keeps (checkpoint files, attempt logs and work directories) are absolute, so those under the directory's
    previous place are rewritten to its new one. The previous place is the one recorded in store_info; a
    database from before store_info infers it from its own checkpoint and log paths, which end in
    /checkpoints/<job id>/<file> and /logs/<job id>/<file>.
  - user_version becomes STORE_VERSION.

What the stored rows *mean* is read leniently elsewhere and never rewritten here: a spec stored by an older
release (every key with its default) is read by `worker.spec.parse_stored_spec`, a checkpoint file of an
older format by `worker.checkpoint.migrate_meta`, so the bytes a user downloads stay the bytes that were
uploaded. A later format change that must rewrite rows adds a step gated on `version < N` to `upgrade`.
"""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

log = logging.getLogger("gradmesh.store")

STORE_VERSION = 1
# (table, column) of every absolute path under the data directory that the store keeps
PATH_COLUMNS = (("checkpoints", "path"), ("attempts", "log_path"), ("attempts", "workdir"))
INFO_SCHEMA = "CREATE TABLE IF NOT EXISTS store_info (key TEXT PRIMARY KEY, value TEXT NOT NULL)"


class StoreVersionError(ValueError):
    """The database was written by a newer release than this one."""


def version_of(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def upgrade(conn: sqlite3.Connection, data_dir: Path) -> None:
    """Bring the database at `data_dir` (its directory, which holds checkpoints/, logs/, runs/) to STORE_VERSION;
    see the module docstring. Idempotent: opening an up-to-date database changes nothing."""
    version = version_of(conn)
    if version > STORE_VERSION:
        raise StoreVersionError(f"{data_dir}: the store is format {version}, written by a newer gradmesh; this one "
                                f"reads formats up to {STORE_VERSION}: run the newer release, or restore the copy "
                                "of the data directory taken before upgrading")
    here = str(data_dir.resolve())
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(INFO_SCHEMA)
        row = conn.execute("SELECT value FROM store_info WHERE key = 'data_dir'").fetchone()
        before = row[0] if row is not None else _inferred_data_dir(conn)
        if before is not None and before != here:
            moved = _relocate(conn, before, here)
            log.warning("data directory moved from %s to %s: %d stored path(s) now point to the new place",
                        before, here, moved)
        conn.execute("INSERT INTO store_info (key, value) VALUES ('data_dir', ?) "
                     "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (here,))
        if version < STORE_VERSION:
            if before is not None:  # a store with records of an older release (a new one is only stamped)
                log.info("store %s: format %d upgraded to %d", data_dir, version, STORE_VERSION)
            conn.execute(f"PRAGMA user_version = {STORE_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _inferred_data_dir(conn: sqlite3.Connection) -> str | None:
    """Where a database from before store_info was: the prefix of its stored checkpoint or log paths."""
    for sql, kind in (("SELECT job_id, path FROM checkpoints LIMIT 1", "checkpoints"),
                      ("SELECT job_id, log_path FROM attempts LIMIT 1", "logs")):
        row = conn.execute(sql).fetchone()
        if row is None:
            continue
        job_id, path = row
        marker = f"/{kind}/{job_id}/"
        if marker in path:
            return path[:path.rindex(marker)]
    return None


def _relocate(conn: sqlite3.Connection, before: str, here: str) -> int:
    moved = 0
    for table, column in PATH_COLUMNS:
        cursor = conn.execute(
            f"UPDATE {table} SET {column} = ? || substr({column}, ?) WHERE substr({column}, 1, ?) = ?",
            (here, len(before) + 1, len(before) + 1, before + "/"))
        moved += cursor.rowcount
    return moved
