"""How a dashboard request is read and answered: bodies, the state filter, JSON, errors, redirects.

The base of `coordinator.dashboard.http.Handler`, kept apart from its routing so that the rules every answer
follows are in one short place: each carries SECURITY_HEADERS, an error is JSON with the error vocabulary's
code, kind and field (or the login page, for a person who is not logged in), a refused POST closes its
connection (its body may be unread), and a request body is at most MAX_BODY bytes.
"""
from __future__ import annotations

import json
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any, Iterable, Protocol

from coordinator.errors import GradmeshError, InvalidArgument
from coordinator.states import JobState

MAX_BODY = 64 << 10

SECURITY_HEADERS = {
    # no inline scripts and nothing from elsewhere: the pages work offline; styles may be set inline
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # not no-referrer: that would make browsers send "Origin: null"
}


class PageGone(Exception):
    """The page closed its connection."""


class LoginPages(Protocol):
    def login_page(self, next_path: str, failed: bool = False) -> bytes: ...


class ServesLogin(Protocol):
    """What an answer needs of its server (coordinator.dashboard.app.DashboardServer, which imports this module)."""
    app: LoginPages


class RequestIO(BaseHTTPRequestHandler):
    server: ServesLogin  # type: ignore[assignment]
    query: dict[str, list[str]]  # the parsed query string, set by the handler's dispatch

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise InvalidArgument("body", f"is larger than {MAX_BODY} bytes")
        return self.rfile.read(length) if length else b""

    def _json_body(self) -> dict:
        raw = self._body()
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            raise InvalidArgument("body", "is not JSON") from None
        if not isinstance(body, dict):
            raise InvalidArgument("body", "must be a JSON object")
        return body

    def _send(self, status: int, body: bytes, content_type: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        for key, value in (*SECURITY_HEADERS.items(), *headers):
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, value: Any, status: int = 200) -> None:
        self._send(status, json.dumps(value).encode(), "application/json", [("Cache-Control", "no-store")])

    def _error(self, status: int, message: str, err: GradmeshError | None = None) -> None:
        if self.command == "POST":
            # its body may be unread (refused before it was looked at): it must not be taken for the next request
            self.close_connection = True
        body = {"error": message, "code": err.code if err else HTTPStatus(status).name,
                "kind": err.kind if err else "", "field": getattr(err, "field", "")}
        if status == 401 and "text/html" in self.headers.get("Accept", ""):
            # a person opening a page: the login form, which comes back here (still a 401 for the record)
            self._send(401, self.server.app.login_page(self.path), "text/html; charset=utf-8")
            return
        self._json(body, status)

    def _redirect(self, location: str, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(303)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        for key, value in headers:
            self.send_header(key, value)
        self.end_headers()

    def _job_states(self) -> list[int]:
        states = []
        for name in self.query.get("state", []):
            for part in filter(None, name.upper().split(",")):
                if part not in JobState.__members__:
                    raise InvalidArgument("state", f"{part[:20]!r} is not a job state (QUEUED..CANCELLED)")
                states.append(int(JobState[part]))
        return states
