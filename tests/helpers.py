"""Helpers shared by the tests (import them from here; tests never import one another).

    wait_for(lambda: job.state == "RUNNING", timeout=30, what="the job to run")
    small_digits_spec(steps=60, workers=2)          # a quick digits job as a dict
    cert, key = self_signed_cert(tmp_path)          # for TLS tests (needs openssl)
    run_cli("--address", addr, "status", "J")       # the real CLI in a subprocess (cli_env: its environment)
    numpy_accuracy(Path("best.npz"))                # a checkpoint's held-out accuracy, plain numpy
    scaled(1.0)                                     # a deadline of 1 s on a quiet machine, as long as it is here now
    seconds_for(steps=5000, rate=rate)              # a wait for steps at a job's measured steps/s, with slack
    restartable_port()                              # a port to start a coordinator on, and start it again on

Timeouts under load: this machine's cores are shared (other jobs, other engineers' test runs), so a fixed
deadline that holds when it is quiet fails when it is busy. `contention()` measures, not guesses, how much
slower than its own CPU time a piece of single-threaded work runs right now (3.0 when the cores are shared
three ways); `scaled(s)` stretches a quiet-machine deadline by it, and `step_rate`/`seconds_for` size a wait
from the steps per second a job is actually making.
"""
from __future__ import annotations

import json
import os
import random
import socket
import shutil
import subprocess
import sys
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


_CONTENTION: list[float] = []   # [measured at, factor]: measured again after CONTENTION_TTL_S


CONTENTION_TTL_S = 5.0


def contention(sample_s: float = 0.2, max_wall_s: float = 3.0) -> float:
    """Wall time over this thread's CPU time for a short busy loop: >= 1.0, how many times slower than a quiet
    machine single-threaded work runs here now. Cached for CONTENTION_TTL_S."""
    if _CONTENTION and time.monotonic() - _CONTENTION[0] < CONTENTION_TTL_S:
        return _CONTENTION[1]
    wall0, cpu0 = time.perf_counter(), time.thread_time()
    x = 0
    while time.thread_time() - cpu0 < sample_s and time.perf_counter() - wall0 < max_wall_s:
        for _ in range(20000):
            x += 1
    cpu = max(time.thread_time() - cpu0, 1e-3)
    factor = max(1.0, (time.perf_counter() - wall0) / cpu)
    _CONTENTION[:] = [time.monotonic(), factor]
    return factor


def scaled(seconds: float, floor: float = 1.0) -> float:
    """A deadline that is `seconds` on a quiet machine, stretched by the contention measured now (never less
    than `floor` times it)."""
    return seconds * max(floor, contention())


def step_rate(read_step: Callable[[], int], min_steps: int = 50, timeout: float = 300.0) -> float:
    """Steps per second a running job makes now: `read_step()` watched until it advanced `min_steps`."""
    start, t0 = read_step(), time.monotonic()
    wait_for(lambda: read_step() >= start + min_steps, timeout=timeout, what=f"{min_steps} steps", interval=0.05)
    return (read_step() - start) / max(time.monotonic() - t0, 1e-3)


def seconds_for(steps: float, rate: float, factor: float = 3.0, slack_s: float = 30.0) -> float:
    """A wait for `steps` more steps at `rate` steps/s: `factor` times the time they take at that rate (the
    load may grow meanwhile), plus `slack_s` for start-up and ends, itself scaled by the contention."""
    return factor * steps / max(rate, 1e-6) + scaled(slack_s)


def restartable_port(host: str = "127.0.0.1") -> int:
    """A free port below the kernel's ephemeral range, for a server a test kills and starts again on the same
    port. A port 0 bind draws from the range that outgoing connections also draw from, so between the kill and
    the restart some other socket (a worker's reconnect, mpirun's) can take the port and the restart fails."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(200):
        port = random.randrange(max(1024, low - 12000), low)
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port below {low} on {host}")


def small_digits_spec(steps: int = 60, workers: int = 2, **train: Any) -> dict:
    """A digits job that trains in a second or two."""
    return {"name": "digits-small", "workers": workers,
            "model": {"layers": [64, 32, 10]},
            "data": {"source": "digits"},
            "train": {"steps": steps, "batch_size": 64, "eval_every": 10, **train},
            "optim": {"name": "adam", "lr": 3e-3},
            "checkpoint": {"every_steps": 20, "keep_last": 2}}


def digits_toml(name: str, *, steps: int, workers: int = 2, batch_size: int = 32, eval_every: int = 10,
                lr: float | None = None, every_steps: int = 20, keep_last: int = 2, **fault: float) -> str:
    """The TOML text of a small digits job with 2 workers, as the service tests submit it; `fault` keys
    (max_restarts, backoff_s, hang_timeout_s) go to its [fault] section."""
    lines = [f'name = "{name}"', f"workers = {workers}", "[model]", "layers = [64, 32, 10]", "[train]",
             f"steps = {steps}", f"batch_size = {batch_size}", f"eval_every = {eval_every}"]
    if lr is not None:
        lines += ["[optim]", f"lr = {lr}"]
    lines += ["[checkpoint]", f"every_steps = {every_steps}", f"keep_last = {keep_last}"]
    if fault:
        lines += ["[fault]"] + [f"{key} = {value}" for key, value in fault.items()]
    return "\n".join(lines) + "\n"


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A certificate and key for 127.0.0.1/localhost, valid for a day; skips the test without openssl."""
    if not shutil.which("openssl"):
        pytest.skip("openssl is needed to make a test certificate")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True, timeout=30)
    return cert, key


# ---------------------------------------------------------------- a coordinator driven by hand (service tests)
# A coordinator whose scheduler is stopped launches nothing: a test makes a "running" job by starting an
# attempt in the store with a token it knows, and plays the job's ranks through the WorkerService.

SMALL_SPEC = """
name = "api-test"
workers = 1
[model]
layers = [64, 32, 10]
[train]
steps = 40
batch_size = 32
eval_every = 10
[checkpoint]
every_steps = 10
keep_last = 2
"""


def idle_server(start_coordinator, **kwargs):
    """A RunningServer whose scheduler is stopped: jobs stay where the test puts them."""
    srv = start_coordinator(**kwargs)
    srv.core.scheduler.stop()
    return srv


def running_job(srv, job_id: str = "w1", token: str = "token-w1", spec: str = SMALL_SPEC) -> tuple[str, str]:
    """A RUNNING job with one attempt whose ranks would hold `token` (no process behind it)."""
    from coordinator.states import JobState
    from coordinator.store.records import JobRow
    from coordinator.access.tokens import hash_token
    from worker.spec import parse_spec_text
    spec_json = parse_spec_text(spec).to_json()
    srv.store.create_job(JobRow(id=job_id, name="api-test", spec_json=spec_json, state=JobState.QUEUED, workers=1))
    srv.store.begin_attempt(job_id, hosts="localhost:1", log_dir=srv.data_dir / "logs" / job_id,
                            run_dir=srv.data_dir / "runs" / job_id, token_hash=hash_token(token), message="test")
    srv.core.signal.changed()  # as the core does after its own writes (views are cached per change)
    return job_id, token


def worker_stub(channel, token: str):
    """A WorkerService stub that sends `token` and a 10 s deadline with every call."""
    from coordinator.rpc import gradmesh_pb2_grpc as rpc
    from coordinator.wire import JOB_TOKEN_HEADER
    stub = rpc.WorkerServiceStub(channel)
    metadata = ((JOB_TOKEN_HEADER, token),)

    class Worker:
        def __getattr__(self, name):
            return lambda req, **kw: getattr(stub, name)(req, timeout=10, metadata=metadata, **kw)
    return Worker()


def upload_checkpoint(worker, job_id: str, step: int, payload: bytes, val_loss: float = float("nan"),
                      final: bool = False, chunk: int = 1 << 20):
    """Upload `payload` as the checkpoint at `step` of attempt 1, as rank 0 does; returns the stored info."""
    import hashlib

    from coordinator.rpc import gradmesh_pb2 as pb
    info = pb.CheckpointInfo(step=step, epoch=0, size_bytes=len(payload), sha256=hashlib.sha256(payload).hexdigest(),
                             val_loss=val_loss, val_accuracy=float("nan"), is_final=final)
    msgs = [pb.UploadCheckpointRequest(job_id=job_id, attempt=1, info=info)]
    msgs += [pb.UploadCheckpointRequest(data=payload[i:i + chunk]) for i in range(0, len(payload), chunk)]
    return worker.UploadCheckpoint(iter(msgs)).stored


# ---------------------------------------------------------------- watching jobs to their end

def watch_to_end(api, job_id: str, timeout: float = 120.0) -> list:
    """Every WatchJob event until the stream ends, which must be on a terminal state."""
    from coordinator.rpc import gradmesh_pb2 as pb
    from coordinator.states import JobState
    events = list(api.WatchJob(pb.WatchJobRequest(job_id=job_id), timeout=timeout))
    assert events[-1].WhichOneof("event") == "state" and JobState(events[-1].state.state).is_terminal()
    return events


def assert_legal_path(events) -> list:
    """Every state seen (the snapshot's history, then each state event) follows the state machine."""
    from coordinator.states import JobState, is_legal
    snapshot = events[0].snapshot
    states = [JobState(h.state) for h in snapshot.history]
    for e in events[1:]:
        if e.WhichOneof("event") == "state" and (not states or JobState(e.state.state) != states[-1]):
            states.append(JobState(e.state.state))
    assert states[0] is JobState.QUEUED
    for old, new in zip(states, states[1:]):
        assert is_legal(old, new), f"{old.name} → {new.name}"
    return states


def expect_error(code, fn, *args, match: str | None = None):
    """Call `fn(*args)` (draining it when it returns a stream) and assert it fails with status `code` and,
    if given, a message containing `match`; returns the grpc.RpcError."""
    import grpc
    with pytest.raises(grpc.RpcError) as info:
        result = fn(*args)
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)
    assert info.value.code() == code, info.value.details()
    if match:
        assert match in info.value.details(), info.value.details()
    return info.value

# ---------------------------------------------------------------- the CLI as a subprocess

ROOT = Path(__file__).resolve().parent.parent


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a CLI subprocess: this checkout importable, no GRADMESH_* leaking in from outside."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    for key in ("GRADMESH_ADDRESS", "GRADMESH_TOKEN", "GRADMESH_TLS_CA"):
        env.pop(key, None)
    env["HOME"] = extra.pop("HOME", env.get("HOME", "/tmp"))
    env.update(extra)
    return env


def run_cli(*args: str, timeout: float = 60, env: dict[str, str] | None = None,
            cwd: str | Path | None = None) -> subprocess.CompletedProcess:
    """`python -m coordinator.cli ARGS` in a fresh process; raises on timeout (the process is killed)."""
    return subprocess.run([sys.executable, "-m", "coordinator.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env or cli_env(), cwd=cwd or ROOT)


def numpy_accuracy(path: Path) -> tuple[float, int]:
    """(accuracy, examples) of a checkpoint on its job's held-out split, computed independently of the worker's
    model code: numpy.load and float64 matrix products. Only the data split comes from the worker package,
    so it is the same split the job evaluated on."""
    import numpy as np

    from worker.data import load_dataset
    from worker.spec import parse_spec

    activations = {
        "relu": lambda z: np.maximum(z, 0),
        "tanh": np.tanh,
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "gelu": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3))),
    }
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    spec = parse_spec(json.loads(str(arrays["meta"]))["spec"])
    data = load_dataset(spec.data, spec.model.layers, spec.model.loss, spec.train.seed)
    x, y = data.val.rows(np.arange(len(data.val)))
    x = x.astype(np.float64)
    if "normalize.mean" in arrays:
        x = (x - arrays["normalize.mean"]) / arrays["normalize.std"]
    n_layers = sum(1 for k in arrays if k.startswith("layers.") and k.endswith(".W"))
    for i in range(n_layers):
        x = x @ arrays[f"layers.{i}.W"].astype(np.float64) + arrays[f"layers.{i}.b"].astype(np.float64)
        if i < n_layers - 1:
            x = activations[spec.model.activation](x)
    return float(np.mean(np.argmax(x, axis=1) == y)), len(y)

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
