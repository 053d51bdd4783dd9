"""The store's record of users and of what they did: user rows (role, token hash, slot cap, token expiry) and
the audit trail (who did what to which job, host or user, when, from where, and whether it was allowed).

Only a token's sha256 is kept; `user_of_token` finds its user by an index lookup (the server asks it for
every client call it has not seen lately). Users may be removed; their jobs keep their owner's name and
their audit rows stay.
"""
from __future__ import annotations

import sqlite3
import time

from coordinator.store.connection import StoreConnection
from coordinator.store.records import AuditRow, UserRow

AUDIT_PAGE_MAX = 1000


class UserRecords(StoreConnection):
    @staticmethod
    def _user(row: sqlite3.Row) -> UserRow:
        return UserRow(name=row["name"], role=row["role"], token_hash=row["token_hash"], max_slots=row["max_slots"],
                       created=row["created"], token_created=row["token_created"], expires=row["expires"])

    def add_user(self, user: UserRow) -> bool:
        """Insert a user; False (nothing written) when the name is taken."""
        with self._tx(f"the user {user.name}") as db:
            if db.execute("SELECT 1 FROM users WHERE name = ?", (user.name,)).fetchone() is not None:
                return False
            now = user.created or time.time()
            db.execute("INSERT INTO users (name, role, token_hash, max_slots, created, token_created, expires)"
                       " VALUES (?, ?, ?, ?, ?, ?, ?)",
                       (user.name, user.role, user.token_hash, user.max_slots, now, user.token_created or now,
                        user.expires))
            return True

    def user(self, name: str) -> UserRow | None:
        rows = self._query("SELECT * FROM users WHERE name = ?", (name,))
        return self._user(rows[0]) if rows else None

    def user_of_token(self, token_hash: str) -> UserRow | None:
        rows = self._query("SELECT * FROM users WHERE token_hash = ?", (token_hash,)) if token_hash else []
        return self._user(rows[0]) if rows else None

    def users(self) -> list[UserRow]:
        return [self._user(r) for r in self._query("SELECT * FROM users ORDER BY name", ())]

    def remove_user(self, name: str) -> bool:
        with self._tx(f"the removal of user {name}") as db:
            return db.execute("DELETE FROM users WHERE name = ?", (name,)).rowcount > 0

    def update_user(self, name: str, *, role: str | None = None, max_slots: int | None = None) -> UserRow | None:
        """Change what is given; the new row, or None when there is no such user."""
        with self._tx(f"the change of user {name}") as db:
            if role is not None:
                db.execute("UPDATE users SET role = ? WHERE name = ?", (role, name))
            if max_slots is not None:
                db.execute("UPDATE users SET max_slots = ? WHERE name = ?", (max_slots, name))
            row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return self._user(row) if row is not None else None

    def set_token(self, name: str, token_hash: str, expires: float) -> UserRow | None:
        """A new token for the user (the old one stops working at once); None when there is no such user."""
        with self._tx(f"the token of user {name}") as db:
            db.execute("UPDATE users SET token_hash = ?, token_created = ?, expires = ? WHERE name = ?",
                       (token_hash, time.time(), expires, name))
            row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        return self._user(row) if row is not None else None

    # ------------------------------------------------------------ the audit trail

    def audit(self, user: str, action: str, *, target: str = "", address: str = "", outcome: str = "ok",
              detail: str = "", now: float | None = None) -> None:
        with self._lock, self._disk_full_as(f"the audit row of {user}'s {action}"):
            self._conn.execute("INSERT INTO audit (time, user, action, target, address, outcome, detail)"
                               " VALUES (?, ?, ?, ?, ?, ?, ?)",
                               (time.time() if now is None else now, user, action, target[:200], address[:200],
                                outcome, detail[:1000]))

    def audit_rows(self, *, user: str = "", since: float = 0.0, after_id: int = 0,
                   limit: int = AUDIT_PAGE_MAX) -> list[AuditRow]:
        """Oldest first, from `since` (unix time) and after the row `after_id` (a page token)."""
        sql, args = "SELECT * FROM audit WHERE id > ? AND time >= ?", [after_id, since]
        if user:
            sql += " AND user = ?"
            args.append(user)
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [AuditRow(r["id"], r["time"], r["user"], r["action"], r["target"], r["address"], r["outcome"],
                         r["detail"]) for r in self._query(sql, args)]
