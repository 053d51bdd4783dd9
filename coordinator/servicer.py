"""The gRPC face of the coordinator: a thin adapter from gradmesh.v1 messages to `coordinator.jobs`.

Each method unpacks its request, calls the core and packs the answer; streams are generators. The
core's typed errors become status codes here and nowhere else:

    InvalidArgument → INVALID_ARGUMENT (also trailing metadata "gradmesh-field": the dotted field)
    NotFound → NOT_FOUND, AlreadyExists → ALREADY_EXISTS, FailedPrecondition → FAILED_PRECONDITION,
    Unauthenticated → UNAUTHENTICATED, Unimplemented → UNIMPLEMENTED, Unavailable → UNAVAILABLE,
    DataLoss → DATA_LOSS (a stored checkpoint no longer matches its sha256)
    anything else → INTERNAL "internal error: ..." (logged with its traceback; the server keeps serving)

Handlers are registered from the proto's service descriptors with deserializers that never throw: a
request whose bytes do not parse reaches the method as `Malformed` and is answered INVALID_ARGUMENT
(gRPC's own behaviour would be a bare INTERNAL).
"""
from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Callable, Iterator

import grpc

from coordinator import convert
from coordinator.errors import GradmeshError as CoordinatorError
from coordinator.errors import (AlreadyExists, DataLoss, FailedPrecondition, InvalidArgument,
                                NotFound, Unauthenticated, Unavailable, Unimplemented)
from coordinator.jobs import Coordinator
from coordinator.rpc import gradmesh_pb2 as pb

log = logging.getLogger("gradmesh.servicer")

JOB_TOKEN_HEADER = "x-gradmesh-job-token"

_CODES: dict[type, grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Unimplemented: grpc.StatusCode.UNIMPLEMENTED,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    DataLoss: grpc.StatusCode.DATA_LOSS,
}


class Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, type_name: str, error: str):
        self.type_name = type_name
        self.error = error


# Transitional (worker branch of issue #8): the worker now sends the typed `worker_event` / `failure` instead
# of the string `event`; until the core stores them, translate them into the strings it knows.
_LEGACY_EVENTS = {pb.WORKER_EVENT_STARTED: "started", pb.WORKER_EVENT_FINISHED: "finished",
                  pb.WORKER_EVENT_STOPPED: "stopped"}
_LEGACY_CAUSES = {pb.FAILURE_CAUSE_NAN: "nan", pb.FAILURE_CAUSE_BAD_SPEC: "spec", pb.FAILURE_CAUSE_BAD_DATA: "data",
                  pb.FAILURE_CAUSE_BAD_CHECKPOINT: "data"}


def _legacy_event(request: Any) -> tuple[str, str]:
    if request.worker_event == pb.WORKER_EVENT_FAILING:
        f = request.failure
        if f.cause in _LEGACY_CAUSES or f.cause == pb.FAILURE_CAUSE_HANG:  # the message says it all
            return _LEGACY_CAUSES.get(f.cause, "error"), f.message
        return "error", f"rank {f.rank} on {f.host}: {f.exception_type}: {f.message}"
    return _LEGACY_EVENTS.get(request.worker_event, request.event), request.message


def _safe_parser(message_cls: Any) -> Callable[[bytes], Any]:
    def parse(data: bytes) -> Any:
        try:
            return message_cls.FromString(data)
        except Exception as exc:  # DecodeError and friends: answered as INVALID_ARGUMENT by the method
            return Malformed(message_cls.DESCRIPTOR.full_name, str(exc) or type(exc).__name__)
    return parse


def _check(request: Any) -> None:
    if isinstance(request, Malformed):
        raise InvalidArgument("request", f"cannot parse the {request.type_name} message: {request.error}")


def _abort(context: grpc.ServicerContext, err: Exception) -> None:
    if isinstance(err, CoordinatorError):
        code = next((c for t, c in _CODES.items() if isinstance(err, t)), grpc.StatusCode.INTERNAL)
        if isinstance(err, InvalidArgument):
            context.set_trailing_metadata((("gradmesh-field", err.field),))
        context.abort(code, str(err))
    log.exception("internal error in %s", type(err).__name__, exc_info=err)
    context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(err).__name__}: {err}")


def rpc(method: Callable) -> Callable:
    """Map core errors to status codes, for unary methods and for generator (streaming) methods alike."""
    if inspect.isgeneratorfunction(method):
        @functools.wraps(method)
        def stream(self, request, context):
            try:
                _check(request)
                yield from method(self, request, context)
            except Exception as err:
                _abort(context, err)
        return stream

    @functools.wraps(method)
    def unary(self, request, context):
        try:
            _check(request)
            return method(self, request, context)
        except Exception as err:
            _abort(context, err)
    return unary


def _token(context: grpc.ServicerContext) -> str:
    for key, value in context.invocation_metadata():
        if key == JOB_TOKEN_HEADER:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


class JobServicer:
    def __init__(self, core: Coordinator):
        self.core = core

    @rpc
    def SubmitJob(self, request, context):
        view, created = self.core.submit(request.spec, job_id=request.job_id, labels=dict(request.labels),
                                         workers=request.workers)
        return pb.SubmitJobResponse(job=convert.job_to_pb(view), created=created)

    @rpc
    def GetJob(self, request, context):
        return convert.job_to_pb(self.core.get(request.job_id))

    @rpc
    def ListJobs(self, request, context):
        views, token = self.core.list(list(request.states), request.page_size, request.page_token)
        return pb.ListJobsResponse(jobs=[convert.job_to_pb(v) for v in views], next_page_token=token)

    @rpc
    def CancelJob(self, request, context):
        return convert.job_to_pb(self.core.cancel(request.job_id, request.checkpoint))

    @rpc
    def ResumeJob(self, request, context):
        return convert.job_to_pb(self.core.resume(request.job_id, request.workers))

    @rpc
    def WatchJob(self, request, context):
        for kind, value in self.core.watch(request.job_id, request.from_step, is_active=context.is_active):
            if kind == "snapshot":
                yield pb.WatchJobEvent(snapshot=convert.job_to_pb(value))
            elif kind == "metric":
                yield pb.WatchJobEvent(metric=convert.metric_to_pb(value))
            else:
                yield pb.WatchJobEvent(state=convert.state_to_pb(value))

    @rpc
    def GetMetrics(self, request, context):
        return pb.GetMetricsResponse(points=[convert.metric_to_pb(m) for m in
                                             self.core.metrics(request.job_id, request.from_step)])

    @rpc
    def StreamLogs(self, request, context):
        for attempt, data in self.core.logs(request.job_id, follow=request.follow, attempt=request.attempt,
                                            is_active=context.is_active):
            yield pb.LogChunk(data=data, attempt=attempt)

    @rpc
    def ListCheckpoints(self, request, context):
        return pb.ListCheckpointsResponse(checkpoints=[convert.checkpoint_to_pb(c) for c in
                                                       self.core.list_checkpoints(request.job_id)])

    @rpc
    def DownloadCheckpoint(self, request, context):
        which = request.WhichOneof("which")
        row, chunks = self.core.open_checkpoint(request.job_id, step=request.step if which == "step" else None,
                                                best=which == "best" and request.best)
        yield from _checkpoint_stream(row, chunks)


def _checkpoint_stream(row, chunks: Iterator[bytes]) -> Iterator[pb.CheckpointChunk]:
    info = convert.checkpoint_to_pb(row)
    first = True
    for data in chunks:
        yield pb.CheckpointChunk(info=info, data=data) if first else pb.CheckpointChunk(data=data)
        first = False
    if first:  # an empty file still announces itself
        yield pb.CheckpointChunk(info=info)


class WorkerServicer:
    def __init__(self, core: Coordinator):
        self.core = core

    @rpc
    def FetchJob(self, request, context):
        spec_json, attempt, resume = self.core.fetch_job(request.job_id, _token(context), request.attempt)
        reply = pb.FetchJobResponse(spec_json=spec_json, attempt=attempt)
        if resume is not None:
            reply.resume_from.CopyFrom(convert.checkpoint_to_pb(resume))
        return reply

    @rpc
    def ReportProgress(self, request, context):
        event, message = _legacy_event(request)
        cancel, checkpoint = self.core.report_progress(
            request.job_id, _token(context), attempt=request.attempt,
            points=[convert.metric_from_pb(p) for p in request.points], step=request.step,
            total_steps=request.total_steps, epoch=request.epoch, event=event, message=message)
        return pb.ReportProgressResponse(cancel_requested=cancel, checkpoint_requested=checkpoint)

    @rpc
    def FetchCheckpoint(self, request, context):
        row, chunks = self.core.fetch_checkpoint(request.job_id, _token(context), request.step)
        yield from _checkpoint_stream(row, chunks)

    def UploadCheckpoint(self, request_iterator, context):
        try:
            first = next(request_iterator, None)
            if first is None:
                raise InvalidArgument("info", "the upload stream was empty")
            _check(first)
            job_id = first.job_id
            info = convert.upload_info_from_pb(first.info, first.attempt) if first.HasField("info") else None

            def data() -> Iterator[bytes]:
                if first.data:
                    yield first.data
                for i, msg in enumerate(request_iterator, start=1):
                    _check(msg)
                    if msg.job_id and msg.job_id != job_id:
                        raise InvalidArgument(f"messages[{i}].job_id", f"{msg.job_id!r} differs from the first "
                                                                       f"message's {job_id!r}")
                    yield msg.data

            stored = self.core.upload_checkpoint(job_id, _token(context), info, data())
            return pb.UploadCheckpointResponse(stored=convert.checkpoint_to_pb(stored))
        except Exception as err:
            _abort(context, err)


def method_handlers(service_name: str, servicer: Any) -> grpc.GenericRpcHandler:
    """Handlers for every method of `service_name` (from the proto descriptor), bound to `servicer`."""
    service = pb.DESCRIPTOR.services_by_name[service_name]
    handlers = {}
    for m in service.methods:
        request_cls = getattr(pb, m.input_type.name)
        response_cls = getattr(pb, m.output_type.name)
        kind = {(False, False): grpc.unary_unary_rpc_method_handler,
                (False, True): grpc.unary_stream_rpc_method_handler,
                (True, False): grpc.stream_unary_rpc_method_handler,
                (True, True): grpc.stream_stream_rpc_method_handler}[(m.client_streaming, m.server_streaming)]
        handlers[m.name] = kind(getattr(servicer, m.name), request_deserializer=_safe_parser(request_cls),
                                response_serializer=response_cls.SerializeToString)
    return grpc.method_handlers_generic_handler(service.full_name, handlers)

