"""The dashboard in a real browser: headless Chromium driven by Playwright against a real coordinator.

    test_a_real_job_from_login_to_cancel   a real digits job on 1 MPI rank: log in, the job is in the list, its
                                           curve gains points while it trains, a checkpoint downloads with its
                                           sha256, a cross-site POST is refused, cancel with checkpoint from the
                                           page ends it CANCELLED with a checkpoint; pages without the cookie: 401
    test_load_time_and_report_latency      200 jobs in the store: the list (its first page) loads in under 1 s; a metric report
                                           (ReportProgress over gRPC) reaches an open job page in under 1 s

Both print their figures (`-s` shows them). They skip, with the reason, where Playwright or Chromium is
missing (`.ci/run` installs Debian's chromium as root; never `playwright install` here). With
GRADMESH_SCREENSHOTS=DIR they also save the screenshots of docs/ (jobs list, job page) into DIR.
"""
from __future__ import annotations

import hashlib
import math
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coordinator.store.records import JobRow, MetricRow
from coordinator.states import JobState
from coordinator.access.tokens import hash_token
from chromium import SCREENSHOTS
from helpers import digits_toml, idle_server, running_job, scaled, wait_for, worker_stub

pytestmark = pytest.mark.timeout(90)



def log_in(browser, srv, path: str = "/"):
    """A new browser context (its own cookies) logged in through the login page, showing `path`."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(20_000)
    page = context.new_page()
    response = page.goto(srv.dashboard.url.rstrip("/") + path)
    assert response.status == (200 if path == "/login" else 401)  # elsewhere the login form is answered 401
    page.fill("#token", srv.token)
    page.click("button[type=submit]")
    page.wait_for_url(srv.dashboard.url.rstrip("/") + (path if path != "/login" else "/"))
    return context, page


class OtherSite:
    """A page on another port of 127.0.0.1 (the same *site* for SameSite, another origin) that POSTs a cancel
    to the dashboard as soon as it loads: the cross-site request forgery the dashboard must refuse."""

    def __init__(self, target: str):
        body = (f'<form id="f" method="post" action="{target}" enctype="text/plain">'
                '<input name=\'{"checkpoint": false, "x": "\' value=\'"}\'></form>'
                '<script>document.getElementById("f").submit()</script>').encode()

        class Page(BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Page)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def points_on_page(page) -> int:
    return int(page.text_content("#points"))


def test_a_real_job_from_login_to_cancel(browser, start_coordinator, tmp_path):
    srv = start_coordinator(slots=2, http_port=0)
    # keep_last high: at thousands of steps a second a checkpoint must outlive the click that downloads it
    spec = digits_toml("browser-digits", steps=200_000, workers=1, batch_size=32, eval_every=25, every_steps=1000,
                       keep_last=30)
    job_id = srv.core.jobs.submit(spec, job_id="browser-digits")[0].job.id
    base = srv.dashboard.url.rstrip("/")

    context, page = log_in(browser, srv)
    page.wait_for_selector(f'tr[data-job="{job_id}"]')  # the job is in the list
    wait_for(lambda: "RUNNING" in page.text_content(f'tr[data-job="{job_id}"]'), scaled(30),
             "the list to show it RUNNING")
    page.select_option("#filter", "SUCCEEDED")
    wait_for(lambda: page.locator(f'tr[data-job="{job_id}"]').count() == 0, 10, "the filter to hide it")
    page.select_option("#filter", "RUNNING")
    page.wait_for_selector(f'tr[data-job="{job_id}"]')

    page.click(f'tr[data-job="{job_id}"] a')
    page.wait_for_url(f"{base}/jobs/{job_id}")
    first = wait_for(lambda: points_on_page(page), 60, "the first points on the job page")
    gained = wait_for(lambda: points_on_page(page) > first and points_on_page(page), scaled(30),
                      "the curve to gain points")
    print(f"\n[dashboard] the job page's curves went from {first} to {gained} points while the job trained")
    assert page.locator("#chart-loss canvas").count() == 1

    row = page.wait_for_selector("#checkpoints tbody tr[data-step]")  # newest first (retention keeps it the longest)
    step = int(row.get_attribute("data-step"))
    shown = row.query_selector(".sha").get_attribute("title")
    recorded = {c.step: c.sha256 for c in srv.store.checkpoints(job_id)}
    assert recorded.get(step, shown) == shown  # the page shows the sha256 the coordinator recorded
    with page.expect_download() as download:
        row.query_selector("a").click()
    saved = tmp_path / "download.npz"
    download.value.save_as(saved)
    assert download.value.suggested_filename == f"{job_id}-step-{step}.npz"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == shown

    if SCREENSHOTS:
        page.wait_for_timeout(1500)  # a few more points and a log on screen
        page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-job.png"), full_page=True)

    # a cross-site POST from the same browser (its cookies): refused, and the job runs on
    evil = OtherSite(f"{base}/api/jobs/{job_id}/cancel")
    try:
        other = context.new_page()
        with other.expect_response(lambda r: r.request.method == "POST") as refused:
            other.goto(evil.url)
        assert refused.value.status in (401, 403), refused.value.status
        other.close()
    finally:
        evil.close()
    job = srv.core.jobs.get(job_id).job
    assert job.state is JobState.RUNNING and not job.cancel_requested

    # cancel with checkpoint from the page
    before = max(c.step for c in srv.store.checkpoints(job_id))
    page.on("dialog", lambda dialog: dialog.accept())
    clicked_at = time.time()
    page.click("#cancel-checkpoint")
    wait_for(lambda: srv.core.jobs.get(job_id).job.state.is_terminal(), 60, "the job to stop")
    ended = srv.core.jobs.get(job_id).job
    assert ended.state is JobState.CANCELLED, ended.message
    last = srv.store.checkpoints(job_id)[-1]
    assert last.step > before and last.created >= clicked_at  # written on the way out
    wait_for(lambda: "CANCELLED" in page.text_content("#state"), 10, "the page to show CANCELLED")
    wait_for(lambda: page.is_enabled("#resume"), 10, "resume to be offered for the cancelled job")

    # delete it from the page: back to the list, and nothing of the job is left
    assert page.is_enabled("#delete")
    page.click("#delete")
    page.wait_for_url(base + "/", timeout=10_000)
    page.wait_for_selector("#jobs tbody", state="attached")
    wait_for(lambda: page.locator(f'tr[data-job="{job_id}"]').count() == 0, 10, "the list without the job")
    assert srv.store.get_job(job_id) is None and not srv.store.checkpoints(job_id)
    assert not any((srv.data_dir / kind / job_id).exists() for kind in ("checkpoints", "logs", "runs"))
    context.close()

    # without the cookie: every page and endpoint but the login answers 401
    anonymous = browser.new_context()
    try:
        page = anonymous.new_page()
        for path in ("/", f"/jobs/{job_id}", "/static/job.js", "/static/uPlot.iife.min.js"):
            assert page.goto(base + path).status == 401, path
        api = anonymous.request
        for path in ("/api/jobs", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/events", f"/api/jobs/{job_id}/log",
                     f"/api/jobs/{job_id}/checkpoints/{last.step}", "/api/jobs/stream"):
            assert api.get(base + path).status == 401, path
        for path in (f"/api/jobs/{job_id}/cancel", f"/api/jobs/{job_id}/resume", f"/api/jobs/{job_id}/delete"):
            assert api.post(base + path, data="{}").status == 401, path
        assert page.goto(base + "/login").status == 200
    finally:
        anonymous.close()


def fill_store(srv, count: int) -> None:
    """`count` finished and queued jobs with a metric history each, as a busy coordinator's store holds."""
    spec_json = __import__("worker.spec", fromlist=["parse_spec_text"]).parse_spec_text(
        digits_toml("bulk", steps=400, workers=1)).to_json()
    ends = [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, None]
    for i in range(count):
        job_id = f"bulk-{i:03d}"
        srv.store.create_job(JobRow(id=job_id, name="bulk", spec_json=spec_json, state=JobState.QUEUED, workers=1,
                                    total_steps=400, created=time.time() - 60 * (count - i)))
        end = ends[i % len(ends)]
        if end is None:
            continue
        srv.store.begin_attempt(job_id, hosts="localhost:1", log_dir=srv.data_dir / "logs" / job_id,
                                run_dir=srv.data_dir / "runs" / job_id, token_hash=hash_token(job_id), message="ran")
        srv.store.add_metrics(job_id, [MetricRow(step=s, epoch=0, train_loss=math.exp(-s / 150),
                                                 val_loss=math.exp(-s / 160), val_accuracy=1 - math.exp(-s / 90),
                                                 samples_per_second=1000.0, lr=1e-3, time_unix=time.time(), attempt=1)
                                       for s in range(20, 401, 20)])
        srv.store.update_progress(job_id, step=400 if end is JobState.SUCCEEDED else 20 * (i % 19 + 1),
                                  total_steps=400, epoch=0)
        srv.store.transition(job_id, end, "done" if end is JobState.SUCCEEDED else "stopped", attempt=1)
    srv.core.signal.changed()


def test_load_time_and_report_latency(browser, start_coordinator):
    import grpc

    from coordinator.rpc import gradmesh_pb2 as pb

    srv = idle_server(start_coordinator, http_port=0)
    fill_store(srv, 199)
    job_id, token = running_job(srv, "live", "token-live")  # the 200th, a RUNNING job whose rank 0 we play
    srv.core.scheduler.reserve([("localhost", 1)])  # the slot it would hold had the scheduler launched it
    context, page = log_in(browser, srv, "/login")
    base = srv.dashboard.url.rstrip("/")

    loads = []
    for _ in range(3):
        started = time.monotonic()
        page.goto(base + "/")
        page.wait_for_function("() => document.getElementById('count').textContent.startsWith('200 job(s)') && "
                               "document.querySelectorAll('#jobs tbody tr[data-job]').length === 25")  # a page
        loads.append(time.monotonic() - started)
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-jobs.png"))

    page.goto(f"{base}/jobs/{job_id}")
    page.wait_for_function("() => document.getElementById('live').textContent.includes('live')")
    latencies = []
    with grpc.insecure_channel(srv.address) as channel:
        rank0 = worker_stub(channel, token)
        for step in range(10, 160, 10):
            point = pb.MetricPoint(step=step, epoch=0, train_loss=1 / step, val_loss=1.2 / step, val_accuracy=0.9,
                                   samples_per_second=1000, lr=1e-3, time_unix=time.time())
            started = time.monotonic()
            rank0.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1, points=[point], step=step,
                                                          total_steps=40))
            page.wait_for_function(f"() => document.getElementById('last-step').textContent === '{step}'", polling=10)
            latencies.append(time.monotonic() - started)
    context.close()
    print(f"\n[dashboard] jobs list with 200 jobs in the store: loaded in {statistics.median(loads) * 1000:.0f} ms "
          f"(median of {len(loads)}; max {max(loads) * 1000:.0f} ms)")
    print(f"[dashboard] metric report → open job page: median {statistics.median(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms over {len(latencies)} reports")
    assert max(loads) < 1.0 and max(latencies) < 1.0
