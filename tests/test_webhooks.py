"""`--notify-url`: signed JSON POSTs to local receivers on 127.0.0.1, from a real coordinator running a real job.

    test_a_restart_and_the_end_signed_and_retried   a digits job whose rank 0 fails in attempt 1 (GRADMESH_FAULT):
                                                    job.restarted then job.succeeded reach every receiver, the
                                                    signature checks with the secret (not with another), a
                                                    receiver answering 503 twice gets them after retries with the
                                                    same delivery id, and one that never answers delays neither
                                                    the job nor the other receivers
    test_a_quarantined_host                         two failures counted against the host: host.quarantined
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from coordinator.telemetry.webhooks import DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER, verify
from coordinator.telemetry.wiring import MonitoringOptions
from helpers import digits_toml, scaled, wait_for

pytestmark = pytest.mark.timeout(120)

SECRET = "webhook-test-secret"


class Receiver:
    """An HTTP receiver on 127.0.0.1 that records every POST. `fail_first` answers 503 that many times first;
    `hang` never answers (until closed)."""

    def __init__(self, fail_first: int = 0, hang: bool = False):
        self.received: list[tuple[dict, bytes, float]] = []   # (headers, body, monotonic time)
        self.attempts = 0
        self.released = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.attempts += 1
                if hang:
                    receiver.released.wait(60)
                    return
                if receiver.attempts <= fail_first:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                receiver.received.append((dict(self.headers), body, time.monotonic()))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def events(self) -> list[str]:
        return [json.loads(body)["event"] for _, body, _ in self.received]

    def close(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(**kwargs) -> Receiver:
        made.append(Receiver(**kwargs))
        return made[-1]
    yield make
    for r in made:
        r.close()


def test_a_restart_and_the_end_signed_and_retried(start_coordinator, receivers, monkeypatch):
    good, flaky, dead = receivers(), receivers(fail_first=2), receivers(hang=True)
    monkeypatch.setenv("GRADMESH_FAULT", "raise:rank=0:step=15:attempt=1")  # inherited by the job's ranks
    srv = start_coordinator(slots=2, monitoring=MonitoringOptions(
        notify_urls=(dead.url, good.url, flaky.url), notify_secret=SECRET))
    spec = digits_toml("hooked", steps=60, workers=1, max_restarts=2, backoff_s=0.1)
    job_id = srv.core.jobs.submit(spec, job_id="hooked", labels={"sweep": "s1"})[0].job.id
    wait_for(lambda: srv.core.jobs.get(job_id).job.state.is_terminal(), scaled(90), "the job to end")
    ended_at = time.monotonic()
    job = srv.core.jobs.get(job_id).job
    assert job.restarts == 1, job.message

    wait_for(lambda: good.events() == ["job.restarted", "job.succeeded"], scaled(30),
             "both notifications at the good URL")
    # the receiver that never answers held up neither the job nor this one
    assert good.received[-1][2] - ended_at < scaled(5.0)
    for headers, body, _ in good.received:
        assert verify(SECRET.encode(), headers[SIGNATURE_HEADER], body)
        assert not verify(b"another secret", headers[SIGNATURE_HEADER], body)
        assert not verify(SECRET.encode(), headers[SIGNATURE_HEADER], body + b" ")
        assert headers["Content-Type"] == "application/json"
        assert headers[EVENT_HEADER] == json.loads(body)["event"]
    restarted, succeeded = (json.loads(body) for _, body, _ in good.received)
    assert restarted["job"]["id"] == job_id and restarted["job"]["sweep"] == "s1"
    assert restarted["attempt"]["attempt"] == 1 and restarted["attempt"]["failure"]["cause"] == "RANK_ERROR"
    assert restarted["attempt"]["failure"]["rank"] == 0
    assert succeeded["job"]["state"] == "SUCCEEDED" and succeeded["job"]["step"] == 60

    # 503, 503, then delivered: the same notification (delivery id) after two retries with backoff
    wait_for(lambda: flaky.events() == ["job.restarted", "job.succeeded"], scaled(30), "the retried deliveries")
    assert flaky.attempts == 4
    by_id = {h[DELIVERY_HEADER] for h, _, _ in good.received}
    assert {h[DELIVERY_HEADER] for h, _, _ in flaky.received} == by_id
    assert dead.attempts >= 1 and not dead.received

    # the same story in /metrics' counters
    counted = {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
               for line in srv.monitoring.telemetry.exposition().decode().splitlines() if not line.startswith("#")}
    assert counted["gradmesh_attempts_started_total"] == 2 and counted["gradmesh_restarts_total"] == 1
    assert counted['gradmesh_attempts_ended_total{cause="succeeded"}'] == 1
    assert sum(v for k, v in counted.items() if k.startswith("gradmesh_attempts_ended_total")) == 2
    assert counted['gradmesh_notifications_total{outcome="delivered"}'] >= 4  # good and flaky, two each

    started = time.monotonic()
    for _ in range(2000):  # queuing never waits for a receiver, even one that never answers
        srv.monitoring.notifier.notify("job.test", {"n": 1})
    assert time.monotonic() - started < 2.0


def test_a_quarantined_host(start_coordinator, receivers):
    good = receivers()
    srv = start_coordinator(slots=2, monitoring=MonitoringOptions(notify_urls=(good.url,), notify_secret=SECRET))
    health = srv.core.fleet.health
    for _ in range(health.threshold):
        health.failed("localhost", "rank 0 (pid 1) on localhost ended: Killed (signal 9)")
    srv.core.signal.changed()  # as the fleet does after counting a failure
    wait_for(lambda: good.events() == ["host.quarantined"], 30, "the quarantine notification")
    headers, body, _ = good.received[0]
    assert verify(SECRET.encode(), headers[SIGNATURE_HEADER], body)
    host = json.loads(body)["host"]
    assert host["host"] == "localhost" and host["failures"] == health.threshold and host["returns_at"] > time.time()


def test_a_bad_notify_url_is_a_usage_error(tmp_path):
    from helpers import run_cli
    done = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--port", "0", "--notify-url", "ftp://example/x")
    assert done.returncode == 2
    assert done.stderr.strip() == "gradmesh: serve: --notify-url 'ftp://example/x': give an http:// or https:// URL " \
                                  "with a host"
