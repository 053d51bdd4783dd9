"""The dashboard's server-sent event streams: the stream itself, and the three routes that answer with one.

Kept apart from the routing (coordinator.dashboard.http) because a stream is a response that never ends:
it has no length (its connection closes with it), writes a heartbeat comment when idle so that a closed
page is noticed (PageGone), and resumes where the page left off (Last-Event-ID, or ?from_step=). The routes:
the jobs list (a "jobs" event whenever it changes, at most every LIST_MIN_INTERVAL), a job's events (its
metric history in pages, then WatchJob's snapshot, points and state changes) and its log, followed.

Streams are capped in all and per session (coordinator.dashboard.guard.HttpLimits; over the cap: 429 before
the stream starts), and `HEAD` on a stream answers its headers only.
"""
from __future__ import annotations

import json
import select
import socket
import ssl
import time
from typing import Any, Callable

from coordinator.dashboard import views
from coordinator.dashboard.request_io import SECURITY_HEADERS, PageGone, Refused, RequestIO
from coordinator.errors import GradmeshError, InvalidArgument

LIST_MIN_INTERVAL = 0.25  # a busy coordinator re-sends the list at most this often to each open page
HEARTBEAT_S = 15.0        # an idle event stream writes a comment this often, which finds closed pages


class EventStreams(RequestIO):
    caller = None   # the logged-in user (coordinator.access.roles.Caller), set by the handler's dispatch

    def _events_start(self) -> Callable[[], bool]:
        """Send the headers of an event stream; returns `alive`, which writes a heartbeat comment now and
        then and answers False once the page has gone (so a stream waiting for events notices). Refused (429)
        when this session or the dashboard has as many streams open as it takes; `_stream_done` gives it back."""
        key = self.nonce or ""
        if self.command != "HEAD":
            if not self.server.app.streams.enter(key):
                raise Refused(429, "too many open event streams (close some pages, or wait)",
                              (("Retry-After", "5"),))
            self._stream_key = key
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")  # the stream has no length: it ends with the connection
        for key, value in SECURITY_HEADERS.items():
            self.send_header(key, value)
        self.end_headers()
        self.close_connection = True
        if self.command == "HEAD":
            raise PageGone  # the headers are the whole answer
        self._wrote = time.monotonic()
        self._write(b"retry: 1000\n\n")  # reconnect after a second, not the browser's default three

        def alive() -> bool:
            if self._peer_closed():  # a page closed or reloaded: its place under the caps is free at once
                return False
            if time.monotonic() - self._wrote < HEARTBEAT_S:
                return True
            try:
                self._write(b": heartbeat\n\n")
                return True
            except PageGone:
                return False
        return alive

    def _peer_closed(self) -> bool:
        """Whether the page has closed the connection: a browser sends nothing more on an event stream, so the
        socket turning readable means its end (an EOF, or TLS's close_notify)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            if not readable:
                return False
            if isinstance(self.connection, ssl.SSLSocket):
                return True
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except (OSError, ValueError):
            return True

    def _stream_done(self) -> None:
        """Give back the stream's place under the caps (after the route returned, however it ended)."""
        key = getattr(self, "_stream_key", None)
        if key is not None:
            self._stream_key = None
            self.server.app.streams.leave(key)

    def _write(self, data: bytes) -> None:
        try:
            self.wfile.write(data)
            self.wfile.flush()
        except (OSError, ssl.SSLError):
            raise PageGone from None
        self._wrote = time.monotonic()

    def _event(self, event: str, data: Any, event_id: int | None = None) -> None:
        head = f"id: {event_id}\n" if event_id is not None else ""
        self._write(f"{head}event: {event}\ndata: {json.dumps(data)}\n\n".encode())

    def _events_from_step(self) -> int:
        last = self.headers.get("Last-Event-ID", "")
        if last.isascii() and last.isdigit() and len(last) <= 18:
            return int(last) + 1
        return _int(self.query.get("from_step", ["0"])[0], "from_step")

    # ------------------------------------------------------------------ the routes that answer with a stream

    def jobs_stream(self) -> None:
        app, states = self.server.app, self._job_states()
        app.listing(states, self.caller)  # a bad filter (or a refusal) is an error before the stream starts
        alive = self._events_start()
        sent, seen = None, None
        while alive() and not app.core.signal.closed:
            version = app.core.signal.version
            if version != seen:  # every visible write bumps the version: nothing else can change the list
                began, seen = time.monotonic(), version
                listing = app.listing(states, self.caller)
                if listing != sent:
                    self._event("jobs", listing)
                    sent = listing
                # coalesce a burst of reports into one list
                time.sleep(max(0.0, LIST_MIN_INTERVAL - (time.monotonic() - began)))
            app.core.signal.wait(version, 1.0)

    def job_events(self, job_id: str) -> None:
        app = self.server.app
        from_step = self._events_from_step()
        page, token = app.core.jobs.metrics(job_id, from_step, caller=self.caller)  # NotFound, ... before the stream
        alive = self._events_start()
        # The history in pages (one event each, not one per point), then WatchJob's own stream from the step
        # after it: snapshot, the points since, live points and state changes, ending on the terminal state.
        while page:
            self._event("metrics", [views.metric(m) for m in page], page[-1].step)
            from_step = page[-1].step + 1
            if not token:
                break
            page, token = app.core.jobs.metrics(job_id, page_token=token, caller=self.caller)
        try:
            for kind, value in app.core.streams.watch(job_id, from_step, is_active=alive):
                if kind == "snapshot":
                    self._event("snapshot", app.detail(job_id, value, self.caller))
                elif kind == "metric":
                    self._event("metric", views.metric(value), value.step)
                else:
                    self._event("state", {**views.transition(value), "job": app.detail(job_id, caller=self.caller)})
        except GradmeshError as err:  # e.g. UNAVAILABLE at shutdown: the headers are gone, say it as an event
            self._event("failure", {"error": str(err), "code": err.code})

    def job_log(self, job_id: str) -> None:
        app = self.server.app
        app.core.jobs.get(job_id, self.caller)
        alive = self._events_start()
        try:
            for attempt, data in app.core.streams.logs(job_id, follow=True, is_active=alive):
                self._event("log", {"attempt": attempt, "text": data.decode("utf-8", "replace")})
        except GradmeshError as err:
            self._event("failure", {"error": str(err), "code": err.code})
        self._event("end", {})


def _int(text: str, field: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 18):
        raise InvalidArgument(field, f"{text[:20]!r} is not a non-negative integer")
    return int(text)

