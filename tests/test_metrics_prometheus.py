"""GET /metrics read by the real Prometheus (Debian's `prometheus`, started here on 127.0.0.1 with its own config
and data directory) and checked by `promtool check metrics`; the bearer token; the RPC interceptor's codes.

    test_prometheus_scrapes_a_running_job    a real digits job (1 MPI rank) with a sweep label: Prometheus
                                             scrapes with the token (up 1) and not without it (up 0), and its
                                             HTTP API gives back the job's step series with its labels, the
                                             slots in use, then the cancel counted as an attempt ended
                                             and every query of docs/grafana-dashboard.json parses there
    test_promtool_accepts_the_exposition     after a job, a refused call and a checkpoint download
    test_the_token_and_the_codes             401 without / with a wrong token; 200 with the metrics token or the
                                             admin token; NOT_FOUND and UNAUTHENTICATED calls timed with their code

They skip, with the reason, where prometheus or promtool is missing (.ci/run installs Debian's prometheus as root).
"""
from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import grpc
import pytest

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.telemetry.wiring import MonitoringOptions
from helpers import digits_toml, wait_for

pytestmark = pytest.mark.timeout(180)

TOKEN = "metrics-secret-token"


def get(url: str, token: str | None = None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """Debian's prometheus binary on 127.0.0.1, scraping the given targets every second, in `directory`."""

    def __init__(self, directory: Path, jobs: list[tuple[str, str, str]]):
        binary = shutil.which("prometheus")
        if binary is None:
            pytest.skip("no prometheus binary (Debian: apt-get install prometheus; .ci/run does it as root)")
        directory.mkdir(parents=True, exist_ok=True)
        scrape = []
        for name, target, token in jobs:
            (directory / f"{name}.token").write_text(token + "\n")
            scrape.append(f"""  - job_name: {name}
    scrape_interval: 1s
    scrape_timeout: 1s
    metrics_path: /metrics
    authorization:
      type: Bearer
      credentials_file: {directory / f'{name}.token'}
    static_configs:
      - targets: ["{target}"]
""")
        (directory / "prometheus.yml").write_text("global:\n  evaluation_interval: 1s\nscrape_configs:\n" + "".join(scrape))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(directory / "prometheus.log", "wb")
        self.process = subprocess.Popen(
            [binary, f"--config.file={directory / 'prometheus.yml'}", f"--storage.tsdb.path={directory / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--web.enable-lifecycle"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(lambda: self._ready(), 60, "prometheus to be ready", interval=0.2)
        except AssertionError:
            self.stop()
            raise

    def _ready(self) -> bool:
        if self.process.poll() is not None:
            raise AssertionError(f"prometheus exited with {self.process.returncode}")
        try:
            return get(self.url + "/-/ready")[0] == 200
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        status, body = get(self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert status == 200, body
        return json.loads(body)["data"]["result"]

    def value(self, promql: str) -> float | None:
        result = self.query(promql)
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.log.close()


def test_prometheus_scrapes_a_running_job(start_coordinator, tmp_path):
    srv = start_coordinator(slots=2, http_port=0, monitoring=MonitoringOptions(metrics_token=TOKEN))
    target = f"127.0.0.1:{srv.dashboard.port}"
    prom = Prometheus(tmp_path / "prom", [("gradmesh", target, TOKEN), ("intruder", target, "not-the-token")])
    try:
        spec = digits_toml("prom-digits", steps=500_000, workers=1, every_steps=5000, eval_every=50)
        job_id = srv.core.jobs.submit(spec, job_id="prom-digits", labels={"sweep": "lr-sweep"})[0].job.id
        wait_for(lambda: prom.value('up{job="gradmesh"}') == 1.0, 60, "a successful scrape")
        wait_for(lambda: prom.value('up{job="intruder"}') == 0.0, 30, "the wrong token's scrape to fail")
        # "job" is also Prometheus' target label: the scraped one is kept as exported_job (honor_labels is off)
        series = wait_for(lambda: prom.query(f'gradmesh_job_step{{exported_job="{job_id}"}} > 0'), 90,
                          "the job's step series with a step above 0")
        labels = series[0]["metric"]
        assert labels["job"] == "gradmesh" and labels["sweep"] == "lr-sweep" and labels["user"] == "admin"  # the owner: the first administrator
        assert wait_for(lambda: prom.value(f'gradmesh_job_val_accuracy{{exported_job="{job_id}"}}'), 60,
                        "a validation accuracy") > 0
        assert prom.value('gradmesh_host_slots_in_use{host="localhost"}') == 1.0
        assert prom.value('gradmesh_jobs{state="RUNNING"}') == 1.0
        assert prom.value("gradmesh_attempts_started_total") == 1.0
        assert prom.value('sum(gradmesh_rpc_duration_seconds_count{method="ReportProgress",code="OK"})') >= 1

        # the Grafana dashboard in docs/: every query parses in this Prometheus and names only series we export
        exported = set()
        for line in get(srv.dashboard.url + "metrics", TOKEN)[1].splitlines():
            if line.startswith("# TYPE "):
                _, _, name, kind = line.split()
                exported |= {name} | ({name + s for s in ("_bucket", "_count", "_sum")} if kind == "histogram" else set())
        for expr in grafana_queries():
            prom.query(expr.replace("$sweep", ".*"))  # asserts status 200
            for name in re.findall(r"gradmesh_[a-z_]+", expr):
                assert name in exported, (name, expr)
        assert prom.query('gradmesh_job_train_loss{sweep=~"lr-sweep"}')  # the dashboard's sweep filter

        srv.core.jobs.cancel(job_id, checkpoint=False)
        wait_for(lambda: srv.core.jobs.get(job_id).job.state.is_terminal(), 60, "the cancel")
        wait_for(lambda: prom.value('gradmesh_attempts_ended_total{cause="cancelled"}') == 1.0, 30,
                 "the cancelled attempt counted")
        assert prom.value('gradmesh_jobs{state="CANCELLED"}') == 1.0
        assert not prom.query(f'gradmesh_job_step{{exported_job="{job_id}"}}') or \
            wait_for(lambda: not prom.query(f'gradmesh_job_step{{exported_job="{job_id}"}}'), 30,
                     "the ended job's series to go")
    finally:
        prom.stop()


def grafana_queries() -> list[str]:
    board = json.loads((Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json").read_text())
    return [t["expr"] for panel in board["panels"] for t in panel["targets"]]


def test_promtool_accepts_the_exposition(start_coordinator, tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("no promtool (Debian's prometheus package brings it; .ci/run installs it as root)")
    srv = start_coordinator(slots=2, http_port=0, monitoring=MonitoringOptions(metrics_token=TOKEN))
    job_id = srv.core.jobs.submit(digits_toml("promtool", steps=40, workers=1), job_id="promtool")[0].job.id
    wait_for(lambda: srv.core.jobs.get(job_id).job.state.is_terminal(), 90, "the job to end")
    step = srv.store.checkpoints(job_id)[-1].step
    with grpc.insecure_channel(srv.address) as channel:
        from conftest import AuthedJobStub
        api = AuthedJobStub(channel, srv.token)
        size = sum(len(c.data) for c in api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id=job_id, step=step)))
    status, text = get(srv.dashboard.url + "metrics", TOKEN)
    assert status == 200
    checked = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert checked.returncode == 0, checked.stdout.decode() + checked.stderr.decode()
    values = parse(text)
    assert values['gradmesh_download_bytes_total{via="grpc"}'] == size
    assert values['gradmesh_attempts_ended_total{cause="succeeded"}'] == 1
    stored = srv.store.checkpoints(job_id)
    assert values["gradmesh_checkpoints_written_total"] >= len(stored)
    assert values["gradmesh_upload_bytes_total"] >= values["gradmesh_checkpoint_written_bytes_total"] \
        >= sum(c.size for c in stored)
    assert values["gradmesh_submit_to_first_step_seconds_count"] == 1


def parse(text: str) -> dict[str, float]:
    """`name{labels} value` lines of an exposition, keyed by `name{labels}` (labels as written)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_the_token_and_the_codes(start_coordinator):
    srv = start_coordinator(slots=1, http_port=0, monitoring=MonitoringOptions(metrics_token=TOKEN))
    url = srv.dashboard.url + "metrics"
    assert get(url)[0] == 401
    assert get(url, "wrong")[0] == 401
    assert get(url, TOKEN)[0] == 200
    assert get(url, srv.token)[0] == 200  # the administrator's (bootstrap) token
    with grpc.insecure_channel(srv.address) as channel:
        from conftest import AuthedJobStub
        with pytest.raises(grpc.RpcError) as missing:
            AuthedJobStub(channel, srv.token).GetJob(pb.GetJobRequest(job_id="no-such-job"))
        assert missing.value.code() is grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as refused:
            AuthedJobStub(channel, "a-wrong-token").GetJob(pb.GetJobRequest(job_id="x"))
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED
    values = parse(get(url, TOKEN)[1])
    assert values['gradmesh_rpc_duration_seconds_count{code="NOT_FOUND",method="GetJob"}'] == 1
    assert values['gradmesh_rpc_duration_seconds_count{code="UNAUTHENTICATED",method="GetJob"}'] == 1
