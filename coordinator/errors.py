"""Typed errors of the coordinator core, one per gRPC status a client can act on.

The core (`coordinator.jobs`) raises these and knows nothing of gRPC; `coordinator.servicer` maps
them to status codes. Every message has the form "<field or subject>: <reason>" so a person (and
the client, which parses the prefix) can see what was wrong.
"""
from __future__ import annotations


class CoordinatorError(Exception):
    """Base class; `str(err)` is the message sent to the client."""


class InvalidArgument(CoordinatorError):
    """A request field is malformed or invalid (INVALID_ARGUMENT)."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class NotFound(CoordinatorError):
    """The job or checkpoint does not exist (NOT_FOUND)."""


class AlreadyExists(CoordinatorError):
    """A job with this id exists with a different spec (ALREADY_EXISTS)."""


class FailedPrecondition(CoordinatorError):
    """The request is valid but not in the job's current state (FAILED_PRECONDITION)."""


class Unauthenticated(CoordinatorError):
    """A missing or wrong token (UNAUTHENTICATED)."""


class Unimplemented(CoordinatorError):
    """The API has the call but this coordinator does not support it yet (UNIMPLEMENTED)."""


class Unavailable(CoordinatorError):
    """The coordinator is shutting down; retry against the restarted one (UNAVAILABLE)."""


class DataLoss(CoordinatorError):
    """A stored file no longer matches its recorded sha256 (DATA_LOSS)."""
