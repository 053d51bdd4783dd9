"""`python -m worker`: train a job spec on this process, or on every rank of an MPI job.

Standalone (no coordinator):
    python -m worker --spec examples/digits.toml --out runs/digits
    mpirun -n 4 python -m worker --spec examples/digits.toml --out runs/digits-4
  prints a progress line every `eval_every` steps, writes DIR/ckpt-<step>.npz every `every_steps`
  (keeping `keep_last`) and DIR/final.npz, and resumes from the newest good checkpoint in DIR when
  started again (disable with --no-resume); a DIR that holds a finished run is said so and left as it is.

Launched by the coordinator (`gradmesh serve` does this; not meant to be typed):
    mpirun -n N python -m worker --coordinator HOST:PORT --job ID --attempt K --out WORKDIR
  with the per-job token in GRADMESH_JOB_TOKEN. Rank 0 fetches the spec and the checkpoint to resume
  from, broadcasts them, reports progress and uploads checkpoints.

Launched by its user, tracked by a coordinator (a job with executor "external": worker/register.py):
    mpirun -n 2 python -m worker --spec job.toml --coordinator HOST:PORT --register
  with the client token from --token, GRADMESH_TOKEN or --data-dir's token file.

Exit codes: 0 done, 2 bad spec/data/checkpoint (retrying cannot help), 3 loss became NaN/inf,
4 stopped early on request (a checkpoint was written), 1 anything else (an exception on any rank
aborts every rank, with its traceback). Under a coordinator, the rank that fails also says why in a
typed report first (worker/failure.py: the cause, its rank and host, the exception, the step).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from pathlib import Path

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.wire import JOB_TOKEN_ENV, TLS_CA_ENV
from worker.hooks import NO_VALIDATION, ConsoleHooks, Hooks
from worker.spec import SpecError, load_raw, parse_spec_text, parse_stored_spec

# The rest of worker/ is imported inside the functions that use it, on purpose: numpy (through train, failure,
# threads and checkpoint's readers) must load only after the BLAS kernel is chosen (worker/blas.py), and
# gRPC (coordinator_link, report, register) only when a coordinator is involved. None of these imports
# dodges a cycle: nothing imports this module.


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Train a gradmesh job spec (run under mpirun for several ranks).")
    parser.add_argument("--spec", type=Path, help="job spec file (TOML, or JSON)")
    parser.add_argument("--coordinator", metavar="HOST:PORT",
                        help="fetch the spec from this coordinator (with --spec and --register: report to it)")
    parser.add_argument("--register", action="store_true",
                        help="with --spec and --coordinator: register this run there as a job of its own")
    parser.add_argument("--token", default=None, help="(--register) the client token; else GRADMESH_TOKEN, else "
                                                      "the token file of --data-dir")
    parser.add_argument("--data-dir", type=Path, default=None, help="(--register) the coordinator's data directory")
    parser.add_argument("--out", type=Path, default=None, help="checkpoint directory (default runs/<spec name>)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="resume from the newest good checkpoint in --out (default: on)")
    parser.add_argument("--job", help="job id (with --coordinator)")
    parser.add_argument("--attempt", type=int, default=1, help="attempt number (with --coordinator)")
    opts = parser.parse_args(argv)
    if opts.register:
        if not (opts.spec and opts.coordinator):
            parser.error("--register needs --spec and --coordinator")
        if opts.job:
            parser.error("--register creates its job: no --job")
    elif bool(opts.spec) == bool(opts.coordinator):
        parser.error("give one of --spec or --coordinator (both only with --register)")
    elif opts.coordinator and not opts.job:
        parser.error("--coordinator needs --job")
    return opts


def _say(message: str) -> None:
    print(f"gradmesh: {message}", file=sys.stderr, flush=True)


def _json_format(opts) -> bool | None:
    """The coordinator sends canonical JSON; a file is JSON by its suffix, else sniffed (TOML or '{...}')."""
    return True if opts.coordinator and not opts.register else (opts.spec.suffix.lower() == ".json" or None)


def _tls_ca() -> Path | None:
    return Path(os.environ[TLS_CA_ENV]) if os.environ.get(TLS_CA_ENV) else None


def _stored_spec_text(text: str) -> str:
    """The canonical JSON of a spec the coordinator stored: it was accepted when submitted, so settings its
    options do not use (an older release stored every key with its default) are dropped with a note, not refused
    as they are in a new submission."""
    spec, dropped = parse_stored_spec(load_raw(text, json_format=True))
    if dropped:
        _say(f"note: the stored spec sets {', '.join(dropped)}, which this job's options do not use "
             "(written by an older release): ignored")
    return spec.to_json()


def _fetch_spec_on_root(opts, comm):
    """Rank 0 gets the spec text (and the coordinator hooks and resume path); every rank gets the text.

    Returns (spec, hooks, resume path): rank 0's hooks report to the coordinator (or print, standalone);
    the other ranks' only report their own failure (and do nothing standalone)."""
    token = os.environ.get(JOB_TOKEN_ENV, "")
    if comm.rank == 0:
        hooks = ConsoleHooks()
    elif opts.coordinator:
        from worker.coordinator_link import RankFailureHooks
        hooks = RankFailureHooks(opts.coordinator, opts.job, token, opts.attempt, tls_ca=_tls_ca())
    else:
        hooks = Hooks()
    resume_path = None
    payload = b""
    if comm.rank == 0:
        try:
            if opts.coordinator:
                from worker.report import CoordinatorHooks

                hooks = CoordinatorHooks(opts.coordinator, opts.job, token, opts.attempt,
                                         opts.out, tls_ca=_tls_ca())
                text, resume_path = hooks.fetch()
                text = _stored_spec_text(text)
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
        from worker.failure import EXIT_CONFIG, failure
        if comm.rank == 0:
            _say(f"bad spec: {rest.decode()}")
            hooks.report_failure(failure(pb.FAILURE_CAUSE_BAD_SPEC, comm, rest.decode()))
            hooks.close()
        sys.exit(EXIT_CONFIG)
    text = rest.decode()
    return parse_spec_text(text, json_format=_json_format(opts)), hooks, resume_path


def _register_on_root(opts, comm):
    """Rank 0 registers the run (worker/register.py) and every rank learns the job, token and attempt.
    Returns (spec, hooks, resume path, token) as _fetch_spec_on_root does, and the worker token."""
    import json

    from coordinator.wire import resolve_token
    from worker.coordinator_link import RankFailureHooks
    from worker.failure import EXIT_CONFIG
    from worker.register import RegistrationRefused, register
    from worker.report import CoordinatorHooks

    import socket
    # where the ranks run, as "HOST:RANKS,HOST:RANKS" (what the coordinator stores for its own attempts)
    ranks_per_host: dict[str, int] = {}
    for name in comm.allgather_bytes(socket.gethostname().encode()):
        host = re.sub(r"[^A-Za-z0-9._-]", "-", name.decode(errors="replace"))[:255] or "unknown"
        ranks_per_host[host] = ranks_per_host.get(host, 0) + 1
    payload = b""
    if comm.rank == 0:
        try:
            try:
                text = opts.spec.read_text()
            except OSError as exc:
                raise SpecError("file", f"cannot read {opts.spec}: {exc.strerror or exc}") from None
            parse_spec_text(text, json_format=_json_format(opts))
            token = resolve_token(opts.token, opts.data_dir) or ""
            if not token:
                raise RegistrationRefused("no client token: give --token, GRADMESH_TOKEN or --data-dir")
            hosts = ",".join(f"{host}:{n}" for host, n in ranks_per_host.items())
            job_id, worker_token, attempt = register(opts.coordinator, text, token, workers=comm.size,
                                                     hosts=hosts, tls_ca=_tls_ca())
            payload = b"ok:" + json.dumps({"text": text, "job": job_id, "token": worker_token,
                                            "attempt": attempt}).encode()
        except SpecError as exc:
            payload = f"spec:{opts.spec}: {exc}".encode()
        except Exception as exc:  # noqa: BLE001 - refused, unreachable, no token: one line, every rank exits
            payload = f"register:{exc}".encode()
    payload = comm.bcast_bytes(payload if comm.rank == 0 else None)
    kind, _, rest = payload.partition(b":")
    if kind != b"ok":
        if comm.rank == 0:
            _say(f"bad spec: {rest.decode()}" if kind == b"spec" else f"could not register the run: {rest.decode()}")
        sys.exit(EXIT_CONFIG)
    info = json.loads(rest)
    opts.job, opts.attempt = info["job"], info["attempt"]
    opts.out = opts.out or Path("runs") / opts.job
    if comm.rank == 0:
        _say(f"registered as job {opts.job} at {opts.coordinator}")
        hooks = CoordinatorHooks(opts.coordinator, opts.job, info["token"], opts.attempt,
                                 opts.out, tls_ca=_tls_ca())
    else:
        hooks = RankFailureHooks(opts.coordinator, opts.job, info["token"], opts.attempt, tls_ca=_tls_ca())
    return parse_spec_text(info["text"], json_format=_json_format(opts)), hooks, None, info["token"]


def main(argv=None) -> int:
    opts = parse_args(argv)
    if os.environ.get("SLURM_STEP_ID") is not None:
        # srun's double Ctrl-C ("sending Ctrl-C to StepId") reaches the tasks through the nodes' slurmd, without
        # Slurm's controller: worker/slurm_step.py ends a step with it when a rank died while slurmctld is away.
        # A rank stuck in a collective never returns to Python to raise KeyboardInterrupt: it must die of it.
        import signal
        signal.signal(signal.SIGINT, signal.SIG_DFL)
    if not opts.register:
        return _main(opts)
    # a registered run tells the coordinator how it exits: nobody else sees it end
    from worker.comm import init_comm
    from worker.register import report_exit

    comm = init_comm()
    spec, hooks, resume, token = _register_on_root(opts, comm)
    code = _main(opts, (comm, spec, hooks, resume))
    if comm.rank == 0:
        report_exit(opts.coordinator, opts.job, token, opts.attempt, code, tls_ca=_tls_ca())
    return code


def _main(opts, prepared=None) -> int:
    os.environ.setdefault("GRADMESH_ATTEMPT", str(opts.attempt))

    from worker.comm import init_comm

    if prepared is not None:  # a registered run: the spec came with its registration
        comm, spec, hooks, resume = prepared
    else:
        comm = init_comm()
        spec, hooks, resume = _fetch_spec_on_root(opts, comm)
    out = opts.out or Path("runs") / spec.name
    # numpy is first imported below, after the BLAS kernel is chosen (worker/blas.py)
    blas_choice, blas_record = _choose_blas_kernel(opts, comm, spec, out, resume)

    from worker.checkpoint import newest_valid_checkpoint
    from worker.failure import EXIT_ERROR, EXIT_NAN, EXIT_OK, EXIT_STOPPED, exit_code, failure, failure_from_exception
    from worker.threads import configure_blas_threads
    from worker.train import Divergence, Progress, train

    _report_blas_kernel(comm, blas_choice, blas_record)
    progress = Progress()

    def report_hang(verdict: str) -> None:  # called by the hang watchdog's thread just before it aborts
        hooks.report_failure(failure(pb.FAILURE_CAUSE_HANG, comm, verdict, step=progress.step))

    comm.set_hang_timeout(spec.fault.hang_timeout_s, on_hang=report_hang)
    try:
        if comm.rank == 0 and opts.spec is not None and opts.resume:
            resume = newest_valid_checkpoint(out, warn=_say)
        threads = configure_blas_threads(comm, spec.train.threads_per_rank)
        standalone = opts.spec is not None and not opts.register and opts.resume
        result = train(spec, comm, hooks=hooks, out_dir=out, resume=resume, threads=threads, progress=progress,
                       finished_ok=standalone)
    except Divergence as exc:
        # every rank sees the same reduced loss, so all stop here together; rank 0 speaks for them
        if comm.rank == 0:
            from worker.checkpoint import list_checkpoints
            kept = list_checkpoints(out) or resume is not None  # a resumed run keeps the one it started from
            _say(f"{exc}; " + ("the last good checkpoint is kept" if kept else "no checkpoint was written before it"))
            hooks.report_failure(failure_from_exception(exc, comm, step=progress.step))
            hooks.close()
        return EXIT_NAN
    except Exception as exc:
        found = failure_from_exception(exc, comm, step=progress.step)
        code = exit_code(found.cause)
        if code == EXIT_ERROR:
            hooks.report_failure(found)  # every rank reports its own failure, with a short deadline
            raise  # the traceback, then (under MPI) the abort hook ends every rank
        # A bad spec, data or checkpoint: one clear line. Every rank may hit a data error; a checkpoint
        # error happens on rank 0 alone, so abort them all.
        _say(f"{'rank %d: ' % comm.rank if comm.size > 1 else ''}{found.message}")
        hooks.report_failure(found)
        if comm.size > 1:
            comm.abort(code)
        hooks.close()
        return code
    hooks.close()
    if result.status == "stopped":
        return EXIT_STOPPED
    if result.status == "finished":  # --out holds a finished run of this spec: say so rather than train nothing
        if comm.rank == 0:
            print(f"gradmesh: {out} already finished at step {result.step}; use --no-resume to start over "
                  "(or another --out)", flush=True)
        return EXIT_OK
    if comm.rank == 0:
        print(f"gradmesh: done at step {result.step}: {_final_metrics(result.metrics)}; "
              f"final checkpoint {result.final_path}", flush=True)
    return EXIT_OK


def _choose_blas_kernel(opts, comm, spec, out: Path, resume):
    """Every rank: the kernel recorded in the checkpoint it resumes from (rank 0 reads it, all receive it),
    then worker/blas.py's choice for this host, applied to the environment before numpy is imported."""
    import json

    from worker import blas
    from worker.checkpoint import list_checkpoints

    record = b"{}"
    if comm.rank == 0:
        source = resume
        if source is None and opts.spec is not None and opts.resume:  # standalone: the newest in --out
            found = ([out / "final.npz"] if (out / "final.npz").exists() else []) + \
                    [p for _, p in reversed(list_checkpoints(out))]
            source = next((p for p in found if blas.recorded_kernels(p)), None)
        record = json.dumps(blas.recorded_kernels(source)).encode()
    recorded = json.loads(comm.bcast_bytes(record if comm.rank == 0 else None))
    threads = blas.planned_threads(spec.train.threads_per_rank, comm.local_size)
    # the rows of one GEMM: a micro-batch's in the exact step (the same at every rank count), else a rank's slice
    parts = spec.train.micro_batches or comm.size
    batch = -(-spec.train.batch_size // parts)
    try:
        choice = blas.choose_kernel(spec.train.blas_kernel, spec.model.layers, batch, threads,
                                    hostname=comm.hostname, recorded=recorded)
    except ValueError as exc:  # a bad GRADMESH_BLAS_KERNEL: OpenBLAS's own pick, said once per rank
        choice = blas.Choice(None, f"OpenBLAS's own pick ({exc})")
    return choice, recorded


def _report_blas_kernel(comm, choice, recorded: dict[str, str]) -> None:
    """Each rank prints the kernel OpenBLAS runs (read back); the job's per-host record goes in checkpoints."""
    import json

    from worker import blas

    line = blas.describe_running(choice)
    if line is not None:
        prefix = f"rank {comm.rank} on {comm.hostname}: " if comm.size > 1 else ""
        # information, like the BLAS thread line: stdout, so stderr carries only what went wrong
        print(f"gradmesh: {prefix}{line}", flush=True)
    kernel, _ = blas.running_kernel()
    mine = json.dumps({comm.hostname: kernel} if kernel else {}).encode()
    everyone: dict[str, str] = {}
    for part in comm.allgather_bytes(mine):
        everyone.update(json.loads(part))
    blas.set_job_record(blas.merged_record(recorded, everyone))


def _final_metrics(metrics: dict[str, float]) -> str:
    val_loss, accuracy = metrics.get("val_loss", math.nan), metrics.get("val_accuracy", math.nan)
    if math.isnan(val_loss):
        return NO_VALIDATION
    return f"val_loss {val_loss:.4f}" + (f", val_accuracy {100 * accuracy:.2f}%" if not math.isnan(accuracy) else "")


if __name__ == "__main__":
    sys.exit(main())
