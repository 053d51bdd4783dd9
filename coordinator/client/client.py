"""`Client`: one connection to a coordinator — submit, list, watch, fetch metrics, logs and checkpoints.

Every call has a deadline (`timeout`; the long streams `stream_timeout`) and every failure raises a class of
`coordinator.errors` (see `coordinator.client.errors`). The channel sends keepalive pings, so a stream over
a dead network fails instead of hanging; `watch()` reconnects on UNAVAILABLE on its own.
A download's file (written, hashed, verified, renamed into place) is coordinator.client.downloads' part.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import grpc

from coordinator import wire
from coordinator.wire import resolve_token
from coordinator.client.downloads import receive_checkpoint
from coordinator.client.errors import InvalidSpec, translate_error
from coordinator.client.sweeps import SweepCalls
from coordinator.client.types import (
    AuditEntry, UserInfo, role_to_pb,
    CheckpointInfo, DeletedJob, HostInfo, Download, JobInfo, JobSnapshot, JobState, JobStateChanged, MetricPoint, MetricReported,
    StateChange, WatchEvent, parse_state,
)
from coordinator.errors import GradmeshError, InvalidArgument, Unavailable
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as pb_grpc



def read_spec_text(spec: "str | Path | Mapping[str, Any]") -> str:
    """Spec text to send: a Path (or a str naming a file) is read, a dict becomes JSON, other text is sent as is."""
    if isinstance(spec, Mapping):
        return json.dumps(dict(spec))
    if isinstance(spec, Path) or (isinstance(spec, str) and _looks_like_path(spec)):
        path = Path(spec).expanduser()
        try:
            return path.read_text()
        except OSError as exc:
            raise InvalidSpec("file", f"cannot read {path}: {exc.strerror or exc}") from None
    if isinstance(spec, str):
        return spec
    raise TypeError(f"spec must be a path, TOML/JSON text or a dict, not {type(spec).__name__}")


def _looks_like_path(text: str) -> bool:
    if "\n" in text or "=" in text or text.lstrip().startswith("{"):
        return False
    return os.path.exists(os.path.expanduser(text)) or text.endswith((".toml", ".json"))


def _check_address(address: str) -> None:
    """HOST:PORT (or a gRPC target with a scheme, "unix:/path", "dns:///host:port"): a missing port would make
    gRPC dial 443 and say only "connection refused"."""
    if ":/" in address or address.startswith("unix:"):
        return
    host, sep, port = address.rpartition(":")
    if not sep or not host or host.endswith(":") or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise InvalidArgument("address", f"{address[:100]!r} has no port: write HOST:PORT, e.g. 127.0.0.1:50051 "
                                         "(the port `gradmesh serve` prints as 'listening on')")


class Client(SweepCalls):
    """A connection to one coordinator. Thread-safe; close it (or use `with`) when done.

    `retries`: let gRPC repeat the idempotent reads (GetJob, ListJobs, GetMetrics, ListCheckpoints) on
    UNAVAILABLE with backoff (wire.SERVICE_CONFIG), which rides out a coordinator restart; off, an
    unreachable coordinator is reported at once (what the CLI wants)."""

    def __init__(self, address: str | None = None, token: str | None = None, tls_ca: str | Path | None = None,
                 timeout: float = 10.0, *, data_dir: str | Path | None = None, stream_timeout: float = 3600.0,
                 reconnect_timeout: float = 120.0, retries: bool = True):
        # where: the argument, else GRADMESH_ADDRESS, else the coordinator that owns data_dir, else the default
        self.address = (address or os.environ.get(wire.ADDRESS_ENV, "").strip()
                        or (wire.owner_address(data_dir) if data_dir is not None else None) or wire.DEFAULT_ADDRESS)
        _check_address(self.address)
        self.token = resolve_token(token, data_dir)
        self.timeout = timeout
        self.stream_timeout = stream_timeout          # deadline of one long stream (watch/logs -f/download)
        self.reconnect_timeout = reconnect_timeout    # how long watch() keeps retrying an unreachable server
        tls_ca = tls_ca or os.environ.get(wire.TLS_CA_ENV) or None
        self.tls = bool(tls_ca)
        options = wire.channel_options(retries=retries)
        if tls_ca:
            try:
                roots = Path(tls_ca).expanduser().read_bytes()
            except OSError as exc:
                raise GradmeshError(f"cannot read the TLS CA file {tls_ca}: {exc.strerror or exc}") from None
            creds = grpc.ssl_channel_credentials(root_certificates=roots)
            self._channel = grpc.secure_channel(self.address, creds, options=options)
        else:
            self._channel = grpc.insecure_channel(self.address, options=options)
        self._stub = pb_grpc.JobServiceStub(self._channel)
        self._job_infos: dict[bytes, JobInfo] = {}   # GetJob replies already converted (see get)
        self._metadata = ((wire.CLIENT_TOKEN_HEADER, f"Bearer {self.token}"),) if self.token else ()

    # -- plumbing

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method: str, request: Any, what: str) -> Any:
        try:
            return getattr(self._stub, method)(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as err:
            raise self._error(err, what) from None

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
        # A job polled in a loop mostly comes back unchanged: the JobInfo built from the same bytes is reused
        # (JobInfo is frozen; treat its labels as read-only), which saves most of a poll's client-side cost.
        msg = self._unary("GetJob", pb.GetJobRequest(job_id=job_id), "get")
        key = msg.SerializeToString()
        info = self._job_infos.get(key)
        if info is None:
            info = JobInfo.from_pb(msg)
            if len(self._job_infos) >= 256:
                self._job_infos.clear()
            self._job_infos[key] = info
        return info

    def list(self, states: Iterable["str | JobState"] | None = None, page_size: int = 200,
             owner: str = "") -> Iterator[JobInfo]:
        """Every job (newest first) the caller may read, optionally only in `states` or only `owner`'s; fetches
        page after page lazily."""
        wanted = [int(parse_state(s)) for s in (states or ())]
        token = ""
        while True:
            page = self._unary("ListJobs", pb.ListJobsRequest(states=wanted, page_size=page_size,
                                                              page_token=token, owner=owner), "list")
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

    def delete(self, job_id: str) -> DeletedJob:
        """Remove an ended job and everything the coordinator keeps of it (record, metrics, logs, checkpoints);
        FailedPrecondition while it has not ended. The id is free again afterwards."""
        return DeletedJob.from_pb(self._unary("DeleteJob", pb.DeleteJobRequest(job_id=job_id), "delete"))

    # -- hosts

    def hosts(self) -> list[HostInfo]:
        """The coordinator's hosts: slots, free slots, health (healthy, suspect, quarantined, drained)."""
        return [HostInfo.from_pb(h) for h in self._unary("ListHosts", pb.ListHostsRequest(), "hosts").hosts]

    def drain(self, host: str) -> HostInfo:
        """Keep new ranks off `host` (running jobs stay); NotFound (kind "host") when it is not in the pool."""
        return HostInfo.from_pb(self._unary("DrainHost", pb.DrainHostRequest(host=host), "drain"))

    def undrain(self, host: str) -> HostInfo:
        return HostInfo.from_pb(self._unary("UndrainHost", pb.DrainHostRequest(host=host), "undrain"))

    # -- users, tokens, the audit trail (administrators manage users; anyone rotates their own token)

    def whoami(self) -> UserInfo:
        """The user this client's token belongs to."""
        return UserInfo.from_pb(self._unary("WhoAmI", pb.WhoAmIRequest(), "whoami"))

    def add_user(self, name: str, role: str = "member", max_slots: int = 0,
                 token_expires_s: float = 0.0) -> tuple[UserInfo, str]:
        """A new user and their token: shown this once (the coordinator keeps only its hash)."""
        reply = self._unary("AddUser", pb.AddUserRequest(name=name, role=role_to_pb(role), max_slots=int(max_slots),
                                                         token_expires_s=float(token_expires_s)), "users add")
        return UserInfo.from_pb(reply.user), reply.token

    def users(self) -> list[UserInfo]:
        """Every user (an administrator), or only the caller (anyone else)."""
        return [UserInfo.from_pb(u) for u in self._unary("ListUsers", pb.ListUsersRequest(), "users").users]

    def update_user(self, name: str, role: str | None = None, max_slots: int | None = None) -> UserInfo:
        request = pb.UpdateUserRequest(name=name, role=role_to_pb(role) if role else pb.ROLE_UNSPECIFIED)
        if max_slots is not None:
            request.max_slots = int(max_slots)
        return UserInfo.from_pb(self._unary("UpdateUser", request, "users set"))

    def remove_user(self, name: str) -> UserInfo:
        """Remove a user: their token stops working at once; their jobs and audit rows stay."""
        return UserInfo.from_pb(self._unary("RemoveUser", pb.RemoveUserRequest(name=name), "users remove"))

    def rotate_token(self, name: str = "", token_expires_s: float = 0.0) -> tuple[UserInfo, str]:
        """A new token for `name` (default: this client's own user); the old one stops working at once."""
        reply = self._unary("RotateToken", pb.RotateTokenRequest(name=name, token_expires_s=float(token_expires_s)),
                            "tokens rotate")
        return UserInfo.from_pb(reply.user), reply.token

    def audit(self, user: str = "", since: float = 0.0) -> list[AuditEntry]:
        """The audit trail, oldest first: every user's (an administrator) or the caller's own, from `since`."""
        entries: list[AuditEntry] = []
        token = ""
        while True:
            reply = self._unary("ListAudit", pb.ListAuditRequest(user=user, since_unix=float(since), page_token=token),
                                "audit")
            entries.extend(AuditEntry.from_pb(a) for a in reply.entries)
            token = reply.next_page_token
            if not token:
                return entries

    def metrics(self, job_id: str, from_step: int = 0) -> list[MetricPoint]:
        """The job's metric history from `from_step`, in step order. A long history comes in pages (each
        reply under gRPC's size limit): ask again with the reply's `next_page_token` until it is empty."""
        points: list[MetricPoint] = []
        token = ""
        while True:
            reply = self._unary("GetMetrics", pb.GetMetricsRequest(job_id=job_id, from_step=from_step,
                                                                   page_token=token), "metrics")
            points.extend(MetricPoint.from_pb(p) for p in reply.points)
            token = reply.next_page_token
            if not token:
                return points

    def checkpoints(self, job_id: str) -> list[CheckpointInfo]:
        reply = self._unary("ListCheckpoints", pb.ListCheckpointsRequest(job_id=job_id), "checkpoints")
        return [CheckpointInfo.from_pb(c) for c in reply.checkpoints]

    # -- streams

    def watch(self, job_id: str, from_step: int = 0) -> Iterator[WatchEvent]:
        """Yield the job's snapshot, then every state change and metric point, until it reaches a terminal state.

        When the connection drops (UNAVAILABLE, or the stream deadline passes) it reconnects asking for
        the steps after the last one it yielded, and yields the state changes the new snapshot's history
        holds that it has not yielded yet (by their transition id), for up to `reconnect_timeout` seconds
        of consecutive failure.
        """
        next_step = from_step
        seen: set[int] = set()  # transition ids already yielded (or shown in the first snapshot)

        def unseen(change: StateChange) -> bool:
            new = change.transition_id not in seen
            seen.add(change.transition_id)
            return new

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
                        # what changed while we were away, in order, before the new picture
                        missed = [change for change in job.history if unseen(change)]
                        if connected_once:
                            yield from (JobStateChanged(change) for change in missed)
                        connected_once = True
                        ended = job.is_terminal()  # an ended job's stream still replays its metrics
                        yield JobSnapshot(job)
                    elif kind == "state":
                        change = StateChange.from_pb(raw.state)
                        if unseen(change):
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
        """Stream a checkpoint (`step`, `best` = the lowest validation loss, else the latest) to `path`, verify
        its sha256 and size, then rename it into place; a mismatch raises ChecksumMismatch and leaves `path`
        untouched (DataLoss when the coordinator finds its own copy corrupt)."""
        if sum((step is not None, best, latest)) > 1:
            raise InvalidArgument("which", "give at most one of step, best, latest")
        if step is not None:
            request = pb.DownloadCheckpointRequest(job_id=job_id, step=int(step))
        elif best:
            request = pb.DownloadCheckpointRequest(job_id=job_id, best=True)
        else:
            request = pb.DownloadCheckpointRequest(job_id=job_id, latest=True)
        return receive_checkpoint(
            path, job_id,
            start_call=lambda: self._stub.DownloadCheckpoint(request, timeout=self.stream_timeout,
                                                             metadata=self._metadata),
            rpc_error=lambda err: self._error(err, "download"))
