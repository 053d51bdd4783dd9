"""The client commands of `gradmesh`: each `cmd_*` takes the parsed arguments and returns the exit code.

An expected failure raises a `coordinator.errors` class (from the client) or CliError; `main` prints it as
one line. `serve` lives in `coordinator.cli.serve`, `demo` in `coordinator.cli.demo`.
"""
from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Sequence, TextIO

from coordinator import wire
from coordinator.cli.render import (
    ProgressView, clean, describe_job, fmt_bytes, fmt_num, fmt_pct, fmt_time, job_table, print_json, summary_line, table,
)
from coordinator.client import (
    TOKEN_FILE, Client, DeadlineExceeded, GradmeshError, JobInfo, JobSnapshot, JobState, JobStateChanged, MetricReported,
    Unavailable, WatchEvent, parse_state,
)

DEFAULT_DATA_DIR = Path("~/.gradmesh")
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
REFRESH_SECONDS = 1.0  # while watching, ask the coordinator for the step count and ETA this often at most


def integer(text: str) -> int:
    """An argparse type: a whole number in digits 0-9 (int() would also take "١٢", "1_000" and " 7 ")."""
    import argparse
    if not re.fullmatch(r"-?[0-9]{1,18}", text):
        raise argparse.ArgumentTypeError(f"{text[:40]!r} is not a whole number (digits 0-9)")
    return int(text)


class CliError(Exception):
    """An expected failure of the command line itself (not of a call): printed as one line, exit `exit_code`."""

    def __init__(self, message: str, exit_code: int = EXIT_ERROR):
        super().__init__(message)
        self.exit_code = exit_code


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--label: expected KEY=VALUE, got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def make_client(args) -> Client:
    """A client for the connection options. Without gRPC retries: a person at a terminal wants "cannot reach
    the coordinator" at once, not after the retry policy's backoff (watch reconnects by itself anyway)."""
    data_dir = args.data_dir
    if data_dir is None and not args.token and not os.environ.get(wire.TOKEN_ENV):
        default = DEFAULT_DATA_DIR.expanduser()
        data_dir = default if (default / TOKEN_FILE).is_file() else None
    return Client(args.address, token=args.token, tls_ca=args.tls_ca, timeout=args.timeout, data_dir=data_dir,
                  retries=False)


def watch_job(client: Client, job_id: str, *, stream: TextIO, as_json: bool = False,
              tty: bool | None = None) -> JobInfo:
    """Follow a job to its end, rendering progress; returns the final job."""
    view = None if as_json else ProgressView(stream, tty=tty)
    refreshed = -math.inf  # the first metric refreshes at once (an epochs-based job's total is 0 until then)
    for event in client.watch(job_id):
        if as_json:
            print(json.dumps(_event_dict(event)), file=stream, flush=True)
        elif isinstance(event, JobSnapshot):
            view.on_snapshot(event.job)
        elif isinstance(event, JobStateChanged):
            view.on_state(event.change)
        elif isinstance(event, MetricReported):
            if time.monotonic() - refreshed > REFRESH_SECONDS:
                # metric events carry no ETA (and an epochs-based job learns its step count from its first
                # report): take both from the coordinator now and then
                refreshed = time.monotonic()
                try:
                    view.on_job(client.get(job_id))
                except (Unavailable, DeadlineExceeded):
                    pass  # the watch stream reconnects by itself; the figures are refreshed next time
            view.on_metric(event.point)
    if view:
        view.finish()
    return client.get(job_id)


def _event_dict(event: WatchEvent) -> dict[str, Any]:
    if isinstance(event, JobSnapshot):
        return {"snapshot": event.job.to_dict()}
    if isinstance(event, JobStateChanged):
        return {"state": event.change.to_dict()}
    return {"metric": event.point.to_dict()}


def outcome(job: JobInfo) -> int:
    if job.state is JobState.SUCCEEDED:
        return EXIT_OK
    raise CliError(f"job {clean(job.id)} {job.state.name}" + (f": {clean(job.message, indent=2)}" if job.message else ""))


def cmd_submit(args) -> int:
    with make_client(args) as client:
        job = client.submit(Path(args.spec), job_id=args.id, labels=parse_labels(args.label), workers=args.workers)
    if args.json:
        print_json(job.to_dict())
    else:
        print(job.id)
    return EXIT_OK


def cmd_status(args) -> int:
    with make_client(args) as client:
        job = client.get(args.job_id)
    if args.json:
        print_json(job.to_dict())
    else:
        print(describe_job(job))
    return EXIT_OK


def cmd_list(args) -> int:
    states = [parse_state(s) for s in args.state] or None
    with make_client(args) as client:
        jobs = list(client.list(states=states, owner=getattr(args, "owner", None) or ""))
    if args.json:
        print_json([job.to_dict() for job in jobs])
    elif jobs:
        print(job_table(jobs))
    else:
        print("no jobs")
    return EXIT_OK


def cmd_watch(args) -> int:
    with make_client(args) as client:
        try:
            job = watch_job(client, args.job_id, stream=sys.stdout, as_json=args.json)
        except KeyboardInterrupt:  # the watcher stops, not the job: say so, and how to get back to it
            print(f"\nstopped watching; job {clean(args.job_id)} keeps running (`gradmesh watch {clean(args.job_id)}` "
                  f"to follow it again, `gradmesh cancel {clean(args.job_id)}` to stop it)", file=sys.stderr)
            return EXIT_INTERRUPTED
    if not args.json:
        print(summary_line(job))
    return outcome(job)


def cmd_logs(args) -> int:
    out = sys.stdout.buffer
    with make_client(args) as client:
        if args.follow:
            client.stream_timeout = 7 * 86400.0  # following a long job is the point; still a deadline
        for chunk in client.logs(args.job_id, follow=args.follow, attempt=args.attempt):
            if args.json:  # one object per chunk, so `-f --json` can be consumed line by line
                chunk = (json.dumps({"text": chunk.decode("utf-8", "replace")}) + "\n").encode()
            out.write(chunk)
            out.flush()
    return EXIT_OK


def cmd_cancel(args) -> int:
    with make_client(args) as client:
        job = client.cancel(args.job_id, checkpoint=args.checkpoint)
    if args.json:
        print_json(job.to_dict())
    else:
        print(f"{job.id}: cancel requested{' (final checkpoint first)' if args.checkpoint else ''}; "
              f"state {job.state.name}")
    return EXIT_OK


def cmd_delete(args) -> int:
    """Each id in turn, as rm does: one that cannot be deleted is reported and the others still are."""
    deleted, failed = [], 0
    with make_client(args) as client:
        for job_id in args.job_ids:
            try:
                gone = client.delete(job_id)
            except GradmeshError as err:
                print(f"gradmesh: {clean(err.message)}", file=sys.stderr)
                failed += 1
                continue
            deleted.append(gone)
            if not args.json:
                print(f"{gone.job_id}: deleted ({gone.checkpoints} checkpoint(s), {gone.files} file(s), "
                      f"{fmt_bytes(gone.bytes_freed)} freed)")
    if args.json:
        print_json([d.to_dict() for d in deleted])
    return EXIT_ERROR if failed else EXIT_OK


def cmd_resume(args) -> int:
    with make_client(args) as client:
        job = client.resume(args.job_id, workers=args.workers)
    if args.json:
        print_json(job.to_dict())
    else:
        # the resumed run is a new job (terminal states are final): print its id, as submit does
        print(job.id)
    return EXIT_OK


def cmd_metrics(args) -> int:
    if len(args.job_ids) != 1:
        raise CliError("metrics: one job at a time (several, or a sweep, with --tensorboard DIR)", EXIT_USAGE)
    args.job_id = args.job_ids[0]
    with make_client(args) as client:
        points = client.metrics(args.job_id, from_step=args.from_step)
    if args.json:
        print_json([p.to_dict() for p in points])
        return EXIT_OK
    if getattr(args, "csv", False):
        write_metrics_csv(points, sys.stdout)
        return EXIT_OK
    rows = [("STEP", "EPOCH", "LOSS", "VAL LOSS", "VAL ACC", "SAMPLES/S", "LR", "ATTEMPT")]
    rows += [(str(p.step), str(p.epoch), fmt_num(p.train_loss), fmt_num(p.val_loss), fmt_pct(p.val_accuracy),
              f"{p.samples_per_second:,.0f}", f"{p.lr:.3g}", str(p.attempt)) for p in points]
    print(table(rows) if points else "no metrics yet")
    return EXIT_OK


METRIC_COLUMNS = ("step", "epoch", "train_loss", "val_loss", "val_accuracy", "samples_per_second", "lr",
                  "time_unix", "attempt")


def write_metrics_csv(points: Sequence[Any], out: TextIO) -> None:
    """A header, then one row per point; a value not measured at that step is an empty cell (pandas: NaN)."""
    import csv
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(METRIC_COLUMNS)
    for p in points:
        writer.writerow(["" if getattr(p, c) is None else getattr(p, c) for c in METRIC_COLUMNS])  # floats: repr


def cmd_checkpoints(args) -> int:
    with make_client(args) as client:
        ckpts = client.checkpoints(args.job_id)
    if args.json:
        print_json([c.to_dict() for c in ckpts])
        return EXIT_OK
    rows = [("STEP", "EPOCH", "SIZE", "VAL LOSS", "VAL ACC", "FINAL", "SHA256", "CREATED")]
    rows += [(str(c.step), str(c.epoch), fmt_bytes(c.size_bytes), fmt_num(c.val_loss), fmt_pct(c.val_accuracy),
              "yes" if c.is_final else "", c.sha256[:16], fmt_time(c.created_unix)) for c in ckpts]
    print(table(rows) if ckpts else "no checkpoints yet")
    return EXIT_OK


def cmd_download(args) -> int:
    with make_client(args) as client:
        result = client.download(args.job_id, args.output, step=args.step, best=args.best, latest=args.latest)
    if args.json:
        print_json(result.to_dict())
    else:
        info = result.info
        rate = info.size_bytes / max(result.seconds, 1e-9) / (1 << 20)
        print(f"downloaded step {info.step} of {args.job_id} ({fmt_bytes(info.size_bytes)}, sha256 {info.sha256} "
              f"verified) to {result.path} in {result.seconds:.2f} s ({rate:.0f} MiB/s)")
    return EXIT_OK
