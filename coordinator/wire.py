"""The wire contract shared by every gRPC peer: the coordinator, the client and the worker's reporter.

One module, importing nothing beyond the standard library and `coordinator.errors`, so the worker can use it without pulling in the
coordinator. Whatever two processes must agree on and is not in the proto lives here:

    metadata = ((JOB_TOKEN_HEADER, token),)                    # worker → coordinator
    channel = grpc.insecure_channel(address, options=channel_options())
    for chunk in verified(chunks, expected_sha256, expected_size): ...   # raises ChecksumMismatch at the end

Trailers: an error carries `gradmesh-kind` (what the status code is about: "job", "checkpoint",
"attempt", "field", ...) and, for INVALID_ARGUMENT, `gradmesh-field` (the dotted request field), both
ASCII, so a client maps errors without reading the message text.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from coordinator.errors import ChecksumMismatch, Unauthenticated

# ---------------------------------------------------------------- metadata and environment

CLIENT_TOKEN_HEADER = "authorization"          # value "Bearer <client token>"
JOB_TOKEN_HEADER = "x-gradmesh-job-token"      # the per-attempt worker token
FIELD_TRAILER = "gradmesh-field"
KIND_TRAILER = "gradmesh-kind"

ADDRESS_ENV = "GRADMESH_ADDRESS"
TOKEN_ENV = "GRADMESH_TOKEN"
TLS_CA_ENV = "GRADMESH_TLS_CA"
JOB_TOKEN_ENV = "GRADMESH_JOB_TOKEN"
DATA_ROOTS_ENV = "GRADMESH_DATA_ROOTS"         # the coordinator's data roots (os.pathsep-separated), for the ranks
DEFAULT_ADDRESS = "127.0.0.1:50051"
TOKEN_FILE = "token"                           # the client token's file in the coordinator's data directory
LOCK_FILE = "lock"                             # flock'ed by the coordinator that owns the data directory
OWNER_FILE = "coordinator.json"                # beside the token: that coordinator's pid, address and dashboard

# Values of KIND_TRAILER.
KIND_JOB = "job"
KIND_CHECKPOINT = "checkpoint"
KIND_ATTEMPT = "attempt"
KIND_FIELD = "field"
KIND_TOKEN = "token"
KIND_SWEEP = "sweep"

# ---------------------------------------------------------------- sizes

CHUNK_BYTES = 1 << 20            # the data payload of one checkpoint chunk (the API promises at most 1 MiB)
MAX_MESSAGE_BYTES = 8 << 20      # one chunk plus headroom; specs are limited to 1 MiB
METRICS_PAGE = 20_000            # points in one GetMetrics reply (~1.3 MB)

# ---------------------------------------------------------------- channels

# Worker calls that are safe to repeat (the coordinator ignores duplicate points and re-checks tokens)
# are retried by gRPC itself on UNAVAILABLE, with backoff, within each call's deadline.
_RETRY_POLICY = {
    "maxAttempts": 5,
    "initialBackoff": "0.2s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = json.dumps({
    "methodConfig": [{
        "name": [{"service": "gradmesh.v1.WorkerService", "method": "FetchJob"},
                 {"service": "gradmesh.v1.WorkerService", "method": "ReportProgress"},
                 {"service": "gradmesh.v1.JobService", "method": "GetJob"},
                 {"service": "gradmesh.v1.JobService", "method": "ListJobs"},
                 {"service": "gradmesh.v1.JobService", "method": "GetMetrics"},
                 {"service": "gradmesh.v1.JobService", "method": "ListCheckpoints"}],
        "retryPolicy": _RETRY_POLICY,
    }],
})


def channel_options(*, retries: bool = True) -> list[tuple[str, object]]:
    """Options for every channel to the coordinator: pings notice a dead peer on long streams (watch,
    logs -f, a rank's heartbeat), and the reconnect backoff is capped low so a restarted coordinator is
    found within a second or two instead of gRPC's default two minutes."""
    options: list[tuple[str, object]] = [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.keepalive_time_ms", 30_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        ("grpc.http2.ping_timeout_ms", 10_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", 250),
        ("grpc.min_reconnect_backoff_ms", 250),
        ("grpc.max_reconnect_backoff_ms", 2_000),
    ]
    if retries:
        options += [("grpc.enable_retries", 1), ("grpc.service_config", SERVICE_CONFIG)]
    else:
        options.append(("grpc.enable_retries", 0))
    return options


# Server side: allow the clients' pings (every ~30 s, also without calls in flight).
SERVER_OPTIONS: list[tuple[str, object]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 10_000),
    ("grpc.http2.max_ping_strikes", 0),
    ("grpc.so_reuseport", 0),
]

# ---------------------------------------------------------------- checksums


class Sha256Tally:
    """Running size and sha256 of a chunked stream; `check` compares them with what was announced."""

    def __init__(self) -> None:
        self._digest = hashlib.sha256()
        self.size = 0

    def add(self, chunk: bytes) -> None:
        self._digest.update(chunk)
        self.size += len(chunk)

    def hexdigest(self) -> str:
        return self._digest.hexdigest()

    def check(self, expected_sha256: str, expected_size: int | None = None, what: str = "the data") -> str:
        sha = self.hexdigest()
        if expected_size is not None and expected_size > 0 and self.size != expected_size:
            raise ChecksumMismatch(f"{what}: received {self.size} bytes but {expected_size} were announced")
        if sha != expected_sha256.lower():
            raise ChecksumMismatch(f"{what}: sha256 of the {self.size} bytes is {sha}, not the announced "
                                   f"{expected_sha256}")
        return sha


def verified(chunks: Iterable[bytes], expected_sha256: str, expected_size: int | None = None,
             what: str = "the data") -> Iterator[bytes]:
    """Pass `chunks` through; after the last one, raise ChecksumMismatch unless size and sha256 match."""
    tally = Sha256Tally()
    for chunk in chunks:
        tally.add(chunk)
        yield chunk
    tally.check(expected_sha256, expected_size, what)


def sha256_of_chunks(chunks: Iterable[bytes]) -> str:
    tally = Sha256Tally()
    for chunk in chunks:
        tally.add(chunk)
    return tally.hexdigest()


def owner_address(data_dir: str | Path) -> str | None:
    """The gRPC address of the coordinator that owns `data_dir` now (its DATA_DIR/coordinator.json, trusted
    only while that coordinator still holds the directory's lock); None when none does."""
    import fcntl
    directory = Path(data_dir).expanduser()
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            pass  # held: a coordinator owns the directory
        else:
            return None  # nobody holds it: what the file says is stale
        try:
            address = json.loads((directory / OWNER_FILE).read_text())["address"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return address if isinstance(address, str) and address else None
    finally:
        os.close(fd)


def resolve_token(token: str | None = None, data_dir: str | Path | None = None) -> str | None:
    """The client bearer token, for the SDK and a registering worker alike: the argument, else
    GRADMESH_TOKEN, else DATA_DIR/token (when data_dir is given)."""
    if token:
        return token
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env
    if data_dir is not None:
        path = Path(data_dir).expanduser() / TOKEN_FILE
        try:
            return path.read_text().strip()
        except OSError as exc:
            raise Unauthenticated(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    return None
