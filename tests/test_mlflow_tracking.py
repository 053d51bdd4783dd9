"""`gradmesh serve --mlflow-uri`: a real `mlflow server` (sqlite backend, artifacts served, on 127.0.0.1) logs a
real digits job as a run, read back with MLflow's own client; the server is stopped mid-job and nothing is lost.

    test_a_job_is_a_run_and_survives_the_server_going_away
        the run's params are the spec's, its metric history is the store's (every step, every value), its state
        tag follows the job, its best checkpoint is an artifact with the recorded sha256, its status FINISHED;
        the tracking server is killed while the job trains: the job keeps training, and once the server is back
        the run catches up with every point; a job whose spec names the server and an experiment is logged
        there by a coordinator without --mlflow-uri
    test_a_bad_tracking_uri_is_refused      --mlflow-uri and [tracking] mlflow_uri must be http(s) URLs

Skips, with the reason, where the mlflow package (installed by .ci/run: `pip install -e '.[mlflow]'`) is missing.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.telemetry.mlflow_runs import flatten
from coordinator.telemetry.wiring import MonitoringOptions
from helpers import digits_toml, run_cli, wait_for

pytestmark = pytest.mark.timeout(420)
TRAIN_S = 6.0       # how long the tracked job trains at the measured speed (see the test)
EVAL_EVERY = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class MlflowServer:
    """`mlflow server` on 127.0.0.1:port with a sqlite store and served artifacts in `directory`; restartable."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 240) -> None:
        self.launch()
        self.wait_ready(timeout)

    def launch(self) -> None:
        """Start the server without waiting for it: its start-up (~10 s of imports and migrations quiet) can
        overlap other work; `wait_ready` before using it."""
        binary = Path(sys.executable).parent / "mlflow"
        log = open(self.directory / "mlflow.log", "ab")
        self.process = subprocess.Popen(
            [str(binary), "server", "--backend-store-uri", f"sqlite:///{self.directory / 'mlflow.db'}",
             "--artifacts-destination", str(self.directory / "artifacts"), "--host", "127.0.0.1",
             "--port", str(self.port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=self.directory)
        log.close()

    def wait_ready(self, timeout: float = 240) -> None:
        wait_for(self._healthy, timeout, "mlflow server to answer /health", interval=0.5)

    def _healthy(self) -> bool:
        import urllib.request
        if self.process.poll() is not None:
            raise AssertionError(f"mlflow server exited: {(self.directory / 'mlflow.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def stop(self, crash: bool = False) -> None:
        """SIGTERM, or with `crash` SIGKILL: the server gone at once, as when its machine fails (a graceful
        uvicorn shutdown waits for the coordinator's open connections, 5-20 s here)."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL if crash else signal.SIGTERM)  # uvicorn and its workers
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)


@pytest.fixture
def mlflow_server(tmp_path):
    pytest.importorskip("mlflow", reason="the mlflow package is not installed (.ci/run: pip install -e '.[mlflow]')")
    directory = tmp_path / "mlflow"
    directory.mkdir()
    server = MlflowServer(directory)
    try:
        server.launch()   # the test waits for it once it has used its start-up time
        yield server
    finally:
        server.stop()


def test_a_job_is_a_run_and_survives_the_server_going_away(mlflow_server, start_coordinator, tmp_path):
    from mlflow.tracking import MlflowClient
    # The tracked job must still train when the server goes away (a second or two after its first metrics
    # reach MLflow) and for a while after: TRAIN_S of steps at the speed this machine has now, as the ranks of
    # a probe of the same shape measure it (samples/s over their last eval window) on a coordinator without
    # MLflow once the tracking server is up (its start-up would slow the probe).
    mlflow_server.wait_ready()
    plain = start_coordinator(slots=1)
    probe = digits_toml("probe", steps=10**6, workers=1, batch_size=32, eval_every=500, every_steps=0)
    plain.core.jobs.submit(probe, job_id="probe")
    points = wait_for(lambda: len(p := plain.store.metrics("probe")) >= 3 and p, 120, "the probe's third eval")
    plain.core.jobs.cancel("probe")
    rate = points[-1].samples_per_second / 32
    steps = 3 * EVAL_EVERY * math.ceil(rate * TRAIN_S / (3 * EVAL_EVERY))
    print(f"\nprobe: {rate:.0f} steps/s, so the tracked job trains {steps} steps")
    wait_for(lambda: plain.core.jobs.get("probe").job.state.is_terminal(), 60, "the probe's cancel")

    srv = start_coordinator(slots=2, monitoring=MonitoringOptions(mlflow_uri=mlflow_server.url))
    spec = digits_toml("tracked", steps=steps, workers=1, batch_size=32, eval_every=EVAL_EVERY,
                       every_steps=steps // 3)
    job_id = srv.core.jobs.submit(spec, job_id="tracked", labels={"sweep": "sw-1"})[0].job.id
    client = MlflowClient(mlflow_server.url)

    def the_run():
        experiment = client.get_experiment_by_name("gradmesh")
        runs = client.search_runs([experiment.experiment_id], "tags.`gradmesh.job_id` = 'tracked'") if experiment else []
        return runs[0] if runs else None

    run = wait_for(lambda: (r := the_run()) and r.data.metrics.get("train_loss") is not None and r, 120,
                   "the run with its first metrics", interval=0.2)
    assert run.info.run_name == job_id and run.data.tags["gradmesh.sweep"] == "sw-1"

    # the tracking server goes away while the job trains
    mlflow_server.stop(crash=True)
    step_then = srv.core.jobs.get(job_id).job.step
    assert not srv.core.jobs.get(job_id).job.state.is_terminal(), "the job ended before the server was stopped"
    wait_for(lambda: srv.core.jobs.get(job_id).job.state.is_terminal(), 240, "the job to end")
    job = srv.core.jobs.get(job_id).job
    assert job.state.name == "SUCCEEDED", job.message
    assert job.step > step_then  # it trained on while MLflow was away
    assert srv.monitoring.mlflow.pending() == [job_id]  # and the rest is still owed to MLflow

    mlflow_server.start()  # back: the run catches up
    wait_for(lambda: not srv.monitoring.mlflow.pending(), 120, "the run to catch up", interval=0.2)
    run = the_run()
    assert run.info.status == "FINISHED" and run.data.tags["gradmesh.state"] == "SUCCEEDED"

    # params: the spec, flattened
    stored_spec = json.loads(srv.store.get_job(job_id).spec_json)
    assert run.data.params == flatten(stored_spec)
    assert run.data.params["train.steps"] == str(steps) and run.data.params["model.layers"] == "[64, 32, 10]"

    # every point of the store's history, every value
    points = srv.store.metrics(job_id)
    assert len(points) == steps // EVAL_EVERY and points[-1].step == steps
    for key in ("train_loss", "val_loss", "val_accuracy", "samples_per_second", "lr", "epoch"):
        history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, key)}
        assert history == {p.step: float(getattr(p, key)) for p in points}, key

    # the best checkpoint, byte for byte
    from coordinator.store.checkpoints import best_of
    best = best_of(srv.store.checkpoints(job_id))
    local = client.download_artifacts(run.info.run_id, f"checkpoints/{job_id}-step-{best.step}.npz",
                                      str(tmp_path / "download"))
    assert hashlib.sha256(Path(local).read_bytes()).hexdigest() == best.sha256

    # a coordinator without --mlflow-uri logs a job whose spec names the server and its own experiment
    own = digits_toml("own", steps=40, workers=1) + \
        f'[tracking]\nmlflow_uri = "{mlflow_server.url}"\nmlflow_experiment = "per-job"\n'
    plain.core.jobs.submit(own, job_id="own")
    wait_for(lambda: plain.core.jobs.get("own").job.state.is_terminal() and not plain.monitoring.mlflow.pending(), 120,
             "the per-job run to be complete")
    [mine] = client.search_runs([client.get_experiment_by_name("per-job").experiment_id])
    assert mine.info.run_name == "own" and mine.info.status == "FINISHED"
    assert len(client.get_metric_history(mine.info.run_id, "val_loss")) == 4


def test_a_bad_tracking_uri_is_refused(start_coordinator, tmp_path):
    done = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--port", "0", "--mlflow-uri", "sqlite:///x.db")
    assert done.returncode == 2
    assert "--mlflow-uri 'sqlite:///x.db': give the tracking server's http(s):// URL" in done.stderr
    srv = start_coordinator(slots=1)
    from coordinator.errors import InvalidArgument
    with pytest.raises(InvalidArgument) as refused:
        srv.core.jobs.submit(digits_toml("t", steps=10) + '[tracking]\nmlflow_uri = "file:///tmp/x"\n', job_id="t")
    assert refused.value.field == "tracking.mlflow_uri"
