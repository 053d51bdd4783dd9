"""The gradmesh Python client: submit, watch and fetch training jobs from a running coordinator.

    from coordinator.client import Client

    with Client("127.0.0.1:50051", token="...") as gm:          # or GRADMESH_ADDRESS / GRADMESH_TOKEN,
        job = gm.submit("examples/digits.toml", workers=2)     # or Client(data_dir="~/.gradmesh")
        for event in gm.watch(job.id):                         # ends when the job ends; survives reconnects
            if isinstance(event, MetricReported):
                print(event.point.step, event.point.train_loss)
        job = gm.get(job.id)
        if job.state is JobState.SUCCEEDED:
            gm.download(job.id, "best.npz", best=True)         # sha256-verified, atomically renamed

Every result is a frozen dataclass (JobInfo, MetricPoint, CheckpointInfo, ...), never a protobuf
message. Every call has a deadline (`timeout`, long ones `stream_timeout`) and every failure is a
`GradmeshError` subclass translated from the gRPC status: InvalidSpec (with `.field`/`.reason`),
JobNotFound, CheckpointNotFound, NotAuthorized, Unavailable, FailedPrecondition, AlreadyExists,
DeadlineExceeded, NotSupported, ChecksumMismatch, ServerError. `str(err)` is one line a person can act on.

The channel sends keepalive pings, so a stream over a dead network fails instead of hanging, and
`watch()` reconnects on UNAVAILABLE (a restarting coordinator) with the last step it saw, replaying
the missed metric points and state changes, so a caller misses nothing.
"""
from __future__ import annotations

import enum
import hashlib
import json
import math
import os
import queue
import re
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import grpc

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as pb_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
ADDRESS_ENV = "GRADMESH_ADDRESS"
TOKEN_ENV = "GRADMESH_TOKEN"
TLS_CA_ENV = "GRADMESH_TLS_CA"
TOKEN_FILE = "token"  # inside the coordinator's data directory
METRICS_PAGE_MIN = 1000  # GetMetrics replies this long may be capped: ask again from the step after the last

# Pings detect a dead peer on long streams (watch, logs -f); the reconnect backoff is capped low so a
# coordinator that comes back is found within a second or two instead of gRPC's default 2 minutes.
CHANNEL_OPTIONS = (
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1_000),
    ("grpc.max_receive_message_length", 8 << 20),
)


# ---------------------------------------------------------------- errors

class GradmeshError(Exception):
    """Base of every error the client raises. `code` is the gRPC status code name (or a local kind)."""

    code = "UNKNOWN"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(GradmeshError):
    """The request was malformed. `field` names the offending field (dotted), `reason` says why."""

    code = "INVALID_ARGUMENT"

    def __init__(self, message: str, field: str = "", reason: str = ""):
        super().__init__(message)
        self.field = field
        self.reason = reason or message


class InvalidSpec(InvalidArgument):
    """The job spec was refused; `field` is the dotted spec key (e.g. "train.batch_size") or "file"."""


class NotFound(GradmeshError):
    code = "NOT_FOUND"


class JobNotFound(NotFound):
    """No job with that id."""


class CheckpointNotFound(NotFound):
    """The job exists but has no checkpoint matching the request."""


class AlreadyExists(GradmeshError):
    """A job with that id already exists with a different spec."""

    code = "ALREADY_EXISTS"


class FailedPrecondition(GradmeshError):
    """The job is not in a state that allows this (e.g. resuming a running job)."""

    code = "FAILED_PRECONDITION"


class NotAuthorized(GradmeshError):
    """The token is missing or wrong."""

    code = "UNAUTHENTICATED"


class Unavailable(GradmeshError):
    """The coordinator cannot be reached."""

    code = "UNAVAILABLE"


class DeadlineExceeded(GradmeshError):
    code = "DEADLINE_EXCEEDED"


class ChecksumMismatch(GradmeshError):
    """A downloaded checkpoint's sha256 or size differs from what the coordinator announced."""

    code = "DATA_LOSS"


class NotSupported(GradmeshError):
    """This coordinator does not implement the operation (UNIMPLEMENTED)."""

    code = "UNIMPLEMENTED"


class ServerError(GradmeshError):
    """Anything else the server answered (INTERNAL, UNKNOWN, ...)."""


_FIELD_PREFIX = re.compile(r"^([A-Za-z_][\w.\[\]]*): (.*)$", re.S)


def translate_error(err: grpc.RpcError, *, address: str, what: str = "", tls: bool | None = None) -> GradmeshError:
    """Turn a gRPC failure into the matching GradmeshError, with a message a person can act on."""
    code = err.code() if hasattr(err, "code") else grpc.StatusCode.UNKNOWN
    details = (err.details() if hasattr(err, "details") else None) or ""
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        field_name, reason = _field_of(err, details)
        request_field = field_name.split(".")[0] in ("job_id", "labels", "page_token", "page_size")
        cls = InvalidSpec if what == "submit" and not request_field else InvalidArgument
        return cls(details or "invalid argument", field=field_name, reason=reason)
    if code == grpc.StatusCode.NOT_FOUND:
        cls = CheckpointNotFound if "checkpoint" in details.lower() else JobNotFound
        return cls(details or "not found")
    if code == grpc.StatusCode.ALREADY_EXISTS:
        return AlreadyExists(details or "already exists")
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return FailedPrecondition(details or "failed precondition")
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        hint = " (give --token, GRADMESH_TOKEN or --data-dir)"
        return NotAuthorized(f"not authorized by the coordinator at {address}: {details or code.name.lower()}{hint}")
    if code == grpc.StatusCode.UNAVAILABLE:
        lower = details.lower()
        if "refused" in lower:
            reason = "connection refused (is `gradmesh serve` running there?)"
        elif "handshake" in lower or "ssl" in lower:
            reason = "TLS handshake failed (does the coordinator use TLS, and is --tls-ca its certificate or CA?)"
        elif tls is False and "socket closed" in lower:
            reason = "the connection was closed at once (if the coordinator uses TLS, give --tls-ca)"
        else:
            reason = details or "unavailable"
        return Unavailable(f"cannot reach the coordinator at {address}: {reason}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceeded(f"the coordinator at {address} did not answer in time ({what or 'call'})")
    if code == grpc.StatusCode.DATA_LOSS:  # the coordinator found its own copy corrupt while streaming it
        return ChecksumMismatch(details or "the coordinator reported data loss")
    if code == grpc.StatusCode.UNIMPLEMENTED:
        return NotSupported(details or f"the coordinator at {address} does not support {what or 'this call'}")
    err_obj = ServerError(f"coordinator error {code.name}: {details}")
    err_obj.code = code.name
    return err_obj


def _field_of(err: grpc.RpcError, details: str) -> tuple[str, str]:
    try:
        for key, value in err.trailing_metadata() or ():
            if key == "gradmesh-field":
                reason = details.split(": ", 1)[1] if details.startswith(value + ": ") else details
                return value, reason
    except Exception:  # noqa: BLE001 - trailing metadata is optional; fall back to parsing the text
        pass
    match = _FIELD_PREFIX.match(details)
    if match:
        return match.group(1), match.group(2)
    return "", details


# ---------------------------------------------------------------- typed results

class JobState(str, enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    RESTARTING = "RESTARTING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    UNSPECIFIED = "JOB_STATE_UNSPECIFIED"

    def is_terminal(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)

    @classmethod
    def from_pb(cls, value: int) -> "JobState":
        return cls(pb.JobState.Name(value))

    @classmethod
    def parse(cls, value: "str | JobState") -> "JobState":
        if isinstance(value, JobState):
            return value
        try:
            return cls(str(value).strip().upper())
        except ValueError:
            allowed = ", ".join(s.value for s in cls if s is not cls.UNSPECIFIED)
            raise InvalidArgument(f"state: unknown state {value!r} (one of {allowed})",
                                  field="state", reason=f"unknown state {value!r}") from None

    def to_pb(self) -> int:
        return pb.JobState.Value(self.value)


def _opt(value: float) -> float | None:
    """NaN (not measured) becomes None, so results serialise to JSON as null."""
    return None if math.isnan(value) else value


@dataclass(frozen=True)
class MetricPoint:
    step: int
    epoch: int
    train_loss: float | None
    val_loss: float | None          # None when not evaluated at this step
    val_accuracy: float | None      # None when not evaluated (or for mse)
    samples_per_second: float
    lr: float
    time_unix: float
    attempt: int

    @classmethod
    def from_pb(cls, m: pb.MetricPoint) -> "MetricPoint":
        return cls(step=m.step, epoch=m.epoch, train_loss=_opt(m.train_loss), val_loss=_opt(m.val_loss),
                   val_accuracy=_opt(m.val_accuracy), samples_per_second=m.samples_per_second, lr=m.lr,
                   time_unix=m.time_unix, attempt=m.attempt)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class StateChange:
    state: JobState
    message: str
    time_unix: float
    attempt: int

    @classmethod
    def from_pb(cls, s: pb.StateChange) -> "StateChange":
        return cls(state=JobState.from_pb(s.state), message=s.message, time_unix=s.time_unix, attempt=s.attempt)

    def key(self) -> tuple:
        return (self.state, round(self.time_unix, 6), self.attempt)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state.value, "message": self.message, "time_unix": self.time_unix,
                "attempt": self.attempt}


@dataclass(frozen=True)
class JobInfo:
    id: str
    name: str
    spec_json: str
    state: JobState
    message: str
    workers: int
    priority: int
    labels: Mapping[str, str]
    step: int
    total_steps: int
    epoch: int
    latest: MetricPoint | None
    best: MetricPoint | None
    samples_per_second: float
    eta_seconds: float | None       # None when unknown
    attempts: int
    restarts: int
    created_unix: float
    started_unix: float | None      # None until it first runs
    ended_unix: float | None        # None until terminal
    history: tuple[StateChange, ...] = field(default=())

    @classmethod
    def from_pb(cls, j: pb.Job) -> "JobInfo":
        return cls(
            id=j.id, name=j.name, spec_json=j.spec_json, state=JobState.from_pb(j.state), message=j.message,
            workers=j.workers, priority=j.priority, labels=dict(j.labels), step=j.step,
            total_steps=j.total_steps, epoch=j.epoch,
            latest=MetricPoint.from_pb(j.latest) if j.HasField("latest") else None,
            best=MetricPoint.from_pb(j.best) if j.HasField("best") else None,
            samples_per_second=j.samples_per_second,
            eta_seconds=j.eta_seconds if j.eta_seconds >= 0 else None,
            attempts=j.attempts, restarts=j.restarts, created_unix=j.created_unix,
            started_unix=j.started_unix or None, ended_unix=j.ended_unix or None,
            history=tuple(StateChange.from_pb(s) for s in j.history))

    @property
    def spec(self) -> dict[str, Any]:
        return json.loads(self.spec_json) if self.spec_json else {}

    def is_terminal(self) -> bool:
        return self.state.is_terminal()

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("spec_json", "history")}
        out["state"] = self.state.value
        out["labels"] = dict(self.labels)
        out["latest"] = self.latest.to_dict() if self.latest else None
        out["best"] = self.best.to_dict() if self.best else None
        out["spec"] = self.spec
        out["history"] = [s.to_dict() for s in self.history]
        return out


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    epoch: int
    size_bytes: int
    sha256: str
    val_loss: float | None
    val_accuracy: float | None
    is_final: bool
    created_unix: float
    attempt: int

    @classmethod
    def from_pb(cls, c: pb.CheckpointInfo) -> "CheckpointInfo":
        return cls(step=c.step, epoch=c.epoch, size_bytes=c.size_bytes, sha256=c.sha256,
                   val_loss=_opt(c.val_loss), val_accuracy=_opt(c.val_accuracy), is_final=c.is_final,
                   created_unix=c.created_unix, attempt=c.attempt)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Download:
    """A checkpoint written to `path`, whose bytes matched `info.sha256` and `info.size_bytes`."""
    path: Path
    info: CheckpointInfo
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"path": str(self.path), "checkpoint": self.info.to_dict(), "seconds": self.seconds}


class WatchEvent:
    """Base of what `Client.watch()` yields."""


@dataclass(frozen=True)
class JobSnapshot(WatchEvent):
    """The job as it is now: first event of the stream, and again after every reconnect."""
    job: JobInfo


@dataclass(frozen=True)
class JobStateChanged(WatchEvent):
    change: StateChange


@dataclass(frozen=True)
class MetricReported(WatchEvent):
    point: MetricPoint


# ---------------------------------------------------------------- the client

def resolve_token(token: str | None = None, data_dir: str | Path | None = None) -> str | None:
    """The bearer token: the argument, else GRADMESH_TOKEN, else DATA_DIR/token (when data_dir is given)."""
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
            raise NotAuthorized(f"cannot read the token file {path}: {exc.strerror or exc}") from None
    return None


def read_spec_text(spec: "str | Path | Mapping[str, Any]") -> str:
    """Spec text to send: a Path (or a str naming a file) is read, a dict becomes JSON, other text is sent as is."""
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec))
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_path(spec)):
        path = Path(spec).expanduser()
        try:
            return path.read_text()
        except OSError as exc:
            raise InvalidSpec(f"file: cannot read {path}: {exc.strerror or exc}", field="file",
                              reason=f"cannot read {path}: {exc.strerror or exc}") from None
    if isinstance(spec, str):
        return spec
    raise TypeError(f"spec must be a path, TOML/JSON text or a dict, not {type(spec).__name__}")


def _looks_like_path(text: str) -> bool:
    if "\n" in text or "=" in text or text.lstrip().startswith("{"):
        return False
    return os.path.exists(os.path.expanduser(text)) or text.endswith((".toml", ".json"))


class _HashingWriter:
    """Hashes and writes chunks on its own thread, so receiving the next chunk overlaps with both (sha256 and
    write() release the GIL); finish() flushes, fsyncs and returns (size, sha256 hex)."""

    _DONE = object()

    def __init__(self, out):
        self._out = out
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._digest = hashlib.sha256()
        self._size = 0
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="gradmesh-download", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                data = self._queue.get()
                if data is self._DONE:
                    self._out.flush()
                    os.fsync(self._out.fileno())
                    return
                self._digest.update(data)
                self._out.write(data)
                self._size += len(data)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread by finish()
            self._error = exc
            while self._queue.get() is not self._DONE:  # keep draining so put() never blocks forever
                pass
        finally:
            self._out.close()

    def put(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def finish(self) -> tuple[int, str]:
        self._closed = True
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._size, self._digest.hexdigest()

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(self._DONE)
            self._thread.join()


class Client:
    """A connection to one coordinator. Thread-safe; close it (or use `with`) when done."""

    def __init__(self, address: str | None = None, token: str | None = None, tls_ca: str | Path | None = None,
                 timeout: float = 10.0, *, data_dir: str | Path | None = None, stream_timeout: float = 3600.0,
                 reconnect_timeout: float = 120.0):
        self.address = address or os.environ.get(ADDRESS_ENV, "").strip() or DEFAULT_ADDRESS
        self.token = resolve_token(token, data_dir)
        self.timeout = timeout
        self.stream_timeout = stream_timeout          # deadline of one long stream (watch/logs -f/download)
        self.reconnect_timeout = reconnect_timeout    # how long watch() keeps retrying an unreachable server
        tls_ca = tls_ca or os.environ.get(TLS_CA_ENV) or None
        self.tls = bool(tls_ca)
        if tls_ca:
            try:
                roots = Path(tls_ca).expanduser().read_bytes()
            except OSError as exc:
                raise GradmeshError(f"cannot read the TLS CA file {tls_ca}: {exc.strerror or exc}") from None
            creds = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(self.address, creds, options=CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self._stub = pb_grpc.JobServiceStub(self._channel)
        self._metadata = (("authorization", f"Bearer {self.token}"),) if self.token else ()

    # -- plumbing

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method: str, request: Any, what: str, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=timeout or self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise translate_error(err, address=self.address, what=what, tls=self.tls) from None

    def _error(self, err: grpc.RpcError, what: str) -> GradmeshError:
        return translate_error(err, address=self.address, what=what, tls=self.tls)

    # -- jobs

    def submit(self, spec: "str | Path | Mapping[str, Any]", job_id: str | None = None,
               labels: Mapping[str, str] | None = None, workers: int | None = None) -> JobInfo:
        """Submit a job (spec file path, TOML/JSON text or dict). Idempotent on `job_id` with the same spec."""
        request = pb.SubmitJobRequest(spec=read_spec_text(spec), job_id=job_id or "",
                                      labels=dict(labels or {}), workers=int(workers or 0))
        return JobInfo.from_pb(self._unary("SubmitJob", request, "submit").job)

    def get(self, job_id: str) -> JobInfo:
        return JobInfo.from_pb(self._unary("GetJob", pb.GetJobRequest(job_id=job_id), "get"))

    def list(self, states: Iterable["str | JobState"] | None = None, page_size: int = 200) -> Iterator[JobInfo]:
        """Every job (newest first), optionally only in `states`; fetches page after page lazily."""
        wanted = [JobState.parse(s).to_pb() for s in (states or ())]
        token = ""
        while True:
            page = self._unary("ListJobs", pb.ListJobsRequest(states=wanted, page_size=page_size,
                                                              page_token=token), "list")
            for job in page.jobs:
                yield JobInfo.from_pb(job)
            token = page.next_page_token
            if not token:
                return

    def cancel(self, job_id: str, checkpoint: bool = False) -> JobInfo:
        """Ask the job to stop (with `checkpoint`, after writing a final checkpoint). Returns at once."""
        return JobInfo.from_pb(self._unary("CancelJob", pb.CancelJobRequest(job_id=job_id, checkpoint=checkpoint),
                                           "cancel"))

    def resume(self, job_id: str, workers: int | None = None) -> JobInfo:
        """Continue a FAILED or CANCELLED job from its newest checkpoint, optionally on another rank count.
        Terminal states are final, so the run is a NEW job (id "<id>-r<N>", label resumed_from=<id>): the
        returned JobInfo is that one."""
        return JobInfo.from_pb(self._unary("ResumeJob", pb.ResumeJobRequest(job_id=job_id, workers=int(workers or 0)),
                                           "resume"))

    def metrics(self, job_id: str, from_step: int = 0) -> list[MetricPoint]:
        """The job's metric history from `from_step`, in step order. A long history comes in several replies
        (a reply of METRICS_PAGE_MIN or more points may be capped by the server, so the next one starts
        after its last step), which keeps every message under gRPC's size limit."""
        points: list[MetricPoint] = []
        while True:
            reply = self._unary("GetMetrics", pb.GetMetricsRequest(job_id=job_id, from_step=from_step), "metrics")
            points.extend(MetricPoint.from_pb(p) for p in reply.points)
            if len(reply.points) < METRICS_PAGE_MIN:
                return points
            from_step = reply.points[-1].step + 1

    def checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        reply = self._unary("ListCheckpoints", pb.ListCheckpointsRequest(job_id=job_id), "checkpoints")
        return [CheckpointInfo.from_pb(c) for c in reply.checkpoints]

    # -- streams

    def watch(self, job_id: str, from_step: int = 0) -> Iterator[WatchEvent]:
        """Yield the job's snapshot, then every state change and metric point, until it reaches a terminal state.

        When the connection drops (UNAVAILABLE, or the stream deadline passes) it reconnects asking for
        the steps after the last one it yielded and replays state changes the new snapshot's history shows
        as missed, for up to `reconnect_timeout` seconds of consecutive failure.
        """
        next_step = from_step
        seen_changes: set[tuple] = set()
        connected_once = False
        down_since: float | None = None
        delay = 0.1
        while True:
            call = self._stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_step=next_step),
                                       timeout=self.stream_timeout, metadata=self._metadata)
            ended = False  # a terminal state was seen on this connection
            try:
                for raw in call:
                    down_since, delay = None, 0.1
                    kind = raw.WhichOneof("event")
                    if kind == "snapshot":
                        job = JobInfo.from_pb(raw.snapshot)
                        if connected_once:
                            # what changed while we were away, in order, before the new picture
                            for change in job.history:
                                if change.key() not in seen_changes:
                                    seen_changes.add(change.key())
                                    yield JobStateChanged(change)
                        else:
                            seen_changes.update(c.key() for c in job.history)
                        connected_once = True
                        ended = job.is_terminal()  # an ended job's stream still replays its metrics
                        yield JobSnapshot(job)
                    elif kind == "state":
                        change = StateChange.from_pb(raw.state)
                        if change.key() not in seen_changes:
                            seen_changes.add(change.key())
                            yield JobStateChanged(change)
                        if change.state.is_terminal():
                            return
                    elif kind == "metric":
                        point = MetricPoint.from_pb(raw.metric)
                        next_step = max(next_step, point.step + 1)
                        yield MetricReported(point)
                if ended:
                    return
                # The server ends the stream only after a terminal event; an end without one is a drop.
            except grpc.RpcError as err:
                if err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    raise self._error(err, "watch") from None
            finally:
                call.cancel()
            now = time.monotonic()
            down_since = down_since or now
            if now - down_since > self.reconnect_timeout:
                raise Unavailable(f"lost the watch of job {job_id}: cannot reach the coordinator at {self.address} "
                                  f"for {self.reconnect_timeout:.0f} s") from None
            time.sleep(delay)
            delay = min(delay * 2, 1.0)

    def wait(self, job_id: str) -> JobInfo:
        """Block until the job reaches a terminal state (through watch(), so reconnects included); return it."""
        for _ in self.watch(job_id):
            pass
        return self.get(job_id)

    def logs(self, job_id: str, follow: bool = False, attempt: int = 0) -> Iterator[bytes]:
        """The job's log (the latest attempt unless `attempt`), as chunks of bytes; `follow` waits for more
        until the job ends. Not resumed after a drop (the log has no offset to resume from): a dropped
        stream raises Unavailable, and the stream's deadline is `stream_timeout`."""
        call = self._stub.StreamLogs(pb.StreamLogsRequest(job_id=job_id, follow=follow, attempt=attempt),
                                     timeout=self.stream_timeout, metadata=self._metadata)
        try:
            for chunk in call:
                yield chunk.data
        except grpc.RpcError as err:
            raise self._error(err, "logs") from None
        finally:
            call.cancel()

    def download(self, job_id: str, path: str | Path, step: int | None = None, best: bool = False,
                 latest: bool = False) -> Download:
        """Stream a checkpoint (`step`, `best`, else the latest) to `path`, verify its sha256 and size, then
        rename it into place; a mismatch raises ChecksumMismatch and leaves `path` untouched."""
        if sum((step is not None, best, latest)) > 1:
            raise InvalidArgument("which: give at most one of step, best, latest", field="which",
                                  reason="give at most one of step, best, latest")
        if step is not None:
            request = pb.DownloadCheckpointRequest(job_id=job_id, step=int(step))
        elif best:
            request = pb.DownloadCheckpointRequest(job_id=job_id, best=True)
        else:
            request = pb.DownloadCheckpointRequest(job_id=job_id, latest=True)
        path = Path(path).expanduser()
        target_dir = path.parent if str(path.parent) else Path(".")
        target_dir.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=target_dir)
        call = self._stub.DownloadCheckpoint(request, timeout=self.stream_timeout, metadata=self._metadata)
        sink = _HashingWriter(os.fdopen(fd, "wb"))
        info = None
        try:
            for chunk in call:
                if info is None:
                    if not chunk.HasField("info"):
                        raise ChecksumMismatch("the coordinator sent checkpoint data before its sha256")
                    info = CheckpointInfo.from_pb(chunk.info)
                data = chunk.data
                if data:
                    sink.put(data)
            size, sha256 = sink.finish()
            if info is None:
                raise ChecksumMismatch(f"the coordinator sent an empty stream for job {job_id}'s checkpoint")
            if size != info.size_bytes or sha256 != info.sha256.lower():
                raise ChecksumMismatch(
                    f"checkpoint of job {job_id} at step {info.step} is corrupt: got {size} bytes with sha256 "
                    f"{sha256}, expected {info.size_bytes} bytes with sha256 {info.sha256}")
            os.replace(tmp_name, path)
            tmp_name = None
        except grpc.RpcError as err:
            raise self._error(err, "download") from None
        finally:
            call.cancel()
            sink.abort()
            if tmp_name is not None:
                try:
                    os.unlink(tmp_name)
                except OSError:
                    pass
        return Download(path=path, info=info, seconds=time.perf_counter() - started)


__all__ = [
    "Client", "JobState", "JobInfo", "MetricPoint", "StateChange", "CheckpointInfo", "Download",
    "WatchEvent", "JobSnapshot", "JobStateChanged", "MetricReported",
    "GradmeshError", "InvalidArgument", "InvalidSpec", "NotFound", "JobNotFound", "CheckpointNotFound",
    "AlreadyExists", "FailedPrecondition", "NotAuthorized", "Unavailable", "DeadlineExceeded",
    "NotSupported", "ChecksumMismatch", "ServerError", "translate_error", "resolve_token", "read_spec_text",
    "DEFAULT_ADDRESS",
]
