"""Helpers shared by the tests (import them from here; tests never import one another).

    wait_for(lambda: job.state == "RUNNING", timeout=30, what="the job to run")
    small_digits_spec(steps=60, workers=2)          # a quick digits job as a dict
    cert, key = self_signed_cert(tmp_path)          # for TLS tests (needs openssl)
"""
from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import pytest

T = TypeVar("T")


def wait_for(predicate: Callable[[], T], timeout: float = 60.0, what: str = "the condition",
             interval: float = 0.05) -> T:
    """Poll `predicate` until it returns something truthy (returned), or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def small_digits_spec(steps: int = 60, workers: int = 2, **train: Any) -> dict:
    """A digits job that trains in a second or two."""
    return {"name": "digits-small", "workers": workers,
            "model": {"layers": [64, 32, 10]},
            "data": {"source": "digits"},
            "train": {"steps": steps, "batch_size": 64, "eval_every": 10, **train},
            "optim": {"name": "adam", "lr": 3e-3},
            "checkpoint": {"every_steps": 20, "keep_last": 2}}


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1/localhost, valid for a day; skips the test without openssl."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


class RecordingWorkerService:
    """A real gRPC WorkerService on 127.0.0.1 that serves one job spec and records what workers send.

        with RecordingWorkerService(spec_json, token="t") as coord:      # coord.address: "127.0.0.1:PORT"
            ... python -m worker --coordinator {coord.address} --job j --attempt 1 ...
            coord.failures()        # the WorkerFailure of every FAILING report, in arrival order

    It checks the job token, answers ReportProgress with no cancel, stores nothing it is uploaded (it reads
    and counts the chunks) and offers no checkpoint to resume from. For testing the worker's side of the
    wire without the coordinator's core.
    """

    def __init__(self, spec_json: str, token: str = "job-token", job_id: str = "job", attempt: int = 1):
        from concurrent import futures
        import threading

        import grpc

        from coordinator.rpc import gradmesh_pb2 as pb
        from coordinator.rpc import gradmesh_pb2_grpc as rpc
        from coordinator.wire import JOB_TOKEN_HEADER, SERVER_OPTIONS

        service = self
        self.spec_json, self.token, self.job_id, self.attempt = spec_json, token, job_id, attempt
        self.reports: list = []          # every ReportProgressRequest received
        self.uploaded_steps: list[int] = []
        self._lock = threading.Lock()

        def authorized(context) -> bool:
            if dict(context.invocation_metadata()).get(JOB_TOKEN_HEADER) != service.token:
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong job token")
            return True

        class Servicer(rpc.WorkerServiceServicer):
            def FetchJob(self, request, context):
                authorized(context)
                return pb.FetchJobResponse(spec_json=service.spec_json, attempt=service.attempt)

            def ReportProgress(self, request, context):
                authorized(context)
                with service._lock:
                    service.reports.append(request)
                return pb.ReportProgressResponse()

            def UploadCheckpoint(self, request_iterator, context):
                authorized(context)
                first = next(request_iterator)
                for _ in request_iterator:
                    pass
                with service._lock:
                    service.uploaded_steps.append(first.info.step)
                return pb.UploadCheckpointResponse(stored=first.info)

        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=SERVER_OPTIONS)
        rpc.add_WorkerServiceServicer_to_server(Servicer(), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.address = f"127.0.0.1:{port}"
        self._pb = pb

    def __enter__(self) -> "RecordingWorkerService":
        self._server.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.stop(grace=None)

    def worker_argv(self, out_dir: Path) -> list[str]:
        """`python -m worker ...` arguments that point a worker at this service."""
        return ["-m", "worker", "--coordinator", self.address, "--job", self.job_id,
                "--attempt", str(self.attempt), "--out", str(out_dir)]

    def worker_env(self) -> dict[str, str]:
        return {"GRADMESH_JOB_TOKEN": self.token}

    def failures(self) -> list:
        """The `failure` of every report with worker_event FAILING, in arrival order."""
        with self._lock:
            return [r.failure for r in self.reports if r.worker_event == self._pb.WORKER_EVENT_FAILING]

    def events(self) -> list[str]:
        """The names of the non-heartbeat events received, in arrival order (e.g. "WORKER_EVENT_STARTED")."""
        with self._lock:
            return [self._pb.WorkerEvent.Name(r.worker_event) for r in self.reports if r.worker_event]
