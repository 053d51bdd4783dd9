"""The dashboard as a person reads it, in headless Chromium (Playwright) against a real coordinator.

    test_a_failed_job_says_why_in_one_line   cause, rank, host and step in one header line; the log tail only in
                                             the log box; empty charts and tables say "no data yet"
    test_curves_explain_themselves           axis titles with units, log scale and smoothing for the loss, epoch
                                             and wall time as x, legends with values without hovering, another
                                             job overlaid; the best checkpoint marked; a checkpoint written
                                             between evaluations shows no earlier evaluation's numbers; run
                                             duration and start/end times
    test_the_header_moves_between_evals      a real job that evaluates only at its end: the header's step and
                                             samples/s move, and the worker log shows progress lines as printed
    test_the_jobs_list_pages_sorts_searches  25 a page, sort by loss, search by name and label, duration, end
                                             time, loss and the failure or queue reason inline, "2 min 0 s"
    test_400_px_wide_and_a_favicon           nothing overflows its card on either page; the favicon loads

Most tests play rank 0 of jobs on a coordinator whose scheduler is stopped (tests/helpers.py), one runs a real
job. They skip, with the reason, where Playwright or Chromium is missing. With GRADMESH_SCREENSHOTS=DIR they save
the screenshots of docs/ into DIR.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path

import pytest

from coordinator.access.tokens import hash_token
from coordinator.jobs.worker_api import ProgressReport
from coordinator.reports import FailureCause, WorkerFailure
from coordinator.states import JobState
from coordinator.store.records import JobRow, MetricRow
from chromium import SCREENSHOTS
from helpers import SMALL_SPEC, digits_toml, idle_server, scaled, upload_checkpoint, wait_for, worker_stub

pytestmark = pytest.mark.timeout(120)



def open_page(browser, srv, path: str, width: int = 1400):
    """A logged-in page (its own context) showing `path`."""
    context = browser.new_context(viewport={"width": width, "height": 1000})
    context.set_default_timeout(20_000)
    page = context.new_page()
    base = srv.dashboard.url.rstrip("/")
    page.goto(base + "/login")
    page.fill("#token", srv.token)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/")
    page.goto(base + path)
    return page


def spec_json(text: str = SMALL_SPEC) -> str:
    from worker.spec import parse_spec_text
    return parse_spec_text(text).to_json()


def make_job(srv, job_id: str, *, labels=None, created: float | None = None, spec: str = SMALL_SPEC,
             running: bool = True) -> str:
    srv.store.create_job(JobRow(id=job_id, name=f"{job_id}-name", spec_json=spec_json(spec), state=JobState.QUEUED,
                                workers=1, labels=labels or {}, created=created or time.time()))
    if running:
        srv.store.begin_attempt(job_id, hosts="localhost:1", log_dir=srv.data_dir / "logs" / job_id,
                                run_dir=srv.data_dir / "runs" / job_id, token_hash=hash_token(f"token-{job_id}"),
                                message="running on localhost:1")
    srv.core.signal.changed()
    return job_id


def curve(scale: float, steps=range(10, 201, 10), t0: float | None = None) -> list[MetricRow]:
    t0 = t0 or time.time() - 300
    return [MetricRow(step=s, epoch=s // 80 + 1, train_loss=scale * math.exp(-s / 60) * (1 + 0.3 * math.sin(s)),
                      val_loss=scale * 1.1 * math.exp(-s / 70), val_accuracy=1 - 0.9 * math.exp(-s / 50),
                      samples_per_second=900 + 10 * (s % 7), lr=3e-3, time_unix=t0 + s, attempt=1) for s in steps]


def report(srv, job_id: str, points, step: int | None = None, total: int = 400) -> None:
    srv.core.workers.report_progress(job_id, f"token-{job_id}", ProgressReport(
        attempt=1, points=points, step=step if step is not None else points[-1].step, total_steps=total))


def fail(srv, job_id: str) -> None:
    """Attempt 1 of the job fails as a rank reports it, with a long log tail folded into the job's message."""
    failure = WorkerFailure(FailureCause.RANK_ERROR, "CUDA-free but still broken: bad value", rank=1, host="node-b",
                            exception_type="ValueError", step=37)
    srv.store.record_failure(job_id, 1, failure)
    tail = "\n".join(f"[rank 1 on node-b] traceback line {i}" for i in range(40))
    message = f"rank 1 on node-b: ValueError: bad value (exit code 1)\nlast lines of attempt-1.log:\n{tail}"
    log_dir = srv.data_dir / "logs" / job_id
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "attempt-1.log").write_text(tail + "\n")
    srv.store.end_attempt(job_id, 1, exit_code=1, outcome="failed", message=message)
    srv.store.transition(job_id, JobState.FAILED, message, attempt=1)
    srv.core.signal.changed()


def test_a_failed_job_says_why_in_one_line(browser, start_coordinator):
    srv = idle_server(start_coordinator, http_port=0)
    fail(srv, make_job(srv, "broken"))
    page = open_page(browser, srv, "/jobs/broken")
    page.wait_for_function("() => document.getElementById('summary').textContent.length > 0")
    summary = page.text_content("#summary")
    assert summary == "rank error (rank 1 on node-b at step 37): ValueError: CUDA-free but still broken: bad value"
    assert "last lines" not in page.text_content("section")  # the header: no folded log tail
    page.wait_for_function("() => document.getElementById('log').textContent.includes('traceback line 39')")
    assert page.text_content("#log").count("traceback line") == 40  # the tail once, in the log box
    for chart in ("loss", "acc", "lr", "sps"):
        assert page.is_visible(f"#chart-{chart} .empty") and page.text_content(f"#chart-{chart} .empty") == "no data yet"
    assert page.text_content("#checkpoints tbody") == "no data yet"
    assert page.locator("#attempts tbody tr").count() == 1
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-failed.png"))
    page.context.close()


def axis_titles(page) -> list[list[str]]:
    """The (x, y) axis titles of the four charts, as uPlot draws them (on its canvas)."""
    return page.evaluate("() => CHARTS.map(c => c.plot.axes.map(a => a.label))")


def legend_values(page, chart: str) -> list[str]:
    return page.eval_on_selector_all(f"#chart-{chart} .u-legend .u-series .u-value", "els => els.map(e => e.textContent)")


def test_curves_explain_themselves(browser, start_coordinator):
    import grpc
    srv = idle_server(start_coordinator, http_port=0)
    make_job(srv, "main", spec=SMALL_SPEC.replace("keep_last = 2", "keep_last = 5"))
    make_job(srv, "other")
    report(srv, "main", curve(1.0))
    report(srv, "other", curve(2.0))
    with grpc.insecure_channel(srv.address) as channel:
        rank0 = worker_stub(channel, "token-main")
        upload_checkpoint(rank0, "main", 100, b"a" * 100, val_loss=curve(1.0)[9].val_loss)   # evaluated at 100
        upload_checkpoint(rank0, "main", 200, b"b" * 100, val_loss=curve(1.0)[19].val_loss)  # the best: evaluated
        report(srv, "main", [], step=205)
        upload_checkpoint(rank0, "main", 205, b"c" * 100, val_loss=curve(1.0)[19].val_loss)  # a cancel's: step 200's
    page = open_page(browser, srv, "/jobs/main")
    page.wait_for_function("() => document.getElementById('points').textContent === '20'")
    page.wait_for_function("() => document.querySelectorAll('#checkpoints tbody tr[data-step]').length === 3")

    # axis titles with units, and values in the legends without hovering
    assert axis_titles(page) == [["step", "loss"], ["step", "accuracy (%)"], ["step", "learning rate"],
                                 ["step", "samples / s"]]
    values = legend_values(page, "loss")
    assert values[0] == "200" and all(v not in ("–", "--", "") for v in values), values
    assert legend_values(page, "acc")[1].endswith("%")

    # log scale on by default for the loss; off and on again
    assert page.evaluate("() => document.querySelector('#chart-loss canvas') !== null")
    assert page.is_checked("#log-scale")
    page.uncheck("#log-scale")
    page.check("#log-scale")
    # smoothing changes the newest train loss shown
    raw = float(legend_values(page, "loss")[1])
    page.eval_on_selector("#smoothing", "el => { el.value = 0.9; el.dispatchEvent(new Event('input')); }")
    wait_for(lambda: float(legend_values(page, "loss")[1]) != raw, 5, "the smoothed value in the legend")
    assert float(legend_values(page, "loss")[1]) != pytest.approx(raw, rel=1e-3)

    # epoch and wall time as x
    page.select_option("#x-axis", "time")
    wait_for(lambda: axis_titles(page)[0] == ["wall time since the first point (s)", "loss"], 5, "the time axis")
    assert legend_values(page, "loss")[0] == "190"  # seconds from the first point (step 10) to the last (step 200)
    page.select_option("#x-axis", "epoch")
    wait_for(lambda: legend_values(page, "loss")[0] == "3", 5, "the epoch axis")
    page.select_option("#x-axis", "step")

    # another job overlaid
    page.fill("#compare", "other")
    page.click("#compare-form button")
    page.wait_for_function("() => [...document.querySelectorAll('#chart-loss .u-legend .u-series')]"
                           ".some(e => e.textContent.includes('other · train loss'))")
    assert page.url.endswith("?compare=other")
    wait_for(lambda: len(legend_values(page, "loss")) == 5 and legend_values(page, "loss")[3] not in ("–", ""), 10,
             "the overlaid job's values")

    # checkpoints: the best marked; none shows an earlier evaluation's numbers
    rows = {int(r.get_attribute("data-step")): r for r in page.query_selector_all("#checkpoints tbody tr")}
    assert "best" in rows[200].query_selector(".marks").text_content()
    assert "best" not in rows[100].query_selector(".marks").text_content()
    cells = [c.text_content() for c in rows[205].query_selector_all("td")]
    assert cells[3] == "–" and cells[4] == "–"
    assert rows[200].query_selector_all("td")[3].text_content() != "–"

    facts = dict(page.eval_on_selector_all("#facts div", "els => els.map(e => [e.dataset.fact, "
                                                         "e.lastChild.textContent])"))
    assert facts["started"] != "–" and facts["ended"] == "–" and facts["duration"].endswith(" s")
    if SCREENSHOTS:
        page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-compare.png"), full_page=True)
    page.context.close()


def test_the_header_moves_between_evals(browser, start_coordinator, monkeypatch):
    monkeypatch.setenv("GRADMESH_PROGRESS_EVERY_S", "0.5")  # the ranks' progress lines, inherited by them
    srv = start_coordinator(slots=2, http_port=0)
    spec = digits_toml("between", steps=300_000, workers=1, eval_every=300_000, every_steps=300_000)
    job_id = srv.core.jobs.submit(spec, job_id="between")[0].job.id
    page = open_page(browser, srv, f"/jobs/{job_id}")
    step = lambda: int(page.eval_on_selector("#facts [data-fact=step]", "e => e.lastChild.textContent").split(" /")[0])  # noqa: E731
    first = wait_for(lambda: step(), scaled(60), "a step above 0 in the header")
    wait_for(lambda: step() > first, scaled(20), "the header's step to move without an evaluation")
    assert int(page.text_content("#points")) == 0  # no metric point yet: the step came from progress reports
    sps = lambda: page.eval_on_selector("#facts [data-fact='samples/s']", "e => e.lastChild.textContent")  # noqa: E731
    wait_for(lambda: sps() != "–", scaled(20), "samples/s from the step rate")
    assert page.eval_on_selector("#facts [data-fact=ETA]", "e => e.lastChild.textContent") != "–"
    wait_for(lambda: page.text_content("#log").count(f"gradmesh: at step ") >= 2, scaled(30),
             "progress lines in the log")
    srv.core.jobs.cancel(job_id, checkpoint=False)
    wait_for(lambda: srv.core.jobs.get(job_id).job.state.is_terminal(), 60, "the cancel")
    page.context.close()


def test_the_jobs_list_pages_sorts_searches(browser, start_coordinator):
    srv = idle_server(start_coordinator, http_port=0)
    now = time.time()
    for i in range(30):
        job_id = make_job(srv, f"job-{i:02d}", labels={"sweep": "alpha" if i % 3 == 0 else "beta"},
                          created=now - 3600 + i)
        report(srv, job_id, curve(1.0 + i / 10, steps=[10, 20]))
        srv.store.transition(job_id, JobState.SUCCEEDED, "finished at step 20", attempt=1)
    make_job(srv, "queued-one", running=False, created=now - 119.6)
    srv.store.note("queued-one", "waiting for 4 slots (2 free)", [JobState.QUEUED])
    fail(srv, make_job(srv, "broken", created=now - 10))
    page = open_page(browser, srv, "/")
    page.wait_for_function("() => document.getElementById('count').textContent.startsWith('32 job(s)')")
    assert page.locator("#jobs tbody tr").count() == 25
    assert page.text_content("#page") == "page 1 of 2"
    page.click("#next")
    assert page.locator("#jobs tbody tr").count() == 7
    page.click("#prev")

    queued = page.locator('tr[data-job="queued-one"]')
    assert queued.locator(".reason").text_content() == "waiting for 4 slots (2 free)"
    assert re.fullmatch(r"2 min [0-5]?\d s", queued.locator("td").nth(10).text_content())  # created 119.6 s ago
    # ages round once, then split: never "1 min 60 s"
    assert page.evaluate("() => [59.6, 119.6, 3599.7, 86399].map(G.duration)") == \
        ["1 min 0 s", "2 min 0 s", "1 h 0 min", "1 d 0 h"]
    broken = page.locator('tr[data-job="broken"] .reason')
    assert broken.text_content().startswith("rank error (rank 1 on node-b at step 37)")
    done = page.locator('tr[data-job="job-25"] td')
    assert float(done.nth(4).text_content()) == pytest.approx(curve(3.5, steps=[20])[0].train_loss, rel=1e-3)
    assert done.nth(8).text_content() != "–" and done.nth(9).text_content() != "–"  # duration, end time

    page.click("th[data-sort=loss]")  # the highest loss first, then the lowest
    first_loss = lambda: page.locator("#jobs tbody tr").first.get_attribute("data-job")  # noqa: E731
    assert first_loss() == "job-29"
    page.click("th[data-sort=loss]")
    assert first_loss() == "job-00"

    page.fill("#search", "sweep=alpha")
    page.wait_for_function("() => document.getElementById('count').textContent.startsWith('10 of 32')")
    page.fill("#search", "job-07-name")
    page.wait_for_function("() => document.querySelectorAll('#jobs tbody tr').length === 1")
    assert page.locator("#jobs tbody tr").first.get_attribute("data-job") == "job-07"
    page.fill("#search", "nothing matches this")
    page.wait_for_function("() => document.querySelector('#jobs tbody').textContent === 'no data yet'")
    page.context.close()


OVERFLOWING = """() => [...document.querySelectorAll('section')].filter(s => s.scrollWidth > s.clientWidth + 1)
    .map(s => s.querySelector('h1,h2') ? s.querySelector('h1,h2').textContent : s.id)"""


def test_400_px_wide_and_a_favicon(browser, start_coordinator):
    srv = idle_server(start_coordinator, http_port=0)
    make_job(srv, "narrow", labels={"sweep": "a-very-long-sweep-name-that-could-push-things-out"})
    report(srv, "narrow", curve(1.0))
    fail(srv, make_job(srv, "broken"))
    for path in ("/", "/jobs/narrow", "/jobs/broken"):
        page = open_page(browser, srv, path, width=400)
        page.wait_for_selector('#jobs tbody tr[data-job="narrow"]' if path == "/" else "#facts div")
        page.wait_for_timeout(500)  # the charts' second layout (after the snapshot)
        assert page.evaluate(OVERFLOWING) == [], path
        assert page.evaluate("() => document.documentElement.scrollWidth") <= 400, path
        loaded = page.evaluate("""() => new Promise(done => { const img = new Image();
            img.onload = () => done(img.naturalWidth > 0); img.onerror = () => done(false);
            img.src = document.querySelector('link[rel=icon]').href; })""")
        assert loaded, path
        if SCREENSHOTS and path == "/jobs/narrow":
            page.screenshot(path=str(Path(SCREENSHOTS) / "dashboard-narrow.png"), full_page=True)
        page.context.close()
