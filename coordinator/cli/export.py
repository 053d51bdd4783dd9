"""`gradmesh export CHECKPOINT -o model.onnx`: a checkpoint (a file, or a job id to download it from) as an
ONNX graph (worker.onnx_export). The `onnx` package is an optional extra: pip install -e '.[onnx]' in the
gradmesh clone."""
from __future__ import annotations

import sys

from coordinator.cli.commands import EXIT_ERROR, EXIT_OK, EXIT_USAGE, CliError
from coordinator.cli.evaluate import checkpoint_file
from coordinator.cli.render import print_json


def cmd_export(args) -> int:
    try:
        import onnx  # noqa: F401  (only to say what is missing before anything is downloaded)
    except ImportError:
        raise CliError("export needs the onnx package: pip install -e '.[onnx]' in the gradmesh clone "
                       "(or pip install onnx)", EXIT_ERROR) from None
    from worker.checkpoint import CheckpointError, load_checkpoint
    from worker.onnx_export import export_onnx

    with checkpoint_file(args) as path:
        try:
            ckpt = load_checkpoint(path)
        except CheckpointError as exc:
            raise CliError(f"{args.checkpoint}: {exc}", EXIT_USAGE) from None
        for note in ckpt.notes:
            print(f"gradmesh: note: {args.checkpoint}: {note}", file=sys.stderr)
        written = export_onnx(ckpt, args.output)
    if args.json:
        print_json({"output": str(written), "bytes": written.stat().st_size})
    else:
        print(f"wrote {written} ({written.stat().st_size} bytes): input x (batch × features), outputs "
              f"logits/probabilities or outputs")
    return EXIT_OK
