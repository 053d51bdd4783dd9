"""`gradmesh`: run a coordinator, submit training jobs to it, watch them and fetch their checkpoints.

    gradmesh demo                                   # everything end to end on this machine, ~10 s
    gradmesh serve --data-dir ~/.gradmesh --slots 4 # coordinator on 127.0.0.1:50051, token in DATA_DIR/token,
                                                    # web dashboard on http://127.0.0.1:50052/
    gradmesh submit examples/digits.toml --workers 2 --label team=ml     # prints the job id
    gradmesh watch ID                               # live progress; exit 0 only when the job SUCCEEDED
    gradmesh status ID | list [--state RUNNING] | metrics ID | checkpoints ID | logs ID [-f]
    gradmesh cancel ID [--checkpoint]
    gradmesh hosts [--json] | hosts drain HOST | hosts undrain HOST    # slots and health of every host
    gradmesh users add NAME [--role member] [--max-slots N]   # prints NAME's token once; users list|set|remove
    gradmesh tokens rotate [NAME] | audit [--user U] [--since 24h] | whoami
    gradmesh resume ID [--workers N]                # a new job from ID's newest checkpoint; prints its id
    gradmesh delete ID [ID ...]                     # an ended job and all its files, to free the disk
    gradmesh download ID --best -o best.npz        # or --step S / --latest; verifies the sha256
    gradmesh sweep submit sweep.toml | sweep status|watch|cancel|delete ID   # many trials, early stopping that replays
    gradmesh fork ID --from-step K --set optim.lr=0.01   # a new job from ID's checkpoint at step K
    gradmesh plot ID [ID ...] -o curves.png         # curves of several jobs on shared axes (extra: plot)
    gradmesh metrics ID --csv > history.csv         # the history for spreadsheets and pandas
    gradmesh evaluate best.npz --data mnist/ --split val    # loss, accuracy, confusion matrix (or a job ID --best)
    gradmesh predict best.npz --data new.csv -o predictions.npy
    gradmesh export best.npz -o model.onnx          # ONNX graph (extra: onnx)

Where the coordinator is: --address or GRADMESH_ADDRESS, else the one running on --data-dir (default
127.0.0.1:50051). The token: --token, GRADMESH_TOKEN, or the token file of --data-dir (default ~/.gradmesh
when it has one); --tls-ca for TLS.
Every read command takes --json for machine-readable output. Expected errors print one line to stderr
and exit 1 (a refused spec names the field); usage errors exit 2; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from coordinator.cli.commands import (
    EXIT_ERROR, EXIT_INTERRUPTED, EXIT_OK, CliError, integer, cmd_cancel, cmd_checkpoints, cmd_delete, cmd_list,
    cmd_logs, cmd_resume, cmd_status, cmd_submit, cmd_watch,
)
from coordinator.cli.demo import run_demo
from coordinator.cli.render import clean
from coordinator.cli import evaluate as evaluate_cli
from coordinator.cli.export import cmd_export
from coordinator.cli.hosts import cmd_hosts
from coordinator.cli.plot import cmd_plot
from coordinator.cli.metrics_export import cmd_metrics_or_export
from coordinator.cli.monitoring import add_monitoring_flags
from coordinator.cli.serve import add_limit_flags, add_team_flags, cmd_serve
from coordinator.cli import sweep as sweep_cli
from coordinator.cli import users as users_cli
from coordinator.access.limits import Limits
from coordinator.files.expiry import parse_duration
from coordinator.client import GradmeshError, InvalidArgument, InvalidSpec


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("gradmesh")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed)"


def count(text: str) -> int:
    """A number of workers: 1 or more, in digits 0-9 (0 would silently mean "the spec's own")."""
    if not (text.isascii() and text.isdigit()) or len(text) > 6 or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of workers, at least 1")
    return int(text)


def duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before and after the subcommand: the subparsers repeat them with
    # SUPPRESS defaults so a value given after the subcommand wins and one given before survives.
    def add_globals(p: argparse.ArgumentParser, suppress: bool) -> None:
        d = (lambda v: argparse.SUPPRESS) if suppress else (lambda v: v)
        g = p.add_argument_group("connection")
        g.add_argument("--address", default=d(None),
                       help="coordinator HOST:PORT (GRADMESH_ADDRESS, default 127.0.0.1:50051)")
        g.add_argument("--token", default=d(None),
                       help="bearer token (GRADMESH_TOKEN); write --token=VALUE when it starts with -")
        g.add_argument("--data-dir", default=d(None),
                       help="coordinator data directory: its token file, and the address of the coordinator "
                            "running on it (unless --address or GRADMESH_ADDRESS says otherwise)")
        g.add_argument("--tls-ca", default=d(None), help="CA certificate PEM for a TLS coordinator (GRADMESH_TLS_CA)")
        g.add_argument("--timeout", type=float, default=d(10.0), help="seconds per call (default 10)")

    parser = argparse.ArgumentParser(prog="gradmesh", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    add_globals(parser, suppress=False)
    parser.add_argument("--version", action="version", version=f"gradmesh {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_globals(p, suppress=True)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    p = command("serve", cmd_serve, "run a coordinator until SIGINT/SIGTERM", json_flag=False)
    p.add_argument("--host", default="127.0.0.1",
                   help="interface to bind (default 127.0.0.1; another needs --advertise-address)")
    p.add_argument("--port", type=integer, default=50051, help="port (0 = any free one; default 50051)")
    p.add_argument("--slots", type=integer, help="worker slots on this host (default: its cores)")
    p.add_argument("--hosts", help="several machines: HOST:SLOTS,HOST:SLOTS")
    p.add_argument("--hostfile", help="file of HOST:SLOTS (or 'HOST slots=N') lines")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="directory dataset paths must lie under (repeatable; default: the current directory)")
    p.add_argument("--tls-cert", help="server certificate PEM (enables TLS)")
    p.add_argument("--tls-key", help="server private key PEM")
    p.add_argument("--advertise-address", help="HOST:PORT the workers use to reach this coordinator")
    p.add_argument("--http-port", type=integer, default=None,
                   help="web dashboard port on the same interface (default: the gRPC port + 1, a free one when "
                        "--port is 0; 0 = no dashboard)")
    p.add_argument("--mpirun-arg", action="append", default=[], metavar="ARG", dest="mpirun_args",
                   help="pass ARG to every mpirun (repeatable, in order; e.g. --mpirun-arg=-launcher "
                        "--mpirun-arg=ssh --mpirun-arg=-iface --mpirun-arg=eth1); stored with each attempt")
    p.add_argument("--host-failures", type=integer, default=2, metavar="N",
                   help="quarantine a host after N failed attempts blamed on it within the window (default 2)")
    p.add_argument("--host-failure-window", type=float, default=600.0, metavar="SECONDS",
                   help="the window in which a host's failures count (default 600)")
    p.add_argument("--host-cooldown", type=float, default=300.0, metavar="SECONDS",
                   help="how long a quarantined host takes no new ranks (default 300)")
    p.add_argument("--delete-ended-after", type=duration, default=None, metavar="DURATION",
                   help="delete jobs that ended longer ago than this (e.g. 30d, 12h), with their metrics, logs "
                        "and checkpoints, as `gradmesh delete` does (default: keep them until deleted)")
    p.add_argument("--keep-jobs", action="store_true",
                   help="on stop, leave running jobs training; the next coordinator on this data directory "
                        "re-adopts them")
    p.add_argument("--executor", choices=("local", "slurm"), default="local",
                   help="where attempts run: local = mpirun from here on the slot pool (default); slurm = one "
                        "sbatch job per attempt, queued and placed by Slurm (no --slots/--hosts)")
    p.add_argument("--partition", default="", help="(slurm) the partition to submit to")
    p.add_argument("--account", default="", help="(slurm) the account to charge")
    p.add_argument("--slurm-account", action="append", default=[], metavar="USER=ACCOUNT",
                   help="(slurm) charge this gradmesh user's jobs to this Slurm account (repeatable; others: "
                        "--account). Every job's Slurm comment names its owner")
    p.add_argument("--sbatch-arg", action="append", default=[], metavar="ARG",
                   help="(slurm) one more sbatch option, repeatable; write it with '=': --sbatch-arg=--time=60")
    p.add_argument("--slurm-poll", type=float, default=1.0, metavar="SECONDS",
                   help="(slurm) how often to ask Slurm's controller about the jobs (default 1)")
    Limits.add_arguments(p)  # what one job or user may use (coordinator.access.limits)
    add_limit_flags(p)       # calls in flight and idle calls (coordinator.access.admission)
    add_team_flags(p)        # fair share, reservations, preemption, private jobs (coordinator.team.policy)
    add_monitoring_flags(p)  # /metrics, webhooks, MLflow (coordinator.telemetry)

    p = command("hosts", cmd_hosts, "show the coordinator's hosts and their health; drain or undrain one")
    p.add_argument("action", nargs="?", choices=["drain", "undrain"],
                   help="drain: no new ranks on HOST (running jobs stay); undrain: lift it")
    p.add_argument("host", nargs="?", metavar="HOST")

    p = command("submit", cmd_submit, "submit a job spec (TOML or JSON); prints the job id")
    p.add_argument("spec", help="job spec file")
    p.add_argument("--workers", type=count, help="override the spec's workers (at least 1)")
    p.add_argument("--id", help="choose the job id (resubmitting the same id and spec is a no-op)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="attach a label (repeatable)")

    p = command("status", cmd_status, "show one job")
    p.add_argument("job_id", metavar="ID")

    p = command("list", cmd_list, "list jobs, newest first")
    p.add_argument("--owner", metavar="USER", help="only this user's jobs")
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help="only jobs in this state (repeatable): QUEUED RUNNING RESTARTING SUCCEEDED FAILED CANCELLED")

    p = command("watch", cmd_watch, "follow a job until it ends; exit 0 only when it SUCCEEDED")
    p.add_argument("job_id", metavar="ID")

    p = command("logs", cmd_logs, "print a job's worker log")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--attempt", type=integer, default=0, help="which attempt (default: the latest)")

    p = command("cancel", cmd_cancel, "stop a job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--checkpoint", action="store_true", help="write a final checkpoint before stopping")

    p = command("resume", cmd_resume, "continue a FAILED or CANCELLED job from its newest checkpoint, as a new job "
                                      "(prints its id)")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--workers", type=count, help="on this many workers instead (at least 1)")

    p = command("delete", cmd_delete, "remove ended jobs with their metrics, logs and checkpoints (frees their disk)")
    p.add_argument("job_ids", nargs="+", metavar="ID")

    p = command("metrics", cmd_metrics_or_export, "a job's metric history (or jobs' as TensorBoard runs)")
    p.add_argument("job_ids", nargs="+", metavar="ID", help="a job (several, or a sweep's id, with --tensorboard)")
    p.add_argument("--from-step", type=integer, default=0, help="only points at or after this step")
    p.add_argument("--csv", action="store_true", help="CSV (a header, then one row per point) for spreadsheets/pandas")
    p.add_argument("--tensorboard", metavar="DIR", help="write TensorBoard event files, one run per job, into DIR")

    p = command("plot", cmd_plot, "draw jobs' curves (loss, validation, lr, samples/s vs step) on shared axes "
                                  "into an image (needs matplotlib: pip install -e '.[plot]' in the clone)", json_flag=False)
    p.add_argument("job_ids", nargs="+", metavar="ID")
    p.add_argument("-o", "--output", required=True, help="image file (.png, .svg, .pdf)")

    p = command("checkpoints", cmd_checkpoints, "a job's stored checkpoints")
    p.add_argument("job_id", metavar="ID")

    p = command("download", sweep_cli.cmd_download, "download a checkpoint and verify its sha256")
    p.add_argument("job_id", metavar="ID", help="a job id, or with --best a sweep id (its best trial's)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=integer, help="the checkpoint at this step")
    which.add_argument("--best", action="store_true", help="the one with the lowest validation loss")
    which.add_argument("--latest", action="store_true", help="the newest (default)")
    p.add_argument("-o", "--output", required=True, help="file to write")

    sweep_cli.add_commands(command)  # sweep submit|status|watch|cancel|delete|list, fork (coordinator.cli.sweep)

    p = command("evaluate", evaluate_cli.cmd_evaluate, "loss, accuracy and confusion matrix of a checkpoint on a "
                                                       "data source, computed here")
    evaluate_cli.add_arguments(p)

    p = command("predict", evaluate_cli.cmd_predict, "a checkpoint's class probabilities (or mse outputs) for a data "
                                                     "source, into a .npy")
    evaluate_cli.add_arguments(p, predicting=True)
    p.add_argument("-o", "--output", required=True, help="the .npy file to write")

    p = command("export", cmd_export, "write a checkpoint as an ONNX model (needs onnx: pip install -e '.[onnx]' in the clone)")
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file, or a job id to download one from")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=integer, help="with a job id: the checkpoint at this step")
    which.add_argument("--best", action="store_true", help="with a job id: the one with the lowest validation loss")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write")

    users_cli.register(sub, add_globals)   # users, tokens, audit, whoami

    p = command("demo", run_demo, "train the digits MLP on 2 workers through an embedded coordinator",
                json_flag=False)
    p.add_argument("--keep-dir", help="directory for the demo's data (default: a new temporary directory)")
    p.add_argument("--workers", type=count, default=2, help="MPI ranks (default 2)")
    p.add_argument("--epochs", type=integer, default=0, help="override the demo's epochs")
    p.add_argument("--keep", action="store_true",
                   help="afterwards, keep the coordinator and its dashboard up until Ctrl-C, to look around")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # `gradmesh` alone: what it can do, not "the following arguments are required"
        parser.print_help()
        return EXIT_OK
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except InvalidSpec as err:
        return _fail(f"invalid job spec: {err.message}")
    except InvalidArgument as err:
        return _fail(f"invalid argument: {err.message}")
    except GradmeshError as err:
        return _fail(err.message)
    except CliError as err:
        return _fail(str(err), err.exit_code)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `gradmesh logs ID | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _fail(message: str, exit_code: int = EXIT_ERROR) -> int:
    print(f"gradmesh: {clean(message, indent=2)}", file=sys.stderr)
    return exit_code
