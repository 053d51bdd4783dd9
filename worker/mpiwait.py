"""How an MPI rank waits in a collective when the ranks fill the host's cores: poll briefly, then sleep.

    set_wait_policy(os.environ)      # in worker/comm.py, before the first `from mpi4py import MPI`

MPICH's ranks wait for a collective by spinning in its progress loop (yielding with sched_yield every
1000 polls, which on Linux's CFS gives nothing away when the rank is alone on its run queue). With one
rank per core that is the fastest way to wait. But when the ranks fill the cores and anything else wants
a core (a coordinator, a monitoring agent, another user's process), a spinning rank competes with it for
the CPU, the rank that loses holds every other rank back at the next collective, and the job's
throughput falls much further than the CPU time the neighbour takes (measured in bench/scaling.py
--neighbour). So when ranks on this host >= cores this process may use, we set MPICH's progress
throttle: after MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT polls that found nothing, the rank
sleeps (usleep(1), in practice tens of microseconds), handing the core to whoever needs it. A collective
that completes within those polls costs nothing extra, so the quiet case keeps its speed.

Rules: a CVAR the user set is never changed; GRADMESH_MPI_WAIT = auto (the rule above, default) | spin
(MPICH's defaults) | throttle (always). Ranks per host before MPI_Init come from the launcher's
environment (hydra's MPI_LOCALNRANKS, Slurm's SLURM_TASKS_PER_NODE / Open MPI's local size); without
them nothing is changed. This module imports nothing heavy and only touches the environment.
"""
from __future__ import annotations

import os

WAIT_ENV = "GRADMESH_MPI_WAIT"
THROTTLE_CVARS = {
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE": "1",
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT": "1024",
}


def ranks_on_host(environ=os.environ) -> int | None:
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        raw = environ.get(name, "").strip()
        if raw.isdigit() and int(raw) > 0:
            return int(raw)
    return None


def cores_available() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def wait_policy(environ=os.environ, cores: int | None = None) -> tuple[dict[str, str], str]:
    """(CVARs to set, why): empty when MPICH's own spinning stays."""
    mode = environ.get(WAIT_ENV, "auto").strip().lower() or "auto"
    if mode == "spin":
        return {}, f"{WAIT_ENV}=spin"
    if mode == "throttle":
        return dict(THROTTLE_CVARS), f"{WAIT_ENV}=throttle"
    ranks = ranks_on_host(environ)
    cores = cores or cores_available()
    if ranks is None or ranks < cores:
        return {}, f"{ranks or '?'} rank(s) on {cores} core(s): spinning is free"
    return dict(THROTTLE_CVARS), f"{ranks} rank(s) fill {cores} core(s)"


def set_wait_policy(environ=os.environ, cores: int | None = None) -> str:
    """Put the chosen CVARs into `environ` (never over a value already there); returns why."""
    cvars, why = wait_policy(environ, cores)
    for name, value in cvars.items():
        environ.setdefault(name, value)
    return why
