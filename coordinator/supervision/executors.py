"""Where attempts run: the executor interface the supervisor (coordinator.supervision.supervisor) launches and re-adopts
through, and the local one (this coordinator's own `mpirun`). The Slurm one is coordinator.supervision.slurm.

    executor = LocalExecutor(store, local=True)                 # or SlurmExecutor(store, partition="gpu")
    handle = executor.launch(Launch(job, attempt, allocation, env))   # OSError: it did not start
    handle.poll()        # None while it runs (or waits in a queue), else coordinator.supervision.launcher.Exit
    handle.waiting()     # None once the ranks may be running; else what the queue says (Slurm's reason)
    handle.stop(5.0)     # SIGTERM first (the ranks stop at a step boundary), then a kill
    executor.adopt(job, attempt_row)                            # after a coordinator restart

The supervisor's logic (settle, restart, cancel, hang watch) is the same for every executor; only these
handles differ. `queues` says whether an executor holds attempts in a queue of its own: the slot pool
then sets no limit, and a job stays QUEUED (RESTARTING) until its ranks first call.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Protocol, Sequence

from coordinator.hosts import Allocation
from coordinator.supervision.launcher import Exit, WorkerProcess, build_mpirun_argv, find_mpirun
from coordinator.supervision.processes import Identity
from coordinator.store.records import AttemptRow, JobRow
from coordinator.store.store import Store
from coordinator.access.tokens import attempt_tag

log = logging.getLogger("gradmesh.attempts")


class ExecutorUnavailable(OSError):
    """The executor cannot take an attempt now, for a while (Slurm's controller is away): not a failure of
    the job. The job stays queued; `retry_in_s` says when to try again."""

    def __init__(self, message: str, retry_in_s: float):
        super().__init__(message)
        self.retry_in_s = retry_in_s


class Handle(Protocol):
    """One attempt's processes, wherever they run."""

    def poll(self) -> Exit | None: ...

    def stop(self, grace_s: float = 5.0) -> Exit: ...

    def alive(self) -> bool: ...

    def waiting(self) -> str | None: ...

    def where(self) -> str: ...


@dataclass(frozen=True)
class Launch:
    """What an executor needs to start one attempt: `env` is the ranks' whole environment (the allowlist of
    coordinator.supervision.launcher.build_worker_env, with the attempt's token)."""
    job: JobRow
    attempt: AttemptRow
    allocation: Allocation
    env: Mapping[str, str]
    coordinator: str


class Executor(Protocol):
    name: str
    queues: bool

    def launch(self, request: Launch) -> Handle: ...

    def adopt(self, job: JobRow, attempt: AttemptRow) -> Handle: ...


def log_command(log_path: Path, request: Launch, argv: Sequence[str]) -> None:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a") as f:
        f.write(f"gradmesh: attempt {request.attempt.attempt} of {request.job.id}: {' '.join(argv)}\n")


class LocalExecutor:
    """`mpirun` from this coordinator, in a session of its own, on this machine or the pool's hosts."""
    name = "local"
    queues = False

    def __init__(self, store: Store, *, local: bool, mpi_args: Sequence[str] = ()):
        self.store = store
        self.local = local  # all ranks on this machine: mpirun gets no host list
        self.mpi_args = tuple(mpi_args)

    def launch(self, request: Launch) -> WorkerProcess:
        attempt = request.attempt
        log_path, workdir = Path(attempt.log_path), Path(attempt.workdir)
        ranks = sum(n for _, n in request.allocation)  # an elastic job may run on fewer than job.workers
        argv = build_mpirun_argv(mpirun=find_mpirun(), python=sys.executable, workers=ranks,
                                 hosts=None if self.local else request.allocation, coordinator=request.coordinator,
                                 job_id=request.job.id, attempt=attempt.attempt, workdir=workdir,
                                 mpi_args=self.mpi_args)
        log_command(log_path, request, argv)
        process = WorkerProcess.start(argv, request.env, log_path, cwd=workdir)
        try:
            identity = process.identity
            self.store.record_launch(request.job.id, attempt.attempt, process.pid, process.pgid,
                                     identity.start_ticks if identity else 0, identity.boot_id if identity else "")
        except Exception:  # only re-adoption by a later coordinator needs it; the tag still finds the processes
            log.exception("could not record the process group of %s attempt %d",
                          request.job.id, attempt.attempt)
        return process

    def adopt(self, job: JobRow, attempt: AttemptRow) -> WorkerProcess:
        recorded = Identity(attempt.start_ticks, attempt.boot_id) if attempt.boot_id else None
        # the stored pid/pgid are only hints: WorkerProcess trusts them only while they still name this
        # attempt's mpirun (identity and tag), so a reused pid or a reboot never gets an unrelated group killed
        return WorkerProcess.adopt(attempt.pid, attempt.pgid, tag=attempt_tag(job.token_hash), identity=recorded)


class Ended:
    """The handle of an attempt that can no longer be watched (e.g. a Slurm attempt after a restart of a
    coordinator that has no Slurm): settled at the first reap with what is known."""

    def __init__(self, exit: Exit):
        self._exit = exit

    def poll(self) -> Exit:
        return self._exit

    def stop(self, grace_s: float = 5.0) -> Exit:
        return self._exit

    def alive(self) -> bool:
        return False

    def waiting(self) -> None:
        return None

    def where(self) -> str:
        return "nowhere watched"
