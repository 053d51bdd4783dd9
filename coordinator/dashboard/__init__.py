"""The web dashboard: jobs, live curves, attempts, checkpoints, logs and actions in a browser.

    from coordinator.dashboard import start_dashboard
    dash = start_dashboard(srv.core, srv.token, host="127.0.0.1", port=50052)   # tls_cert=, tls_key= for https
    print(dash.url)     # http://127.0.0.1:50052/ — log in once with the client token
    dash.stop()

`gradmesh serve` starts it next to the gRPC server (`--http-port`, default the gRPC port + 1; 0 disables).

    http.py     routing, CSRF checks, error statuses (a thin adapter over the same core objects as the gRPC
                servicer), on event_streams.py (server-sent events and the routes that stream) and
                request_io.py (request bodies, JSON answers, errors, redirects, security headers)
    session.py  the session cookie (its expiry inside, logouts kept by the store) and its CSRF token
    guard.py    the caps: connections, event streams, login attempts, the idle timeout (HttpLimits)
    app.py      the state the routes share, the HTTP(S) server, start and stop
    views.py    the core's records as the JSON the pages render
    static/     the pages (plain HTML, CSS and JavaScript, no build step) and uPlot 1.6.32 (MIT, vendored
                with its licence: the dashboard works offline)

May import: core, jobs and everything below them. Only api (the server) imports it.
"""
from coordinator.dashboard.app import RunningDashboard, start_dashboard
from coordinator.dashboard.guard import HttpLimits

__all__ = ["HttpLimits", "RunningDashboard", "start_dashboard"]
