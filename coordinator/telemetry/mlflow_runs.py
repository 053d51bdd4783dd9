"""MlflowLogger: each job a run on an MLflow tracking server, over MLflow's REST API, caught up after an outage.

    logger = MlflowLogger(store, checkpoints, default_uri="http://127.0.0.1:5000")
    tail.listen(logger.on_event); tail.every_poll(logger.wake); logger.start()   # (coordinator.telemetry.wiring)

A job is logged when the coordinator has `--mlflow-uri` or its spec says `[tracking] mlflow_uri`. Its run, in
the experiment "gradmesh" (or `[tracking] mlflow_experiment`), is named after the job and carries:
    params   the spec, flattened ("model.layers", "train.batch_size", "workers", ...)
    tags     gradmesh.job_id, gradmesh.state, gradmesh.sweep, label.<key> for each label, and
             gradmesh.logged_step: the newest metric step already sent (how a later sync, or another
             coordinator, knows where to go on)
    metrics  train_loss, val_loss, val_accuracy, samples_per_second, lr, epoch at each point's step and time
    artifact the best checkpoint (lowest validation loss, else the newest) as checkpoints/<job>-step-N.npz,
             once the job has ended; then the run's status: FINISHED, FAILED or KILLED
Everything comes from the store, on this logger's own thread: training never waits for MLflow. When the
tracking server is away, the logger keeps the job's place (the run id and the last step sent) and tries
again with backoff; when the server is back, the rest of the history follows in batches, so nothing is
lost. The REST calls are MLflow's documented 2.0 API (runs/create, runs/log-batch, runs/update,
runs/search, experiments/get-by-name, and mlflow-artifacts for uploads), so no mlflow package is needed here.
"""
from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any, Iterator

from coordinator.store.checkpoints import best_of
from coordinator.store.records import JobRow
from coordinator.store.store import Store
from coordinator.telemetry.tail import Event

log = logging.getLogger("gradmesh.mlflow")

METRICS = ("train_loss", "val_loss", "val_accuracy", "samples_per_second", "lr", "epoch")
BATCH_POINTS = 150           # points per log-batch: 6 values each stays under MLflow's 1000 metrics a call
MAX_PARAM = 500              # characters of a param's value (the oldest servers' limit)
STATUS = {"SUCCEEDED": "FINISHED", "FAILED": "FAILED", "CANCELLED": "KILLED"}
LOGGED_STEP = "gradmesh.logged_step"
PARAMS_LOGGED = "gradmesh.params_logged"


class MlflowUnavailable(Exception):
    """The tracking server did not answer, or answered with an error worth retrying."""


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, item in value.items():
            out.update(flatten(item, f"{prefix}{key}."))
        return out
    text = json.dumps(value) if isinstance(value, (list, bool)) or value is None else str(value)
    return {prefix.rstrip("."): text[:MAX_PARAM]}


class Rest:
    """MLflow's REST API at `uri`, with a timeout; every failure is MlflowUnavailable."""

    def __init__(self, uri: str, timeout_s: float = 10.0):
        self.uri, self.timeout_s = uri.rstrip("/"), timeout_s

    def call(self, method: str, path: str, body: dict | None = None, query: dict | None = None) -> dict:
        url = f"{self.uri}/api/2.0/mlflow/{path}" + (f"?{urllib.parse.urlencode(query)}" if query else "")
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as err:
            detail = err.read()[:300].decode(errors="replace")
            if err.code == 404 and "RESOURCE_DOES_NOT_EXIST" in detail:
                raise LookupError(detail) from None
            raise MlflowUnavailable(f"{method} {path}: HTTP {err.code} {detail}") from None
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise MlflowUnavailable(f"{method} {path}: {getattr(err, 'reason', err)}") from None

    def upload(self, artifact_uri: str, name: str, chunks: Iterator[bytes], size: int) -> None:
        """Upload through the tracking server's artifact proxy (`mlflow server` serves artifacts by default)."""
        if not artifact_uri.startswith("mlflow-artifacts:"):
            raise MlflowUnavailable(f"the run's artifact store {artifact_uri[:100]} is not served by the tracking "
                                    "server (start it with --serve-artifacts)")
        where = artifact_uri.split(":", 1)[1].lstrip("/")
        url = f"{self.uri}/api/2.0/mlflow-artifacts/artifacts/{urllib.parse.quote(where)}/{urllib.parse.quote(name)}"
        request = urllib.request.Request(url, data=chunks, method="PUT",
                                         headers={"Content-Type": "application/octet-stream",
                                                  "Content-Length": str(size)})
        try:
            with urllib.request.urlopen(request, timeout=max(self.timeout_s, 60.0)) as response:
                response.read()
        except (urllib.error.URLError, OSError, ValueError) as err:
            raise MlflowUnavailable(f"artifact upload: {getattr(err, 'reason', err)}") from None


@dataclass
class _Run:
    uri: str
    experiment: str
    run_id: str = ""
    artifact_uri: str = ""
    logged_step: int = -1
    state: str = ""
    retry_at: float = 0.0
    failures: int = 0


class MlflowLogger:
    def __init__(self, store: Store, checkpoints: Any, *, default_uri: str = "", experiment: str = "gradmesh"):
        self.store = store
        self.checkpoints = checkpoints  # coordinator.files.checkpoints.Checkpoints: opens the files, verified
        self.default_uri = default_uri
        self.experiment = experiment
        self._runs: dict[str, _Run] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._experiments: dict[tuple[str, str], str] = {}

    def on_event(self, event: Event) -> None:
        if event.transition is not None:
            self.track(event.transition.job_id)

    def track(self, job_id: str) -> None:
        with self._lock:
            if job_id in self._runs:
                return
        job = self.store.get_job(job_id)
        if job is None:
            return
        tracking = json.loads(job.spec_json).get("tracking", {})
        uri = tracking.get("mlflow_uri") or self.default_uri
        if uri:
            with self._lock:
                self._runs.setdefault(job_id, _Run(uri, tracking.get("mlflow_experiment") or self.experiment))

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        from coordinator.states import JobState
        for job in self.store.jobs_in(JobState.QUEUED, JobState.RUNNING, JobState.RESTARTING):
            self.track(job.id)  # after a coordinator restart: jobs that were under way catch up
        self._thread = threading.Thread(target=self._run, name="gradmesh-mlflow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def pending(self) -> list[str]:
        with self._lock:
            return sorted(self._runs)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(2.0)
            self._wake.clear()
            with self._lock:
                due = [(job_id, run) for job_id, run in self._runs.items() if run.retry_at <= time.monotonic()]
            for job_id, run in due:
                if self._stop.is_set():
                    return
                try:
                    done = self.sync(job_id, run)
                except MlflowUnavailable as err:
                    run.failures += 1
                    run.retry_at = time.monotonic() + min(30.0, 0.5 * 2 ** min(run.failures, 6))
                    if run.failures == 1:
                        log.warning("MLflow at %s: %s; job %s is logged when it answers again", run.uri, err, job_id)
                    continue
                except Exception:  # noqa: BLE001 - a bug here must not stop the other jobs' logging
                    log.exception("MLflow: logging job %s failed", job_id)
                    run.retry_at = time.monotonic() + 30.0
                    continue
                if run.failures:
                    log.info("MLflow at %s answers again; job %s caught up", run.uri, job_id)
                run.failures = 0
                if done:
                    with self._lock:
                        self._runs.pop(job_id, None)

    # ------------------------------------------------------------------ one job

    def sync(self, job_id: str, run: _Run) -> bool:
        """Send what the run lacks; True when the job has ended and its run is complete."""
        job = self.store.get_job(job_id)
        if job is None:
            return True  # deleted
        rest = Rest(run.uri)
        if not run.run_id:
            self._open(rest, job, run)
        while True:
            points = self.store.metrics(job_id, from_step=run.logged_step + 1, limit=BATCH_POINTS)
            if not points:
                break
            metrics = [{"key": key, "value": getattr(p, key), "timestamp": int(1000 * (p.time_unix or time.time())),
                        "step": p.step} for p in points for key in METRICS
                       if not (isinstance(getattr(p, key), float) and math.isnan(getattr(p, key)))]
            rest.call("POST", "runs/log-batch", {"run_id": run.run_id, "metrics": metrics,
                                                 "tags": [{"key": LOGGED_STEP, "value": str(points[-1].step)}]})
            run.logged_step = points[-1].step
        if job.state.name != run.state:
            rest.call("POST", "runs/set-tag", {"run_id": run.run_id, "key": "gradmesh.state", "value": job.state.name})
            run.state = job.state.name
        if not job.state.is_terminal():
            return False
        self._upload_best(rest, job, run)
        rest.call("POST", "runs/update", {"run_id": run.run_id, "status": STATUS[job.state.name],
                                          "end_time": int(1000 * (job.ended or time.time()))})
        return True

    def _experiment_id(self, rest: Rest, name: str) -> str:
        key = (rest.uri, name)
        if key not in self._experiments:
            try:
                found = rest.call("GET", "experiments/get-by-name", query={"experiment_name": name})
                self._experiments[key] = found["experiment"]["experiment_id"]
            except LookupError:
                self._experiments[key] = rest.call("POST", "experiments/create", {"name": name})["experiment_id"]
        return self._experiments[key]

    def _open(self, rest: Rest, job: JobRow, run: _Run) -> None:
        """Find the job's run (made by an earlier sync or coordinator) or create it with the spec as params."""
        experiment = self._experiment_id(rest, run.experiment)
        found = rest.call("POST", "runs/search", {"experiment_ids": [experiment], "max_results": 1,
                                                  "filter": f"tags.`gradmesh.job_id` = '{job.id}'"}).get("runs", [])
        if found:
            info, data = found[0]["info"], found[0].get("data", {})
            tags = {t["key"]: t["value"] for t in data.get("tags", [])}
            run.run_id, run.artifact_uri = info["run_id"], info.get("artifact_uri", "")
            run.logged_step = int(tags.get(LOGGED_STEP, -1))
            run.state = tags.get("gradmesh.state", "")
            if tags.get(PARAMS_LOGGED) != "1":  # created, then the server went away before the params
                self._params(rest, job, run)
            return
        tags = [{"key": "gradmesh.job_id", "value": job.id}, {"key": "mlflow.runName", "value": job.id},
                {"key": "gradmesh.sweep", "value": job.labels.get("sweep", "")}]
        tags += [{"key": f"label.{k}", "value": v[:MAX_PARAM]} for k, v in sorted(job.labels.items())]
        created = rest.call("POST", "runs/create", {"experiment_id": experiment, "run_name": job.id,
                                                    "start_time": int(1000 * job.created), "tags": tags})["run"]
        run.run_id, run.artifact_uri = created["info"]["run_id"], created["info"].get("artifact_uri", "")
        self._params(rest, job, run)

    @staticmethod
    def _params(rest: Rest, job: JobRow, run: _Run) -> None:
        params = [{"key": k, "value": v} for k, v in sorted(flatten(json.loads(job.spec_json)).items())]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            rest.call("POST", "runs/log-batch", {"run_id": run.run_id, "params": params[i:i + 100]})
        rest.call("POST", "runs/set-tag", {"run_id": run.run_id, "key": PARAMS_LOGGED, "value": "1"})

    def _upload_best(self, rest: Rest, job: JobRow, run: _Run) -> None:
        rows = self.store.checkpoints(job.id)
        row = best_of(rows) or (rows[-1] if rows else None)
        if row is None:
            return
        try:
            chunks = self.checkpoints.open(row)
        except Exception:  # noqa: BLE001 - gone meanwhile (NotFound): nothing to upload
            log.warning("MLflow: the best checkpoint of %s (step %d) is gone; no artifact", job.id, row.step)
            return
        rest.upload(run.artifact_uri, f"checkpoints/{job.id}-step-{row.step}.npz", chunks, row.size)
