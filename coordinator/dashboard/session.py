"""Dashboard sessions: the cookie is nonce.HMAC(client token, nonce), and the nonce carries its expiry.

A session survives a coordinator restart and every session ends when the client token changes. The server
holds no session state but what a logout ended early: a nonce is "<expiry, hex unix seconds>-<random>", so
a cookie kept past SESSION_MAX_AGE (or replayed after a logout, `revoke`) is refused on the server, whatever
the browser does with Max-Age. Revoked nonces are kept by `revocations` (the store) until they expire.
The CSRF token of a session is HMAC(token, "csrf:" + nonce): the page reads it from a cookie another origin
cannot read, and sends it back in a header with every POST.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from typing import Protocol

SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "gradmesh_session", "gradmesh_csrf", "X-CSRF-Token"
SESSION_MAX_AGE = 12 * 3600   # a session ends this long after its login, on the server too
# "<expiry>-<random>" and, for a user's session, ":<user name>:<prefix of the token's hash>"
_NONCE = re.compile(r"([0-9a-f]{1,12})-[0-9a-f]{32}(?::[a-z][a-z0-9_-]{0,31}:[0-9a-f]{16})?")


class Revocations(Protocol):
    """Where logouts are kept (coordinator.store.sessions.SessionRevocations)."""
    def revoke_session(self, nonce: str, expires: float) -> None: ...
    def revoked_sessions(self) -> dict[str, float]: ...


class Sessions:
    """Stateless sessions derived from the client token (see the module docstring)."""

    def __init__(self, token: str, revocations: Revocations | None = None, max_age: float = SESSION_MAX_AGE):
        self._key = token.encode()
        self.max_age = max_age
        self._revocations = revocations
        self._revoked = revocations.revoked_sessions() if revocations else {}
        self._lock = threading.Lock()

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def check_token(self, token: str) -> bool:
        return hmac.compare_digest(token.strip().encode(), self._key)

    def new(self, who: str = "") -> tuple[str, str]:
        """(session cookie, CSRF token) of a new session; `who` (the user: Dashboard.session_tag) is signed with it."""
        nonce = f"{int(time.time() + self.max_age):x}-{secrets.token_hex(16)}" + (":" + who if who else "")
        return f"{nonce}.{self._mac('session:' + nonce)}", self.csrf(nonce)

    def csrf(self, nonce: str) -> str:
        return self._mac("csrf:" + nonce)

    def nonce(self, cookie: str) -> str | None:
        """The session's nonce when the cookie is one of ours, not expired and not logged out; else None."""
        nonce, _, mac = cookie.partition(".")
        found = _NONCE.fullmatch(nonce)
        if not found or not hmac.compare_digest(mac.encode(), self._mac("session:" + nonce).encode()):
            return None
        if int(found.group(1), 16) <= time.time():
            return None
        with self._lock:
            return None if nonce in self._revoked else nonce

    @staticmethod
    def expires(nonce: str) -> float:
        return float(int(nonce.partition("-")[0], 16))

    def revoke(self, nonce: str) -> None:
        """End the session now (logout): its cookie is refused from here on, after a restart too."""
        with self._lock:
            now = time.time()
            self._revoked = {n: t for n, t in self._revoked.items() if t > now}
            self._revoked[nonce] = self.expires(nonce)
        if self._revocations is not None:
            self._revocations.revoke_session(nonce, self.expires(nonce))
