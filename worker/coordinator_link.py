"""How a worker process reaches the coordinator: the channel, the one backoff, and the one-shot failure report.

    channel = open_channel("127.0.0.1:50051", tls_ca=None)      # coordinator.wire's options + retry policy
    RankFailureHooks(address, job_id, token, attempt).report_failure(failure)   # ranks other than 0

Unary calls (FetchJob, ReportProgress) are retried by gRPC itself on UNAVAILABLE, with backoff within each
call's deadline, from the service config in `coordinator.wire.channel_options()`. What that policy cannot
retry (the client-streaming UploadCheckpoint, a FetchCheckpoint stream broken mid-way) is paced by
`Backoff`. A failure report is one unary ReportProgress with `worker_event = WORKER_EVENT_FAILING` and the
typed `failure` (worker/failure.py), under a short deadline: it must never hold up the abort after it.
Rank 0's reporting (progress, checkpoints, cancels) is `worker.report.CoordinatorHooks`; the status codes
it retries or takes as "this attempt is no longer ours" (RETRYABLE, DISOWNED), the error kind of a refusal
(`refusal_kind`) and the floats of a metric dict as the wire carries them (`metric_float`) are here, shared
by its parts (worker/report.py, worker/checkpoint_uploads.py, worker/checkpoint_fetch.py).
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import grpc

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.wire import JOB_TOKEN_HEADER, KIND_TRAILER, channel_options
from worker.hooks import Hooks

RANK_FAILURE_TIMEOUT_S = 0.5      # another rank's one-shot failure report (a new channel), before it aborts
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.RESOURCE_EXHAUSTED,
             grpc.StatusCode.ABORTED, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
# The coordinator no longer knows this attempt (a newer one holds the token): stop training.
DISOWNED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION}
KIND_DISK = "disk"                # the error kind of a full disk on the coordinator (retry later)


class CoordinatorRefused(RuntimeError):
    """The coordinator refused, or could not be reached in time for, a call the worker cannot do without
    (fetching the job or its checkpoint). `code` is the gRPC status code."""

    def __init__(self, message: str, code: grpc.StatusCode):
        super().__init__(message)
        self.code = code


class Backoff:
    """When to try again what gRPC's retry policy cannot retry: waits doubling from `first_s` up to `cap_s`,
    at most `tries` attempts in all. `failed()` counts a failure and says whether another try is allowed;
    the background thread checks `ready()` (it must keep heartbeating), a blocking caller calls `wait()`."""

    def __init__(self, tries: int = 6, first_s: float = 0.5, cap_s: float = 10.0):
        self.tries, self.first_s, self.cap_s = tries, first_s, cap_s
        self.failures = 0
        self.not_before = 0.0

    def failed(self) -> bool:
        self.failures += 1
        self.not_before = time.monotonic() + min(self.first_s * 2 ** (self.failures - 1), self.cap_s)
        return not self.exhausted

    def give_up(self) -> None:
        self.failures = self.tries

    @property
    def exhausted(self) -> bool:
        return self.failures >= self.tries

    def ready(self) -> bool:
        return time.monotonic() >= self.not_before

    def wait(self) -> None:
        time.sleep(max(0.0, self.not_before - time.monotonic()))


def say(text: str) -> None:
    """A timestamped line on stderr (the attempt's log) about the worker's link to the coordinator."""
    print(f"gradmesh report {time.strftime('%H:%M:%S')}: {text}", file=sys.stderr, flush=True)


def refusal_kind(err: grpc.RpcError) -> str:
    """The gradmesh-kind trailer of a refused call ("" when absent)."""
    try:
        return dict(err.trailing_metadata() or ()).get(KIND_TRAILER, "")
    except Exception:  # noqa: BLE001 - not every RpcError carries call details
        return ""


def metric_float(point: dict[str, Any], key: str) -> float:
    """A value of a metric dict as a MetricPoint field: NaN when absent or None (not measured at that step)."""
    value = point.get(key, math.nan)
    return math.nan if value is None else float(value)


def open_channel(address: str, tls_ca: Path | None, *, retries: bool = True) -> grpc.Channel:
    """A channel to the coordinator with the shared wire options (keepalive, message sizes, retry policy)."""
    options = channel_options(retries=retries)
    if tls_ca is None:
        return grpc.insecure_channel(address, options=options)
    creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
    return grpc.secure_channel(address, creds, options=options)


def failure_request(job_id: str, attempt: int, failure: pb.WorkerFailure, **progress) -> pb.ReportProgressRequest:
    """The ReportProgress that says this rank is failing, and why (`progress`: step, points, ... if known)."""
    return pb.ReportProgressRequest(job_id=job_id, attempt=attempt, rank=failure.rank,
                                    worker_event=pb.WORKER_EVENT_FAILING, failure=failure, message=failure.message,
                                    **progress)


class RankFailureHooks(Hooks):
    """The hooks of a rank other than 0 in a coordinator run: silent, except for the rank's own failure,
    which it reports in one unary ReportProgress (a fresh channel, no retries, RANK_FAILURE_TIMEOUT_S) just
    before the job is aborted, so the coordinator hears *why* from the rank that failed."""

    def __init__(self, address: str, job_id: str, token: str, attempt: int, tls_ca: Path | None = None,
                 timeout_s: float = RANK_FAILURE_TIMEOUT_S):
        self.address, self.job_id, self.attempt, self.tls_ca = address, job_id, attempt, tls_ca
        self.timeout_s = timeout_s
        self._metadata = ((JOB_TOKEN_HEADER, token),)

    def report_failure(self, failure: pb.WorkerFailure) -> None:
        try:
            channel = open_channel(self.address, self.tls_ca, retries=False)
        except OSError as err:  # an unreadable TLS CA file
            say(f"could not report the failure: {err}")
            return
        try:
            rpc.WorkerServiceStub(channel).ReportProgress(
                failure_request(self.job_id, self.attempt, failure, step=failure.step),
                timeout=self.timeout_s, metadata=self._metadata)
        except grpc.RpcError as err:
            say(f"could not report the failure: {err.code().name}: {err.details()}")
        finally:
            channel.close()
