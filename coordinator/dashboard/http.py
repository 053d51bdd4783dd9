"""The dashboard's HTTP face: routing, the login cookie, CSRF, error statuses.

A second thin adapter over the same core objects as the gRPC servicer (coordinator.jobs.operations, coordinator.jobs.streams,
the scheduler's slot usage): each route unpacks the request, calls the core, and answers JSON (shaped by
coordinator.dashboard.views), a stream, or a static file. The standard library's ThreadingHTTPServer is
enough: one thread per connection, and a server-sent event stream is a response that never ends.
`Handler` is built on two layers: `event_streams.EventStreams` (the streams and the routes that answer with
one) on `request_io.RequestIO` (reading bodies, writing JSON, errors and redirects with the security headers).

    GET  /login                      the login page (the only thing served without the session cookie)
    POST /login                      token=<a user's token> → the session cookies, 303 to /
    POST /logout                     clears them
    GET  /  /jobs/<id>               the jobs list, a job's page (static HTML; static/*.js fill them in)
    GET  /static/<file>              scripts, styles, the vendored uPlot and its licence
    GET  /api/jobs?state=S           the jobs (newest first, at most LIST_LIMIT) and the slots in use, as JSON
    GET  /api/jobs/stream?state=S    the same, as an event stream: a "jobs" event whenever it changes
    GET  /api/jobs/<id>              the job with its attempts, checkpoints and spec
    GET  /api/jobs/<id>/events       event stream: "metrics" (the history, in pages), "snapshot", then live
                                     "metric" and "state" events, as WatchJob; every point's step is its
                                     event id, so a reconnect (Last-Event-ID) resumes after the last step seen
    GET  /api/jobs/<id>/log          event stream of the latest attempt's log, following it
    GET  /api/jobs/<id>/checkpoints/<step>   the file (sha256 in the Repr-Digest and X-Checksum-Sha256 headers)
    POST /api/jobs/<id>/cancel       {"checkpoint": bool}   the same Jobs.cancel as CancelJob
    POST /api/jobs/<id>/resume       {"workers": int}       the same Jobs.resume as ResumeJob
    POST /api/jobs/<id>/delete       {}                      the same Jobs.delete as DeleteJob
    GET  /metrics                    Prometheus' text format, with a bearer token (coordinator.dashboard.metrics)
    GET  /sweeps/<id>, /api/sweeps/<id>    a sweep's page and its JSON (coordinator.dashboard.sweeps)

Auth: the login page takes a user's token once; the answer sets `gradmesh_session` (HttpOnly,
SameSite=Strict, Secure over TLS) = nonce.HMAC(token, nonce), the nonce carrying the session's expiry, the
user and a prefix of their token's hash, so sessions survive a restart and end when the first
administrator's token changes, or the user's (rotated, expired, removed); the expiry is checked here, and a
logout revokes the session (coordinator.dashboard.session). Anything else without a valid session is 401.
Every route acts for that user: the core's roles decide (403 when they refuse), and a job's JSON lists the
`actions` the user may take on it, the only buttons the page shows. Login attempts are rate limited per
address and in all (429 with Retry-After), and open connections and event streams are capped
(coordinator.dashboard.guard). A request that fails without a session is one log line, never a traceback.
CSRF: SameSite=Strict keeps the cookie off cross-site requests, but another port of the same host is the
same *site*; so every POST must also carry X-CSRF-Token (HMAC(token, "csrf:" + nonce), which the page reads
from the non-HttpOnly `gradmesh_csrf` cookie: another origin cannot) and, when the browser sends Origin,
come from this origin. A refused POST is 403 and never reaches the core.
"""
from __future__ import annotations

import base64
import dataclasses
import hmac
import logging
import mimetypes
import re
import socket
import ssl
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, quote, urlsplit

from coordinator.dashboard import metrics, sweeps, views
from coordinator.dashboard.event_streams import EventStreams
from coordinator.dashboard.request_io import SECURITY_HEADERS, PageGone, Refused, safe_next
from coordinator.dashboard.session import CSRF_COOKIE, CSRF_HEADER, SESSION_COOKIE, SESSION_MAX_AGE
from coordinator.errors import GradmeshError, InvalidArgument, Unauthenticated

log = logging.getLogger("gradmesh.dashboard")

STATIC = Path(__file__).resolve().parent / "static"
LIST_LIMIT = 500          # jobs in one list answer (newest first); the page says when there are more

# The one table from the error vocabulary (coordinator.errors `code`) to HTTP statuses.
HTTP_STATUS = {
    "INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "PERMISSION_DENIED": 403, "NOT_FOUND": 404, "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409, "RESOURCE_EXHAUSTED": 429, "DATA_LOSS": 500, "INTERNAL": 500,
    "UNIMPLEMENTED": 501, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504,
}


class Forbidden(Exception):
    """A POST that fails the CSRF checks."""


class Route:
    def __init__(self, method: str, pattern: str, handler: Callable[..., None], public: bool = False):
        self.method, self.regex, self.handler, self.public = method, re.compile(pattern + r"\Z"), handler, public


class Handler(EventStreams):
    protocol_version = "HTTP/1.1"  # keep-alive: a page's scripts and styles come over one connection
    server_version = "gradmesh-dashboard"

    # ------------------------------------------------------------------ dispatch, session, CSRF

    def setup(self) -> None:
        self.timeout = self.server.app.limits.idle_timeout_s  # a read or write waiting longer closes the connection
        super().setup()
        # an event is one small write; without this, Nagle's algorithm may hold it for a delayed ACK
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._dispatch("GET")

    def _dispatch(self, method: str) -> None:
        app = self.server.app
        url = None
        nonce = self.nonce   # the logged-in user (None: not logged in, or the user's token changed since)
        self.caller = app.caller(nonce, self.client_address[0]) if nonce is not None else None
        try:
            self._check_framing()
            url = urlsplit(self.path)
            self.query = parse_qs(url.query, max_num_fields=100)
            for route in app.routes:
                match = route.regex.match(url.path)
                if match and route.method == method:
                    break
            else:
                if self.caller is None:
                    raise Unauthenticated("log in first: open /login and enter the coordinator's client token")
                known = any(r.regex.match(url.path) for r in app.routes)
                self._error(405 if known else 404, "method not allowed" if known else f"no page {url.path}")
                return
            if not route.public and self.caller is None:
                raise Unauthenticated("log in first: open /login and enter the coordinator's client token")
            if method == "POST" and not route.public:
                self._check_csrf()
            route.handler(self, *match.groups())
        except PageGone:
            self.close_connection = True
        except Refused as err:
            self.close_connection = True
            self._error(err.status, str(err), headers=err.headers)
        except Forbidden as err:
            self._error(403, str(err))
        except GradmeshError as err:
            self._error(HTTP_STATUS.get(err.code, 500), str(err), err)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            self.close_connection = True
        except ValueError as err:  # a request line or query that does not parse: nothing was done
            if url is not None and self.nonce is not None:
                raise
            self._error(400, f"malformed request: {str(err)[:200]}")
        except Exception as err:  # a bug: the page gets a 500, the server keeps serving
            where = url.path if url is not None else "?"
            if self.nonce is None:  # whoever sent it has no session: one line, no traceback to fill the log
                log.warning("dashboard: %s %s from %s without a session failed: %s: %s", method, where[:200],
                            self.client_address[0], type(err).__name__, str(err)[:200])
            else:
                log.exception("dashboard: %s %s failed", method, where[:200])
            self._error(500, f"internal error: {type(err).__name__}: {err}")
        finally:
            self._stream_done()

    @property
    def nonce(self) -> str | None:
        cookies = SimpleCookie()
        try:
            cookies.load(self.headers.get("Cookie", ""))
        except Exception:
            return None
        morsel = cookies.get(SESSION_COOKIE)
        return self.server.app.sessions.nonce(morsel.value) if morsel else None

    def origin(self) -> str:
        return f"{self.server.app.scheme}://{self.headers.get('Host', '')}"

    def _check_origin(self) -> None:
        origin = self.headers.get("Origin")
        if origin is not None and origin != self.origin():
            raise Forbidden(f"cross-origin request refused (Origin {origin[:80]})")

    def _check_csrf(self) -> None:
        self._check_origin()
        sent = self.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(sent.encode(), self.server.app.sessions.csrf(self.nonce or "").encode()):
            raise Forbidden(f"missing or wrong {CSRF_HEADER} header")

    # ------------------------------------------------------------------ routes

    def login_page(self) -> None:
        failed = "failed" in self.query
        body = self.server.app.login_page(safe_next(self.query.get("next", ["/"])[0]), failed)
        self._send(401 if failed else 200, body, "text/html; charset=utf-8", [("Cache-Control", "no-store")])

    def login(self) -> None:
        self._check_origin()  # no login CSRF: another site cannot log a browser into this one
        app = self.server.app
        wait = app.logins.wait_s(self.client_address[0])
        if wait:
            raise Refused(429, "too many login attempts; try again in a moment",
                          (("Retry-After", str(max(1, round(wait)))),))
        form = parse_qs(self._body().decode(errors="replace"), max_num_fields=20)
        nxt = safe_next(form.get("next", ["/"])[0])
        user = app.login(form.get("token", [""])[0])   # a user's live token
        if user is None:
            self._redirect("/login?failed=1&next=" + quote(nxt))
            return
        session, csrf = app.sessions.new(app.session_tag(user))
        secure = "; Secure" if app.scheme == "https" else ""
        self._redirect(nxt, [
            ("Set-Cookie", f"{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; "
                           f"Max-Age={SESSION_MAX_AGE}{secure}"),
            ("Set-Cookie", f"{CSRF_COOKIE}={csrf}; Path=/; SameSite=Strict; Max-Age={SESSION_MAX_AGE}{secure}")])

    def logout(self) -> None:
        self.server.app.sessions.revoke(self.nonce)  # the cookie is refused from now on, wherever it was kept
        self.send_response(204)
        for name in (SESSION_COOKIE, CSRF_COOKIE):
            self.send_header("Set-Cookie", f"{name}=; Path=/; Max-Age=0; SameSite=Strict")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def jobs_page(self) -> None:
        self._static("jobs.html")

    def job_page(self, job_id: str) -> None:
        self._static("job.html")

    def static(self, name: str) -> None:
        self._static(name)

    def _static(self, name: str) -> None:
        body = self.server.app.static.get(name)
        if body is None:
            self._error(404, f"no static file {name}")
            return
        kind = "text/plain" if name.endswith("LICENSE") else mimetypes.guess_type(name)[0] or "application/octet-stream"
        if kind.startswith("text/") or kind.endswith("javascript"):
            kind += "; charset=utf-8"
        self._send(200, body, kind, [("Cache-Control", "no-cache")])

    def jobs(self) -> None:
        self._json(self.server.app.listing(self._job_states(), self.caller))

    def job(self, job_id: str) -> None:
        self._json(self.server.app.detail(job_id, caller=self.caller))

    def download(self, job_id: str, step: str) -> None:
        row, chunks = self.server.app.core.jobs.open_checkpoint(job_id, step=int(step), caller=self.caller)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(row.size))
        self.send_header("Content-Disposition", f'attachment; filename="{job_id}-step-{row.step}.npz"')
        self.send_header("X-Checksum-Sha256", row.sha256)
        # the standard spelling (RFC 9530), which curl, proxies and download managers can check on their own
        self.send_header("Repr-Digest", f"sha-256=:{base64.b64encode(bytes.fromhex(row.sha256)).decode()}:")
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command == "HEAD":
            getattr(chunks, "close", lambda: None)()
            return
        try:
            for data in chunks:
                self.wfile.write(data)
            metrics.count_download(self, row.size)
        except GradmeshError:
            # the bytes on disk no longer match their sha256: cut the transfer short of its Content-Length,
            # so the browser reports a failed download instead of keeping a corrupt file
            log.error("checkpoint step %s of %s is corrupt on disk; download aborted", step, job_id)
            self.close_connection = True
            raise PageGone from None

    def cancel(self, job_id: str) -> None:
        body = self._json_body()
        view = self.server.app.core.jobs.cancel(job_id, bool(body.get("checkpoint", False)), self.caller)
        self._json(views.job(view))

    def resume(self, job_id: str) -> None:
        workers = self._json_body().get("workers", 0)
        if not isinstance(workers, int):
            raise InvalidArgument("workers", "must be an integer")
        self._json(views.job(self.server.app.core.jobs.resume(job_id, workers, self.caller)))

    def delete(self, job_id: str) -> None:
        self._json_body()
        self._json(dataclasses.asdict(self.server.app.core.jobs.delete(job_id, self.caller)))


JOB = r"/([A-Za-z0-9][A-Za-z0-9._-]*)"
ROUTES = [
    Route("GET", "/login", Handler.login_page, public=True),
    Route("POST", "/login", Handler.login, public=True),
    Route("POST", "/logout", Handler.logout),
    Route("GET", "/", Handler.jobs_page),
    Route("GET", "/jobs" + JOB, Handler.job_page),
    Route("GET", r"/static/([A-Za-z0-9._-]+)", Handler.static),
    Route("GET", "/api/jobs", Handler.jobs),
    Route("GET", "/api/jobs/stream", Handler.jobs_stream),
    Route("GET", "/api/jobs" + JOB, Handler.job),
    Route("GET", "/api/jobs" + JOB + "/events", Handler.job_events),
    Route("GET", "/api/jobs" + JOB + "/log", Handler.job_log),
    Route("GET", "/api/jobs" + JOB + r"/checkpoints/([0-9]{1,18})", Handler.download),
    Route("POST", "/api/jobs" + JOB + "/cancel", Handler.cancel),
    Route("POST", "/api/jobs" + JOB + "/resume", Handler.resume),
    Route("POST", "/api/jobs" + JOB + "/delete", Handler.delete),
    Route("GET", "/metrics", metrics.serve, public=True),  # its own bearer token (coordinator.dashboard.metrics)
    Route("GET", "/sweeps" + JOB, sweeps.page),              # a sweep's page (coordinator.dashboard.sweeps)
    Route("GET", "/api/sweeps" + JOB, sweeps.api),
]
