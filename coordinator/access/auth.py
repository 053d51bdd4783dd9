"""Who may call what: the server's one interceptor, in front of every service it serves.

    gradmesh.v1.JobService, server reflection and anything else    ("authorization", "Bearer <a user's token>")
    gradmesh.v1.WorkerService    ("x-gradmesh-job-token", "<token>"): the token of a running attempt; which
                                 job it may touch is checked by the core (coordinator.jobs.worker_api)
    grpc.health.v1.Health        no token

A user's token is live while the user exists and the token has not expired (coordinator.team.accounts finds
it by its sha256 and says why not); what the user may do is decided later, per call, by their role
(coordinator.access.roles). Both tokens are checked from the call's metadata alone, on gRPC's dispatch thread, before a single message
is read: a refused call is answered UNAUTHENTICATED at once and holds no thread and no capacity, so callers
without credentials cannot starve anyone. An accepted call is then admitted under its class's cap
(coordinator.access.admission). A worker token is live while its attempt runs: the store finds the RUNNING job
whose current attempt holds a token with its sha256 (Store.job_of_token, an index lookup).
"""
from __future__ import annotations

import logging
from typing import Callable

import grpc

from coordinator.access.admission import CLIENT, OPEN, WORKER, Admission, refusing
from coordinator.wire import CLIENT_TOKEN_HEADER, JOB_TOKEN_ENV, JOB_TOKEN_HEADER, KIND_TOKEN

log = logging.getLogger("gradmesh.auth")

JOB_SERVICE = "/gradmesh.v1.JobService/"
WORKER_SERVICE = "/gradmesh.v1.WorkerService/"
HEALTH_SERVICE = "/grpc.health.v1.Health/"


def caller_class(method: str) -> str:
    """The capacity class of a method: the ranks' service, the open health service, or (default) a client's."""
    if method.startswith(WORKER_SERVICE):
        return WORKER
    if method.startswith(HEALTH_SERVICE):
        return OPEN
    return CLIENT


def _header(details: grpc.HandlerCallDetails, name: str) -> str:
    for key, value in details.invocation_metadata or ():
        if key == name:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return ""


class AuthInterceptor(grpc.ServerInterceptor):
    """`client_refusal(token)` says why a bearer token may not call (None: it may), `live_worker(token)` whether
    a worker token belongs to a running attempt; either may raise when the store is closing: the call is then
    answered UNAVAILABLE."""

    def __init__(self, client_refusal: Callable[[str], str | None], live_worker: Callable[[str], bool],
                 admission: Admission):
        self._client_refusal_of = client_refusal
        self._live_worker = live_worker
        self._admission = admission

    def intercept_service(self, continuation, handler_call_details):
        method = handler_call_details.method or ""
        handler = continuation(handler_call_details)
        if handler is None:
            return None  # gRPC answers UNIMPLEMENTED on the spot
        klass = caller_class(method)
        if klass == CLIENT:
            refusal = self._client_refusal(_header(handler_call_details, CLIENT_TOKEN_HEADER))
        elif klass == WORKER:
            refusal = self._worker_refusal(_header(handler_call_details, JOB_TOKEN_HEADER))
        else:
            refusal = None
        if refusal is not None:
            code, message = refusal
            return refusing(handler, code, message, KIND_TOKEN)
        return self._admission.admit(klass, method, handler)

    def _client_refusal(self, header: str) -> tuple[grpc.StatusCode, str] | None:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer":
            token = ""
        try:
            why = self._client_refusal_of(token.strip())
        except Exception as err:  # noqa: BLE001 - the store is closing: say so rather than fail the dispatch
            log.debug("cannot check a client token: %s: %s", type(err).__name__, err)
            return grpc.StatusCode.UNAVAILABLE, "the coordinator cannot check tokens now; retry shortly"
        return None if why is None else (grpc.StatusCode.UNAUTHENTICATED, why)

    def _worker_refusal(self, token: str) -> tuple[grpc.StatusCode, str] | None:
        if not token:
            return grpc.StatusCode.UNAUTHENTICATED, (
                f"{JOB_TOKEN_HEADER}: missing job token (workers get it in {JOB_TOKEN_ENV})")
        try:
            live = self._live_worker(token)
        except Exception as err:  # noqa: BLE001 - the store is closing: say so rather than fail the dispatch
            log.debug("cannot check a job token: %s: %s", type(err).__name__, err)
            return grpc.StatusCode.UNAVAILABLE, "the coordinator cannot check job tokens now; retry shortly"
        if live:
            return None
        return grpc.StatusCode.UNAUTHENTICATED, (
            f"{JOB_TOKEN_HEADER}: not the token of a running attempt (a token ends with its attempt)")
