"""Dashboard sessions without server state: the cookie is nonce.HMAC(client token, nonce).

A session survives a coordinator restart and every session ends when the client token changes. The CSRF
token of a session is HMAC(token, "csrf:" + nonce): the page reads it from a cookie another origin cannot
read, and sends it back in a header with every POST.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

SESSION_COOKIE, CSRF_COOKIE, CSRF_HEADER = "gradmesh_session", "gradmesh_csrf", "X-CSRF-Token"
SESSION_MAX_AGE = 30 * 86400


class Sessions:
    """Stateless sessions derived from the client token (see the module docstring)."""

    def __init__(self, token: str):
        self._key = token.encode()

    def _mac(self, message: str) -> str:
        return hmac.new(self._key, message.encode(), hashlib.sha256).hexdigest()

    def check_token(self, token: str) -> bool:
        return hmac.compare_digest(token.strip().encode(), self._key)

    def new(self, who: str = "") -> tuple[str, str]:
        """(session cookie, CSRF token) of a new session; `who` (the user: Dashboard.session_tag) is signed with it."""
        nonce = secrets.token_hex(16) + (":" + who if who else "")
        return f"{nonce}.{self._mac('session:' + nonce)}", self.csrf(nonce)

    def csrf(self, nonce: str) -> str:
        return self._mac("csrf:" + nonce)

    def nonce(self, cookie: str) -> str | None:
        """The session's nonce when the cookie is one of ours, else None."""
        nonce, _, mac = cookie.partition(".")
        if nonce and hmac.compare_digest(mac.encode(), self._mac("session:" + nonce).encode()):
            return nonce
        return None
