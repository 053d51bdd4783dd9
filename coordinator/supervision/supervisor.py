"""The supervisor of attempts: it launches them, reaps them, restarts them after a backoff, stops them on
cancel or when they hang, and re-adopts them after a coordinator restart.

    supervisor = Supervisor(store, signal, data_dir=..., local=True)
    supervisor.address = "127.0.0.1:50051"        # what the ranks dial (known once the port is bound)
    allocations = supervisor.recover()            # after a (re)start: re-adopt live attempts
    # the scheduler's side (coordinator.scheduler.Attempts): launch, reap, is_active, ready, tick
    supervisor.request_stop("digits-1", delay_s=30)   # a cancel: signal the group when the delay is over
    supervisor.job_token("digits-1")              # the running attempt's token (tests act as its rank 0)

Every piece of in-memory state (the running attempts with their tokens, pending stops, restart times,
attempts stopped on purpose, stopper threads) sits behind one lock, because gRPC threads (cancel), the
scheduler thread (reap, tick) and `close()` all touch it. The hang watch, and the one of runs registered by
their users, are their own thread-safe objects.

The rest is done by collaborators that hold none of that state: what they need of it goes in with each
call, and what they change of it (a restart's time, an attempt to watch) comes back to the supervisor, which
takes the lock:
    coordinator.supervision.settlement     an ended attempt's outcome classified and recorded, its job moved on, once
    coordinator.supervision.recovery       re-adoption at start-up, and the sweep of upload queues nobody will send
    coordinator.supervision.external_runs  runs their users launched and registered: watched, never launched or killed
    coordinator.supervision.running        `Running`, the watched attempt they share
"""
from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from coordinator.supervision import recovery
from coordinator.events import ChangeSignal
from coordinator.supervision.executors import Executor, ExecutorUnavailable, Launch, LocalExecutor
from coordinator.supervision.external_runs import ExternalRuns
from coordinator.hosts import Allocation, format_hosts
from coordinator.supervision.launcher import Exit, build_worker_env
from coordinator.store.records import EXTERNAL, JobRow
from coordinator.supervision.running import Running, hang_timeout_s, wire_note
from coordinator.supervision.settlement import Settlement
from coordinator.supervision.shm_leftovers import Janitor
from coordinator.states import IllegalTransition, JobState
from coordinator.store.store import Store
from coordinator.access.tokens import attempt_tag, hash_token, new_token
from coordinator.supervision.watchdog import ProgressWatch

log = logging.getLogger("gradmesh.attempts")


class Supervisor:
    def __init__(self, store: Store, signal: ChangeSignal, *, data_dir: Path, local: bool,
                 tls_ca: Path | None = None, mpi_args: Sequence[str] = (), stop_grace_s: float = 5.0,
                 data_roots: Sequence[Path] = (), executor: Executor | None = None):
        self.store = store
        self.signal = signal
        self.data_dir = Path(data_dir)
        self.local = local  # all ranks on this machine: mpirun gets no host list
        self.tls_ca = tls_ca
        self.mpi_args = tuple(mpi_args)
        self.stop_grace_s = stop_grace_s
        self.data_roots = tuple(Path(r) for r in data_roots)  # the ranks check every dataset file against them
        self.address = ""
        # The backstop for hangs no rank can see (a whole job stopped): it waits out the ranks' own watchdog (same
        # hang_timeout_s), whose verdict names the silent ranks and so the host to blame, plus some slack.
        self.progress = ProgressWatch(grace=lambda timeout_s: max(2.0, 0.5 * timeout_s))
        # where attempts run (coordinator.supervision.executors); the local one also re-adopts mpirun attempts of an
        # earlier coordinator whatever this one's executor is
        self.local_executor = LocalExecutor(store, local=local, mpi_args=self.mpi_args)
        self.executor: Executor = executor or self.local_executor
        self._lock = threading.Lock()
        self._runs: dict[str, Running] = {}
        self._stops: dict[str, float] = {}        # job id → monotonic time at which to signal its group
        self._restart_at: dict[str, float] = {}   # RESTARTING job → monotonic time its backoff ends
        self._killed: dict[str, tuple[str, str]] = {}  # job id → (outcome, why) when we stopped it ourselves
        self._stoppers: list[threading.Thread] = []
        self._resizing: dict[str, tuple[str, str]] = {}  # job id → (why, outcome) of a stop with a checkpoint that
        # relaunches it: an elastic job growing back ("resized"), a lower-priority job making room ("preempted")
        self.fleet = None  # coordinator.fleet.fleet.Fleet: told which hosts a failed attempt blames (None: nobody)
        self.shm = Janitor()  # removes the /dev/shm segments killed ranks leave (coordinator.supervision.shm_leftovers)
        self.settlement = Settlement(store, signal, restart_after=self._restart_after)
        self.external = ExternalRuns(store, self.settlement, settle=self._settle)  # runs their users launched
        self.on_exit: Callable[[], None] | None = None  # called when an attempt's process exits (the scheduler's wake)

    # ================================================================ the scheduler's interface

    def launch(self, job: JobRow, allocation: Allocation) -> bool:
        """Start an attempt of `job` on `allocation`; False when it did not start (the slots are free again).
        An executor with a queue of its own (Slurm) leaves the job QUEUED/RESTARTING until its ranks call."""
        if job.executor == EXTERNAL:
            return False  # its user launches it
        blocked = getattr(self.executor, "unavailable", lambda: None)()
        if blocked is not None:  # e.g. Slurm's controller is away: the job waits, no attempt, no restart spent
            self._wait_for_executor(job, *blocked)
            return False
        token = new_token()
        token_hash = hash_token(token)
        hosts = format_hosts(allocation)
        queued = self.executor.queues
        ranks = sum(n for _, n in allocation)  # an elastic job may run on fewer than job.workers
        size = f" ({ranks} of {job.workers} ranks)" if ranks != job.workers else ""
        restart = f" (restart {job.restarts})" if job.restarts else ""
        message = (f"submitting to Slurm{restart}" if queued
                   else f"running on {hosts}{size}{restart}{wire_note(job)}")
        trouble = getattr(self.executor, "trouble", lambda: "")()
        if trouble:  # an outage's retry: its words stay while sbatch tries again (it may take Slurm's ~9 s)
            message = f"{trouble}; submitting to Slurm again{restart}"
        try:
            attempt, _ = self.store.begin_attempt(
                job.id, hosts=hosts, log_dir=self.data_dir / "logs" / job.id, run_dir=self.data_dir / "runs" / job.id,
                token_hash=token_hash, message=message, running=not queued, mpi_args=self.mpi_args)
        except IllegalTransition:
            return False  # cancelled between the scheduler's read and now
        self.signal.changed()
        try:
            env = build_worker_env(os.environ, job_token=token, attempt_tag=attempt_tag(token_hash), tls_ca=self.tls_ca,
                                   data_roots=self.data_roots)
            process = self.executor.launch(Launch(job, attempt, allocation, env, self.address))
        except ExecutorUnavailable as err:
            self.store.end_attempt(job.id, attempt.attempt, exit_code=None, outcome="not-submitted",
                                   message=f"not submitted: {err}")
            self._wait_for_executor(job, str(err), err.retry_in_s)
            return False
        except OSError as err:
            message = f"could not start {'sbatch' if queued else 'mpirun'}: {err}"
            self.store.end_attempt(job.id, attempt.attempt, exit_code=None, outcome="launch-failed", message=message)
            self.settlement.fail(job.id, message, attempt.attempt)
            return False
        with self._lock:
            self._runs[job.id] = Running(job.id, attempt.attempt, process, allocation, token, waiting=queued)
            self._restart_at.pop(job.id, None)
        notify = getattr(process, "notify_exit", None)   # a local mpirun tells when it ends; Slurm's are polled
        if notify is not None and self.on_exit is not None:
            notify(self.on_exit)
        if not queued:
            self.progress.started(job.id, hang_timeout_s(job))
        return True

    def ranks_called(self, job: JobRow) -> None:
        """The first call of the ranks of an attempt that waited in Slurm's queue: the job is RUNNING now, and
        the hang watch starts."""
        with self._lock:
            run = self._runs.get(job.id)
            if run is None or not run.waiting:
                return
            run.waiting = False
        restart = f" (restart {job.restarts})" if job.restarts else ""
        try:
            self.store.transition(job.id, JobState.RUNNING,
                                  f"running as {run.process.where()}{restart}{wire_note(job)}",
                                  attempt=run.attempt, expect=[JobState.QUEUED, JobState.RESTARTING])
        except IllegalTransition:
            log.warning("job %s: its ranks called but it is no longer waiting", job.id)
        self.progress.started(job.id, hang_timeout_s(job))
        self.signal.changed()

    def reap(self) -> list[Allocation]:
        """Settle the attempts that ended; the allocations they held are free again."""
        with self._lock:
            runs = list(self._runs.values())
        freed = []
        for run in runs:
            exit = run.process.poll()
            if exit is None or not self._settle(run, exit):
                continue
            with self._lock:
                self._runs.pop(run.job_id, None)
            freed.append(run.allocation)
        return freed

    def is_active(self, job_id: str) -> bool:
        """Whether an attempt of the job is running (or ended and not settled yet)."""
        with self._lock:
            return job_id in self._runs

    def ready(self, job: JobRow) -> bool:
        """QUEUED jobs may start at once; RESTARTING ones after their backoff (and so do QUEUED ones whose
        Slurm job ended before its ranks ever ran)."""
        with self._lock:
            return time.monotonic() >= self._restart_at.get(job.id, 0.0)

    def tick(self) -> None:
        """Each scheduler round: kill hung attempts, and signal cancelled ones whose wait is over."""
        for job_id, message in self.progress.overdue():
            with self._lock:
                run = self._runs.get(job_id)
                if run is not None:
                    self._killed[job_id] = ("hung", message)
            if run is not None:
                log.warning("job %s: %s", job_id, message)
                self._stop_in_background(run)
        now = time.monotonic()
        with self._lock:
            due = [self._runs[job_id] for job_id, at in self._stops.items() if at <= now and job_id in self._runs]
            for run in due:
                self._stops[run.job_id] = math.inf  # signalled once; settling the attempt removes the entry
        for run in due:
            self._stop_in_background(run)
        self._show_waiting()
        self.external.fail_silent()
        self.shm.tick()

    def _wait_for_executor(self, job: JobRow, why: str, retry_in_s: float) -> None:
        self._restart_after(job.id, retry_in_s)
        if self.store.note(job.id, f"{why}; submitting again in {retry_in_s:.0f} s",
                           (JobState.QUEUED, JobState.RESTARTING)):
            self.signal.changed()

    def _show_waiting(self) -> None:
        """The job message of attempts waiting in Slurm's queue follows Slurm (its pending reason); a running
        one's says what troubles its executor (Slurm's controller away), and is put back when that is over."""
        with self._lock:
            runs = list(self._runs.values())
        for run in runs:
            if not run.waiting:
                self._show_trouble(run)
                continue
            text = run.process.waiting()
            if text and text != run.note:
                run.note = text
                try:
                    self.store.set_message(run.job_id, text)
                except Exception:  # noqa: BLE001 - a message only; the next tick tries again
                    run.note = ""
                    continue
                self.signal.changed()

    def _show_trouble(self, run: Running) -> None:
        trouble = getattr(run.process, "trouble", lambda: None)()
        if trouble == (run.note or None):
            return
        job = self.store.get_job(run.job_id)
        if job is None or job.state is not JobState.RUNNING:
            return
        restart = f" (restart {job.restarts})" if job.restarts else ""
        base = f"running as {run.process.where()}{restart}"
        if self.store.note(run.job_id, f"{base}; {trouble}" if trouble else base, (JobState.RUNNING,)):
            run.note = trouble or ""
            self.signal.changed()

    # ================================================================ runs launched by their users

    def track_external(self, job: JobRow) -> None:
        """A registered run (executor "external"): never launched, restarted or killed here, but FAILED when it
        stops making progress (coordinator.supervision.external_runs)."""
        self.external.track(job)

    def end_external(self, job_id: str, attempt: int, exit: Exit) -> None:
        """Settle a registered run: its rank 0 said it exits (or a rank reported a failure)."""
        self.external.end(job_id, attempt, exit)

    # ================================================================ the core's interface

    def recover(self) -> list[Allocation]:
        """Re-read the store after a (re)start: every RUNNING job's attempt is watched again. Live ones are
        re-adopted; the ones that ended while no coordinator watched are settled at the first reap. Returns
        the allocations they hold."""
        adopted = []
        for run in recovery.readopt(self.store, local_executor=self.local_executor, executor=self.executor,
                                    external=self.external, settlement=self.settlement, progress=self.progress):
            with self._lock:
                self._runs[run.job_id] = run
            adopted.append(run.allocation)
        with self._lock:
            live = {(r.job_id, r.attempt) for r in self._runs.values()}
            for job_id in self.store.held_jobs():  # paused jobs wait to be released (coordinator.store.pauses)
                self._restart_at[job_id] = math.inf
        recovery.sweep_pending_uploads(self.data_dir / "runs", live)
        self.signal.changed()
        return adopted

    def request_stop(self, job_id: str, delay_s: float) -> None:
        """Signal the job's process group after `delay_s` (the time its ranks get to stop on their own)."""
        with self._lock:
            run = self._runs.get(job_id)
            if run is not None and run.waiting:
                delay_s = 0.0  # still in Slurm's queue: no rank to write a checkpoint
            self._stops.setdefault(job_id, time.monotonic() + delay_s)

    def running_allocations(self) -> dict[str, Allocation]:
        """The slots of every attempt this supervisor watches, by job id (the elastic grow reads them)."""
        with self._lock:
            return {job_id: list(run.allocation) for job_id, run in self._runs.items()}

    def request_resize(self, job_id: str, why: str, wait_s: float = 60.0, outcome: str = "resized") -> bool:
        """Stop a job with a checkpoint at its next step boundary (its ranks are told through the progress
        report, as for a cancel with checkpoint), then requeue it (RESTARTING) at once without spending a
        restart: an elastic job growing back, or (`outcome` "preempted") a job making room for a higher-priority
        one. SIGTERM (which also checkpoints) if the ranks have not stopped after `wait_s`. False when the job
        runs no attempt here that could be asked (or is being asked already)."""
        with self._lock:
            run = self._runs.get(job_id)
            if run is None or run.waiting or job_id in self._resizing:
                return False
            self._resizing[job_id] = (why, outcome)
            self._stops.setdefault(job_id, time.monotonic() + wait_s)
        log.info("job %s: %s", job_id, why)
        return True

    def stopping(self) -> set[str]:
        """The jobs being stopped with a checkpoint to be relaunched (resized or preempted)."""
        with self._lock:
            return set(self._resizing)

    def stop_requested(self, job_id: str) -> bool:
        """Whether the job's ranks are to stop with a checkpoint although no cancel was asked (resize, preemption)."""
        with self._lock:
            return job_id in self._resizing

    def step_ended(self, job_id: str, attempt: int, exit_code: int) -> None:
        """The batch step of the job's attempt says its ranks exited (Slurm: worker/slurm_step.py): the handle
        may end the attempt on that word while Slurm cannot confirm it (its controller away)."""
        with self._lock:
            run = self._runs.get(job_id)
        if run is not None and run.attempt == attempt and hasattr(run.process, "step_ended"):
            run.process.step_ended(exit_code)
            self.signal.changed()

    def forget_restart(self, job_id: str) -> None:
        """No wait before the job's next launch (a cancel, or a paused job released)."""
        with self._lock:
            self._restart_at.pop(job_id, None)

    def saw_progress(self, job_id: str, step: int, event: bool) -> None:
        self.progress.progress(job_id, step, event=event)
        self.external.watch.progress(job_id, step, event=event)

    def job_token(self, job_id: str) -> str:
        """The plain token of the job's running attempt, which this coordinator launched. KeyError otherwise:
        the store keeps only its hash, and the token is forgotten when the attempt ends."""
        with self._lock:
            run = self._runs.get(job_id)
            if run is None or run.token is None:
                raise KeyError(f"no running attempt of {job_id} launched by this coordinator")
            return run.token

    def close(self, stop_jobs: bool = False) -> None:
        """Called after the scheduler stopped. Running jobs keep running (their own sessions) unless `stop_jobs`:
        then they are stopped and their end recorded like any other, so the next coordinator restarts them."""
        if stop_jobs:
            with self._lock:
                runs = list(self._runs.values())
                for run in runs:
                    self._killed[run.job_id] = ("interrupted", "the coordinator shut down and stopped the job")
            stoppers = [threading.Thread(target=r.process.stop, args=(self.stop_grace_s,), daemon=True) for r in runs]
            for t in stoppers:
                t.start()
            for t in stoppers:
                t.join(timeout=self.stop_grace_s + 5)
            self.reap()
        with self._lock:
            stoppers = list(self._stoppers)
        for t in stoppers:
            t.join(timeout=self.stop_grace_s + 2)

    # ================================================================ inside

    def _stop_in_background(self, run: Running) -> None:
        thread = threading.Thread(target=run.process.stop, args=(self.stop_grace_s,), name=f"stop-{run.job_id}",
                                  daemon=True)
        thread.start()
        with self._lock:
            self._stoppers = [t for t in self._stoppers if t.is_alive()] + [thread]

    def _settle(self, run: Running, exit: Exit) -> bool:
        """Take what this supervisor knew of the ended attempt and settle it (coordinator.supervision.settlement); False when
        that failed: the attempt stays on the list, and a stop we made is remembered for the next try."""
        with self._lock:
            self._stops.pop(run.job_id, None)
            killed = self._killed.pop(run.job_id, None)
            resizing = self._resizing.pop(run.job_id, None)
            run.token = None
        self.progress.forget(run.job_id)
        self.shm.attempt_ended()
        if self.settlement.settle(run, exit, killed, resizing, fleet=self.fleet):
            return True
        with self._lock:
            if killed is not None:
                self._killed.setdefault(run.job_id, killed)
        return False

    def _restart_after(self, job_id: str, delay_s: float) -> None:
        with self._lock:
            self._restart_at[job_id] = time.monotonic() + delay_s
