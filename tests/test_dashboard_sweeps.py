"""The dashboard's sweep page against a real coordinator running a real (small) grid sweep:
/api/sweeps/<id> answers the trials, their values at each rung and their curves (401 before logging in, 404 for
an unknown sweep); in headless Chromium (skipped, with the reason, without Playwright or Chromium) the page shows
every trial, sorts by the metric, highlights the best, draws the curves and links each trial's job."""
from __future__ import annotations

import http.client
import json

import pytest

from coordinator.client import Client, JobState
from helpers import digits_toml, wait_for

pytestmark = pytest.mark.timeout(300)


def request(port: int, path: str, cookie: str = "", method: str = "GET", body: str | None = None,
            headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    conn.request(method, path, body=body, headers={**(headers or {}), **({"Cookie": cookie} if cookie else {})})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response, data


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    from coordinator.api.server import start_server
    data = tmp_path_factory.mktemp("dash-sweep")
    srv = start_server(data / "coord", slots=2, data_roots=[data], http_port=0)
    try:
        text = digits_toml("grid", steps=20, workers=1, eval_every=5) + (
            '[sweep]\nmethod = "grid"\nmetric = "val_accuracy"\n[sweep.parameters]\n'
            '"optim.lr" = { values = [0.01, 0.003, 0.0003] }\n')
        with Client(srv.address, token=srv.token) as client:
            sweep = client.submit_sweep(text, sweep_id="dash")
            wait_for(lambda: client.sweep(sweep.id).is_terminal(), timeout=280, what="the sweep", interval=0.5)
            sweep = client.sweep(sweep.id)
        assert sweep.state is JobState.SUCCEEDED, sweep.message
        yield srv, sweep
    finally:
        srv.stop(grace=1.0)


def test_the_sweep_api_answers_trials_values_and_curves(swept):
    srv, sweep = swept
    port = srv.dashboard.port
    response, _ = request(port, "/api/sweeps/dash")
    assert response.status == 401
    response, _ = request(port, "/login", method="POST", body=f"token={srv.token}",
                          headers={"Content-Type": "application/x-www-form-urlencoded"})
    cookie = "; ".join(c.split(";")[0] for c in response.msg.get_all("Set-Cookie"))
    response, body = request(port, "/api/sweeps/dash", cookie)
    assert response.status == 200, body
    shown = json.loads(body)
    assert shown["best_trial"] == sweep.best_trial and shown["metric"] == "val_accuracy"
    assert [t["trial"] for t in shown["trials"]] == [0, 1, 2]
    for t, info in zip(shown["trials"], sweep.trials):
        assert t["values"][-1]["value"] == info.values[-1][2]
        assert [p[0] for p in t["curve"]] == [5, 10, 15, 20]   # every evaluation of the trial's job
    response, _ = request(port, "/api/sweeps/none-such", cookie)
    assert response.status == 404
    response, body = request(port, "/sweeps/dash", cookie)
    assert response.status == 200 and b"sweep.js" in body


def test_the_sweep_page_in_a_browser(swept, browser):
    srv, sweep = swept
    base = srv.dashboard.url.rstrip("/")
    page = browser.new_context().new_page()
    page.set_default_timeout(20_000)
    page.goto(base + "/sweeps/dash")
    page.fill("#token", srv.token)
    page.click("button[type=submit]")
    page.wait_for_url(base + "/sweeps/dash")
    page.wait_for_selector("#trials tbody tr")
    rows = page.locator("#trials tbody tr")
    assert rows.count() == 3
    values = [float(v) for v in page.locator("#trials tbody tr td:nth-child(5)").all_inner_texts()]
    assert values == sorted(values, reverse=True)          # best (highest accuracy) first
    assert rows.first.get_attribute("data-trial") == str(sweep.best_trial)
    assert "best" in (rows.first.get_attribute("class") or "")
    page.click("#trials thead th:nth-child(5)")             # the same column again: worst first
    values = [float(v) for v in page.locator("#trials tbody tr td:nth-child(5)").all_inner_texts()]
    assert values == sorted(values)
    assert page.locator("#chart canvas").count() >= 1
    assert page.locator(".u-legend .u-series").count() == 4  # step + one per trial
    page.click(f"#trials a[href='/jobs/{sweep.best_job_id}']")
    page.wait_for_url(base + f"/jobs/{sweep.best_job_id}")
    page.wait_for_selector("#facts a[href='/sweeps/dash']")
