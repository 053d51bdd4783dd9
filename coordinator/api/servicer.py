"""The gRPC face of the coordinator: thin adapters from gradmesh.v1 messages to the core's plain objects
(coordinator.jobs.operations, coordinator.jobs.streams, coordinator.jobs.worker_api).

Each method unpacks its request, calls the core and packs the answer; streams are generators. The
core's typed errors (coordinator.errors) become status codes here and nowhere else, by their `code`, with
trailing metadata a client maps without reading the message (both ASCII):

    gradmesh-kind   always: what the error is about (err.kind: "job", "checkpoint", "attempt", "field", ...)
    gradmesh-field  for INVALID_ARGUMENT: the dotted request field
    anything else → INTERNAL "internal error: ..." (logged with its traceback; the server keeps serving)

What goes back is bounded and printable ASCII whatever the request held: the message at most
MAX_DETAILS_CHARS, each trailer at most MAX_TRAILER_CHARS, anything else escaped (\xe9, \u30b8, ...).
A call its client cancelled, or that broke or idled away (coordinator.access.admission), is a normal event: one
DEBUG line, no traceback.

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

from coordinator.api import convert
from coordinator.access.roles import SYSTEM, Caller
from coordinator.api.sweeps import SweepMethods
from coordinator.errors import GradmeshError, InvalidArgument
from coordinator.jobs.operations import Jobs
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.jobs.streams import Streams
from coordinator.team.accounts import Accounts
from coordinator.wire import CLIENT_TOKEN_HEADER, FIELD_TRAILER, JOB_TOKEN_HEADER, KIND_TRAILER
from coordinator.jobs.worker_api import WorkerApi

log = logging.getLogger("gradmesh.servicer")


MAX_DETAILS_CHARS = 1000   # an error's message as sent back (a request may echo a field of any size)
MAX_TRAILER_CHARS = 200    # each gradmesh-* trailer


def ascii_safe(text: str, limit: int | None = None) -> str:
    """Printable ASCII (metadata values must be; messages are kept so too): anything else is escaped
    (\xe9, \u2192, ...). With `limit`, cut to at most that many characters, saying how many were left out."""
    safe = "".join(c if " " <= c <= "~" else c.encode("unicode_escape").decode("ascii") for c in text)
    if limit is None or len(safe) <= limit:
        return safe
    note = f"... ({len(safe) - limit} more characters)"
    return safe[:max(0, limit - len(note))] + note


class Malformed:
    """Stands in for a request whose bytes did not parse."""

    def __init__(self, type_name: str, error: str):
        self.type_name = type_name
        self.error = error


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
    if isinstance(err, grpc.RpcError) or not context.is_active():
        # The client cancelled, went away, or was cut off as idle: nobody is there to answer.
        log.debug("call ended by its client or its connection: %s", type(err).__name__)
        context.abort(grpc.StatusCode.CANCELLED, "the call was cancelled")
    if isinstance(err, GradmeshError):
        code = getattr(grpc.StatusCode, err.code, grpc.StatusCode.UNKNOWN)
        trailers = [(KIND_TRAILER, ascii_safe(err.kind, MAX_TRAILER_CHARS))]
        if isinstance(err, InvalidArgument):
            trailers.append((FIELD_TRAILER, ascii_safe(err.field, MAX_TRAILER_CHARS)))
        context.set_trailing_metadata(tuple(trailers))
        context.abort(code, ascii_safe(str(err), MAX_DETAILS_CHARS))
    log.exception("internal error in %s", type(err).__name__, exc_info=err)
    context.abort(grpc.StatusCode.INTERNAL, ascii_safe(f"internal error: {type(err).__name__}: {err}",
                                                       MAX_DETAILS_CHARS))


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


def _token(context: grpc.ServicerContext, header: str = JOB_TOKEN_HEADER) -> str:
    for key, value in context.invocation_metadata():
        if key == header:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


class JobServicer(SweepMethods):
    """Every method acts for its caller, the user whose bearer token the call carries (`caller(context)`): the
    core asks coordinator.access.roles whether that user may. The users, tokens and audit RPCs are added by
    coordinator.api.team_rpcs.TeamServicer, the class the server serves; the sweep and fork RPCs come from
    coordinator.api.sweeps.SweepMethods."""

    def __init__(self, jobs: Jobs, streams: Streams, hosts=None, accounts: Accounts | None = None, sweeps=None):
        self.jobs = jobs
        self.streams = streams
        self.hosts = hosts  # coordinator.fleet.fleet.HostOps
        self.accounts = accounts  # who a bearer token is (None: every caller acts as the coordinator's own)
        self.sweeps = sweeps  # coordinator.sweeps.service.Sweeps (api/sweeps.py has its methods)

    def caller(self, context: grpc.ServicerContext) -> Caller:
        """The user making the call, with its address (the interceptor already refused unknown tokens)."""
        if self.accounts is None:
            return SYSTEM
        scheme, _, token = _token(context, CLIENT_TOKEN_HEADER).partition(" ")
        return self.accounts.caller(token.strip() if scheme.lower() == "bearer" else "", address=context.peer())

    @rpc
    def ListHosts(self, request, context):
        return pb.ListHostsResponse(hosts=[convert.host_to_pb(v) for v in self.hosts.list()])

    @rpc
    def DrainHost(self, request, context):
        return convert.host_to_pb(self.hosts.drain(request.host, self.caller(context)))

    @rpc
    def UndrainHost(self, request, context):
        return convert.host_to_pb(self.hosts.undrain(request.host, self.caller(context)))

    @rpc
    def SubmitJob(self, request, context):
        view, created = self.jobs.submit(request.spec, job_id=request.job_id, labels=dict(request.labels),
                                         workers=request.workers, caller=self.caller(context))
        return pb.SubmitJobResponse(job=convert.job_to_pb(view), created=created)

    @rpc
    def GetJob(self, request, context):
        return convert.job_to_pb(self.jobs.get(request.job_id, self.caller(context)))

    @rpc
    def ListJobs(self, request, context):
        views, token = self.jobs.list(list(request.states), request.page_size, request.page_token,
                                      owner=request.owner, caller=self.caller(context))
        return pb.ListJobsResponse(jobs=[convert.job_to_pb(v) for v in views], next_page_token=token)

    @rpc
    def CancelJob(self, request, context):
        return convert.job_to_pb(self.jobs.cancel(request.job_id, request.checkpoint, self.caller(context)))

    @rpc
    def RegisterRun(self, request, context):
        view, token = self.jobs.register(request.spec, job_id=request.job_id, labels=dict(request.labels),
                                         workers=request.workers, hosts=request.hosts, caller=self.caller(context))
        return pb.RegisterRunResponse(job=convert.job_to_pb(view), worker_token=token, attempt=view.job.attempts)

    @rpc
    def ResumeJob(self, request, context):
        return convert.job_to_pb(self.jobs.resume(request.job_id, request.workers, self.caller(context)))

    @rpc
    def DeleteJob(self, request, context):
        gone = self.jobs.delete(request.job_id, self.caller(context))
        return pb.DeleteJobResponse(job_id=gone.job_id, checkpoints=gone.checkpoints, files=gone.files,
                                    bytes_freed=gone.bytes_freed)

    @rpc
    def WatchJob(self, request, context):
        self.jobs.readable(request.job_id, self.caller(context))
        for kind, value in self.streams.watch(request.job_id, request.from_step, is_active=context.is_active):
            if kind == "snapshot":
                yield pb.WatchJobEvent(snapshot=convert.job_to_pb(value))
            elif kind == "metric":
                yield pb.WatchJobEvent(metric=convert.metric_to_pb(value))
            else:
                yield pb.WatchJobEvent(state=convert.state_to_pb(value))

    @rpc
    def GetMetrics(self, request, context):
        points, token = self.jobs.metrics(request.job_id, request.from_step, request.page_size, request.page_token,
                                          caller=self.caller(context))
        return pb.GetMetricsResponse(points=[convert.metric_to_pb(m) for m in points], next_page_token=token)

    @rpc
    def StreamLogs(self, request, context):
        self.jobs.readable(request.job_id, self.caller(context))
        for attempt, data in self.streams.logs(request.job_id, follow=request.follow, attempt=request.attempt,
                                               is_active=context.is_active):
            yield pb.LogChunk(data=data, attempt=attempt)

    @rpc
    def ListCheckpoints(self, request, context):
        return pb.ListCheckpointsResponse(checkpoints=[convert.checkpoint_to_pb(c) for c in
                                                       self.jobs.list_checkpoints(request.job_id,
                                                                                  self.caller(context))])

    @rpc
    def DownloadCheckpoint(self, request, context):
        which = request.WhichOneof("which")
        row, chunks = self.jobs.open_checkpoint(request.job_id, step=request.step if which == "step" else None,
                                                best=which == "best" and request.best, caller=self.caller(context))
        yield from _checkpoint_stream(row, chunks)


for _name in ("SubmitSweep", "GetSweep", "ListSweeps", "CancelSweep", "DeleteSweep", "ForkJob"):  # errors → status codes
    setattr(JobServicer, _name, rpc(getattr(SweepMethods, _name)))


def _checkpoint_stream(row, chunks: Iterator[bytes]) -> Iterator[pb.CheckpointChunk]:
    info = convert.checkpoint_to_pb(row)
    first = True
    for data in chunks:
        yield pb.CheckpointChunk(info=info, data=data) if first else pb.CheckpointChunk(data=data)
        first = False
    if first:  # an empty file still announces itself
        yield pb.CheckpointChunk(info=info)


class WorkerServicer:
    def __init__(self, workers: WorkerApi):
        self.workers = workers

    @rpc
    def FetchJob(self, request, context):
        spec_json, attempt, resume = self.workers.fetch_job(request.job_id, _token(context), request.attempt)
        reply = pb.FetchJobResponse(spec_json=spec_json, attempt=attempt,
                                    pause_at_step=self.workers.pause_at(request.job_id))
        if resume is not None:
            reply.resume_from.CopyFrom(convert.checkpoint_to_pb(resume))
        return reply

    @rpc
    def ReportProgress(self, request, context):
        cancel, checkpoint = self.workers.report_progress(request.job_id, _token(context),
                                                          convert.progress_from_pb(request))
        return pb.ReportProgressResponse(cancel_requested=cancel, checkpoint_requested=checkpoint)

    @rpc
    def FetchCheckpoint(self, request, context):
        row, chunks = self.workers.fetch_checkpoint(request.job_id, _token(context), request.step)
        yield from _checkpoint_stream(row, chunks)

    @rpc
    def AppendLog(self, request, context):
        held = self.workers.append_log(request.job_id, _token(context), request.attempt, request.offset, request.data,
                                       request.exit_code if request.ended else None)
        return pb.AppendLogResponse(offset=held)

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

            stored = self.workers.upload_checkpoint(job_id, _token(context), info, data())
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

