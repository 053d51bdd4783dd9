"""The coordinator's parts wired together, for `coordinator.api.server` (and for tests that look inside).

    core = Coordinator(data_dir, store, SlotPool.local_pool(4), data_roots=[Path.cwd()])
    core.address = "127.0.0.1:50051"   # where the ranks reach us (known once the port is bound)
    core.start()                         # re-adopt what still runs, start the scheduler thread
    core.jobs.submit(...); core.streams.watch(...); core.workers.report_progress(...)
    core.close()

    jobs        client operations (coordinator.jobs.operations)       streams   watch and logs (coordinator.jobs.streams)
    accounts    users, tokens, the audit trail (coordinator.team.accounts); `team` the fair-share policy
    workers     the ranks' calls (coordinator.jobs.worker_api)  checkpoints  files and records (coordinator.files.checkpoints)
    supervisor  attempts (coordinator.supervision.supervisor)           scheduler    slots and queue (coordinator.scheduler)
    fleet       host health, placement, elastic resizes   hosts        ListHosts/DrainHost (coordinator.fleet.fleet)
    sweeps      sweeps and their driver (coordinator.sweeps.service)

Files under DATA_DIR:
    gradmesh.db                       the store (coordinator.store.store)
    checkpoints/<job>/step-N.npz      uploaded checkpoints, retained per the job's keep_last + best + final
    logs/<job>/attempt-K.log          stdout+stderr of mpirun and every rank of attempt K
    runs/<job>/attempt-K/             the ranks' working directory (--out)
    trash/<job>.<tag>/                the three above of a job being deleted (coordinator.files.job_files)
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from coordinator.supervision.supervisor import Supervisor
from coordinator.files.checkpoints import Checkpoints
from coordinator.events import ChangeSignal
from coordinator.fleet.fleet import Fleet, HostOps
from coordinator.fleet.health import HostHealth, HostPolicy
from coordinator.jobs.operations import Jobs
from coordinator.access.limits import Limits, host_memory_bytes
from coordinator.files.expiry import Retention
from coordinator.scheduler import Scheduler, SlotPool
from coordinator.store.store import Store
from coordinator.jobs.streams import Streams
from coordinator.jobs.worker_api import WorkerApi
from coordinator.access.roles import Action
from coordinator.team.accounts import Accounts
from coordinator.team.policy import TeamPolicy
from coordinator.sweeps.service import Sweeps


class Coordinator:
    def __init__(self, data_dir: Path, store: Store, pool: SlotPool, *, data_roots: Sequence[Path],
                 tls_ca: Path | None = None, stop_grace_s: float = 5.0, cancel_checkpoint_wait_s: float = 30.0,
                 mpi_args: Sequence[str] = (), limits: Limits = Limits(), executor_factory=None,
                 host_policy: HostPolicy = HostPolicy(), delete_ended_after_s: float | None = None,
                 team: TeamPolicy = TeamPolicy(), token_file: Path | None = None):
        self.data_dir = Path(data_dir)
        self.store = store
        self.team = team
        self.accounts = Accounts(store, token_file=token_file)  # users, tokens, the audit trail
        self.signal = ChangeSignal()
        self.checkpoints = Checkpoints(self.data_dir / "checkpoints", store)
        self.supervisor = Supervisor(store, self.signal, data_dir=self.data_dir, local=pool.local, tls_ca=tls_ca,
                                     mpi_args=mpi_args, stop_grace_s=stop_grace_s, data_roots=data_roots,
                                     executor=executor_factory(store) if executor_factory else None)
        self.fleet = Fleet(store, self.signal, HostHealth(list(pool.capacity.items()), **host_policy.kwargs()))
        self.supervisor.fleet = self.fleet
        self.scheduler = Scheduler(store, pool, self.supervisor, fleet=self.fleet, policy=team,
                                   max_slots=self.accounts.max_slots)
        self.supervisor.on_exit = self.scheduler.wake   # an ended attempt is reaped (its slots freed) at once
        self.limits = limits
        # a rank may use its host's memory divided by the host's slots (hosts of a pool are taken to be alike)
        # (under Slurm the nodes are not known here: only --memory-per-slot limits a rank)
        queued = self.supervisor.executor.queues
        per_slot = limits.memory_per_slot_or(0 if queued else host_memory_bytes() // max(pool.capacity.values()))
        self.jobs = Jobs(store, self.checkpoints, self.supervisor, self.signal, wake_scheduler=self.scheduler.wake,
                         total_slots=pool.total, data_roots=data_roots,
                         cancel_checkpoint_wait_s=cancel_checkpoint_wait_s, limits=limits, memory_per_slot=per_slot,
                         accounts=self.accounts, private_jobs=team.private_jobs)
        self.hosts = HostOps(self.fleet, usage=self.scheduler.usage, wake=self.scheduler.wake,
                             allow=lambda caller, host: self.jobs.allow(caller, Action.DRAIN, target=host),
                             audit=self.accounts.record)
        self.streams = Streams(store, self.signal, views=self.jobs.get)
        self.workers = WorkerApi(store, self.checkpoints, self.supervisor, self.signal, limits=limits)
        self.retention = Retention(self.jobs, store, delete_ended_after_s) if delete_ended_after_s else None
        self.sweeps = Sweeps(store, self.jobs, self.signal, total_slots=pool.total)

    @property
    def address(self) -> str:
        return self.supervisor.address

    @address.setter
    def address(self, value: str) -> None:
        self.supervisor.address = value

    def start(self) -> None:
        self.jobs.files.recover(lambda job_id: self.store.get_job(job_id) is not None)  # a deletion cut short
        self.checkpoints.sweep()  # what a crash left: temporary files, files no record names
        self.supervisor.shm.attempt_ended()  # and what killed ranks of earlier runs left in /dev/shm
        for allocation in self.supervisor.recover():
            self.scheduler.reserve(allocation)
        self.scheduler.start()
        self.sweeps.start()
        if self.retention is not None:
            self.retention.start()

    def close(self, stop_jobs: bool = False) -> None:
        """Stop streams and the scheduler. Running jobs keep running (their own sessions) unless `stop_jobs`."""
        self.sweeps.stop()
        self.signal.close()
        if self.retention is not None:
            self.retention.stop()
        self.scheduler.stop()
        self.supervisor.close(stop_jobs=stop_jobs)

    def job_token(self, job_id: str) -> str:
        """The plain token of the job's running attempt (tests and benchmarks act as its rank 0 with it);
        KeyError when this coordinator runs no attempt of the job."""
        return self.supervisor.job_token(job_id)
