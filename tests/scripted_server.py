"""A scripted gRPC server for the client and CLI tests (a helper module, not a test).

A real grpc.server on 127.0.0.1:0 whose JobService answers are chosen by the test (an exact status code, a
stream that drops after N events, a checkpoint with a wrong sha256, metric pages). It pins down the client's
own behaviour — error translation, reconnecting, paging, checksum checks — in cases the real coordinator
cannot be made to produce on demand; everything else is tested against the real one. Errors carry the
trailers the real servicer sends (`abort_with`), state changes carry transition ids (`job_pb`).
"""
from __future__ import annotations

import threading
from concurrent import futures
from typing import Callable

import grpc

from coordinator import wire
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as pb_grpc


def abort_with(code: grpc.StatusCode, details: str, *, kind: str = "", field: str | None = None) -> Callable:
    """A handler that fails like the real servicer: status `code`, message `details`, trailers
    gradmesh-kind (`kind`, or "field" for INVALID_ARGUMENT) and, for INVALID_ARGUMENT, gradmesh-field."""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        kind = kind or wire.KIND_FIELD
    trailers = [(wire.KIND_TRAILER, kind)] + ([(wire.FIELD_TRAILER, field)] if field is not None else [])

    def handler(request, context):
        context.set_trailing_metadata(tuple(trailers))
        context.abort(code, details)
    return handler


def job_pb(job_id: str = "job-1", state: int = pb.RUNNING, step: int = 0, total: int = 100,
           history: tuple = ()) -> pb.Job:
    """A Job message; `history` is (state, time) pairs, given transition ids 1, 2, ... in that order."""
    job = pb.Job(id=job_id, name="scripted", spec_json='{"train": {"batch_size": 32}}', state=state, step=step,
                 total_steps=total, workers=2, eta_seconds=-1, created_unix=1.0)
    for transition_id, (st, t) in enumerate(history, 1):
        job.history.add(state=st, time_unix=t, message=pb.JobState.Name(st).lower(), transition_id=transition_id)
    return job


class ScriptedJobService(pb_grpc.JobServiceServicer):
    """Each RPC calls the test's handler for that method name (or answers UNIMPLEMENTED), and records
    (method, request, metadata) in `calls`."""

    def __init__(self, handlers: dict[str, Callable]):
        self.handlers = handlers
        self.calls: list[tuple[str, object, dict]] = []
        self.lock = threading.Lock()

    def _dispatch(self, name: str, request, context):
        with self.lock:
            self.calls.append((name, request, dict(context.invocation_metadata())))
        handler = self.handlers.get(name)
        if handler is None:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{name} not scripted")
        return handler(request, context)

    def requests(self, name: str) -> list:
        with self.lock:
            return [req for method, req, _ in self.calls if method == name]


for _method in ("SubmitJob", "GetJob", "ListJobs", "CancelJob", "ResumeJob", "GetMetrics", "ListCheckpoints"):
    setattr(ScriptedJobService, _method,
            (lambda name: lambda self, request, context: self._dispatch(name, request, context))(_method))
for _method in ("WatchJob", "StreamLogs", "DownloadCheckpoint"):
    setattr(ScriptedJobService, _method,
            (lambda name: lambda self, request, context: (yield from self._dispatch(name, request, context)))(_method))


class ScriptedServer:
    """A real gRPC server on 127.0.0.1 (port 0 = any free port) serving a ScriptedJobService."""

    def __init__(self, handlers: dict[str, Callable], port: int = 0):
        self.service = ScriptedJobService(handlers)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_JobServiceServicer_to_server(self.service, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        if self.port == 0:
            raise RuntimeError(f"cannot bind 127.0.0.1:{port}")
        self.server.start()
        self.address = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(grace=0).wait(5)

    def __enter__(self) -> "ScriptedServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
