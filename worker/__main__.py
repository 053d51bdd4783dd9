"""`python -m worker`: train a job spec on this process, or on every rank of an MPI job.

Standalone (no coordinator):
    python -m worker --spec examples/digits.toml --out runs/digits
    mpirun -n 4 python -m worker --spec examples/digits.toml --out runs/digits
  prints a progress line every `eval_every` steps, writes DIR/ckpt-<step>.npz every `every_steps`
  (keeping `keep_last`) and DIR/final.npz, and resumes from the newest good checkpoint in DIR when
  started again (disable with --no-resume).

Launched by the coordinator (`gradmesh serve` does this; not meant to be typed):
    mpirun -n N python -m worker --coordinator HOST:PORT --job ID --attempt K --out WORKDIR
  with the per-job token in GRADMESH_JOB_TOKEN. Rank 0 fetches the spec and the checkpoint to resume
  from, broadcasts them, reports progress and uploads checkpoints.

Exit codes: 0 done, 2 bad spec/data/checkpoint (retrying cannot help), 3 loss became NaN/inf,
4 stopped early on request (a checkpoint was written), 1 anything else (an exception on any rank
aborts every rank, with its traceback).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from worker.spec import SpecError, parse_spec_text

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_NAN, EXIT_STOPPED = 0, 1, 2, 3, 4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Train a gradmesh job spec (run under mpirun for several ranks).")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--spec", type=Path, help="job spec file (TOML, or JSON)")
    source.add_argument("--coordinator", metavar="HOST:PORT", help="fetch the spec from this coordinator")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default runs/<spec name>)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="resume from the newest good checkpoint in --out (default: on)")
    parser.add_argument("--job", help="job id (with --coordinator)")
    parser.add_argument("--attempt", type=int, default=1, help="attempt number (with --coordinator)")
    opts = parser.parse_args(argv)
    if opts.coordinator and not opts.job:
        parser.error("--coordinator needs --job")
    return opts


def _say(message: str) -> None:
    print(f"gradmesh: {message}", file=sys.stderr, flush=True)


def _json_format(opts) -> bool | None:
    """The coordinator sends canonical JSON; a file is JSON by its suffix, else sniffed (TOML or '{...}')."""
    return True if opts.coordinator else (opts.spec.suffix.lower() == ".json" or None)


def _fetch_spec_on_root(opts, comm):
    """Rank 0 gets the spec text (and the coordinator hooks and resume path); every rank gets the text."""
    hooks = resume_path = None
    payload = b""
    if comm.rank == 0:
        try:
            if opts.coordinator:
                from worker.report import CoordinatorHooks

                hooks = CoordinatorHooks(opts.coordinator, opts.job, os.environ.get("GRADMESH_JOB_TOKEN", ""),
                                         opts.attempt, opts.out or Path("runs") / opts.job,
                                         tls_ca=Path(os.environ["GRADMESH_TLS_CA"]) if os.environ.get("GRADMESH_TLS_CA") else None)
                text, resume_path = hooks.fetch()
            else:
                try:
                    text = opts.spec.read_text()
                except OSError as exc:
                    raise SpecError("file", f"cannot read {opts.spec}: {exc.strerror or exc}") from None
            parse_spec_text(text, json_format=_json_format(opts))
            payload = b"ok:" + text.encode()
        except SpecError as exc:
            payload = f"spec:{opts.spec or 'spec'}: {exc}".encode()
    payload = comm.bcast_bytes(payload if comm.rank == 0 else None)
    kind, _, rest = payload.partition(b":")
    if kind != b"ok":
        if comm.rank == 0:
            _say(f"bad spec: {rest.decode()}")
            if hooks is not None:
                hooks.report_failure("spec", rest.decode())
        sys.exit(EXIT_CONFIG)
    text = rest.decode()
    return parse_spec_text(text, json_format=_json_format(opts)), hooks, resume_path


def main(argv=None) -> int:
    opts = parse_args(argv)
    os.environ.setdefault("GRADMESH_ATTEMPT", str(opts.attempt))

    from worker.checkpoint import CheckpointError, newest_valid_checkpoint
    from worker.comm import init_comm
    from worker.data import DataError
    from worker.hooks import ConsoleHooks
    from worker.threads import configure_blas_threads
    from worker.train import Divergence, train

    comm = init_comm()
    spec, hooks, resume = _fetch_spec_on_root(opts, comm)
    if hasattr(comm, "set_hang_timeout"):
        comm.set_hang_timeout(spec.fault.hang_timeout_s)
    out = opts.out or Path("runs") / spec.name
    if comm.rank == 0:
        hooks = hooks or ConsoleHooks()
        if opts.spec is not None and opts.resume:
            resume = newest_valid_checkpoint(out, warn=_say)
    threads = configure_blas_threads(comm, spec.train.threads_per_rank)

    def fail(kind: str, code: int, message: str) -> int:
        # Every rank may hit a data error; a checkpoint error happens on rank 0 alone, so abort them all.
        _say(f"{'rank %d: ' % comm.rank if comm.size > 1 else ''}{message}")
        if comm.rank == 0 and hasattr(hooks, "report_failure"):
            hooks.report_failure(kind, message)
        if comm.size > 1:
            comm.abort(code)
        return code

    try:
        result = train(spec, comm, hooks=hooks, out_dir=out, resume=resume, threads=threads)
    except DataError as exc:
        return fail("data", EXIT_CONFIG, str(exc))
    except CheckpointError as exc:
        return fail("data", EXIT_CONFIG, f"checkpoint: {exc}")
    except SpecError as exc:
        return fail("spec", EXIT_CONFIG, f"bad spec: {exc}")
    except Divergence as exc:
        # every rank sees the same reduced loss, so all stop here together; no abort needed
        if comm.rank == 0:
            _say(f"{exc}; the last good checkpoint is kept")
            if hasattr(hooks, "report_failure"):
                hooks.report_failure("nan", str(exc))
                hooks.close()
        return EXIT_NAN
    if comm.rank == 0 and hasattr(hooks, "close"):
        hooks.close()
    if result.status == "stopped":
        return EXIT_STOPPED
    if comm.rank == 0:
        m = result.metrics
        acc = m.get("val_accuracy", float("nan"))
        acc_text = f", val_accuracy {100 * acc:.2f}%" if acc == acc else ""
        print(f"gradmesh: done at step {result.step}: val_loss {m.get('val_loss', float('nan')):.4f}{acc_text}; "
              f"final checkpoint {result.final_path}", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
