"""`gradmesh demo`: start a coordinator in this process, train the digits MLP on 2 MPI workers, download the
best checkpoint (the one with the lowest validation loss) and evaluate it on the held-out digits.

Ctrl-C or SIGTERM cancels the job and stops the coordinator, so no worker is left behind (exit 130).
It prints the URL of the coordinator's web dashboard; with `--keep`, the coordinator and the dashboard stay
up after a successful run until Ctrl-C (then exit 0), so a newcomer can look at the job in a browser.
"""
from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from coordinator.cli.commands import EXIT_OK, CliError, watch_job
from coordinator.cli.render import fmt_bytes, fmt_num, fmt_pct, summary_line
from coordinator.cli.serve import import_start_server
from coordinator.client import TOKEN_FILE, CheckpointInfo, Client, GradmeshError, JobState


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
    """(accuracy, examples) of a downloaded checkpoint on its job's held-out split, through the worker's own
    public API: `load_model` for the network, the spec's data split, `MLP.evaluate` for the count."""
    import numpy as np  # only the demo needs numpy and the worker package; other commands start faster without

    from worker.checkpoint import load_checkpoint, load_model
    from worker.data import load_dataset
    from worker.spec import parse_spec

    model, normalizer = load_model(path)
    spec = parse_spec(load_checkpoint(path).meta["spec"])  # a small file: reading it twice costs nothing
    data = load_dataset(spec.data, spec.model.layers, spec.model.loss, spec.train.seed)
    x, y = data.val.rows(np.arange(len(data.val)))
    if normalizer is not None:
        x = normalizer.apply(x)
    _, correct, count = model.evaluate(x, y)
    return correct / max(count, 1), count


def best_checkpoint_line(info: CheckpointInfo) -> str:
    acc = f" (acc {fmt_pct(info.val_accuracy)})" if info.val_accuracy is not None else ""
    return f"best checkpoint (lowest val loss): step {info.step}, val loss {fmt_num(info.val_loss)}{acc}"


def keep_up(srv) -> None:
    """`--keep`: leave the coordinator and its dashboard up for a newcomer to look at, until Ctrl-C/SIGTERM."""
    url = srv.dashboard.url if srv.dashboard is not None else "(no dashboard)"
    print(f"--keep: coordinator on {srv.address}, web dashboard on {url}; log in with the token {srv.token}\n"
          f"  (or: GRADMESH_ADDRESS={srv.address} gradmesh --data-dir {srv.data_dir} list). Ctrl-C stops them.",
          flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping the demo coordinator", flush=True)


def run_demo(args) -> int:
    start_server = import_start_server()
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
    srv = start_server(root / "coordinator", host="127.0.0.1", port=0, slots=max(2, workers), data_roots=[root],
                       http_port=0)
    job_id = None
    client = Client(srv.address, token=srv.token, timeout=args.timeout)
    try:
        print(f"gradmesh demo: coordinator on {srv.address} ({max(2, workers)} worker slots, data in {root})",
              flush=True)
        if srv.dashboard is not None:
            print(f"web dashboard on {srv.dashboard.url} (log in with the token in {srv.data_dir / TOKEN_FILE})",
                  flush=True)
        job = client.submit(spec, labels={"demo": "digits"})
        job_id = job.id
        print(f"submitted job {job.id}: digits MLP {spec['model']['layers']}, adam lr {spec['optim']['lr']}, "
              f"batch {spec['train']['batch_size']}, {spec['train']['epochs']} epochs on {workers} MPI workers",
              flush=True)
        started = time.monotonic()
        job = watch_job(client, job.id, stream=sys.stdout)
        # "best" below is the checkpoint that is downloaded, not the best metric point (which may fall
        # between two checkpoints): the line and the file agree
        print(summary_line(job, best=False), flush=True)
        if job.state is not JobState.SUCCEEDED:
            raise CliError(f"demo job {job.id} {job.state.name}: {job.message}")
        target = root / "best.npz"
        result = client.download(job.id, target, best=True)
        info = result.info
        print(f"{best_checkpoint_line(info)}; downloaded {fmt_bytes(info.size_bytes)} to {target} "
              f"(sha256 {info.sha256[:16]}… verified)", flush=True)
        accuracy, count = evaluate_checkpoint(target)
        print(f"evaluated on the {count} held-out digits: accuracy {fmt_pct(accuracy)}", flush=True)
        print(f"done in {time.monotonic() - started:.1f} s; files kept in {root} "
              f"(coordinator data {root / 'coordinator'}, checkpoint {target})", flush=True)
        if info.val_accuracy is not None and abs(accuracy - info.val_accuracy) > 1e-6:
            raise CliError(f"the checkpoint's accuracy {accuracy:.6f} differs from the reported "
                           f"{info.val_accuracy:.6f}")
        if getattr(args, "keep", False):
            keep_up(srv)
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
