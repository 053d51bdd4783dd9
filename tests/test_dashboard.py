"""The dashboard's HTTP layer with a plain HTTP client against a real coordinator on 127.0.0.1 (its scheduler
stopped: the test plays rank 0 of a RUNNING job): the login cookie, 401 for everything but the login page,
the CSRF refusals, the error statuses, event streams resuming from Last-Event-ID, checkpoint downloads with
their sha256, TLS, and `gradmesh serve` printing the dashboard's URL."""
from __future__ import annotations

import base64
import hashlib
import http.client
import json
import math
import re
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.store.records import MetricRow
from coordinator.jobs.worker_api import ProgressReport
from helpers import cli_env, idle_server, running_job, self_signed_cert, upload_checkpoint, worker_stub

pytestmark = pytest.mark.timeout(60)


class Http:
    """A cookie-keeping HTTP(S) client for one dashboard, like a browser without a browser."""

    def __init__(self, port: int, tls: ssl.SSLContext | None = None):
        self.port, self.tls, self.cookies = port, tls, {}

    def connect(self, timeout: float = 10) -> http.client.HTTPConnection:
        if self.tls:
            return http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout, context=self.tls)
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method: str, path: str, body: str | bytes | None = None, headers: dict | None = None,
                cookies: bool = True) -> tuple[http.client.HTTPResponse, bytes]:
        conn = self.connect()
        headers = dict(headers or {})
        if cookies and self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        data = response.read()
        conn.close()
        for cookie in response.msg.get_all("Set-Cookie") or []:
            name, _, value = cookie.split(";")[0].partition("=")
            self.cookies[name] = value
        return response, data

    def login(self, token: str) -> http.client.HTTPResponse:
        response, _ = self.request("POST", "/login", f"token={token}",
                                   {"Content-Type": "application/x-www-form-urlencoded"})
        return response

    def post(self, path: str, body: dict | None = None, csrf: bool = True, origin: str | None = "same"):
        headers = {"Content-Type": "application/json"}
        if csrf:
            headers["X-CSRF-Token"] = self.cookies.get("gradmesh_csrf", "")
        if origin:
            headers["Origin"] = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}" if origin == "same" else origin
        response, data = self.request("POST", path, json.dumps(body or {}), headers)
        return response.status, json.loads(data or b"{}")

    def events(self, path: str, last_event_id: str | None = None) -> "Events":
        conn = self.connect()
        headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items()), "Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        assert response.status == 200, response.read()
        return Events(conn, response)


class Events:
    """Reads server-sent events: next() → (event, id, data)."""

    def __init__(self, conn, response):
        self.conn, self.response = conn, response

    def next(self) -> tuple[str, str | None, object]:
        event, event_id, data = "message", None, []
        while True:
            line = self.response.fp.readline().decode().rstrip("\n")
            if line == "":
                if data:
                    return event, event_id, json.loads("\n".join(data))
                event, event_id, data = "message", None, []
            elif line.startswith("event: "):
                event = line[7:]
            elif line.startswith("id: "):
                event_id = line[4:]
            elif line.startswith("data: "):
                data.append(line[6:])

    def until(self, wanted: str):
        while True:
            event = self.next()
            if event[0] == wanted:
                return event

    def close(self) -> None:
        self.conn.close()


def report(srv, job_id, token, *steps, val_every=10):
    points = [MetricRow(step=s, epoch=0, train_loss=1.0 / s, val_loss=2.0 / s if s % val_every == 0 else math.nan,
                        val_accuracy=0.5 if s % val_every == 0 else math.nan, samples_per_second=900.0, lr=0.01,
                        time_unix=time.time(), attempt=1) for s in steps]
    srv.core.workers.report_progress(job_id, token, ProgressReport(attempt=1, points=points, step=steps[-1],
                                                                   total_steps=1000))


@pytest.fixture
def dash(start_coordinator):
    srv = idle_server(start_coordinator, http_port=0)
    running_job(srv)
    return srv


def test_nothing_but_the_login_page_answers_without_the_session(dash):
    web = Http(dash.dashboard.port)
    closed = [("GET", p) for p in ("/", "/jobs/w1", "/static/job.js", "/static/uPlot.iife.min.js", "/api/jobs",
                                   "/api/jobs/stream", "/api/jobs/w1", "/api/jobs/w1/events", "/api/jobs/w1/log",
                                   "/api/jobs/w1/checkpoints/10", "/api/jobs/nope", "/no/such/page")]
    closed += [("POST", p) for p in ("/api/jobs/w1/cancel", "/api/jobs/w1/resume", "/logout", "/api/jobs")]
    for method, path in closed:
        response, _ = web.request(method, path)
        assert response.status == 401, (method, path, response.status)
    response, body = web.request("GET", "/login")
    assert response.status == 200 and b'name="token"' in body
    response, body = web.request("GET", "/jobs/w1", headers={"Accept": "text/html"})
    assert response.status == 401 and b'name="token"' in body and b'value="/jobs/w1"' in body  # log in, come back

    assert web.login("wrong-token").getheader("Location").startswith("/login?failed=1") and not web.cookies
    web.cookies = {"gradmesh_session": "0" * 32 + "." + "0" * 64}  # forged
    assert web.request("GET", "/api/jobs")[0].status == 401

    web.cookies = {}
    response = web.login(dash.token)
    assert response.status == 303 and response.getheader("Location") == "/"
    session = next(c for c in response.msg.get_all("Set-Cookie") if c.startswith("gradmesh_session="))
    assert "HttpOnly" in session and "SameSite=Strict" in session and "Secure" not in session
    assert web.request("GET", "/api/jobs")[0].status == 200


def test_posts_need_the_csrf_token_and_this_origin(dash):
    web = Http(dash.dashboard.port)
    web.login(dash.token)
    assert web.post("/api/jobs/w1/cancel", csrf=False)[0] == 403
    assert web.post("/api/jobs/w1/cancel", origin="http://127.0.0.1:1")[0] == 403  # same site, other origin
    assert web.post("/api/jobs/w1/cancel", origin="null")[0] == 403
    assert dash.core.jobs.get("w1").job.cancel_requested is False  # refused before the core
    # a login form posted from elsewhere must not log the browser in either
    response, _ = Http(dash.dashboard.port).request("POST", "/login", f"token={dash.token}",
                                                     {"Origin": "http://evil.example"})
    assert response.status == 403
    status, job = web.post("/api/jobs/w1/cancel", {"checkpoint": True})
    assert status == 200 and job["id"] == "w1" and job["cancel_requested"] is True


def test_core_errors_map_to_http_statuses(dash):
    web = Http(dash.dashboard.port)
    web.login(dash.token)
    response, body = web.request("GET", "/api/jobs/nope")
    assert response.status == 404 and json.loads(body)["kind"] == "job"
    response, body = web.request("GET", "/api/jobs?state=DONE")
    assert response.status == 400 and json.loads(body)["field"] == "state"
    status, body = web.post("/api/jobs/w1/resume")
    assert status == 409 and "only a FAILED or CANCELLED job" in body["error"]
    response, body = web.request("GET", "/api/jobs/w1/checkpoints/7")
    assert response.status == 404 and json.loads(body)["kind"] == "checkpoint"


def test_job_listing_shows_slots_in_use(dash):
    web = Http(dash.dashboard.port)
    web.login(dash.token)
    report(dash, "w1", "token-w1", 10)
    listing = json.loads(web.request("GET", "/api/jobs?state=RUNNING")[1])
    job = listing["jobs"][0]
    assert (job["id"], job["state"], job["step"], job["total_steps"]) == ("w1", "RUNNING", 10, 1000)
    assert job["best"]["val_accuracy"] == 0.5
    assert listing["slots"] == [{"host": "localhost", "slots": 2, "in_use": 0,  # the test's job holds no slots
                                 "jobs": [{"job": "w1", "slots": 1}]}]
    assert json.loads(web.request("GET", "/api/jobs?state=SUCCEEDED")[1])["jobs"] == []


def test_job_events_resume_after_the_last_event_id(dash):
    web = Http(dash.dashboard.port)
    web.login(dash.token)
    report(dash, "w1", "token-w1", *range(1, 31))
    stream = web.events("/api/jobs/w1/events")
    event, event_id, points = stream.until("metrics")
    assert event_id == "30" and [p["step"] for p in points] == list(range(1, 31))
    assert points[0]["val_loss"] is None and points[9]["val_loss"] == pytest.approx(0.2)  # NaN travels as null
    assert stream.next()[0] == "snapshot"
    report(dash, "w1", "token-w1", 31)
    assert stream.until("metric")[1:] == ("31", {**stream_point(31)})
    stream.close()

    again = web.events("/api/jobs/w1/events", last_event_id="20")  # a reconnect after step 20
    event, event_id, points = again.until("metrics")
    assert [p["step"] for p in points] == list(range(21, 32)) and event_id == "31"
    again.close()


def stream_point(step):
    return {"step": step, "epoch": 0, "train_loss": pytest.approx(1.0 / step), "val_loss": None, "val_accuracy": None,
            "samples_per_second": 900.0, "lr": 0.01, "time": pytest.approx(time.time(), abs=30), "attempt": 1}


def test_log_stream_and_checkpoint_download(dash):
    import grpc
    web = Http(dash.dashboard.port)
    web.login(dash.token)
    log_path = Path(dash.store.attempt("w1", 1).log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as f:
        f.write("rank 0: hello from the worker\n")
    log = web.events("/api/jobs/w1/log")
    assert "hello from the worker" in log.until("log")[2]["text"]
    log.close()

    payload = bytes(range(256)) * 5000
    with grpc.insecure_channel(dash.address) as ch:
        upload_checkpoint(worker_stub(ch, "token-w1"), "w1", 10, payload, val_loss=0.5)
    response, body = web.request("GET", "/api/jobs/w1/checkpoints/10")
    assert response.status == 200 and body == payload
    assert response.getheader("X-Checksum-Sha256") == hashlib.sha256(payload).hexdigest()
    assert response.getheader("Repr-Digest") == f"sha-256=:{base64.b64encode(hashlib.sha256(payload).digest()).decode()}:"
    assert "attachment" in response.getheader("Content-Disposition")
    detail = json.loads(web.request("GET", "/api/jobs/w1")[1])
    assert [(c["step"], c["sha256"], c["size"]) for c in detail["checkpoints"]] == [
        (10, hashlib.sha256(payload).hexdigest(), len(payload))]
    assert detail["attempt_list"][0]["ranks"] == 1 and detail["spec"]["train"]["steps"] == 40


def test_dashboard_over_tls(start_coordinator, tmp_path):
    cert, key = self_signed_cert(tmp_path)
    srv = start_coordinator(http_port=0, tls_cert=cert, tls_key=key)
    assert srv.dashboard.url.startswith("https://127.0.0.1:")
    web = Http(srv.dashboard.port, tls=ssl.create_default_context(cafile=str(cert)))
    response = web.login(srv.token)
    assert response.status == 303 and all("Secure" in c for c in response.msg.get_all("Set-Cookie"))
    assert web.request("GET", "/api/jobs")[0].status == 200
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.HTTPException)):
        Http(srv.dashboard.port).request("GET", "/login")  # plain HTTP to a TLS port gets no page


def test_serve_prints_the_dashboard_url_and_stops(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--port", "0", "--slots", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=cli_env(), cwd=tmp_path)
    try:
        url = None
        for line in proc.stdout:
            match = re.search(r"web dashboard on (http://127\.0\.0\.1:(\d+)/)", line)
            if match:
                url, port = match.group(1), int(match.group(2))
                break
        assert url, "serve printed no dashboard URL"
        assert Http(port).request("GET", "/login")[0].status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
    assert proc.returncode == 0
