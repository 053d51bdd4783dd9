"""gradmesh's one error vocabulary, shared by the coordinator core, the gRPC servicer and the client.

The core raises these and knows nothing of gRPC; the servicer turns each into its status code (the
`code` attribute, a `grpc.StatusCode` name) with the `gradmesh-kind` / `gradmesh-field` trailers of
`coordinator.wire`; the client turns a status code and those trailers back into the same class. So a
caller writes `except NotFound as err: if err.kind == "checkpoint": ...` on either side of the wire.

No imports beyond the standard library: the worker and the client use it without the coordinator.
"""
from __future__ import annotations


class GradmeshError(Exception):
    """Base of every gradmesh error. `str(err)` is the message a person reads; `code` the gRPC status name;
    `kind` what the error is about ("job", "checkpoint", "field", ...; "" when not said)."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, kind: str = ""):
        super().__init__(message)
        self.message = message
        self.kind = kind


class InvalidArgument(GradmeshError):
    """A request field is malformed or invalid. `field` is its dotted name (for a job spec, the spec key
    such as "train.batch_size", or "file" when the text does not parse); `reason` says why."""

    code = "INVALID_ARGUMENT"

    def __init__(self, field: str, reason: str, *, kind: str = "field"):
        super().__init__(f"{field}: {reason}" if field else reason, kind=kind)
        self.field = field
        self.reason = reason


class NotFound(GradmeshError):
    """The job (kind "job") or checkpoint (kind "checkpoint") does not exist."""

    code = "NOT_FOUND"


class AlreadyExists(GradmeshError):
    """A job with this id exists with a different spec."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(GradmeshError):
    """The request is valid but not in the job's current state (e.g. resuming a running job)."""

    code = "FAILED_PRECONDITION"


class Unauthenticated(GradmeshError):
    """A missing or wrong token."""

    code = "UNAUTHENTICATED"


class PermissionDenied(GradmeshError):
    """The caller is known but its role does not allow this (a member cancelling a colleague's job, a viewer
    submitting). `kind` says what was refused ("job", "user", "host", "audit"); the message names the owner."""

    code = "PERMISSION_DENIED"


class ResourceExhausted(GradmeshError):
    """A documented limit was reached (queued jobs, points per report, disk space, ...)."""

    code = "RESOURCE_EXHAUSTED"


class Unavailable(GradmeshError):
    """The coordinator cannot be reached, or is shutting down; retrying later can help."""

    code = "UNAVAILABLE"


class DeadlineExceeded(GradmeshError):
    """The call did not complete within its deadline."""

    code = "DEADLINE_EXCEEDED"


class DataLoss(GradmeshError):
    """Stored or transferred bytes no longer match their recorded sha256."""

    code = "DATA_LOSS"


class ChecksumMismatch(DataLoss):
    """Bytes received or read back do not have the size or sha256 announced for them."""


class Unimplemented(GradmeshError):
    """The peer does not implement this call (an older coordinator)."""

    code = "UNIMPLEMENTED"


class Internal(GradmeshError):
    """Anything else: a bug on the other side (INTERNAL, UNKNOWN, ...)."""

    code = "INTERNAL"


BY_CODE: dict[str, type[GradmeshError]] = {
    cls.code: cls for cls in (InvalidArgument, NotFound, AlreadyExists, FailedPrecondition, Unauthenticated,
                              PermissionDenied, ResourceExhausted, Unavailable, DeadlineExceeded, DataLoss, Unimplemented, Internal)
}
