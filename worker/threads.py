"""How many BLAS threads each rank uses, decided once at start and applied for the whole run.

    threads, source = configure_blas_threads(comm, requested=spec.train.threads_per_rank)
    print(f"{threads} BLAS thread(s) per rank ({source})")

Rules, first match wins:
1. The user's environment: OPENBLAS_NUM_THREADS, then OMP_NUM_THREADS (MKL_NUM_THREADS for MKL builds).
   The BLAS library already read it when it loaded, so nothing is changed; the count reported is what
   the library says it uses.
2. The spec's `[train] threads_per_rank` when it is > 0.
3. Automatic: max(1, cores this process may run on // ranks on this host). Cores come from
   os.sched_getaffinity (so taskset, cgroups and Slurm allocations count, not the machine's total), ranks
   per host from comm.local_size (an MPI_COMM_TYPE_SHARED split). This assumes the ranks of a host share
   one affinity mask (hydra's default and Slurm's); when the launcher binds each rank to its own cores,
   the mask is already per rank, so say threads_per_rank explicitly.
Oversubscription is the thing to avoid: 2 ranks × 2 threads on 2 cores is much slower than 2 × 1.

Rules 2 and 3 apply `threadpoolctl.threadpool_limits` to every BLAS and OpenMP pool in the process and
keep the limiter object alive in this module, so the setting lasts until the process exits.
"""
from __future__ import annotations

import os

import numpy  # noqa: F401  (loads BLAS first: threadpoolctl only sees and limits loaded libraries)
from threadpoolctl import threadpool_info, threadpool_limits

# Checked in this order: the library-specific variable is what OpenBLAS itself honours first.
THREAD_ENV_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")

_active_limits = None  # keeps the process-wide threadpool limit referenced for the life of the run


def cores_available() -> int:
    """Cores this process may run on (its CPU affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def _env_threads() -> tuple[int, str] | None:
    for name in THREAD_ENV_VARS:
        raw = os.environ.get(name, "").strip()
        if not raw:
            continue
        first = raw.split(",")[0].strip()  # OMP_NUM_THREADS may list nested levels: "4,2"
        if not (first.isascii() and first.isdigit() and len(first) < 7) or int(first) < 1:
            raise ValueError(f"environment variable {name}={raw!r} is not a positive integer")
        return int(first), f"environment {name}={raw}"
    return None


def blas_threads_in_use() -> int | None:
    """Threads the loaded BLAS library reports (None when threadpoolctl finds no BLAS)."""
    counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
    return max(counts) if counts else None


def configure_blas_threads(comm, requested: int = 0) -> tuple[int, str]:
    """Decide and apply this rank's BLAS thread count; returns (threads, the rule that decided it)."""
    global _active_limits
    if requested < 0:
        raise ValueError(f"requested threads must be >= 0 (0 = automatic), got {requested}")
    from_env = _env_threads()
    if from_env is not None:
        threads, source = from_env
        return blas_threads_in_use() or threads, source
    if requested > 0:
        threads, source = requested, "spec train.threads_per_rank"
    else:
        cores, ranks_here = cores_available(), max(1, int(comm.local_size))
        threads = max(1, cores // ranks_here)
        source = f"automatic: {cores} core(s) on {comm.hostname} / {ranks_here} rank(s) there"
    _active_limits = threadpool_limits(limits=threads)
    return threads, source
