"""The dashboard as a running thing: the state its routes share, the HTTP server, and how it starts and stops.

    dash = start_dashboard(core, token, host="127.0.0.1", port=0)    # tls_cert=, tls_key= for https
    dash.url, dash.port
    dash.stop()
"""
from __future__ import annotations

import html
import math
import logging
import socket
import ssl
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

from coordinator.core import Coordinator
from coordinator.dashboard import views
from coordinator.dashboard.http import LIST_LIMIT, ROUTES, STATIC, Handler
from coordinator.dashboard.session import Sessions
from coordinator.jobs.operations import LIST_PAGE_MAX
from coordinator.states import JobState
from coordinator.telemetry.wiring import Monitoring

log = logging.getLogger("gradmesh.dashboard")


class Dashboard:
    """What the routes share: the core, the sessions, the static files (read once, they are small)."""

    def __init__(self, core: Coordinator, token: str, scheme: str, monitoring: Monitoring | None = None):
        self.core = core
        self.monitoring = monitoring  # GET /metrics (coordinator.dashboard.metrics); None: not served
        self.sessions = Sessions(token)
        self.scheme = scheme
        self.routes = ROUTES
        self.static = {p.name: p.read_bytes() for p in STATIC.iterdir() if p.is_file()}

    def newest(self, states: list[int]) -> tuple[list, bool]:
        """Up to LIST_LIMIT jobs, newest first, in the core's pages; and whether there are more."""
        jobs, token = [], ""
        while True:
            page, token = self.core.jobs.list(states, LIST_PAGE_MAX, token)
            jobs += page
            if not token or len(jobs) >= LIST_LIMIT:
                return jobs[:LIST_LIMIT], bool(token) or len(jobs) > LIST_LIMIT

    def listing(self, states: list[int]) -> dict[str, Any]:
        jobs, more = self.newest(states)
        if states and int(JobState.RUNNING) not in states:
            running_views = self.newest([int(JobState.RUNNING)])[0]
        else:
            running_views = [v for v in jobs if v.job.state is JobState.RUNNING]
        running = [a for v in running_views for a in self.core.jobs.attempts(v.job.id)[-1:] if not a.ended]
        return {"jobs": [views.job(v) for v in jobs], "more": more,
                "slots": views.slots(self.core.scheduler.usage(), running)}

    def login_page(self, next_path: str, failed: bool = False) -> bytes:
        """login.html with the page to return to and, after a wrong token, the reason."""
        page = self.static["login.html"].decode()
        message = "That is not this coordinator's client token." if failed else ""
        return (page.replace("{{next}}", html.escape(next_path if next_path.startswith("/") else "/"))
                .replace("{{message}}", message).encode())

    def detail(self, job_id: str, view=None) -> dict[str, Any]:
        jobs = self.core.jobs
        checkpoints = jobs.list_checkpoints(job_id)
        evaluated = set()  # the checkpoints' steps with a validation point of their own
        for c in checkpoints:
            at = self.core.store.metrics(job_id, from_step=c.step, limit=1)
            if at and at[0].step == c.step and not math.isnan(at[0].val_loss):
                evaluated.add(c.step)
        return views.job_detail(view or jobs.get(job_id), jobs.attempts(job_id), checkpoints, evaluated)


class DashboardServer(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream must not hold up the coordinator's stop
    app: Dashboard

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
                    monitoring: Monitoring | None = None) -> RunningDashboard:
    """Serve the dashboard of `core` on host:port (0 = any free port), over TLS when given a certificate."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    server_cls = type("DashboardServer", (DashboardServer,), {"address_family": family})
    try:
        httpd = server_cls((host, port), Handler)
    except OSError as err:
        raise OSError(f"dashboard: cannot listen on {host}:{port}: {err.strerror or err}") from None
    scheme = "http"
    if tls_cert is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(tls_cert), str(tls_key))
        # the handshake happens in the connection's own thread (at its first read), not in the accept loop
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True, do_handshake_on_connect=False)
        scheme = "https"
    httpd.app = Dashboard(core, token, scheme, monitoring)
    shown = f"[{host}]" if ":" in host else host
    return RunningDashboard(httpd, f"{scheme}://{shown}:{httpd.server_address[1]}/")
