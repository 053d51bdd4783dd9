"""RpcMetrics: the server interceptor that times every gRPC call and counts the checkpoint bytes it carries.

    server = grpc.server(threads, interceptors=[telemetry.interceptor(), auth_interceptor])

First in the list, so it wraps what the others make of a call: a call refused for its token or for capacity
is timed too, with its code (UNAUTHENTICATED, RESOURCE_EXHAUSTED). The duration runs from the handler's start
to its status (a stream: until it ends). The method label is the short name (SubmitJob, ReportProgress...):
the set is fixed by the proto, so the series stay few. Bytes are counted from the messages themselves:
UploadCheckpoint's request chunks (upload bytes; a stored checkpoint when the call ends OK) and the chunks
DownloadCheckpoint and FetchCheckpoint send (download bytes, via "grpc").
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterator

import grpc

UPLOAD = "UploadCheckpoint"
DOWNLOADS = frozenset({"DownloadCheckpoint", "FetchCheckpoint"})
_FACTORY = {(False, False): grpc.unary_unary_rpc_method_handler, (False, True): grpc.unary_stream_rpc_method_handler,
            (True, False): grpc.stream_unary_rpc_method_handler, (True, True): grpc.stream_stream_rpc_method_handler}
_ATTR = {(False, False): "unary_unary", (False, True): "unary_stream", (True, False): "stream_unary",
         (True, True): "stream_stream"}


def short_name(method: str) -> str:
    """"/gradmesh.v1.JobService/SubmitJob" → "SubmitJob"; other services keep their service's short name too
    ("/grpc.health.v1.Health/Check" → "Health/Check")."""
    service, _, name = method.rpartition("/")
    service = service.rpartition(".")[2]
    return name if service in ("JobService", "WorkerService") else f"{service}/{name}"


def _code(context: grpc.ServicerContext, error: BaseException | None) -> str:
    if isinstance(error, GeneratorExit):
        return "CANCELLED"  # the client went away from a stream
    code = context.code() if hasattr(context, "code") else None
    if isinstance(code, grpc.StatusCode):
        return code.name
    return "UNKNOWN" if error is not None else "OK"


class RpcMetrics(grpc.ServerInterceptor):
    def __init__(self, telemetry: Any):
        self.t = telemetry  # coordinator.telemetry.collector.Telemetry, which imports this module

    def intercept_service(self, continuation, handler_call_details):
        handler = continuation(handler_call_details)
        if handler is None:
            return None
        name = short_name(handler_call_details.method or "")
        shape = (handler.request_streaming, handler.response_streaming)
        inner = getattr(handler, _ATTR[shape])
        behavior = self._streaming(name, inner) if handler.response_streaming else self._unary(name, inner)
        return _FACTORY[shape](behavior, request_deserializer=handler.request_deserializer,
                               response_serializer=handler.response_serializer)

    def _observe(self, name: str, context, started: float, error: BaseException | None, uploaded: list[int]) -> None:
        code = _code(context, error)
        self.t.rpc_seconds.labels(method=name, code=code).observe(time.monotonic() - started)
        if name == UPLOAD and code == "OK":
            self.t.checkpoint_stored(sum(uploaded))

    def _requests(self, name: str, request: Any, uploaded: list[int]) -> Any:
        if name != UPLOAD or not hasattr(request, "__next__"):
            return request

        def counted(messages: Iterator[Any]) -> Iterator[Any]:
            for message in messages:
                n = len(getattr(message, "data", b""))
                uploaded.append(n)
                self.t.upload_bytes.inc(n)
                yield message
        return counted(request)

    def _unary(self, name: str, inner: Callable) -> Callable:
        def behavior(request, context):
            started, uploaded, error = time.monotonic(), [], None
            try:
                return inner(self._requests(name, request, uploaded), context)
            except BaseException as err:
                error = err
                raise
            finally:
                self._observe(name, context, started, error, uploaded)
        return behavior

    def _streaming(self, name: str, inner: Callable) -> Callable:
        def behavior(request, context):
            started, uploaded, error = time.monotonic(), [], None
            try:
                for response in inner(self._requests(name, request, uploaded), context):
                    if name in DOWNLOADS:
                        self.t.download_bytes.labels(via="grpc").inc(len(getattr(response, "data", b"")))
                    yield response
            except BaseException as err:
                error = err
                raise
            finally:
                self._observe(name, context, started, error, uploaded)
        return behavior
