"""The dashboard's HTTP port as anyone who can reach it sees it, with raw sockets against a real coordinator:
request bodies read only as their Content-Length says (memory measured), `next` kept to this site, header
values without control characters, idle connections closed, connections and event streams capped, the
accept backlog, logout and expiry enforced on the server, login attempts rate-limited, HEAD on a stream
without a body, and no traceback in the coordinator's log from anyone without a session.

The tests that measure memory or read the log run `gradmesh serve` in a process of its own; the others a
coordinator in this process with small caps (HttpLimits) so that they take seconds. Waits are multiples of
the configured idle timeout, never fixed seconds of their own.
"""
from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from coordinator.dashboard import HttpLimits
from dashboard_http import dashboard_get, dashboard_login
from helpers import cli_env, idle_server, running_job, wait_for

pytestmark = pytest.mark.timeout(180)
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")


# ---------------------------------------------------------------- raw HTTP

def raw(port: int, data: bytes, timeout: float = 30.0) -> tuple[bytes, bool]:
    """Send `data` on a new connection; returns (everything the server sent, whether it closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return _read_until_closed(sock, timeout)


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    got, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return got, False
        except ConnectionResetError:
            return got, True
        if not chunk:
            return got, True
        got += chunk
    return got, False


def statuses(answer: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"^HTTP/1\.[01] (\d{3}) ", answer, re.MULTILINE)]


def header_block(answer: bytes) -> bytes:
    return answer.split(b"\r\n\r\n", 1)[0]


# ---------------------------------------------------------------- `gradmesh serve` in a process of its own

@contextmanager
def serving(tmp_path: Path, *extra: str) -> Iterator[tuple[subprocess.Popen, int, str, Path]]:
    """`gradmesh serve` with its dashboard: (process, dashboard port, token, file of its stderr)."""
    data_dir, out, err = tmp_path / "d", tmp_path / "serve.out", tmp_path / "serve.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(data_dir),
                                 "--port", "0", "--slots", "1", *extra], stdout=stdout, stderr=stderr,
                                env=cli_env(), cwd=tmp_path)
    try:
        found = wait_for(lambda: re.search(r"web dashboard on http://127\.0\.0\.1:(\d+)/", out.read_text()), 60,
                         "serve to print its dashboard's URL")
        yield proc, int(found.group(1)), (data_dir / "token").read_text().strip(), err
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------- 1. bodies

LOGIN = b"POST /login HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n"


def test_a_body_is_read_only_as_its_content_length_says(tmp_path):
    with serving(tmp_path) as (proc, port, token, _):
        cases = {
            b"Content-Length: -1\r\n": 400, b"Content-Length: abc\r\n": 400, b"Content-Length: \xc2\xb2\r\n": 400,
            b"": 411, b"Content-Length: 99999999999\r\n": 413, b"Content-Length: 5\r\nContent-Length: 6\r\n": 400,
            b"Transfer-Encoding: chunked\r\n": 411,
        }
        for head, status in cases.items():
            # what follows the headers would be a second request if it were read as one
            answer, closed = raw(port, LOGIN + head + b"\r\n0\r\n\r\nGET /login HTTP/1.1\r\nHost: x\r\n\r\n")
            assert statuses(answer) == [status] and closed, (head, answer[:300])

        # One connection streaming 64 MiB behind "Content-Length: -1" (before: all of it read into memory).
        before = rss_bytes(proc.pid)
        sent = 0
        with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
            sock.sendall(LOGIN + b"Content-Length: -1\r\n\r\n")
            block = b"t" * (1 << 20)
            try:
                while sent < 64 << 20:
                    sock.sendall(block)
                    sent += len(block)
            except OSError:
                pass  # the server closed the connection: what we wanted
            answer, _ = _read_until_closed(sock, 10)
        grown = rss_bytes(proc.pid) - before
        print(f"sent {sent >> 20} MiB behind Content-Length: -1; the coordinator grew {grown / 2**20:.1f} MiB")
        assert grown < 16 << 20, grown
        # a body of the size it announces is read and answered
        response = _post_login(port, "token=" + token)
        assert response.status == 303


def _post_login(port: int, body: str, headers: dict | None = None) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/login", body=body, headers={"Content-Type": "application/x-www-form-urlencoded",
                                                        **(headers or {})})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


# ---------------------------------------------------------------- 2. next, header values

@pytest.fixture
def dash(start_coordinator):
    srv = idle_server(start_coordinator, http_port=0,
                      http_limits=HttpLimits(connections=24, idle_timeout_s=1.5, event_streams=4,
                                             streams_per_session=3, login_burst=5, login_per_s=2.0))
    running_job(srv)
    return srv


@pytest.mark.parametrize("nxt, expected", [
    ("/jobs/w1?state=RUNNING", "/jobs/w1?state=RUNNING"), ("/\\evil.example/x", "/"), ("//evil.example/x", "/"),
    ("https://evil.example/", "/"), ("/x\r\nSet-Cookie: stolen=1", "/"), ("/x\nLocation: //evil", "/"),
    ("/\x00x", "/"), ("/\u00e9", "/"), ("javascript:alert(1)", "/")])
def test_login_returns_only_to_a_path_of_this_site(dash, nxt, expected):
    from urllib.parse import quote
    port = dash.dashboard.port
    answer, _ = raw(port, LOGIN + f"Content-Length: {len(body := f'token={dash.token}&next={quote(nxt)}')}\r\n"
                                  f"Connection: close\r\n\r\n{body}".encode())
    head = header_block(answer)
    assert statuses(answer) == [303], answer[:300]
    assert re.search(rb"^Location: (.*)$", head, re.MULTILINE).group(1).decode().rstrip("\r") == expected
    assert not CONTROL.search(head.replace(b"\r\n", b"")) and b"stolen" not in head
    # a wrong token sends back to the login page with the same (cleaned) next, and the page shows it escaped
    wrong = _post_login(port, f"token=nope&next={quote(nxt)}")
    assert wrong.status == 303 and "\r" not in wrong.getheader("Location") and "evil" not in wrong.getheader("Location")
    status, page = dashboard_get(port, f"/login?next={quote(nxt)}", {})
    assert status == 200 and b"evil" not in page and b"stolen" not in page


# ---------------------------------------------------------------- 3. connections: idle, capped, backlog

def test_idle_connections_are_closed_and_capped(dash):
    port, limits = dash.dashboard.port, dash.dashboard.httpd.app.limits
    threads_before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(limits.connections)]
    try:
        wait_for(lambda: dash.dashboard.httpd.open_connections == limits.connections, 30,
                 "the server to take the idle connections")
        answer, closed = raw(port, b"GET /login HTTP/1.1\r\nHost: x\r\n\r\n")
        assert statuses(answer) == [503] and closed, answer[:200]
        # nothing arrives on them: the server closes each after the idle timeout (gRPC does the same at 60 s)
        started = time.monotonic()
        for sock in idle:
            data, closed = _read_until_closed(sock, 20 * limits.idle_timeout_s)
            assert closed and data == b"", data[:200]
        took = time.monotonic() - started
        assert took >= limits.idle_timeout_s * 0.9, took
    finally:
        for sock in idle:
            sock.close()
    wait_for(lambda: dash.dashboard.httpd.open_connections == 0, 30, "the connections to be counted out")
    assert dash.dashboard.httpd.open_connections == 0
    wait_for(lambda: threading.active_count() <= threads_before + 2, 30, "the connection threads to end")
    status, _ = dashboard_get(port, "/login", {})
    assert status == 200  # serving again

    # a connection that sends half a request and stops is closed too
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET /login HTTP/1.1\r\nHost: x\r\n")
        _, closed = _read_until_closed(sock, 20 * limits.idle_timeout_s)
        assert closed


def test_the_accept_backlog_is_not_five(dash):
    if not shutil.which("ss"):
        pytest.skip("ss (iproute2) is needed to read a listening socket's backlog")
    port = dash.dashboard.port
    listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10).stdout
    backlog = int(listing.split()[2])  # Send-Q of a listening socket: its backlog
    assert backlog == HttpLimits().backlog == 128, listing


# ---------------------------------------------------------------- 4. event streams

def _open_stream(port: int, session: dict, path: str = "/api/jobs/w1/events", method: str = "GET"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request(method, path, headers={**session, "Accept": "text/event-stream"})
    return conn, conn.getresponse()


def test_event_streams_are_capped_per_session_and_in_all(dash):
    port, limits = dash.dashboard.port, dash.dashboard.httpd.app.limits
    one, two = dashboard_login(port, dash.token), dashboard_login(port, dash.token)
    held = []
    for _ in range(limits.streams_per_session):
        conn, response = _open_stream(port, one)
        assert response.status == 200
        held.append((conn, response))
    conn, response = _open_stream(port, one, "/api/jobs/stream")
    assert response.status == 429 and json.loads(response.read())["code"] == "TOO_MANY_REQUESTS"
    assert response.getheader("Retry-After")
    conn.close()
    for _ in range(limits.event_streams - limits.streams_per_session):  # another login fills the rest
        conn, response = _open_stream(port, two)
        assert response.status == 200
        held.append((conn, response))
    conn, response = _open_stream(port, two)
    assert response.status == 429
    conn.close()
    assert dashboard_get(port, "/api/jobs", two)[0] == 200  # plain requests still get in
    for part in held.pop():
        part.close()
    # the server notices the closed page at its next write (a heartbeat at the latest): a place is free again
    wait_for(lambda: dash.dashboard.httpd.app.streams.count < limits.event_streams, 60, "the stream to be given back")
    conn, response = _open_stream(port, two)
    assert response.status == 200
    held.append((conn, response))
    for pair in held:
        for part in pair:
            part.close()
    # a page reloaded again and again: each reload closes its stream, whose place is free at once (not at the
    # next heartbeat), so a session never runs into its cap by reloading
    wait_for(lambda: dash.dashboard.httpd.app.streams.count == 0, 30, "the closed streams to be given back")
    for _ in range(3 * limits.streams_per_session):
        conn, response = _open_stream(port, one, "/api/jobs/stream")
        assert response.status == 200
        response.close()
        conn.close()
        wait_for(lambda: dash.dashboard.httpd.app.streams.count == 0, 10, "the reloaded page's stream to end")


def test_head_on_an_event_stream_or_a_download_sends_no_body(dash):
    port = dash.dashboard.port
    session = dashboard_login(port, dash.token)
    cookie = session["Cookie"].encode()
    for path in (b"/api/jobs/w1/events", b"/api/jobs/stream", b"/api/jobs/w1/log"):
        answer, closed = raw(port, b"HEAD " + path + b" HTTP/1.1\r\nHost: x\r\nCookie: " + cookie + b"\r\n\r\n", 30)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert statuses(answer) == [200] and b"text/event-stream" in head and body == b"" and closed, answer[:300]
    assert dash.dashboard.httpd.app.streams.count == 0  # a HEAD holds no stream


# ---------------------------------------------------------------- 5. sessions: logout, expiry, login attempts

def test_logout_revokes_the_session_on_the_server_even_after_a_restart(start_coordinator, tmp_path):
    srv = idle_server(start_coordinator, data_dir=tmp_path / "d", http_port=0)
    session = dashboard_login(srv.dashboard.port, srv.token)
    kept = dashboard_login(srv.dashboard.port, srv.token)
    assert dashboard_get(srv.dashboard.port, "/api/jobs", session)[0] == 200
    conn = http.client.HTTPConnection("127.0.0.1", srv.dashboard.port, timeout=30)
    conn.request("POST", "/logout", body=b"{}", headers={**session, "Content-Type": "application/json"})
    assert conn.getresponse().status == 204
    conn.close()
    # the browser forgets the cookie; one copied elsewhere before the logout is refused as well
    assert dashboard_get(srv.dashboard.port, "/api/jobs", session)[0] == 401
    assert dashboard_get(srv.dashboard.port, "/api/jobs", kept)[0] == 200  # another login is not touched
    srv.stop()
    again = idle_server(start_coordinator, data_dir=tmp_path / "d", http_port=0)
    assert dashboard_get(again.dashboard.port, "/api/jobs", session)[0] == 401
    assert dashboard_get(again.dashboard.port, "/api/jobs", kept)[0] == 200  # sessions survive a restart


def test_an_expired_session_is_refused_by_the_server(dash):
    """A cookie signed with the right key but past its expiry (the browser was told Max-Age; a copy is not)."""
    key = dash.token.encode()
    for expiry, status in ((int(time.time()) - 5, 401), (int(time.time()) + 600, 200)):
        user = f"admin:{hashlib.sha256(dash.token.encode()).hexdigest()[:16]}"  # the first administrator's session
        nonce = f"{expiry:x}-{'ab' * 16}:{user}"
        mac = hmac.new(key, f"session:{nonce}".encode(), hashlib.sha256).hexdigest()
        assert dashboard_get(dash.dashboard.port, "/api/jobs", {"Cookie": f"gradmesh_session={nonce}.{mac}"})[0] == status
    # and one without an expiry in it (a stateless cookie of the older release) is no session at all
    nonce = "ab" * 16
    mac = hmac.new(key, f"session:{nonce}".encode(), hashlib.sha256).hexdigest()
    assert dashboard_get(dash.dashboard.port, "/api/jobs", {"Cookie": f"gradmesh_session={nonce}.{mac}"})[0] == 401


def test_login_attempts_are_rate_limited(dash):
    port, limits = dash.dashboard.port, dash.dashboard.httpd.app.limits
    answers = [_post_login(port, "token=guess-%d" % i) for i in range(40)]
    codes = [r.status for r in answers]
    assert codes.count(303) <= limits.login_burst + 2 and codes.count(429) >= 40 - limits.login_burst - 2, codes
    retry = next(r for r in answers if r.status == 429).getheader("Retry-After")
    assert retry and int(retry) >= 1
    # the right token after the wait gets in
    time.sleep(float(retry))
    assert _post_login(port, "token=" + dash.token).status == 303


# ---------------------------------------------------------------- 6. the log of a coordinator under attack

def test_no_traceback_in_the_log_from_requests_without_a_session(tmp_path):
    attacks = [b"GET //[ HTTP/1.1\r\nHost: x\r\n\r\n", b"GET /api/jobs?" + b"a=1&" * 500 + b" HTTP/1.1\r\n\r\n",
               b"GET /login?next=%ff%fe HTTP/1.1\r\n\r\n", b"POST /login HTTP/1.1\r\nContent-Length: 1e3\r\n\r\n",
               b"POST /login HTTP/1.1\r\nContent-Length: 10\r\n\r\nx", b"\xff\xfe\xfd garbage\r\n\r\n",
               b"GET /api/jobs/w1/checkpoints/" + b"9" * 5000 + b" HTTP/1.1\r\n\r\n",
               b"GET /api/jobs HTTP/1.1\r\nCookie: gradmesh_session=" + b"\xff" * 100 + b"\r\n\r\n",
               b"GET /api/jobs HTTP/1.1\r\nLast-Event-ID: \xc2\xb2\r\n\r\n",
               b"POST /login HTTP/1.1\r\nContent-Length: 30\r\n\r\ntoken=%ff&next=%0d%0aX:%20y&a=b",
               b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 200 + b"\r\n", b"GET " + b"/a" * 40000 + b" HTTP/1.1\r\n\r\n",
               b"HEAD /api/jobs/stream HTTP/1.1\r\n\r\n", b"OPTIONS * HTTP/1.1\r\n\r\n",
               b"GET /login HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"]
    # a short idle timeout: the attacks that stop mid-request are cut off after it, not after a minute; they
    # go in side by side (well under the connection cap), so those waits overlap instead of adding up
    with serving(tmp_path, "--idle-timeout", "1") as (proc, port, token, err):
        with ThreadPoolExecutor(max_workers=len(attacks)) as pool:
            answers = list(pool.map(lambda attack: raw(port, attack, timeout=30)[0], attacks))
        for attack, answer in zip(attacks, answers):
            assert b"Traceback" not in answer
            assert all(s < 500 or s == 501 for s in statuses(answer)), (attack[:80], answer[:300])
        assert _post_login(port, "token=" + token).status == 303  # still serving
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    log = err.read_text()
    assert "Traceback" not in log, log[-3000:]
