"""Who may call what: a server interceptor in front of both gradmesh services.

    JobService     needs ("authorization", "Bearer <token>") with the coordinator's client token
    WorkerService  needs ("x-gradmesh-job-token", "<token>"); that the token belongs to the job named in
                   the request is checked by the core, which knows the jobs (coordinator.worker_api)
    health, reflection and anything else: no token

A refused call is answered UNAUTHENTICATED before any of the service's code runs.
"""
from __future__ import annotations

import hmac
from typing import Callable

import grpc

from coordinator.wire import CLIENT_TOKEN_HEADER, JOB_TOKEN_ENV, JOB_TOKEN_HEADER, KIND_TOKEN, KIND_TRAILER

JOB_SERVICE = "/gradmesh.v1.JobService/"
WORKER_SERVICE = "/gradmesh.v1.WorkerService/"


def _metadata(details: grpc.HandlerCallDetails) -> dict[str, str]:
    found = {}
    for key, value in details.invocation_metadata or ():
        found[key] = value if isinstance(value, str) else value.decode(errors="replace")
    return found


def _denied(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that only refuses."""
    def refuse(request_or_iterator, context):
        context.set_trailing_metadata(((KIND_TRAILER, KIND_TOKEN),))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    def refuse_stream(request_or_iterator, context):
        context.set_trailing_metadata(((KIND_TRAILER, KIND_TOKEN),))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this a generator for streaming responses

    shape: dict[tuple[bool, bool], Callable] = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    key = (handler.request_streaming, handler.response_streaming)
    return shape[key](refuse_stream if handler.response_streaming else refuse,
                      request_deserializer=handler.request_deserializer,
                      response_serializer=handler.response_serializer)


class AuthInterceptor(grpc.ServerInterceptor):
    def __init__(self, client_token: str):
        self._token = client_token

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        if method.startswith(JOB_SERVICE):
            header = _metadata(handler_call_details).get(CLIENT_TOKEN_HEADER, "")
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._token.encode()):
                handler = continuation(handler_call_details)
                reason = "missing" if not header else "wrong"
                return None if handler is None else _denied(
                    handler, f"authorization: {reason} bearer token (send metadata 'authorization: Bearer <token>'; "
                             "the token is in the coordinator's DATA_DIR/token)")
        elif method.startswith(WORKER_SERVICE):
            if not _metadata(handler_call_details).get(JOB_TOKEN_HEADER):
                handler = continuation(handler_call_details)
                return None if handler is None else _denied(
                    handler, f"{JOB_TOKEN_HEADER}: missing job token (workers get it in {JOB_TOKEN_ENV})")
        return continuation(handler_call_details)
