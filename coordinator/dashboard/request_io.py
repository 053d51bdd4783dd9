"""How a dashboard request is read and answered: bodies, the state filter, JSON, errors, redirects.

The base of `coordinator.dashboard.http.Handler`, kept apart from its routing so that the rules every answer
follows are in one short place: each carries SECURITY_HEADERS, an error is JSON with the error vocabulary's
code, kind and field (or the login page, for a person who is not logged in), a refused POST closes its
connection (its body may be unread), and a request body is at most MAX_BODY bytes.

A body is read only as its Content-Length says, and only when that is one number of ASCII digits: a body
sent any other way (Transfer-Encoding, a missing, negative, non-numeric or repeated length, more than
MAX_BODY) is refused with 400/411/413 and the connection closed, unread, so it can neither fill the
coordinator's memory nor be taken for a second request. No header value carries a control character
(`send_header` refuses it), and the page to return to after the login (`next`) is a path of this site.
"""
from __future__ import annotations

import json
import re
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


class Refused(Exception):
    """A request refused for how it was sent (its framing, a cap): `status` and a message; its connection closes."""

    def __init__(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = ()):
        super().__init__(message)
        self.status, self.headers = status, headers


_LENGTH = re.compile(r"[0-9]{1,18}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def safe_next(path: str) -> str:
    """`path` when it is a path of this site ("/jobs/x?state=RUNNING"), else "/": never another site
    ("//evil", "/\\evil", "https://..."), never a control character (no header can be added through it)."""
    if (not path.startswith("/") or path.startswith(("//", "/\\")) or "\\" in path or _CONTROL.search(path)
            or not path.isascii() or len(path) > 2000):
        return "/"
    return path


class LoginPages(Protocol):
    def login_page(self, next_path: str, failed: bool = False) -> bytes: ...


class ServesLogin(Protocol):
    """What an answer needs of its server (coordinator.dashboard.app.DashboardServer, which imports this module)."""
    app: LoginPages


class RequestIO(BaseHTTPRequestHandler):
    server: ServesLogin  # type: ignore[assignment]
    query: dict[str, list[str]]  # the parsed query string, set by the handler's dispatch

    def _check_framing(self) -> None:
        """Refuse (Refused) a request whose body is not sent as one plain Content-Length of at most MAX_BODY."""
        if self.headers.get("Transfer-Encoding") is not None:
            raise Refused(411 if self.command == "POST" else 400,
                          "a body sent with Transfer-Encoding is not accepted: send Content-Length")
        lengths = self.headers.get_all("Content-Length") or []
        if len(lengths) > 1:
            raise Refused(400, "more than one Content-Length")
        if not lengths:
            if self.command == "POST":
                raise Refused(411, "a POST needs a Content-Length")
            return
        if not _LENGTH.fullmatch(lengths[0].strip()):
            raise Refused(400, f"Content-Length {lengths[0][:20]!r} is not a number of bytes")
        length = int(lengths[0])
        if length > MAX_BODY:
            raise Refused(413, f"the body is {length} bytes; at most {MAX_BODY}")
        if length and self.command != "POST":
            self.close_connection = True  # a body nobody reads must not be taken for the next request

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)  # checked by _check_framing
        try:
            data = self.rfile.read(length) if length else b""
        except OSError:  # idle past the timeout, or gone
            data = b""
        if len(data) != length:
            raise PageGone  # the client stopped sending: no answer, the connection closes
        return data

    def send_header(self, keyword: str, value: str) -> None:
        if _CONTROL.search(keyword) or _CONTROL.search(str(value)):
            self._headers_buffer = []  # the answer begun is dropped whole: the error replaces it
            raise ValueError(f"header {keyword[:40]!r}: a control character in its value")
        super().send_header(keyword, value)

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

    def _error(self, status: int, message: str, err: GradmeshError | None = None,
               headers: Iterable[tuple[str, str]] = ()) -> None:
        if self.command == "POST":
            # its body may be unread (refused before it was looked at): it must not be taken for the next request
            self.close_connection = True
        body = {"error": message, "code": err.code if err else HTTPStatus(status).name,
                "kind": err.kind if err else "", "field": getattr(err, "field", "")}
        if status == 401 and "text/html" in self.headers.get("Accept", ""):
            # a person opening a page: the login form, which comes back here (still a 401 for the record)
            self._send(401, self.server.app.login_page(safe_next(self.path)), "text/html; charset=utf-8")
            return
        self._send(status, json.dumps(body).encode(), "application/json", [("Cache-Control", "no-store"), *headers])

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
        return list(dict.fromkeys(states))  # each once
