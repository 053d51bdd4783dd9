"""`gradmesh serve`: run a coordinator in this process until SIGINT/SIGTERM.

Option mistakes (two pool options, half a TLS pair, a malformed host list, a cap below 1, a combination
`start_server` refuses with ValueError such as --host 0.0.0.0 without --advertise-address) are usage errors:
one line, exit 2. A port that cannot be bound is an OSError: one line, exit 1.

The front door's caps (coordinator.access.admission.CallLimits) have flags of their own, added by `add_limit_flags`.
"""
from __future__ import annotations

import logging
import signal
import sys
import threading
from pathlib import Path

from coordinator.access.admission import CallLimits
from coordinator.cli.commands import DEFAULT_DATA_DIR, EXIT_OK, EXIT_USAGE, CliError, integer
from coordinator.cli.monitoring import monitoring_options
from coordinator.client import TOKEN_FILE
from coordinator.fleet.health import HostPolicy
from coordinator.hosts import HostListError, parse_hostfile, parse_hosts
from coordinator.access.limits import Limits
from coordinator.files.expiry import parse_duration
from coordinator.team.policy import DEFAULT_RESERVE_AFTER_S, TeamPolicy, parse_shares


def import_start_server():
    try:
        from coordinator.api.server import start_server
    except ImportError as exc:  # a client-only installation (e.g. without grpcio-health-checking)
        raise CliError(f"the coordinator server is not available in this installation: {exc}") from None
    return start_server


def add_limit_flags(parser) -> None:
    """`gradmesh serve`'s flags for the caps on calls (defaults: coordinator.access.admission.CallLimits)."""
    d = CallLimits()
    parser.add_argument("--max-worker-rpcs", type=integer, default=d.worker_rpcs, metavar="N",
                        help=f"WorkerService calls in flight, the ranks' own share (default {d.worker_rpcs})")
    parser.add_argument("--max-client-rpcs", type=integer, default=d.client_rpcs, metavar="N",
                        help="JobService and reflection calls in flight, open watch/log streams included "
                             f"(default {d.client_rpcs})")
    parser.add_argument("--max-health-rpcs", type=integer, default=d.open_rpcs, metavar="N",
                        help=f"health checks and health watch streams in flight (default {d.open_rpcs})")
    parser.add_argument("--idle-timeout", type=float, default=d.idle_timeout_s, metavar="SECONDS",
                        help="cancel a call that waits this long for its client to send or to take a message "
                             f"(default {d.idle_timeout_s:g})")


def add_team_flags(parser) -> None:
    """`gradmesh serve`'s flags for a team (coordinator.team.policy.TeamPolicy; docs/team.md)."""
    group = parser.add_argument_group("team", "fair share of the slots between users, reservations, preemption")
    group.add_argument("--share", action="append", default=[], metavar="NAME=WEIGHT",
                       help="a user's weight in the fair share (repeatable; default 1 for everyone)")
    group.add_argument("--reserve-after", default=None, metavar="DURATION",
                       help="a queued job that does not fit holds a reservation after waiting this long, so smaller "
                            f"jobs stop passing it (e.g. 10m; default {DEFAULT_RESERVE_AFTER_S:g} s; 0 = at once, "
                            "no backfill)")
    group.add_argument("--preempt", action="store_true",
                       help="a higher-priority job may stop lower-priority ones at a step boundary with a "
                            "checkpoint; they requeue and continue (off by default)")
    group.add_argument("--private-jobs", action="store_true",
                       help="members and viewers see only their own jobs (administrators see all)")


def _team_policy(args) -> TeamPolicy:
    reserve = getattr(args, "reserve_after", None)
    try:
        reserve_s = DEFAULT_RESERVE_AFTER_S if reserve is None else (0.0 if reserve.strip() in ("0", "0s") else
                                                                      parse_duration(reserve))
        return TeamPolicy(shares=parse_shares(getattr(args, "share", None) or []), reserve_after_s=reserve_s,
                          preempt=bool(getattr(args, "preempt", False)),
                          private_jobs=bool(getattr(args, "private_jobs", False)))
    except ValueError as err:
        raise CliError(f"serve: {err}", EXIT_USAGE) from None


def _call_limits(args) -> CallLimits:
    for flag, value in (("--max-worker-rpcs", args.max_worker_rpcs), ("--max-client-rpcs", args.max_client_rpcs),
                        ("--max-health-rpcs", args.max_health_rpcs)):
        if value < 1:
            raise CliError(f"serve: {flag} must be at least 1, got {value}", EXIT_USAGE)
    if not args.idle_timeout > 0:
        raise CliError(f"serve: --idle-timeout must be positive, got {args.idle_timeout:g}", EXIT_USAGE)
    return CallLimits(worker_rpcs=args.max_worker_rpcs, client_rpcs=args.max_client_rpcs,
                      open_rpcs=args.max_health_rpcs, idle_timeout_s=args.idle_timeout)


def _host_list(args) -> list[tuple[str, int]] | None:
    try:
        if args.hosts:
            return parse_hosts(args.hosts)
        if args.hostfile:
            return parse_hostfile(Path(args.hostfile))
    except HostListError as err:
        raise CliError(f"serve: {err}", EXIT_USAGE) from None
    return None


def _host_policy(args) -> HostPolicy:
    """--host-failures, --host-failure-window, --host-cooldown (coordinator.fleet.health)."""
    d = HostPolicy()
    policy = HostPolicy(failures=getattr(args, "host_failures", d.failures),
                        window_s=getattr(args, "host_failure_window", d.window_s),
                        cooldown_s=getattr(args, "host_cooldown", d.cooldown_s))
    if policy.failures < 1:
        raise CliError(f"serve: --host-failures must be at least 1, got {policy.failures}", EXIT_USAGE)
    if not policy.window_s > 0 or not policy.cooldown_s >= 0:
        raise CliError("serve: --host-failure-window must be positive and --host-cooldown not negative", EXIT_USAGE)
    return policy


def _http_port(args) -> int | None:
    """The dashboard's port: --http-port (0 = none), by default the gRPC port + 1, or a free one when the gRPC
    port is itself chosen freely (--port 0)."""
    http_port = getattr(args, "http_port", None)
    if http_port is None:
        return args.port + 1 if args.port else 0
    if http_port < 0 or http_port > 65535:
        raise CliError(f"serve: --http-port {http_port} is not a port (0 = no dashboard)", EXIT_USAGE)
    return http_port or None


def _slurm_options(args):
    from coordinator.api.server import SlurmOptions
    if getattr(args, "executor", "local") != "slurm":
        if args.partition or args.account or args.sbatch_arg or getattr(args, "slurm_account", None):
            raise CliError("serve: --partition, --account, --slurm-account and --sbatch-arg go with --executor slurm",
                           EXIT_USAGE)
        return None
    if not args.slurm_poll > 0:
        raise CliError(f"serve: --slurm-poll must be positive, got {args.slurm_poll:g}", EXIT_USAGE)
    accounts = []
    for item in getattr(args, "slurm_account", None) or []:
        user, sep, account = item.partition("=")
        if not sep or not user.strip() or not account.strip():
            raise CliError(f"serve: --slurm-account {item!r}: expected USER=ACCOUNT", EXIT_USAGE)
        accounts.append((user.strip(), account.strip()))
    return SlurmOptions(partition=args.partition, account=args.account, sbatch_args=tuple(args.sbatch_arg),
                        poll_s=args.slurm_poll, accounts=tuple(accounts))


def cmd_serve(args) -> int:
    start_server = import_start_server()
    if getattr(args, "executor", "local") == "slurm" and any(x is not None for x in (args.slots, args.hosts,
                                                                                    args.hostfile)):
        raise CliError("serve: --executor slurm takes no --slots, --hosts or --hostfile: Slurm places the ranks",
                       EXIT_USAGE)
    if sum(x is not None for x in (args.slots, args.hosts, args.hostfile)) > 1:
        raise CliError("serve: give only one of --slots, --hosts, --hostfile", EXIT_USAGE)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("serve: --tls-cert and --tls-key go together", EXIT_USAGE)
    if not 0 <= args.port <= 65535:
        raise CliError(f"serve: --port {args.port} is not a port (1-65535, or 0 for any free one)", EXIT_USAGE)
    hosts = _host_list(args)
    call_limits = _call_limits(args)
    team = _team_policy(args)
    data_dir = Path(args.data_dir or DEFAULT_DATA_DIR).expanduser()
    data_roots = [Path(p).expanduser().resolve() for p in args.data_root] or [Path.cwd()]
    # the coordinator's own warnings (re-adopted jobs, corrupt checkpoints, internal errors) go to stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        srv = start_server(data_dir, host=args.host, port=args.port, slots=args.slots, hosts=hosts,
                           data_roots=data_roots, token=args.token,
                           tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                           tls_key=Path(args.tls_key) if args.tls_key else None,
                           advertise_address=args.advertise_address, limits=Limits.from_args(args),
                           call_limits=call_limits, http_port=_http_port(args), executor=args.executor,
                           slurm=_slurm_options(args),
                           mpi_args=list(getattr(args, "mpirun_args", None) or []), host_policy=_host_policy(args),
                           delete_ended_after_s=getattr(args, "delete_ended_after", None), team=team,
                           monitoring=monitoring_options(args))
    except ValueError as err:
        raise CliError(f"serve: {err}", EXIT_USAGE) from None
    except OSError as err:
        raise CliError(f"serve: {err}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    token_where = "as given by --token" if args.token else f"in {Path(srv.data_dir) / TOKEN_FILE}"
    print(f"gradmesh coordinator listening on {srv.address}", flush=True)
    print(f"data directory {srv.data_dir}; data roots {', '.join(map(str, data_roots))}", flush=True)
    if srv.dashboard is not None:
        print(f"web dashboard on {srv.dashboard.url}  (log in with a user's token)", flush=True)
        print(f"Prometheus metrics on {srv.dashboard.url}metrics  (Authorization: Bearer <--metrics-token or "
              "an administrator's token>)", flush=True)
    if srv.core.retention is not None:
        print(f"ended jobs are deleted {srv.core.retention.keep_s / 3600:g} h after they end, with their files "
              "(--delete-ended-after)", flush=True)
    if team.preempt or team.private_jobs or team.shares:
        print(f"team: {'preemption on; ' if team.preempt else ''}{'private jobs; ' if team.private_jobs else ''}"
              f"shares {dict(team.shares) or 'equal'}; reservations after {team.reserve_after_s:g} s", flush=True)
    print(f"client token {token_where}, the first administrator's  (export GRADMESH_ADDRESS={srv.address}; "
          f"use --data-dir {srv.data_dir} or GRADMESH_TOKEN; add users with `gradmesh users add`)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print(_stopping_line(srv, args.keep_jobs), flush=True)
        srv.stop(grace=5.0, stop_jobs=not args.keep_jobs)
    return EXIT_OK


def _stopping_line(srv, keep_jobs: bool) -> str:
    """What a stop does to the jobs, by name: they keep running (--keep-jobs), or are stopped and restarted by
    the next coordinator on this data directory."""
    from coordinator.cli.render import clean
    from coordinator.states import JobState
    running = srv.store.jobs_in(JobState.RUNNING)
    if not running:
        return "gradmesh coordinator stopping (no job was running)"
    shown = ", ".join(f"{clean(j.id)} (step {j.step}/{j.total_steps or '?'})" for j in running[:10])
    more = f" and {len(running) - 10} more" if len(running) > 10 else ""
    if keep_jobs:
        return (f"gradmesh coordinator stopping; {len(running)} running job(s) keep running: {shown}{more} "
                "(the next `gradmesh serve` on this data directory re-adopts them)")
    return (f"gradmesh coordinator stopping, and with it {len(running)} running job(s): {shown}{more}; the next "
            "`gradmesh serve` on this data directory restarts them from their newest checkpoint "
            "(--keep-jobs leaves them running)")
