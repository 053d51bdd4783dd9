"""Notifier: a signed JSON POST to each `--notify-url` when a job ends, fails or is restarted, or a host is
quarantined; retried with backoff on a thread per URL, so the coordinator never waits for a receiver.

    notifier = Notifier(["https://hooks.example/gradmesh"], secret)
    tail.listen(notifier.on_event)       # coordinator.telemetry.tail events
    notifier.stop()

Each POST carries
    Content-Type: application/json
    X-Gradmesh-Event: job.failed          (job.succeeded, job.failed, job.cancelled, job.restarted, host.quarantined)
    X-Gradmesh-Delivery: <32 hex digits>  the same on every retry of one notification: a receiver can drop repeats
    X-Gradmesh-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>
A receiver recomputes the HMAC over the timestamp, a dot and the raw body, compares in constant time, and
refuses old timestamps (replays): `verify` below is that check, and docs/monitoring.md shows it standalone.

Delivery: a 2xx answer is delivered; a connection error, a timeout, 408, 429 or 5xx is retried after
backoff_s·2^k (at most max_backoff_s) up to max_tries; any other answer is a failure not retried. Each URL's
queue holds at most `queue_size` notifications; beyond that the oldest is dropped, with a warning.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import secrets
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any, Callable, Sequence
from urllib.parse import urlsplit

from coordinator.telemetry.collector import job_labels
from coordinator.telemetry.tail import HOST_QUARANTINED, Event

log = logging.getLogger("gradmesh.notify")

SIGNATURE_HEADER = "X-Gradmesh-Signature"
EVENT_HEADER = "X-Gradmesh-Event"
DELIVERY_HEADER = "X-Gradmesh-Delivery"
NOTIFIED = frozenset({"job.succeeded", "job.failed", "job.cancelled", "job.restarted", HOST_QUARANTINED})
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
MAX_MESSAGE = 2000


def check_url(url: str) -> str:
    """`url` if it is an http(s) URL with a host; ValueError saying what is wrong otherwise."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"--notify-url {url[:200]!r}: give an http:// or https:// URL with a host")
    return url


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    """The X-Gradmesh-Signature value for `body` sent at `timestamp`."""
    mac = hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def verify(secret: bytes, header: str, body: bytes, *, tolerance_s: float = 300.0, now: float | None = None) -> bool:
    """A receiver's check: the signature matches `body` and was made within `tolerance_s` of now."""
    fields = dict(part.split("=", 1) for part in header.split(",") if "=" in part)
    try:
        timestamp = int(fields.get("t", ""))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = sign(secret, timestamp, body).rpartition("v1=")[2]
    return hmac.compare_digest(expected, fields.get("v1", ""))


def payload(event: Event) -> dict[str, Any]:
    """The JSON body of an event's notification."""
    body: dict[str, Any] = {"event": event.kind, "time": event.time}
    if event.host:
        body["host"] = event.detail
        return body
    t, job, a = event.transition, event.job, event.attempt
    body["job"] = {"id": t.job_id, "state": t.state.name, "message": t.message[:MAX_MESSAGE], "attempt": t.attempt}
    if job is not None:
        _, user, sweep = job_labels(job)
        body["job"].update(name=job.name, labels=job.labels, user=user, sweep=sweep, step=job.step,
                           total_steps=job.total_steps, restarts=job.restarts, created=job.created,
                           started=job.started, ended=job.ended)
    if a is not None:
        failure = None
        if a.failure is not None:
            f = a.failure
            failure = {"cause": f.cause.name, "rank": f.rank, "host": f.host, "step": f.step,
                       "message": f.message[:MAX_MESSAGE]}
        body["attempt"] = {"attempt": a.attempt, "hosts": a.hosts, "outcome": a.outcome, "exit_code": a.exit_code,
                           "failure": failure}
    return body


@dataclass(frozen=True)
class _Notification:
    delivery: str
    kind: str
    body: bytes


class Notifier:
    def __init__(self, urls: Sequence[str], secret: bytes, *, timeout_s: float = 5.0, max_tries: int = 8,
                 backoff_s: float = 1.0, max_backoff_s: float = 300.0, queue_size: int = 1000,
                 on_outcome: Callable[[str], None] | None = None):
        self.secret = secret
        self.timeout_s = timeout_s
        self.max_tries = max_tries
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.on_outcome = on_outcome or (lambda outcome: None)   # "delivered", "failed", "dropped"
        self._stop = threading.Event()
        self._queues = {url: queue.Queue(maxsize=queue_size) for url in map(check_url, urls)}
        self._threads = [threading.Thread(target=self._deliver_all, args=(url, q), name="gradmesh-notify",
                                          daemon=True) for url, q in self._queues.items()]
        for thread in self._threads:
            thread.start()

    def on_event(self, event: Event) -> None:
        if event.kind in NOTIFIED:
            self.notify(event.kind, payload(event))

    def notify(self, kind: str, body: dict[str, Any]) -> None:
        """Queue a notification for every URL; never blocks (a full queue drops its oldest)."""
        note = _Notification(secrets.token_hex(16), kind, json.dumps(body, sort_keys=True).encode())
        for url, q in self._queues.items():
            while True:
                try:
                    q.put_nowait(note)
                    break
                except queue.Full:
                    try:
                        q.get_nowait()
                        log.warning("notifications to %s: the queue is full; the oldest is dropped", url)
                        self.on_outcome("dropped")
                    except queue.Empty:
                        pass

    def pending(self) -> int:
        return sum(q.qsize() for q in self._queues.values())

    def stop(self, timeout: float = 2.0) -> None:
        """Stop retrying; what is still queued is not sent (the threads are daemons)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=timeout)

    def _deliver_all(self, url: str, q: "queue.Queue[_Notification]") -> None:
        while not self._stop.is_set():
            try:
                note = q.get(timeout=0.2)
            except queue.Empty:
                continue
            outcome = self._deliver(url, note)
            self.on_outcome(outcome)

    def _deliver(self, url: str, note: _Notification) -> str:
        for attempt in range(self.max_tries):
            if attempt:
                delay = min(self.max_backoff_s, self.backoff_s * 2 ** (attempt - 1))
                if self._stop.wait(delay):
                    return "failed"
            retry, why = self._post(url, note)
            if why is None:
                return "delivered"
            if not retry:
                log.warning("notification %s to %s refused: %s; not retried", note.kind, url, why)
                return "failed"
            log.info("notification %s to %s: %s; retry %d of %d", note.kind, url, why, attempt + 1,
                     self.max_tries - 1)
        log.warning("notification %s to %s not delivered after %d tries", note.kind, url, self.max_tries)
        return "failed"

    def _post(self, url: str, note: _Notification) -> tuple[bool, str | None]:
        """(retry?, None when delivered else why not)."""
        headers = {"Content-Type": "application/json", "User-Agent": "gradmesh-notify", EVENT_HEADER: note.kind,
                   DELIVERY_HEADER: note.delivery, SIGNATURE_HEADER: sign(self.secret, int(time.time()), note.body)}
        request = urllib.request.Request(url, data=note.body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read(1 << 16)
                return False, None
        except urllib.error.HTTPError as err:
            return err.code in RETRIED_STATUSES, f"HTTP {err.code}"
        except (urllib.error.URLError, OSError, ValueError) as err:
            return True, f"{type(err).__name__}: {getattr(err, 'reason', err)}"
