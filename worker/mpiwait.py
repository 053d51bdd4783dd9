"""How an MPI rank waits in a collective when the ranks fill the host's cores: poll briefly, then yield.

    set_wait_policy(os.environ)      # in worker/comm_mpi.py, before the first `from mpi4py import MPI`

MPICH's ranks wait for a collective by spinning in its progress loop, offering the core to another process
(sched_yield) only every 1000 polls. With one rank per core and nothing else running, that is the fastest
way to wait. But when the ranks fill the cores and anything else wants a core (a coordinator, a monitoring
agent, another user's process), a spinning rank competes with it for the CPU; the rank that loses holds
every other rank back at the next collective, and the job's throughput falls much further than the CPU
time the neighbour takes (bench/scaling.py --neighbour). So when ranks on this host >= cores this process
may use, a waiting rank yields every 10 polls instead (MPIR_CVAR_POSIX_POLL_FREQUENCY, the shared-memory
collectives' wait loop, and MPIR_CVAR_POLLS_BEFORE_YIELD): a neighbour that is runnable on that core gets
it during the wait, instead of preempting a rank that is computing. When nothing else is runnable,
sched_yield returns at once, so a quiet host keeps its speed (unlike sleeping, which adds tens of
microseconds of wake-up latency to every wait). MPIR_CVAR_CH4_PROGRESS_THROTTLE (usleep(1) after N empty
polls) is the other knob MPICH offers; GRADMESH_MPI_WAIT=throttle selects it for comparison.

Rules: a CVAR the user set is never changed; GRADMESH_MPI_WAIT = auto (the rule above, default) | spin
(MPICH's defaults) | yield (always) | throttle (always). Ranks per host before MPI_Init come from the
launcher's environment (hydra's MPI_LOCALNRANKS, Open MPI's local size, Slurm's SLURM_NTASKS_PER_NODE);
without them nothing is changed. This module imports nothing heavy and only touches the environment.
"""
from __future__ import annotations

import os

WAIT_ENV = "GRADMESH_MPI_WAIT"
YIELD_CVARS = {
    "MPIR_CVAR_POSIX_POLL_FREQUENCY": "10",
    "MPIR_CVAR_POLLS_BEFORE_YIELD": "10",
}
THROTTLE_CVARS = {
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE": "1",
    "MPIR_CVAR_CH4_PROGRESS_THROTTLE_NO_PROGRESS_COUNT": "1024",
}


def ranks_on_host(environ=os.environ) -> int | None:
    for name in ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "SLURM_NTASKS_PER_NODE"):
        raw = environ.get(name, "").strip()
        if raw.isascii() and raw.isdigit() and len(raw) < 10 and int(raw) > 0:
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
    if mode == "yield":
        return dict(YIELD_CVARS), f"{WAIT_ENV}=yield"
    ranks = ranks_on_host(environ)
    cores = cores or cores_available()
    if ranks is None or ranks < cores:
        return {}, f"{ranks or '?'} rank(s) on {cores} core(s): spinning is free"
    return dict(YIELD_CVARS), f"{ranks} rank(s) fill {cores} core(s): yield while waiting"


def set_wait_policy(environ=os.environ, cores: int | None = None) -> str:
    """Put the chosen CVARs into `environ` (never over a value already there); returns why."""
    cvars, why = wait_policy(environ, cores)
    for name, value in cvars.items():
        environ.setdefault(name, value)
    return why
