"""The store's record of dashboard sessions ended by logout (coordinator.dashboard.session).

A session cookie is stateless (an HMAC of the client token) and carries its own expiry, so only the ones a
person ended early need a record, and only until they would have expired anyway: a logout outlives a
restart of the coordinator, and the table holds no more than the sessions ended within one session's life.
"""
from __future__ import annotations

import time

from coordinator.store.connection import StoreConnection


class SessionRevocations(StoreConnection):
    def revoke_session(self, nonce: str, expires: float) -> None:
        with self._tx("a dashboard logout") as db:
            db.execute("DELETE FROM revoked_sessions WHERE expires < ?", (time.time(),))
            db.execute("INSERT OR REPLACE INTO revoked_sessions (nonce, expires) VALUES (?, ?)", (nonce, expires))

    def revoked_sessions(self) -> dict[str, float]:
        """nonce → expiry of every session ended early that has not expired yet."""
        rows = self._query("SELECT nonce, expires FROM revoked_sessions WHERE expires >= ?", (time.time(),))
        return {r["nonce"]: r["expires"] for r in rows}
