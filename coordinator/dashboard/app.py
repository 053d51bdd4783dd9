"""The dashboard as a running thing: the state its routes share, the HTTP server, and how it starts and stops.

    dash = start_dashboard(core, token, host="127.0.0.1", port=0)    # tls_cert=, tls_key= for https
    dash.url, dash.port                                              # limits=HttpLimits(...) for other caps
    dash.stop()

The server answers a connection over `limits.connections` with a 503 and closes it before any thread is
started for it; the accept backlog is `limits.backlog` (the standard library's 5 made rapid connects wait).
"""
from __future__ import annotations

import errno
import html
import math
import logging
import socket
import ssl
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from coordinator.access import validate
from coordinator.access.roles import OWNER_ACTIONS, Caller, Role, may
from coordinator.core import Coordinator
from coordinator.errors import InvalidArgument
from coordinator.dashboard import views
from coordinator.dashboard.guard import Counted, HttpLimits, LoginThrottle
from coordinator.dashboard.http import LIST_LIMIT, ROUTES, STATIC, Handler
from coordinator.dashboard.session import Sessions
from coordinator.jobs.operations import LIST_PAGE_MAX
from coordinator.states import JobState
from coordinator.store.records import UserRow
from coordinator.telemetry.wiring import Monitoring

log = logging.getLogger("gradmesh.dashboard")
_COUNT_LOCK = threading.Lock()
_FULL = (b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nConnection: close\r\nContent-Type: text/plain\r\n"
         b"Content-Length: 36\r\n\r\ntoo many connections; try again soon")


class Dashboard:
    """What the routes share: the core, the sessions, the static files (read once, they are small)."""

    def __init__(self, core: Coordinator, token: str, scheme: str, limits: HttpLimits = HttpLimits(),
                 monitoring: Monitoring | None = None):
        self.core = core
        self.monitoring = monitoring  # GET /metrics (coordinator.dashboard.metrics); None: not served
        self.sessions = Sessions(token, core.store)
        self.scheme = scheme
        self.limits = limits
        self.streams = Counted(limits.event_streams, limits.streams_per_session)
        self.logins = LoginThrottle(limits)
        self.routes = ROUTES
        self.static = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.is_file()}

    def newest(self, states: list[int], caller: Caller | None = None) -> tuple[list, bool]:
        """Up to LIST_LIMIT jobs, newest first, in the core's pages; and whether there are more."""
        jobs, token = [], ""
        while True:
            page, token = self.core.jobs.list(states, LIST_PAGE_MAX, token, caller=caller)
            jobs += page
            if not token or len(jobs) >= LIST_LIMIT:
                return jobs[:LIST_LIMIT], bool(token) or len(jobs) > LIST_LIMIT

    # ------------------------------------------------------------ who is logged in

    def login(self, token: str) -> UserRow | None:
        """The user whose live token this is, else None."""
        token = token.strip()
        return self.core.accounts.user_of(token) if self.core.accounts.refusal(token) is None else None

    @staticmethod
    def session_tag(user: UserRow) -> str:
        """What a session cookie carries of its user: the name and a prefix of the token's hash, so a session
        ends when its user is removed or their token rotated or expired."""
        return f"{user.name}:{user.token_hash[:16]}"

    def caller(self, nonce: str, address: str) -> Caller | None:
        """The user of a session (its signed nonce), while the user exists and holds the same live token."""
        _, _, tag = nonce.partition(":")
        name, _, prefix = tag.partition(":")
        try:
            validate.user_name(name)
        except InvalidArgument:
            return None   # a session from before users (or not ours): log in again
        row = self.core.store.user(name)
        if row is None or len(prefix) != 16 or not row.token_hash.startswith(prefix) or \
                (row.expires and row.expires <= time.time()):
            return None
        return Caller(row.name, Role(row.role), f"dashboard {address}")

    # ------------------------------------------------------------ what the pages show

    def listing(self, states: list[int], caller: Caller | None = None) -> dict[str, Any]:
        jobs, more = self.newest(states, caller)
        if states and int(JobState.RUNNING) not in states:
            running_views = self.newest([int(JobState.RUNNING)], caller)[0]
        else:
            running_views = [v for v in jobs if v.job.state is JobState.RUNNING]
        running = [a for v in running_views for a in self.core.jobs.attempts(v.job.id)[-1:] if not a.ended]
        return {"jobs": [views.job(v) for v in jobs], "more": more,
                "slots": views.slots(self.core.scheduler.usage(), running),
                "user": {"name": caller.name, "role": caller.role.value} if caller else None}

    def login_page(self, next_path: str, failed: bool = False) -> bytes:
        """login.html with the page to return to and, after a wrong token, the reason."""
        page = self.static["login.html"].decode()
        message = "That is not the live token of a user of this coordinator." if failed else ""
        return (page.replace("{{next}}", html.escape(next_path if next_path.startswith("/") else "/"))
                .replace("{{message}}", message).encode())

    def detail(self, job_id: str, view=None, caller: Caller | None = None) -> dict[str, Any]:
        """The job page's JSON, with the actions the logged-in user may take on it (the page offers only those)."""
        jobs = self.core.jobs
        view = view or jobs.get(job_id, caller)
        actions = [a.value for a in OWNER_ACTIONS if caller is None or
                   may(caller, a, view.job, private_jobs=jobs.private_jobs)]
        checkpoints = jobs.list_checkpoints(job_id, caller)
        evaluated = set()  # the checkpoints' steps with a validation point of their own
        for c in checkpoints:
            at = self.core.store.metrics(job_id, from_step=c.step, limit=1)
            if at and at[0].step == c.step and not math.isnan(at[0].val_loss):
                evaluated.add(c.step)
        return {**views.job_detail(view, jobs.attempts(job_id, caller), checkpoints, evaluated), "actions": actions}


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream must not hold up the coordinator's stop
    app: Dashboard
    open_connections = 0
    _refused_logged = 0.0

    def process_request(self, request, client_address) -> None:
        """A thread for the connection when under the cap; else a 503 (on plain HTTP) and the socket closed."""
        with _COUNT_LOCK:
            full = self.open_connections >= self.app.limits.connections
            if not full:
                self.open_connections += 1
        if full:
            self._refuse(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread could be started
            self._done()
            self.shutdown_request(request)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._done()

    def _done(self) -> None:
        with _COUNT_LOCK:
            self.open_connections -= 1

    def _refuse(self, request) -> None:
        now = time.monotonic()
        if now - self._refused_logged > 60:
            self._refused_logged = now
            log.warning("dashboard: %d connections open, the most it takes; refusing more (said once a minute)",
                        self.app.limits.connections)
        if not isinstance(request, ssl.SSLSocket):  # a TLS connection has no handshake yet: just closed
            try:
                request.setblocking(False)
                request.send(_FULL)
            except OSError:
                pass
        self.shutdown_request(request)

    def handle_error(self, request, client_address) -> None:
        # a failed TLS handshake or a peer gone mid-request: not worth a traceback on the coordinator's stderr
        log.debug("dashboard: connection from %s failed", client_address, exc_info=True)


class RunningDashboard:
    """A dashboard serving in a thread of its own: `url`, `port`, `stop()`."""

    def __init__(self, httpd: DashboardServer, url: str):
        self.httpd, self.url, self.port = httpd, url, httpd.server_address[1]
        self._thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="gradmesh-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=5)


def start_dashboard(core: Coordinator, token: str, *, host: str = "127.0.0.1", port: int = 0,
                    tls_cert: Path | None = None, tls_key: Path | None = None,
                    limits: HttpLimits = HttpLimits(), monitoring: Monitoring | None = None) -> RunningDashboard:
    """Serve the dashboard of `core` on host:port (0 = any free port), over TLS when given a certificate."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("DashboardServer", (DashboardServer,), {"address_family": family,
                                                              "request_queue_size": limits.backlog})
    try:
        httpd = server_cls((host, port), Handler)
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise OSError(f"dashboard: port {port} on {host} is already in use: choose another --http-port (0 = no "
                          "dashboard)") from None
        raise OSError(f"dashboard: cannot listen on {host}:{port}: {err.strerror or err}") from None
    scheme = "http"
    if tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls_cert), str(tls_key))
        # the handshake happens in the connection's own thread (at its first read), not in the accept loop
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        scheme = "https"
    httpd.app = Dashboard(core, token, scheme, limits, monitoring)
    shown = f"[{host}]" if ":" in host else host
    return RunningDashboard(httpd, f"{scheme}://{shown}:{httpd.server_address[1]}/")
