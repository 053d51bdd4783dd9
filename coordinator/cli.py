"""`gradmesh`: run a coordinator, submit training jobs to it, watch them and fetch their checkpoints.

    gradmesh demo                                   # everything end to end on this machine, ~10 s
    gradmesh serve --data-dir ~/.gradmesh --slots 4 # coordinator on 127.0.0.1:50051, token in DATA_DIR/token
    gradmesh submit examples/digits.toml --workers 2 --label team=ml     # prints the job id
    gradmesh watch ID                               # live progress; exit 0 only when the job SUCCEEDED
    gradmesh status ID | list [--state RUNNING] | metrics ID | checkpoints ID | logs ID [-f]
    gradmesh cancel ID [--checkpoint]
    gradmesh resume ID [--workers N]                # a new job from ID's newest checkpoint; prints its id
    gradmesh download ID --best -o best.npz        # or --step S / --latest; verifies the sha256

Where the coordinator is: --address or GRADMESH_ADDRESS (default 127.0.0.1:50051). The token: --token,
GRADMESH_TOKEN, or the token file of --data-dir (default ~/.gradmesh when it has one); --tls-ca for TLS.
Every read command takes --json for machine-readable output. Expected errors print one line to stderr
and exit 1 (a refused spec names the field); usage errors exit 2; Ctrl-C exits 130.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Sequence, TextIO

# gRPC's C core logs failed handshakes and the like to stderr; the CLI reports errors itself, in one line.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from coordinator.client import (  # noqa: E402
    Client, GradmeshError, InvalidArgument, InvalidSpec, JobInfo, JobSnapshot, JobState, JobStateChanged,
    MetricPoint, MetricReported, TOKEN_FILE,
)

DEFAULT_DATA_DIR = Path("~/.gradmesh")
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(Exception):
    """An expected failure: printed as one line, exit 1."""


# ---------------------------------------------------------------- formatting (pure, unit-tested)

def fmt_duration(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_time(unix: float | None) -> str:
    if not unix:
        return "-"
    return datetime.fromtimestamp(unix).strftime("%Y-%m-%d %H:%M:%S")


def fmt_pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def fmt_num(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def fmt_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def progress_bar(step: int, total: int, width: int = 24) -> str:
    if total <= 0:
        return "[" + "?" * width + "]"
    filled = min(width, int(width * step / total))
    return "[" + "#" * filled + "." * (width - filled) + "]"


def estimate_eta(step: int, total: int, samples_per_second: float, batch_size: int) -> float | None:
    """Seconds left at the current throughput, or None when it cannot be known yet."""
    if total <= 0 or samples_per_second <= 0 or batch_size <= 0:
        return None
    return max(0, total - step) * batch_size / samples_per_second


def progress_line(*, state: JobState | str, step: int, total: int, loss: float | None, val_accuracy: float | None,
                  eta: float | None, samples_per_second: float = 0.0, width: int = 24) -> str:
    """One line: bar, step/total, percent, loss, val acc, throughput, ETA, state."""
    state_name = state.value if isinstance(state, JobState) else str(state)
    pct = f"{100 * step / total:5.1f}%" if total > 0 else "    ?%"
    parts = [f"{progress_bar(step, total, width)} {step}/{total if total > 0 else '?'} {pct}",
             f"loss {fmt_num(loss)}", f"val acc {fmt_pct(val_accuracy)}"]
    if samples_per_second > 0:
        parts.append(f"{samples_per_second:,.0f} samples/s")
    parts.append(f"ETA {fmt_duration(eta)}")
    parts.append(state_name)
    return " | ".join(parts)


def job_table(jobs: Sequence[JobInfo]) -> str:
    rows = [("ID", "STATE", "STEP", "VAL ACC", "WORKERS", "NAME", "CREATED")]
    for job in jobs:
        acc = job.best.val_accuracy if job.best else (job.latest.val_accuracy if job.latest else None)
        rows.append((job.id, job.state.value, f"{job.step}/{job.total_steps or '?'}", fmt_pct(acc),
                     str(job.workers), job.name, fmt_time(job.created_unix)))
    return table(rows)


def table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def describe_job(job: JobInfo) -> str:
    lines = [f"job        {job.id}  ({job.name})",
             f"state      {job.state.value}   attempts {job.attempts}, restarts {job.restarts}"]
    if job.message:
        lines.append(f"message    {job.message}")
    pct = f" ({100 * job.step / job.total_steps:.1f}%)" if job.total_steps else ""
    lines.append(f"progress   step {job.step}/{job.total_steps or '?'}{pct}  epoch {job.epoch}"
                 f"  ETA {fmt_duration(job.eta_seconds) if not job.is_terminal() else '-'}")
    if job.latest:
        p = job.latest
        lines.append(f"latest     step {p.step}  loss {fmt_num(p.train_loss)}  val_loss {fmt_num(p.val_loss)}"
                     f"  val_acc {fmt_pct(p.val_accuracy)}  {p.samples_per_second:,.0f} samples/s")
    if job.best:
        p = job.best
        lines.append(f"best       step {p.step}  val_loss {fmt_num(p.val_loss)}  val_acc {fmt_pct(p.val_accuracy)}")
    labels = ",".join(f"{k}={v}" for k, v in sorted(job.labels.items())) or "-"
    lines.append(f"workers    {job.workers}   priority {job.priority}   labels {labels}")
    lines.append(f"times      created {fmt_time(job.created_unix)}   started {fmt_time(job.started_unix)}"
                 f"   ended {fmt_time(job.ended_unix)}")
    return "\n".join(lines)


def parse_labels(items: Sequence[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CliError(f"--label: expected KEY=VALUE, got {item!r}")
        labels[key.strip()] = value.strip()
    return labels


def parse_hosts(text: str) -> list[tuple[str, int]]:
    """"a:2,b:4" → [("a", 2), ("b", 4)]; a host without ":N" has 1 slot."""
    hosts = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, slots = item.partition(":")
        hosts.append((name.strip(), _positive_int(slots or "1", f"--hosts {item!r}")))
    if not hosts:
        raise CliError("--hosts: give at least one HOST:SLOTS")
    return hosts


def parse_hostfile(path: Path) -> list[tuple[str, int]]:
    """MPICH ("host:4") or Open MPI ("host slots=4") hostfile lines; '#' starts a comment."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise CliError(f"--hostfile: cannot read {path}: {exc.strerror or exc}") from None
    hosts = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        name, _, slots = words[0].partition(":")
        for word in words[1:]:
            key, _, value = word.partition("=")
            if key == "slots":
                slots = value
        hosts.append((name, _positive_int(slots or "1", f"--hostfile {path}:{number}")))
    if not hosts:
        raise CliError(f"--hostfile: {path} lists no hosts")
    return hosts


def _positive_int(text: str, where: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise CliError(f"{where}: slots must be a whole number, got {text!r}") from None
    if value < 1:
        raise CliError(f"{where}: slots must be at least 1")
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, JobState):
        return value.value
    return str(value)


def print_json(value: Any, stream: TextIO | None = None) -> None:
    print(json.dumps(value, default=_json_default, indent=2, sort_keys=True), file=stream or sys.stdout)


# ---------------------------------------------------------------- watching

class ProgressView:
    """Renders watch events: one line redrawn in place on a TTY (at most every `min_interval` s), plain lines
    otherwise (at most one progress line every `plain_interval` s, so a log stays readable; the last is kept)."""

    def __init__(self, stream: TextIO, tty: bool | None = None, min_interval: float = 0.1,
                 plain_interval: float = 1.0):
        self.stream = stream
        self.tty = stream.isatty() if tty is None else tty
        self.min_interval = min_interval
        self.plain_interval = plain_interval
        self._last_plain = -math.inf
        self._pending_plain = False
        self.state: JobState = JobState.UNSPECIFIED
        self.step = self.total = self.batch_size = 0
        self.loss: float | None = None
        self.val_accuracy: float | None = None
        self.samples_per_second = 0.0
        self.eta: float | None = None
        self._drawn = False
        self._last_draw = 0.0

    def on_snapshot(self, job: JobInfo) -> None:
        self.state, self.step, self.total = job.state, job.step, job.total_steps or self.total
        self.batch_size = int(job.spec.get("train", {}).get("batch_size", 0) or 0) or self.batch_size
        if job.latest:
            self._take_point(job.latest)
        if job.eta_seconds is not None:
            self.eta = job.eta_seconds
        self.samples_per_second = job.samples_per_second or self.samples_per_second
        if not self.tty:
            self._line(f"{job.id}: {job.state.value} at step {job.step}/{job.total_steps or '?'}"
                       + (f" — {job.message}" if job.message else ""))
        self.draw(force=True)

    def on_state(self, change) -> None:
        if self._pending_plain:  # the progress up to this change, before it
            self._plain_progress()
        self.state = change.state
        self._line(f"{change.state.value}" + (f": {change.message}" if change.message else ""))
        self.draw(force=True)

    def on_metric(self, point: MetricPoint) -> None:
        self._take_point(point)
        self.eta = estimate_eta(self.step, self.total, self.samples_per_second, self.batch_size)
        if self.tty:
            self.draw()
        elif time.monotonic() - self._last_plain >= self.plain_interval:
            self._plain_progress()
        else:
            self._pending_plain = True

    def _plain_progress(self) -> None:
        self._last_plain = time.monotonic()
        self._pending_plain = False
        self._line(self.render())

    def _take_point(self, point: MetricPoint) -> None:
        self.step = max(self.step, point.step)
        self.loss = point.train_loss if point.train_loss is not None else self.loss
        if point.val_accuracy is not None:
            self.val_accuracy = point.val_accuracy
        if point.samples_per_second > 0:
            self.samples_per_second = point.samples_per_second

    def render(self) -> str:
        width = shutil.get_terminal_size((100, 20)).columns if self.tty else 100
        bar = max(10, min(30, width - 90))
        line = progress_line(state=self.state, step=self.step, total=self.total, loss=self.loss,
                             val_accuracy=self.val_accuracy, eta=self.eta,
                             samples_per_second=self.samples_per_second, width=bar)
        return line[: width - 1] if self.tty else line

    def draw(self, force: bool = False) -> None:
        if not self.tty:
            return
        now = time.monotonic()
        if not force and now - self._last_draw < self.min_interval:
            return
        self._last_draw = now
        self.stream.write("\r\x1b[K" + self.render())
        self.stream.flush()
        self._drawn = True

    def _line(self, text: str) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False
        self.stream.write(text + "\n")
        self.stream.flush()

    def finish(self) -> None:
        if self._pending_plain:
            self._plain_progress()
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[K" + self.render() + "\n")
            self.stream.flush()
            self._drawn = False


def watch_job(client: Client, job_id: str, *, stream: TextIO, as_json: bool = False,
              tty: bool | None = None) -> JobInfo:
    """Follow a job to its end, rendering progress; returns the final job."""
    view = None if as_json else ProgressView(stream, tty=tty)
    refreshed = 0.0
    for event in client.watch(job_id):
        if as_json:
            print(json.dumps(_event_dict(event), default=_json_default), file=stream, flush=True)
        elif isinstance(event, JobSnapshot):
            view.on_snapshot(event.job)
        elif isinstance(event, JobStateChanged):
            view.on_state(event.change)
        elif isinstance(event, MetricReported):
            if view.total <= 0 and time.monotonic() - refreshed > 1.0:
                # an epochs-based job learns its step count from its first worker report: ask once a second
                refreshed = time.monotonic()
                view.total = client.get(job_id).total_steps
            view.on_metric(event.point)
    if view:
        view.finish()
    return client.get(job_id)


def _event_dict(event) -> dict[str, Any]:
    if isinstance(event, JobSnapshot):
        return {"snapshot": event.job.to_dict()}
    if isinstance(event, JobStateChanged):
        return {"state": event.change.to_dict()}
    return {"metric": event.point.to_dict()}


def _outcome(job: JobInfo) -> int:
    if job.state is JobState.SUCCEEDED:
        return EXIT_OK
    raise CliError(f"job {job.id} {job.state.value}" + (f": {job.message}" if job.message else ""))


# ---------------------------------------------------------------- commands

def _client(args) -> Client:
    data_dir = args.data_dir
    if data_dir is None and not args.token and not os.environ.get("GRADMESH_TOKEN"):
        default = DEFAULT_DATA_DIR.expanduser()
        data_dir = default if (default / TOKEN_FILE).is_file() else None
    return Client(args.address, token=args.token, tls_ca=args.tls_ca, timeout=args.timeout, data_dir=data_dir)


def cmd_submit(args) -> int:
    with _client(args) as client:
        job = client.submit(Path(args.spec), job_id=args.id, labels=parse_labels(args.label), workers=args.workers)
    if args.json:
        print_json(job.to_dict())
    else:
        print(job.id)
    return EXIT_OK


def cmd_status(args) -> int:
    with _client(args) as client:
        job = client.get(args.job_id)
    if args.json:
        print_json(job.to_dict())
    else:
        print(describe_job(job))
    return EXIT_OK


def cmd_list(args) -> int:
    states = [JobState.parse(s) for s in args.state] or None
    with _client(args) as client:
        jobs = list(client.list(states=states))
    if args.json:
        print_json([job.to_dict() for job in jobs])
    elif jobs:
        print(job_table(jobs))
    else:
        print("no jobs")
    return EXIT_OK


def cmd_watch(args) -> int:
    with _client(args) as client:
        job = watch_job(client, args.job_id, stream=sys.stdout, as_json=args.json)
    if not args.json:
        print(_summary(job))
    return _outcome(job)


def _summary(job: JobInfo) -> str:
    best = f", best val acc {fmt_pct(job.best.val_accuracy)} at step {job.best.step}" if job.best else ""
    took = ""
    if job.started_unix and job.ended_unix:
        took = f" in {fmt_duration(job.ended_unix - job.started_unix)}"
    return f"{job.id} {job.state.value} at step {job.step}/{job.total_steps}{took}{best}"


def cmd_logs(args) -> int:
    out = sys.stdout.buffer
    with _client(args) as client:
        if args.follow:
            client.stream_timeout = 7 * 86400.0  # following a long job is the point; still a deadline
        for chunk in client.logs(args.job_id, follow=args.follow, attempt=args.attempt):
            if args.json:  # one object per chunk, so `-f --json` can be consumed line by line
                chunk = (json.dumps({"text": chunk.decode("utf-8", "replace")}) + "\n").encode()
            out.write(chunk)
            out.flush()
    return EXIT_OK


def cmd_cancel(args) -> int:
    with _client(args) as client:
        job = client.cancel(args.job_id, checkpoint=args.checkpoint)
    if args.json:
        print_json(job.to_dict())
    else:
        print(f"{job.id}: cancel requested{' (final checkpoint first)' if args.checkpoint else ''}; "
              f"state {job.state.value}")
    return EXIT_OK


def cmd_resume(args) -> int:
    with _client(args) as client:
        job = client.resume(args.job_id, workers=args.workers)
    if args.json:
        print_json(job.to_dict())
    else:
        # the resumed run is a new job (terminal states are final): print its id, as submit does
        print(job.id)
    return EXIT_OK


def cmd_metrics(args) -> int:
    with _client(args) as client:
        points = client.metrics(args.job_id, from_step=args.from_step)
    if args.json:
        print_json([p.to_dict() for p in points])
        return EXIT_OK
    rows = [("STEP", "EPOCH", "LOSS", "VAL LOSS", "VAL ACC", "SAMPLES/S", "LR", "ATTEMPT")]
    rows += [(str(p.step), str(p.epoch), fmt_num(p.train_loss), fmt_num(p.val_loss), fmt_pct(p.val_accuracy),
              f"{p.samples_per_second:,.0f}", f"{p.lr:.3g}", str(p.attempt)) for p in points]
    print(table(rows) if points else "no metrics yet")
    return EXIT_OK


def cmd_checkpoints(args) -> int:
    with _client(args) as client:
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
    with _client(args) as client:
        result = client.download(args.job_id, args.output, step=args.step, best=args.best, latest=args.latest)
    if args.json:
        print_json(result.to_dict())
    else:
        info = result.info
        rate = info.size_bytes / max(result.seconds, 1e-9) / (1 << 20)
        print(f"downloaded step {info.step} of {args.job_id} ({fmt_bytes(info.size_bytes)}, sha256 {info.sha256} "
              f"verified) to {result.path} in {result.seconds:.2f} s ({rate:.0f} MiB/s)")
    return EXIT_OK


def _import_server():
    try:
        from coordinator.server import start_server
    except ImportError as exc:
        raise CliError(f"the coordinator server is not available in this installation: {exc}") from None
    return start_server


def cmd_serve(args) -> int:
    start_server = _import_server()
    if sum(x is not None for x in (args.slots, args.hosts, args.hostfile)) > 1:
        raise CliError("serve: give only one of --slots, --hosts, --hostfile")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise CliError("serve: --tls-cert and --tls-key go together")
    hosts = parse_hosts(args.hosts) if args.hosts else (parse_hostfile(Path(args.hostfile)) if args.hostfile else None)
    data_dir = Path(args.data_dir or DEFAULT_DATA_DIR).expanduser()
    data_roots = [Path(p).expanduser().resolve() for p in args.data_root] or [Path.cwd()]
    # the coordinator's own warnings (re-adopted jobs, corrupt checkpoints, internal errors) go to stderr
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s")
    try:
        srv = start_server(data_dir, host=args.host, port=args.port, slots=args.slots, hosts=hosts,
                           data_roots=data_roots, token=args.token,
                           tls_cert=Path(args.tls_cert) if args.tls_cert else None,
                           tls_key=Path(args.tls_key) if args.tls_key else None,
                           advertise_address=args.advertise_address)
    except (OSError, ValueError) as err:
        raise CliError(f"serve: {err}") from None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    token_where = "as given by --token" if args.token else f"in {Path(srv.data_dir) / TOKEN_FILE}"
    print(f"gradmesh coordinator listening on {srv.address}", flush=True)
    print(f"data directory {srv.data_dir}; data roots {', '.join(map(str, data_roots))}", flush=True)
    print(f"client token {token_where}  (export GRADMESH_ADDRESS={srv.address}; "
          f"use --data-dir {srv.data_dir} or GRADMESH_TOKEN)", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        print("gradmesh coordinator stopping" + (" (running jobs keep running)" if args.keep_jobs else ""), flush=True)
        srv.stop(grace=5.0, stop_jobs=not args.keep_jobs)
    return EXIT_OK


def cmd_demo(args) -> int:
    return run_demo(args)


# ---------------------------------------------------------------- demo

def demo_spec(workers: int = 2, epochs: int = 30) -> dict[str, Any]:
    """The digits job of examples/digits.toml, evaluated once per epoch so the progress bar moves."""
    return {
        "name": "digits-demo",
        "workers": workers,
        "model": {"layers": [64, 128, 128, 10], "activation": "relu", "loss": "cross_entropy"},
        "data": {"source": "digits", "val_fraction": 0.1, "normalize": "none"},
        "train": {"epochs": epochs, "batch_size": 64, "seed": 0, "eval_every": 26},
        "optim": {"name": "adam", "lr": 1e-3},
        "checkpoint": {"every_steps": 104, "keep_last": 3},
    }


def evaluate_checkpoint(path: Path) -> tuple[float, int]:
    """(accuracy, examples) of a downloaded checkpoint on its job's held-out split, computed with nothing but
    numpy.load and matrix products; only the data split comes from the worker package, so it is the same one."""
    import numpy as np  # only the demo needs it; other commands start faster without

    from worker.data import load_dataset
    from worker.spec import parse_spec

    activations: dict[str, Callable] = {
        "relu": lambda z: np.maximum(z, 0),
        "tanh": np.tanh,
        "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
        "gelu": lambda z: 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z ** 3))),
    }

    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    meta = json.loads(str(arrays["meta"]))
    spec = parse_spec(meta["spec"])
    data = load_dataset(spec.data, spec.model.layers, spec.model.loss, spec.train.seed)
    x, y = data.val.rows(np.arange(len(data.val)))
    x = x.astype(np.float64)
    if "normalize.mean" in arrays:
        x = (x - arrays["normalize.mean"]) / arrays["normalize.std"]
    n_layers = sum(1 for k in arrays if k.startswith("layers.") and k.endswith(".W"))
    act = activations[spec.model.activation]
    for i in range(n_layers):
        x = x @ arrays[f"layers.{i}.W"].astype(np.float64) + arrays[f"layers.{i}.b"].astype(np.float64)
        if i < n_layers - 1:
            x = act(x)
    return float(np.mean(np.argmax(x, axis=1) == y)), len(y)


def run_demo(args) -> int:
    start_server = _import_server()
    workers = max(1, args.workers)
    if args.keep_dir:
        root = Path(args.keep_dir).expanduser().resolve()
    else:
        root = Path(tempfile.mkdtemp(prefix="gradmesh-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    spec = demo_spec(workers, args.epochs or 30)

    def terminated(signum, frame):  # SIGTERM cleans up like Ctrl-C: cancel the job, stop the coordinator
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, terminated)
    srv = start_server(root / "coordinator", host="127.0.0.1", port=0, slots=max(2, workers), data_roots=[root])
    job_id = None
    client = Client(srv.address, token=srv.token, timeout=args.timeout)
    try:
        print(f"gradmesh demo: coordinator on {srv.address} ({max(2, workers)} worker slots, data in {root})",
              flush=True)
        job = client.submit(spec, labels={"demo": "digits"})
        job_id = job.id
        print(f"submitted job {job.id}: digits MLP {spec['model']['layers']}, adam lr {spec['optim']['lr']}, "
              f"batch {spec['train']['batch_size']}, {spec['train']['epochs']} epochs on {workers} MPI workers",
              flush=True)
        started = time.monotonic()
        job = watch_job(client, job.id, stream=sys.stdout)
        print(_summary(job), flush=True)
        if job.state is not JobState.SUCCEEDED:
            raise CliError(f"demo job {job.id} {job.state.value}: {job.message}")
        target = root / "best.npz"
        result = client.download(job.id, target, best=True)
        info = result.info
        print(f"best checkpoint: step {info.step}, val loss {fmt_num(info.val_loss)}, reported val acc "
              f"{fmt_pct(info.val_accuracy)}; downloaded {fmt_bytes(info.size_bytes)} to {target} "
              f"(sha256 {info.sha256[:16]}… verified)", flush=True)
        accuracy, count = evaluate_checkpoint(target)
        print(f"evaluated with plain numpy on the {count} held-out digits: accuracy {fmt_pct(accuracy)}", flush=True)
        print(f"done in {time.monotonic() - started:.1f} s; files kept in {root} "
              f"(coordinator data {root / 'coordinator'}, checkpoint {target})", flush=True)
        if info.val_accuracy is not None and abs(accuracy - info.val_accuracy) > 1e-6:
            raise CliError(f"the checkpoint's accuracy {accuracy:.6f} differs from the reported "
                           f"{info.val_accuracy:.6f}")
        return EXIT_OK
    except KeyboardInterrupt:
        if job_id is not None:
            try:
                client.cancel(job_id)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and not client.get(job_id).is_terminal():
                    time.sleep(0.2)
            except GradmeshError:
                pass
        raise
    finally:
        client.close()
        srv.stop(grace=5.0)


# ---------------------------------------------------------------- argument parsing

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
        g.add_argument("--data-dir", default=d(None), help="coordinator data directory (to read its token file)")
        g.add_argument("--tls-ca", default=d(None), help="CA certificate PEM for a TLS coordinator (GRADMESH_TLS_CA)")
        g.add_argument("--timeout", type=float, default=d(10.0), help="seconds per call (default 10)")

    parser = argparse.ArgumentParser(prog="gradmesh", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    add_globals(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable, help_text: str, json_flag: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add_globals(p, suppress=True)
        if json_flag:
            p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    p = command("serve", cmd_serve, "run a coordinator until SIGINT/SIGTERM", json_flag=False)
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=50051, help="port (0 = any free one; default 50051)")
    p.add_argument("--slots", type=int, help="worker slots on this host (default: its cores)")
    p.add_argument("--hosts", help="several machines: HOST:SLOTS,HOST:SLOTS")
    p.add_argument("--hostfile", help="file of HOST:SLOTS (or 'HOST slots=N') lines")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="directory dataset paths must lie under (repeatable; default: the current directory)")
    p.add_argument("--tls-cert", help="server certificate PEM (enables TLS)")
    p.add_argument("--tls-key", help="server private key PEM")
    p.add_argument("--advertise-address", help="HOST:PORT the workers use to reach this coordinator")
    p.add_argument("--keep-jobs", action="store_true",
                   help="on stop, leave running jobs training; the next coordinator on this data directory "
                        "re-adopts them")

    p = command("submit", cmd_submit, "submit a job spec (TOML or JSON); prints the job id")
    p.add_argument("spec", help="job spec file")
    p.add_argument("--workers", type=int, help="override the spec's workers")
    p.add_argument("--id", help="choose the job id (resubmitting the same id and spec is a no-op)")
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="attach a label (repeatable)")

    p = command("status", cmd_status, "show one job")
    p.add_argument("job_id", metavar="ID")

    p = command("list", cmd_list, "list jobs, newest first")
    p.add_argument("--state", action="append", default=[], metavar="STATE",
                   help="only jobs in this state (repeatable): QUEUED RUNNING RESTARTING SUCCEEDED FAILED CANCELLED")

    p = command("watch", cmd_watch, "follow a job until it ends; exit 0 only when it SUCCEEDED")
    p.add_argument("job_id", metavar="ID")

    p = command("logs", cmd_logs, "print a job's worker log")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing until the job ends")
    p.add_argument("--attempt", type=int, default=0, help="which attempt (default: the latest)")

    p = command("cancel", cmd_cancel, "stop a job")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--checkpoint", action="store_true", help="write a final checkpoint before stopping")

    p = command("resume", cmd_resume, "continue a FAILED or CANCELLED job from its newest checkpoint, as a new job "
                                      "(prints its id)")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--workers", type=int, help="on this many workers instead")

    p = command("metrics", cmd_metrics, "a job's metric history")
    p.add_argument("job_id", metavar="ID")
    p.add_argument("--from-step", type=int, default=0, help="only points at or after this step")

    p = command("checkpoints", cmd_checkpoints, "a job's stored checkpoints")
    p.add_argument("job_id", metavar="ID")

    p = command("download", cmd_download, "download a checkpoint and verify its sha256")
    p.add_argument("job_id", metavar="ID")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, help="the checkpoint at this step")
    which.add_argument("--best", action="store_true", help="the one with the lowest validation loss")
    which.add_argument("--latest", action="store_true", help="the newest (default)")
    p.add_argument("-o", "--output", required=True, help="file to write")

    p = command("demo", cmd_demo, "train the digits MLP on 2 workers through an embedded coordinator",
                json_flag=False)
    p.add_argument("--keep-dir", help="directory for the demo's data (default: a new temporary directory)")
    p.add_argument("--workers", type=int, default=2, help="MPI ranks (default 2)")
    p.add_argument("--epochs", type=int, default=0, help="override the demo's epochs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
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
        return _fail(str(err))
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `gradmesh logs ID | head` closed the pipe: not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


def _fail(message: str) -> int:
    print(f"gradmesh: {message}", file=sys.stderr)
    return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
