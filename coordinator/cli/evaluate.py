"""`gradmesh evaluate` and `gradmesh predict`: a checkpoint applied to data, here on the client, where the data is.

    gradmesh evaluate best.npz --data mnist/ --split val     # loss, accuracy, confusion matrix (--json)
    gradmesh evaluate JOB --best --data test.csv             # downloads JOB's best checkpoint first
    gradmesh predict best.npz --data new.csv -o predictions.npy

CHECKPOINT is a checkpoint file (no coordinator needed) or a job id (downloaded to a temporary file, then
deleted; --best / --step S / the latest by default). --data takes any source a job spec's `[data] source`
takes (digits, .npz, a directory of .npy or IDX files, an IDX images file, a .csv). A bad data file or
checkpoint is one line and exit 2, as it is for a training worker.
"""
from __future__ import annotations

import dataclasses
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from coordinator.cli.commands import EXIT_OK, EXIT_USAGE, CliError, integer, make_client
from coordinator.cli.render import fmt_num, fmt_pct, print_json, table


def add_arguments(p, predicting: bool = False) -> None:
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="a checkpoint file, or a job id to download one from")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=integer, help="with a job id: the checkpoint at this step")
    which.add_argument("--best", action="store_true", help="with a job id: the one with the lowest validation loss")
    p.add_argument("--data", required=True, metavar="SOURCE", help="the data: anything [data] source takes")
    p.add_argument("--label-column", help="a .csv source's label column (default: the job's, else 'label')")
    p.add_argument("--labels", help="an IDX images file's labels file (default: the published name beside it)")
    if not predicting:
        p.add_argument("--split", choices=("all", "val"), default="all",
                       help="all examples (default), or the held-out split the job used (an IDX directory's "
                            "t10k files, a file's x_val, or val_fraction drawn with the job's seed)")


@contextmanager
def checkpoint_file(args) -> Iterator[Path]:
    """The checkpoint as a local file: the path given, or the job's checkpoint downloaded for the duration."""
    given = Path(args.checkpoint).expanduser()
    if given.is_file():
        if args.step is not None or args.best:
            raise CliError("--step and --best choose among a job's checkpoints; a file is already one", EXIT_USAGE)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="gradmesh-eval-") as tmp:
        path = Path(tmp) / "checkpoint.npz"
        with make_client(args) as client:
            client.download(args.checkpoint, path, step=args.step, best=args.best, latest=not (args.step or args.best))
        yield path


def _load(args, path: Path):
    """(model, normalizer, the job's spec, the data spec for --data, the checkpoint's step). A checkpoint of an
    older format is read as it was written (worker.checkpoint.migrate_meta); what that changed is noted on stderr."""
    from worker.checkpoint import CheckpointError, load_checkpoint, model_of
    from worker.spec import SpecError, parse_spec

    try:
        ckpt = load_checkpoint(path)
        model, normalizer = model_of(ckpt)
        spec = parse_spec(ckpt.meta["spec"])
        step = ckpt.step
    except (CheckpointError, SpecError, KeyError, TypeError, ValueError) as exc:
        raise CliError(f"{args.checkpoint}: {exc}", EXIT_USAGE) from None
    for note in ckpt.notes:
        print(f"gradmesh: note: {args.checkpoint}: {note}", file=sys.stderr)
    del ckpt  # the model holds the weights; the optimizer state is not needed
    changes = {"source": args.data, "labels": args.labels or ""}
    if args.label_column:
        changes["label_column"] = args.label_column  # otherwise the job's own (default "label")
    data = dataclasses.replace(spec.data, **changes)
    return model, normalizer, spec, data, step


def _examples(spec, data, split: str, need_labels: bool):
    from worker.data import DataError
    from worker.inference import examples

    try:
        return examples(data, spec.model.layers, spec.model.loss, spec.train.seed, split=split, need_labels=need_labels)
    except DataError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None


def cmd_evaluate(args) -> int:
    from worker.data import DataError
    from worker.inference import evaluate

    with checkpoint_file(args) as path:
        model, normalizer, spec, data, step = _load(args, path)
    x, y, where = _examples(spec, data, args.split, need_labels=True)
    try:
        result = evaluate(model, normalizer, x, y, where)
    except DataError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    if args.json:
        print_json({"checkpoint": args.checkpoint, "step": step, "split": args.split, **result.to_dict()})
        return EXIT_OK
    print(f"{args.checkpoint} (step {step}) on {where}: {result.examples} examples")
    line = f"loss {fmt_num(result.loss)}"
    if result.accuracy is not None:
        line += f", accuracy {fmt_pct(result.accuracy)}"
    print(line)
    if result.confusion is not None:
        print("confusion matrix (rows: true class, columns: predicted class)")
        k = len(result.confusion)
        rows = [["", *map(str, range(k))]] + [[str(i), *map(str, row)] for i, row in enumerate(result.confusion)]
        print(table(rows))
    return EXIT_OK


def cmd_predict(args) -> int:
    import numpy as np

    from worker.inference import predict

    with checkpoint_file(args) as path:
        model, normalizer, spec, data, _ = _load(args, path)
    x, _, where = _examples(spec, data, "all", need_labels=False)
    out = predict(model, normalizer, x)
    output = Path(args.output)
    with open(output, "wb") as f:  # a file object, so the name is exactly the one given
        np.save(f, out)
    what = "class probabilities" if model.loss == "cross_entropy" else "outputs"
    if args.json:
        print_json({"output": str(output), "rows": int(out.shape[0]), "columns": int(out.shape[1]), "values": what})
    else:
        print(f"wrote {out.shape[0]} × {out.shape[1]} {what} for {where} to {output}")
    return EXIT_OK
