"""Run the gradmesh coordinator: the gRPC server around the core, the store and the scheduler.

    from coordinator.api.server import start_server
    srv = start_server(Path("/var/lib/gradmesh"), port=50051, slots=8)
    print(srv.address, srv.token)       # 127.0.0.1:50051 and the client bearer token
    # start_server(..., http_port=50052) also serves the web dashboard (coordinator.dashboard): srv.dashboard.url
    srv.wait_for_termination()          # or srv.stop(grace=5.0)

It serves gradmesh.v1.JobService (clients: "authorization: Bearer <a user's token>"; the client token of
DATA_DIR/token is the first administrator's, and `team` is the fair-share policy, coordinator.team), gradmesh.v1.WorkerService
(ranks: "x-gradmesh-job-token"), the standard grpc.health.v1 health service (SERVING while up, no token)
and server reflection, behind the client token like the JobService
(`grpcurl -plaintext -H "authorization: Bearer $(cat DATA_DIR/token)" 127.0.0.1:50051 list`). It binds
127.0.0.1 unless told otherwise, and uses TLS when given a certificate and key (the ranks then get
GRADMESH_TLS_CA=<the certificate>).

Calls are admitted per class of caller, each under its own cap (`limits`, coordinator.access.admission): the
ranks' calls never wait behind the clients', callers without a valid token are refused before a message
is read, and a call that waits on its client longer than the idle timeout is cancelled.

The data directory is created 0700 and held by one coordinator at a time (coordinator.api.data_lock: a
second one is refused with one line naming the first one's pid and address, which it writes to
DATA_DIR/coordinator.json for clients given --data-dir). The client token is `token`, else DATA_DIR/token, else generated into
DATA_DIR/token (mode 0600; see `load_or_create_token` for what an existing file must be).
On start the store is re-read: queued jobs are scheduled again, running jobs whose process group is
still alive are re-adopted, and the ones that ended meanwhile are settled (coordinator.supervision.supervisor).

`mpi_args` go to every mpirun (e.g. ["-launcher", "ssh", "-iface", "eth1"]) and are stored with each attempt;
`host_policy` says when a host is quarantined and for how long (coordinator.fleet.health).

Serving on every interface (host "0.0.0.0" or "::") needs `advertise_address`: the ranks, possibly on other
hosts, dial that address, and guessing 127.0.0.1 would fail only at the hang timeout.
"""
from __future__ import annotations

import errno
import logging
import os
import secrets
import socket
import stat
import sys
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from coordinator.access.admission import Admission, CallLimits
from coordinator.access.auth import AuthInterceptor
from coordinator.core import Coordinator
from coordinator.fleet.health import HostPolicy
from coordinator.access.limits import Limits
from coordinator.dashboard import HttpLimits, RunningDashboard, start_dashboard
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.scheduler import SlotPool
from coordinator.supervision.slurm import SlurmExecutor, check_slurm
from coordinator.api.data_lock import DataDirLock
from coordinator.api.servicer import WorkerServicer, method_handlers
from coordinator.api.team_rpcs import TeamServicer
from coordinator.team.policy import TeamPolicy
from coordinator.access.roles import Role
from coordinator.store.store import Store
from coordinator.access.tokens import hash_token
from coordinator.telemetry.wiring import Monitoring, MonitoringOptions, start_monitoring
from coordinator import wire
from coordinator.wire import SERVER_OPTIONS

log = logging.getLogger("gradmesh.server")


@dataclass(frozen=True)
class SlurmOptions:
    """`gradmesh serve --executor slurm`'s settings (coordinator.supervision.slurm)."""
    partition: str = ""
    account: str = ""
    sbatch_args: tuple[str, ...] = ()
    poll_s: float = 1.0   # how often Slurm's controller is asked about the jobs (scontrol)
    accounts: tuple[tuple[str, str], ...] = ()   # (gradmesh user, Slurm account): whom each user's jobs are charged to

JOB_SERVICE = pb.DESCRIPTOR.services_by_name["JobService"].full_name
WORKER_SERVICE = pb.DESCRIPTOR.services_by_name["WorkerService"].full_name
WILDCARD_HOSTS = ("0.0.0.0", "::", "")


def prepare_data_dir(data_dir: Path) -> None:
    """Create the data directory 0700 (the database, logs, checkpoints and token are nobody else's business);
    an existing one open to other users is closed, with a warning."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    mode = stat.S_IMODE(data_dir.stat().st_mode)
    if mode & 0o077:
        log.warning("data directory %s was open to other users (mode %o); set to 0700", data_dir, mode)
        os.chmod(data_dir, 0o700)


def load_or_create_token(data_dir: Path, token: str | None) -> str:
    """`token`, else the one in DATA_DIR/token, else a new one written there (O_EXCL|O_NOFOLLOW, mode 0600).

    The file is never followed through a symbolic link, and must be a regular file of ours: anything else is
    refused (PermissionError, with what to do). A token file readable by others is made 0600 with a warning
    (whoever read it holds a valid client token: delete the file to get a new one)."""
    if token:
        return token
    path = data_dir / wire.TOKEN_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return _create_token(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise PermissionError(f"{path} is a symbolic link; refusing to follow it (remove it: a new token is "
                                  "then created)") from None
        raise
    with os.fdopen(fd) as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise PermissionError(f"{path} is not a regular file; refusing to use it as the token file")
        if info.st_uid != os.geteuid():
            raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to this coordinator's user; refusing "
                                  "to trust it (remove it: a new token is then created)")
        if stat.S_IMODE(info.st_mode) & 0o077:
            log.warning("token file %s was readable by others (mode %o); set to 0600. Whoever read it holds a "
                        "valid client token: delete the file to get a new one", path, stat.S_IMODE(info.st_mode))
            os.fchmod(fd, 0o600)
        text = f.read().strip()
    if text:
        return text
    path.unlink()  # empty (a crash between creating and writing it): make a new one
    return _create_token(path)


def _create_token(path: Path) -> str:
    new = secrets.token_hex(32)  # hex: never starts with '-', so `--token VALUE` always parses
    # O_EXCL|O_NOFOLLOW: never write through a file or link someone else put there meanwhile
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new + "\n")
    return new


def _check_port_free(host: str, port: int) -> None:
    """OSError, in one line a person can act on, when host:port cannot be listened on (in use, most often)."""
    if not port:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: TIME_WAIT does not count
        try:
            probe.bind((host or "0.0.0.0", port))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                raise OSError(f"port {port} on {host} is already in use (another gradmesh serve, or a dashboard?): "
                              "choose another --port, or --port 0 for any free one") from None
            raise OSError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None


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
    lock: DataDirLock | None = None                 # this server's hold on its data directory
    monitoring: "Monitoring | None" = None  # /metrics, webhooks, MLflow (coordinator.telemetry)
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
        # the jobs stop before gRPC does: a rank's stop writes a checkpoint and reports it, and those calls need
        # a server that still answers (else the checkpoint is lost and the stop waits out its grace period)
        self.core.close(stop_jobs=stop_jobs)
        self.grpc_server.stop(grace).wait()
        self.admission.close()
        if self.monitoring is not None:
            self.monitoring.stop()
        self.store.close()
        if self.lock is not None:
            self.lock.release()

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
                 call_limits: CallLimits | None = None, http_port: int | None = None,
                 executor: str = "local", slurm: SlurmOptions | None = None,
                 mpi_args: Sequence[str] = (), host_policy: HostPolicy | None = None,
                 delete_ended_after_s: float | None = None, http_limits: HttpLimits | None = None,
                 team: TeamPolicy | None = None, monitoring: MonitoringOptions | None = None) -> RunningServer:
    data_dir = Path(data_dir).resolve()
    prepare_data_dir(data_dir)
    lock = DataDirLock.acquire(data_dir)  # DataDirInUse (OSError): another coordinator owns it
    try:
        srv = _start(data_dir, lock, host=host, port=port, slots=slots, hosts=hosts, data_roots=data_roots,
                     token=token, tls_cert=tls_cert, tls_key=tls_key, advertise_address=advertise_address,
                     limits=limits, call_limits=call_limits, http_port=http_port, executor=executor, slurm=slurm,
                     mpi_args=mpi_args, host_policy=host_policy, delete_ended_after_s=delete_ended_after_s,
                     http_limits=http_limits, team=team, monitoring=monitoring)
    except BaseException:
        lock.release()
        raise
    lock.announce(srv.core.address, srv.dashboard.url if srv.dashboard else "")
    return srv


def _start(data_dir: Path, lock: DataDirLock, *, host: str, port: int, slots: int | None,
           hosts: list[tuple[str, int]] | None, data_roots: list[Path] | None, token: str | None,
           tls_cert: Path | None, tls_key: Path | None, advertise_address: str | None, limits: Limits | None,
           call_limits: CallLimits | None, http_port: int | None, executor: str, slurm: SlurmOptions | None,
           mpi_args: Sequence[str], host_policy: HostPolicy | None, delete_ended_after_s: float | None,
           http_limits: HttpLimits | None, team: TeamPolicy | None,
           monitoring: MonitoringOptions | None) -> RunningServer:
    if (tls_cert is None) != (tls_key is None):
        raise ValueError("TLS needs both tls_cert and tls_key")
    if slots is not None and hosts:
        raise ValueError("give either slots (this machine) or hosts, not both")
    if host in WILDCARD_HOSTS and not advertise_address:
        raise ValueError(f"serving on {host or 'every interface'} needs --advertise-address HOST:PORT, the address "
                         "the ranks on every host can reach (else they would dial 127.0.0.1)")
    factory = None
    if executor == "slurm":
        if slots is not None or hosts:
            raise ValueError("--executor slurm takes no --slots/--hosts: Slurm places the ranks")
        missing = check_slurm()
        if missing:
            raise OSError(missing)
        options = slurm or SlurmOptions()
        factory = lambda store: SlurmExecutor(store, python=sys.executable, partition=options.partition,  # noqa: E731
                                              account=options.account, sbatch_args=options.sbatch_args,
                                              poll_s=options.poll_s, accounts=dict(options.accounts))
    elif executor != "local":
        raise ValueError(f"--executor {executor!r}: use local or slurm")
    client_token = load_or_create_token(data_dir, token)
    if factory is not None:
        pool = SlotPool.unlimited()
    else:
        pool = SlotPool(hosts) if hosts else SlotPool.local_pool(slots or os.cpu_count() or 1)
    store = Store(data_dir / "gradmesh.db")
    core = Coordinator(data_dir, store, pool, data_roots=data_roots or [Path.cwd()],
                       tls_ca=Path(tls_cert).resolve() if tls_cert else None, limits=limits or Limits(),
                       executor_factory=factory, mpi_args=mpi_args, host_policy=host_policy or HostPolicy(),
                       delete_ended_after_s=delete_ended_after_s, team=team or TeamPolicy(),
                       token_file=None if token else data_dir / wire.TOKEN_FILE)
    core.accounts.bootstrap(client_token)   # the client token is the first administrator's

    watch = start_monitoring(core, monitoring or MonitoringOptions(), admin_token=client_token, data_dir=data_dir)
    # any administrator's live token may scrape /metrics, not only the first one's
    watch.is_admin = lambda token: (core.accounts.refusal(token) is None
                                    and getattr(core.accounts.user_of(token), "role", "") == Role.ADMIN.value)
    admission = Admission(call_limits or CallLimits())
    interceptor = AuthInterceptor(core.accounts.refusal, lambda token: store.job_of_token(hash_token(token)) is not None,
                                  admission)
    # More threads than the classes' caps together: an admitted call never queues for a thread.
    threads = futures.ThreadPoolExecutor(max_workers=admission.pool_size(), thread_name_prefix="gradmesh-rpc")
    server = grpc.server(threads, interceptors=[watch.telemetry.interceptor(), interceptor], options=SERVER_OPTIONS)
    jobs = TeamServicer(core.jobs, core.streams, core.hosts, core.accounts, slots_by_user=core.scheduler.slots_by_user,
                        share=core.team.share, sweeps=core.sweeps)
    server.add_generic_rpc_handlers((method_handlers("JobService", jobs),
                                     method_handlers("WorkerService", WorkerServicer(core.workers))))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", JOB_SERVICE, WORKER_SERVICE):
        health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((JOB_SERVICE, WORKER_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME),
                                        server)

    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        _check_port_free(host, port)  # gRPC's own refusal is a C-level log line and "see GRPC_VERBOSITY"
    except OSError:
        admission.close()
        store.close()
        raise
    try:
        if tls_cert is not None:
            creds = grpc.ssl_server_credentials([(Path(tls_key).read_bytes(), Path(tls_cert).read_bytes())])
            bound = server.add_secure_port(bind, creds)
        else:
            bound = server.add_insecure_port(bind)
    except RuntimeError as err:
        admission.close()
        watch.stop()
        store.close()
        raise OSError(f"cannot listen on {bind}: {err}") from None
    if not bound:
        admission.close()
        watch.stop()
        store.close()
        raise OSError(f"cannot listen on {bind}")
    shown_host = f"[{host}]" if ":" in host else host
    address = f"{shown_host}:{bound}"
    core.address = advertise_address or address
    dashboard = None
    if http_port is not None:  # the dashboard: same interface, TLS when gRPC has it (None = no dashboard)
        try:
            # the HTTP side idles out as the gRPC side does, unless told otherwise
            limits_http = http_limits or HttpLimits(idle_timeout_s=admission.limits.idle_timeout_s)
            dashboard = start_dashboard(core, client_token, host=host or "0.0.0.0", port=http_port,
                                        tls_cert=tls_cert, tls_key=tls_key, limits=limits_http, monitoring=watch)
        except OSError:
            server.stop(None)
            watch.stop()
            store.close()
            raise
    server.start()
    core.start()
    log.info("gradmesh coordinator on %s (data %s, %d slot(s))", address, data_dir, pool.total)
    return RunningServer(address=address, port=bound, token=client_token, data_dir=data_dir, core=core,
                         store=store, grpc_server=server, health=health_servicer, admission=admission,
                         dashboard=dashboard, lock=lock, monitoring=watch)
