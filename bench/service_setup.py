"""bench/service.py's setting: a real `gradmesh serve` in its own process group, a small digits job, and
the helpers that find a job's ranks and their token (Linux /proc) and wait for a state."""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.client import Client  # noqa: E402
from coordinator.supervision.processes import Process, find  # noqa: E402
from coordinator.wire import JOB_TOKEN_ENV  # noqa: E402
from serve_process import ServeProcess  # noqa: E402


def digits_spec(steps: int, workers: int = 2, layers=(64, 128, 128, 10), every: int = 0, eval_every: int = 1) -> dict:
    # eval_every = 1: a worker reports its step with its metric points, so the first step is visible at once
    return {"name": "bench", "workers": workers,
            "model": {"layers": list(layers)},
            "data": {"source": "digits"},
            "train": {"steps": steps, "batch_size": 64, "eval_every": eval_every},
            "optim": {"name": "adam", "lr": 1e-3},
            "checkpoint": {"every_steps": every, "keep_last": 1},
            "fault": {"max_restarts": 0, "hang_timeout_s": 3600.0}}


# ---------------------------------------------------------------- the server

class Server(ServeProcess):
    """The service bench's `gradmesh serve`, 2 slots."""

    def __init__(self, data_dir: Path, slots: int = 2):
        # the first-step job (10M steps, a point each) and the ingestion phase store far more points than a
        # production job may (coordinator.access.limits): lift that one cap for the measurement
        super().__init__(data_dir, "--max-points-per-job", str(10 ** 9), slots=slots)


def rank_processes(job_id: str) -> list[Process]:
    """This job's worker ranks (python -m worker ... --job ID)."""
    return find(argv_has=["-m", "worker", "--job", job_id])


def job_token(job_id: str) -> tuple[str, list[int]]:
    """(GRADMESH_JOB_TOKEN, pids of the ranks) of the running job, read from a rank's environment."""
    ranks = rank_processes(job_id)
    for rank in ranks:
        token = rank.environ().get(JOB_TOKEN_ENV)
        if token:
            return token, [r.pid for r in ranks]
    raise RuntimeError(f"no rank process of job {job_id} found in /proc")


def signal_all(pids: list[int], sig: int) -> None:
    # hydra gives every rank its own process group, so each rank is signalled by pid (an MPI rank left
    # running while its peer is stopped would spin in the allreduce and eat a core)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_state(client: Client, job_id: str, done, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if done(job):
            return job
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not get there in {timeout} s (now {job.state.name} step {job.step})")
