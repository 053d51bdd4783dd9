"""Ending an MPI job for certain, from any rank and any thread (a helper of worker/comm.py).

    install_abort_hook(world, rank, hostname)   # an uncaught exception: rank-tagged traceback, then abort
    abort_job(world, code)                       # MPI_Abort, and this process ends here whatever happens

An uncaught exception on any rank prints its traceback, each line prefixed with `[rank R on HOST]`, and
aborts the job, so mpirun exits non-zero within about a second instead of hanging in MPI_Finalize while
the peers wait in their next collective (tests/test_mpi_kill.py). The hang watchdog (worker/hangwatch.py)
aborts through `abort_job` too.
"""
from __future__ import annotations

import os
import signal
import sys
import time
import traceback

# Exit code of a job aborted by an uncaught exception or by the watchdog ("any other failure: retry").
ABORT_CODE = 1


def abort_job(world, code: int) -> None:
    """MPI_Abort, made certain: this process ends here whatever the process manager can or cannot do.

    MPICH's MPI_Abort asks the process manager (hydra's proxy) to kill every rank and then RETURNS when
    the kill does not come: measured with a rank whose network was cut (tests/test_multihost.py). So we
    give the manager a moment to kill us with the right exit code, then exit ourselves; and in case
    MPI_Abort itself blocks, SIGALRM (its default action terminates the process without needing Python)
    is armed first.
    """
    flush_std_streams()
    # hydra forwards our stderr through its proxy asynchronously and drops what is still in flight when
    # it kills the job: give the last words (traceback, watchdog verdict) a moment to get out first.
    time.sleep(0.3)
    try:
        signal.alarm(10)
    except (ValueError, OSError):
        pass
    try:
        world.Abort(code)
    finally:
        time.sleep(2.0)
        flush_std_streams()
        os._exit(code)


def flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken stream must not stop the abort
            pass


def install_abort_hook(world, rank: int, hostname: str) -> None:
    """Make any uncaught exception print its rank-tagged traceback and abort the whole job."""

    def abort_on_uncaught(exc_type, exc, tb):
        prefix = f"[rank {rank} on {hostname}] "
        text = "".join(traceback.format_exception(exc_type, exc, tb))
        try:
            flush_std_streams()
            sys.stderr.write("".join(prefix + line for line in text.splitlines(keepends=True)))
            sys.stderr.write(f"{prefix}uncaught {exc_type.__name__}: aborting the MPI job\n")
        finally:
            abort_job(world, 130 if issubclass(exc_type, KeyboardInterrupt) else ABORT_CODE)

    sys.excepthook = abort_on_uncaught
