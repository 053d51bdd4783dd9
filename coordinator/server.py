"""Run the gradmesh coordinator: the gRPC server around the core, the store and the scheduler.

    from coordinator.server import start_server
    srv = start_server(Path("/var/lib/gradmesh"), port=50051, slots=8)
    print(srv.address, srv.token)       # 127.0.0.1:50051 and the client bearer token
    # start_server(..., http_port=50052) also serves the web dashboard (coordinator.dashboard): srv.dashboard.url
    srv.wait_for_termination()          # or srv.stop(grace=5.0)

It serves gradmesh.v1.JobService (clients: "authorization: Bearer <token>"), gradmesh.v1.WorkerService
(ranks: "x-gradmesh-job-token"), the standard grpc.health.v1 health service (SERVING while up, no token)
and server reflection, behind the client token like the JobService
(`grpcurl -plaintext -H "authorization: Bearer $(cat DATA_DIR/token)" 127.0.0.1:50051 list`). It binds
127.0.0.1 unless told otherwise, and uses TLS when given a certificate and key (the ranks then get
GRADMESH_TLS_CA=<the certificate>).

Calls are admitted per class of caller, each under its own cap (`limits`, coordinator.admission): the
ranks' calls never wait behind the clients', callers without a valid token are refused before a message
is read, and a call that waits on its client longer than the idle timeout is cancelled.

The client token is `token`, else DATA_DIR/token, else generated into DATA_DIR/token (mode 0600).
On start the store is re-read: queued jobs are scheduled again, running jobs whose process group is
still alive are re-adopted, and the ones that ended meanwhile are settled (coordinator.attempts).

Serving on every interface (host "0.0.0.0" or "::") needs `advertise_address`: the ranks, possibly on other
hosts, dial that address, and guessing 127.0.0.1 would fail only at the hang timeout.
"""
from __future__ import annotations

import logging
import os
import secrets
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.admission import Admission, CallLimits
from coordinator.auth import AuthInterceptor
from coordinator.core import Coordinator
from coordinator.limits import Limits
from coordinator.dashboard import RunningDashboard, start_dashboard
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.scheduler import SlotPool
from coordinator.servicer import JobServicer, WorkerServicer, method_handlers
from coordinator.store import Store
from coordinator.tokens import hash_token
from coordinator import wire
from coordinator.wire import SERVER_OPTIONS

log = logging.getLogger("gradmesh.server")

JOB_SERVICE = pb.DESCRIPTOR.services_by_name["JobService"].full_name
WORKER_SERVICE = pb.DESCRIPTOR.services_by_name["WorkerService"].full_name
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def load_or_create_token(data_dir: Path, token: str | None) -> str:
    if token:
        return token
    path = data_dir / wire.TOKEN_FILE
    if path.exists():
        text = path.read_text().strip()
        if text:
            return text
    new = secrets.token_hex(32)  # hex: never starts with '-', so `--token VALUE` always parses
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new + "\n")
    os.chmod(path, 0o600)
    return new


@dataclass
class RunningServer:
    address: str
    port: int
    token: str
    data_dir: Path
    core: Coordinator
    store: Store
    grpc_server: grpc.Server
    health: health.HealthServicer
    admission: Admission
    dashboard: "RunningDashboard | None" = None  # the web dashboard, when started with http_port
    _stopped: bool = field(default=False, repr=False)

    def stop(self, grace: float = 5.0, stop_jobs: bool = True) -> None:
        """Stop serving. With `stop_jobs` (the default) running jobs are stopped too (SIGTERM, grace, SIGKILL);
        without, they keep training in their own sessions and the next coordinator on this data directory
        re-adopts them."""
        if self._stopped:
            return
        self._stopped = True
        self.health.enter_graceful_shutdown()
        self.core.signal.close()  # open watch/log streams end with UNAVAILABLE instead of hanging the stop
        if self.dashboard is not None:
            self.dashboard.stop()
        self.grpc_server.stop(grace).wait()
        self.admission.close()
        self.core.close(stop_jobs=stop_jobs)
        self.store.close()

    def job_token(self, job_id: str) -> str:
        """The job token of the running attempt this server launched (for tests and benchmarks); KeyError when
        no attempt of the job runs (tokens are forgotten when their attempt ends)."""
        return self.core.job_token(job_id)

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def __enter__(self) -> "RunningServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def start_server(data_dir: Path, *, host: str = "127.0.0.1", port: int = 0, slots: int | None = None,
                 hosts: list[tuple[str, int]] | None = None, data_roots: list[Path] | None = None,
                 token: str | None = None, tls_cert: Path | None = None, tls_key: Path | None = None,
                 advertise_address: str | None = None, limits: Limits | None = None,
                 call_limits: CallLimits | None = None, http_port: int | None = None) -> RunningServer:
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both tls_cert and tls_key")
    if slots is not None and hosts:
        raise ValueError("give either slots (this machine) or hosts, not both")
    if host in WILDCARD_HOSTS and not advertise_address:
        raise ValueError(f"serving on {host or 'every interface'} needs --advertise-address HOST:PORT, the address "
                         "the ranks on every host can reach (else they would dial 127.0.0.1)")
    client_token = load_or_create_token(data_dir, token)
    pool = SlotPool(hosts) if hosts else SlotPool.local_pool(slots or os.cpu_count() or 1)
    store = Store(data_dir / "gradmesh.db")
    core = Coordinator(data_dir, store, pool, data_roots=data_roots or [Path.cwd()],
                       tls_ca=Path(tls_cert).resolve() if tls_cert else None, limits=limits or Limits())

    admission = Admission(call_limits or CallLimits())
    interceptor = AuthInterceptor(client_token, lambda token: store.job_of_token(hash_token(token)) is not None,
                                  admission)
    # More threads than the classes' caps together: an admitted call never queues for a thread.
    threads = futures.ThreadPoolExecutor(max_workers=admission.pool_size(), thread_name_prefix="gradmesh-rpc")
    server = grpc.server(threads, interceptors=[interceptor], options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers((method_handlers("JobService", JobServicer(core.jobs, core.streams)),
                                     method_handlers("WorkerService", WorkerServicer(core.workers))))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", JOB_SERVICE, WORKER_SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((JOB_SERVICE, WORKER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                        server)

    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        if tls_cert is not None:
            creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
            bound = server.add_secure_port(bind, creds)
        else:
            bound = server.add_insecure_port(bind)
    except RuntimeError as err:
        admission.close()
        store.close()
        raise OSError(f"cannot listen on {bind}: {err}") from None
    if not bound:
        admission.close()
        store.close()
        raise OSError(f"cannot listen on {bind}")
    shown_host = f"[{host}]" if ":" in host else host
    address = f"{shown_host}:{bound}"
    core.address = advertise_address or address
    dashboard = None
    if http_port is not None:  # the dashboard: same interface, TLS when gRPC has it (None = no dashboard)
        try:
            dashboard = start_dashboard(core, client_token, host=host or "0.0.0.0", port=http_port,
                                        tls_cert=tls_cert, tls_key=tls_key)
        except OSError:
            server.stop(None)
            store.close()
            raise
    server.start()
    core.start()
    log.info("gradmesh coordinator on %s (data %s, %d slot(s))", address, data_dir, pool.total)
    return RunningServer(address=address, port=bound, token=client_token, data_dir=data_dir, core=core,
                         store=store, grpc_server=server, health=health_servicer, admission=admission,
                         dashboard=dashboard)
