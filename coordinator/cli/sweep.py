"""`gradmesh sweep submit|status|watch|cancel|delete|list` and `gradmesh fork`: sweeps and forks through the client.

    gradmesh sweep plan sweep.toml                # here, no coordinator: the rungs and every trial's parameters
    gradmesh sweep submit sweep.toml              # prints the sweep id (every trial's spec checked first)
    gradmesh sweep status ID [--json]             # each trial: parameters, rung, value at each rung, state, job
    gradmesh sweep watch ID                       # a line per change until it ends; exit 0 when SUCCEEDED
    gradmesh sweep cancel ID
    gradmesh sweep delete ID                      # an ended sweep: every trial job and its files, then the sweep
    gradmesh download ID --best -o best.npz       # a sweep id: its best trial's best checkpoint
    gradmesh fork JOB --from-step 200 --set optim.lr=0.01 [--set ...]   # prints the new job's id
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from coordinator.cli import commands
from coordinator.cli.commands import EXIT_OK, CliError, integer, make_client
from coordinator.cli.render import clean, fmt_bytes, fmt_num, fmt_time, print_json, table
from coordinator.client import Client, NotFound, SweepInfo, Unimplemented
from coordinator.sweeps.spec import parse_sweep, trial_spec
from worker.spec import SpecError, parse_spec

POLL_SECONDS = 1.0


def add_commands(command) -> None:
    """Register `sweep` and `fork` with main's `command(name, func, help)` helper."""
    p = command("sweep", cmd_sweep, "run a sweep (grid, random or asha) of a job spec; see docs/sweeps.md")
    p.add_argument("action", choices=["plan", "submit", "status", "watch", "cancel", "delete", "list"])
    p.add_argument("target", nargs="?", metavar="FILE|ID", help="plan, submit: the sweep file; the others: the "
                                                                "sweep id")
    p.add_argument("--id", help="(submit) choose the sweep id")
    p.add_argument("--owner", metavar="USER", help="(list) only this user's sweeps")
    p = command("fork", cmd_fork, "start a new job from JOB's checkpoint at a step, with changed settings")
    p.add_argument("job_id", metavar="JOB")
    p.add_argument("--from-step", type=integer, required=True, help="a step JOB has a checkpoint at")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="a setting to change (repeatable), e.g. optim.lr=0.01; values are TOML (\"cosine\" or "
                        "cosine for a string)")
    p.add_argument("--id", help="the new job's id (default JOB-f<N>)")
    p.add_argument("--workers", type=integer, help="on this many workers instead")


def parse_setting(item: str) -> tuple[str, Any]:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise CliError(f"--set: expected KEY=VALUE, got {item!r}")
    try:
        value = tomllib.loads(f"v = {text.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = text.strip()  # a bare word is a string
    return key.strip(), value


def cmd_fork(args) -> int:
    settings = dict(parse_setting(s) for s in args.settings)
    with make_client(args) as client:
        job = client.fork(args.job_id, args.from_step, settings, new_job_id=args.id, workers=args.workers)
    if args.json:
        print_json(job.to_dict())
    else:
        print(job.id)
    return EXIT_OK


def cmd_sweep(args) -> int:
    if args.action != "list" and not args.target:
        raise CliError(f"gradmesh sweep {args.action}: give the "
                       f"{'file' if args.action in ('plan', 'submit') else 'sweep id'}",
                       exit_code=2)
    if args.action == "plan":
        return plan(Path(args.target), as_json=args.json)
    with make_client(args) as client:
        if args.action == "submit":
            sweep = client.submit_sweep(Path(args.target), sweep_id=args.id)
            print_json(sweep.to_dict()) if args.json else print(sweep.id)
        elif args.action == "status":
            sweep = client.sweep(args.target)
            print_json(sweep.to_dict()) if args.json else print(describe_sweep(sweep))
        elif args.action == "cancel":
            sweep = client.cancel_sweep(args.target)
            print_json(sweep.to_dict()) if args.json else print(f"{sweep.id} {sweep.state.name}")
        elif args.action == "delete":
            gone = client.delete_sweep(args.target)
            print_json(gone.to_dict()) if args.json else print(
                f"{gone.sweep_id}: deleted ({gone.trials} trial job(s), {gone.files} file(s), "
                f"{fmt_bytes(gone.bytes_freed)} freed)")
        elif args.action == "list":
            sweeps = list(client.sweeps(owner=getattr(args, "owner", None) or ""))
            if args.json:
                print_json([s.to_dict() for s in sweeps])
            else:
                rows = [("ID", "STATE", "METHOD", "TRIALS", "BEST", "OWNER", "CREATED")]
                rows += [(s.id, s.state.name, s.method, f"{len(s.trials)}/{s.trials_total}",
                          f"{s.metric} {fmt_num(s.best_value)}" if s.best_value is not None else "-",
                          clean(s.owner) or "-", fmt_time(s.created_unix)) for s in sweeps]
                print(table(rows) if sweeps else "no sweeps")
        else:
            sweep = watch_sweep(client, args.target, as_json=args.json)
            if sweep.state.name != "SUCCEEDED":
                raise CliError(f"sweep {sweep.id} {sweep.state.name}: {sweep.message}")
    return EXIT_OK


def plan(path: Path, *, as_json: bool = False) -> int:
    """The sweep file read here: its rungs and each trial's parameters and job spec checked (as far as this
    machine can: the coordinator also checks dataset paths and its own limits at submission)."""
    try:
        spec, base = parse_sweep(path.read_text())
        steps = base.get("train", {}).get("steps", 0) if isinstance(base.get("train"), dict) else 0
        trials = []
        for t in range(spec.trials):
            params = spec.params(t)
            try:
                parse_spec(trial_spec(base, params)) if spec.fork is None else None
            except SpecError as err:
                raise SpecError(err.field, f"trial {t} ({params}): {err.reason}") from None
            trials.append(params)
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror or exc}") from None
    except SpecError as err:
        raise CliError(f"invalid sweep file: {err}") from None
    rungs = list(spec.rungs(steps)) if steps else []
    if as_json:
        print_json({"method": spec.method, "metric": spec.metric, "goal": spec.goal, "rungs": rungs,
                    "trials": trials})
        return EXIT_OK
    print(f"{spec.method}: {spec.trials} trials, {spec.goal} {spec.metric}" +
          (f", rungs at steps {', '.join(map(str, rungs))}" if spec.method == "asha" else ""))
    rows = [("TRIAL", *(p.key for p in spec.parameters))]
    rows += [(str(t), *(json.dumps(v) for v in params.values())) for t, params in enumerate(trials)]
    print(table(rows))
    return EXIT_OK


def watch_sweep(client: Client, sweep_id: str, *, as_json: bool = False, stream=None) -> SweepInfo:
    """Poll the sweep and print a line for every trial that changes (JSON lines with --json), until it ends."""
    out = stream or sys.stdout
    seen: dict[int, tuple] = {}
    while True:
        sweep = client.sweep(sweep_id)
        for t in sweep.trials:
            state = (t.status, t.rung, len(t.values), t.job_state)
            if seen.get(t.trial) != state:
                seen[t.trial] = state
                if as_json:
                    print(json.dumps({"trial": t.to_dict(), "best_trial": sweep.best_trial}), file=out, flush=True)
                else:
                    last = f"  {sweep.metric} {fmt_num(t.values[-1][2])} at step {t.values[-1][1]}" if t.values else ""
                    print(f"trial {t.trial:>3}  {t.status:<9} rung {t.rung}  {t.job_id}{last}", file=out, flush=True)
        if sweep.is_terminal():
            if not as_json:
                print(f"{sweep.id} {sweep.state.name}: {clean(sweep.message)}", file=out, flush=True)
            return sweep
        time.sleep(POLL_SECONDS)


def describe_sweep(s: SweepInfo) -> str:
    # (the name and the message are the submitter's: `clean` keeps them from forging rows in another's terminal)
    lines = [f"sweep      {s.id}  ({clean(s.name)}, owner {clean(s.owner) or '-'})",
             f"state      {s.state.name}" + (f"   {clean(s.message)}" if s.message else ""),
             f"method     {s.method}, {s.goal} {s.metric}, {len(s.trials)}/{s.trials_total} trials started, "
             f"at most {s.max_concurrent} at once",
             f"rungs      steps {', '.join(str(r) for r in s.rungs)}"]
    if s.best_trial is not None:
        lines.append(f"best       trial {s.best_trial} (job {s.best_job_id}): {s.metric} {fmt_num(s.best_value)}")
    for k, promoted in enumerate(s.promotions):
        lines.append(f"promoted   rung {k} -> {k + 1}: " + (", ".join(map(str, promoted)) or "none yet"))
    rows = [("TRIAL", "STATUS", "RUNG", *(f"@{r}" for r in s.rungs), "JOB", "STATE", "PARAMETERS")]
    for t in s.trials:
        at = {rung: v for rung, _, v in t.values}
        values = (fmt_num(at[k]) if k in at else "" for k in range(len(s.rungs)))
        rows.append((str(t.trial), t.status, str(t.rung), *values,
                     t.job_id, t.job_state.name if t.job_state else "-",
                     ", ".join(f"{k}={json.dumps(v)}" for k, v in t.params.items())))
    return "\n".join(lines) + "\n" + table(rows)


def cmd_download(args) -> int:
    """`gradmesh download ID`: with --best and a sweep id, the sweep's best trial's best checkpoint."""
    if args.best:
        with make_client(args) as client:
            best = best_of_sweep(client, args.job_id)
        if best is not None:
            args = argparse.Namespace(**{**vars(args), "job_id": best})
    return commands.cmd_download(args)


def best_of_sweep(client: Client, target: str) -> str | None:
    """The job id of the sweep `target`'s best trial, or None when `target` is not a sweep (a job id then)."""
    try:
        sweep = client.sweep(target)
    except (NotFound, Unimplemented):
        return None
    if not sweep.best_job_id:
        raise CliError(f"sweep {target} has no trial with a value yet")
    return sweep.best_job_id


__all__ = ["add_commands", "cmd_sweep", "cmd_fork", "cmd_download", "best_of_sweep", "parse_setting"]
