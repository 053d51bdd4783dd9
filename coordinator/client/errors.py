"""From a gRPC status back to gradmesh's one error vocabulary (`coordinator.errors`), on the client's side.

The coordinator's servicer turns each error into a status code plus two ASCII trailers (`coordinator.wire`):
`gradmesh-kind` says what the error is about ("job", "checkpoint", ...) and, for INVALID_ARGUMENT,
`gradmesh-field` names the dotted request field. `translate_error` reads exactly those — never the words of
the message — and raises the same class the core raised:

    except NotFound as err:
        if err.kind == KIND_CHECKPOINT: ...          # the job exists, the checkpoint does not

Only UNAVAILABLE looks at text: gRPC's own transport details ("connection refused", a failed TLS handshake),
which come from the gRPC library on this machine, not from the coordinator, and become a hint for a person.
"""
from __future__ import annotations

import grpc

from coordinator.errors import (
    AlreadyExists, DataLoss, DeadlineExceeded, FailedPrecondition, GradmeshError, Internal, InvalidArgument,
    NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable, Unimplemented,
)
from coordinator.wire import FIELD_TRAILER, KIND_FIELD, KIND_TRAILER


class InvalidSpec(InvalidArgument):
    """SubmitJob refused the job spec itself: `field` is the dotted spec key ("train.batch_size", "workers")
    or "file" when the spec could not be read or parsed. A client-side refinement of InvalidArgument, so
    `gradmesh submit` can say "invalid job spec" instead of "invalid argument"."""


# SubmitJobRequest fields that are not part of the spec (an error naming one is a plain InvalidArgument).
_SUBMIT_REQUEST_FIELDS = ("job_id", "labels")

_AUTH_HINT = " (give --token, GRADMESH_TOKEN or --data-dir)"


def translate_error(err: grpc.RpcError, *, address: str, what: str = "", tls: bool = False) -> GradmeshError:
    """The GradmeshError for a failed call: its class from the status code, its `kind` and `field` from the
    trailers. `what` names the call ("submit", "download", ...); `tls` says whether the channel uses TLS."""
    code, details = err.code(), err.details() or ""
    trailers = dict(err.trailing_metadata() or ())
    kind = trailers.get(KIND_TRAILER, "")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field = trailers.get(FIELD_TRAILER, "")
        reason = details[len(field) + 2:] if field and details.startswith(f"{field}: ") else details
        spec_error = what == "submit" and field.split(".")[0] not in _SUBMIT_REQUEST_FIELDS
        return (InvalidSpec if spec_error else InvalidArgument)(field, reason or "invalid argument",
                                                                kind=kind or KIND_FIELD)
    if code == grpc.StatusCode.NOT_FOUND:
        return NotFound(details or "not found", kind=kind)
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(details or "already exists", kind=kind)
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(details or "failed precondition", kind=kind)
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return ResourceExhausted(details or "a limit was reached", kind=kind)
    if code == grpc.StatusCode.PERMISSION_DENIED:   # a known user whose role does not allow it
        return PermissionDenied(details or "permission denied", kind=kind)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return Unauthenticated(f"not authorized by the coordinator at {address}: "
                               f"{details or code.name.lower()}{_AUTH_HINT}", kind=kind)
    if code == grpc.StatusCode.UNAVAILABLE:
        return Unavailable(f"cannot reach the coordinator at {address}: {_unreachable_reason(details, tls)}",
                           kind=kind)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the coordinator at {address} did not answer in time ({what or 'call'})", kind=kind)
    if code == grpc.StatusCode.DATA_LOSS:  # the coordinator found its own stored copy corrupt
        return DataLoss(details or "the coordinator reported data loss", kind=kind)
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return Unimplemented(details or f"the coordinator at {address} does not support {what or 'this call'}",
                             kind=kind)
    return Internal(f"coordinator error {code.name}: {details}", kind=kind)


def _unreachable_reason(transport_details: str, tls: bool) -> str:
    """A hint from gRPC's own transport message (not the coordinator's) for why nothing answered."""
    lower = transport_details.lower()
    if "refused" in lower:
        return "connection refused (is `gradmesh serve` running there?)"
    if "parsing http/2" in lower or "http/1" in lower:  # the server there speaks HTTP/1.1: not a gRPC port
        return ("it answers plain HTTP, not gRPC: is that the web dashboard's port? Give the coordinator's gRPC "
                "port (the one `gradmesh serve` prints as 'listening on'; the dashboard's is that + 1)")
    if "handshake" in lower or "ssl" in lower:
        return "TLS handshake failed (does the coordinator use TLS, and is --tls-ca its certificate or CA?)"
    if not tls and "socket closed" in lower:
        return "the connection was closed at once (if the coordinator uses TLS, give --tls-ca)"
    return transport_details or "unavailable"
