"""The store's one SQLite connection: opening it, transactions, and a full disk turned into ResourceExhausted.

Separate from `coordinator.store.store` so that each group of records (jobs there; attempts, metrics and checkpoint
records in `store_attempts`, `store_metrics`, `store_checkpoints`) is a subclass of this one base and shares
its connection, lock and transaction rules instead of each opening the database its own way.

A single connection is shared by all threads behind a lock (SQLite serialises writers anyway, and reads here
are tiny); every change that touches more than one row runs in one `BEGIN IMMEDIATE` transaction (`_tx`).
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
from pathlib import Path
from typing import Iterable, Iterator

from coordinator.errors import ResourceExhausted
from coordinator.store.schema import SCHEMA, migrate
from coordinator.store.versions import upgrade

log = logging.getLogger("gradmesh.store")
KIND_DISK = "disk"  # as coordinator.files.checkpoints.KIND_DISK: the disk is full, retry later


def is_disk_full(err: BaseException) -> bool:
    """Whether SQLite (or the OS under it) failed for want of space."""
    if isinstance(err, sqlite3.Error):
        code = getattr(err, "sqlite_errorcode", None)
        return code == sqlite3.SQLITE_FULL or "database or disk is full" in str(err)
    return isinstance(err, OSError) and err.errno in (28, 122)  # ENOSPC, EDQUOT


class StoreConnection:
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
            upgrade(self._conn, self.path.parent)  # the format version, and a data directory that moved

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

