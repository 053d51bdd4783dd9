"""Sweeps as clients use them, free of gRPC: submit, get, list, cancel; and the thread that drives them.

    sweeps = Sweeps(store, jobs, signal, total_slots=4)
    view, created = sweeps.submit(text, caller=ana)   # every trial's spec checked first; InvalidArgument names the key
    sweeps.get(view.sweep.id, caller=bob).trials      # coordinator.sweeps.views
    sweeps.cancel(view.sweep.id, caller=ana)          # the sweep CANCELLED, every trial job that has not ended too
    sweeps.delete(view.sweep.id, caller=ana)          # an ended sweep: every trial job deleted, then its record
    sweeps.start(); sweeps.stop()                     # the driver: a round per change, or every tick_s

Trials are ordinary jobs (coordinator.jobs.operations), labelled sweep=<id> and trial=<n>; the driver
(coordinator.sweeps.driver) starts, releases and stops them. It holds no state a restart would lose: the store
has the sweep file, the trials and their values at each rung, and the pauses.

Who may: a sweep belongs to the user who submitted it, with the roles of a job (coordinator.access.roles):
members submit sweeps and cancel their own, viewers read (with --private-jobs, only their own), administrators
do everything. The driver submits every trial as that owner, with the owner's current role, so trials count
against the owner's --max-slots and fair share like any job of theirs; a fork sweep needs the right to fork
its parent job. Submissions and cancels, and their refusals, go to the audit trail ("sweep.submit",
"sweep.cancel", "sweep.delete"). `caller` None is the coordinator's own (SYSTEM).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass

from coordinator.access import validate
from coordinator.access.roles import BOOTSTRAP_ADMIN, SYSTEM, Action, Caller, Role, check, may
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from coordinator.events import ChangeSignal
from coordinator.jobs import fork
from coordinator.jobs.operations import Jobs
from coordinator.jobs.submission import new_job_id
from coordinator.states import JobState
from coordinator.store.store import Store
from coordinator.store.sweeps import SweepRow
from coordinator.sweeps.driver import Context, drive, trial_labels
from coordinator.sweeps.spec import flat, parse_sweep, trial_spec
from coordinator.sweeps.views import Parsed, SweepView, sweep_view
from coordinator.wire import KIND_SWEEP
from worker.spec import SpecError

log = logging.getLogger("gradmesh.sweeps")
MAX_SWEEP_ID = 56      # room for "-t<trial>" in a job id
LIST_PAGE_MAX = 100
MIN_ROUND_GAP_S = 0.1  # between two rounds of the driver


@dataclass(frozen=True)
class DeletedSweep:
    """What Sweeps.delete removed: the trial jobs, their files, and the bytes that freed."""
    sweep_id: str
    trials: int
    files: int
    bytes_freed: int


class Sweeps:
    def __init__(self, store: Store, jobs: Jobs, signal: ChangeSignal, *, total_slots: int, tick_s: float = 0.5):
        self.store = store
        self.jobs = jobs
        self.signal = signal
        self.total_slots = total_slots
        self.tick_s = tick_s
        self._parsed: dict[str, Parsed] = {}
        self._round = threading.Lock()   # one round at a time; a cancel waits for it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------ client operations

    def submit(self, text: str, sweep_id: str = "", caller: Caller | None = None) -> tuple[SweepView, bool]:
        if sweep_id:
            validate.job_id(sweep_id, "sweep_id")
            if len(sweep_id) > MAX_SWEEP_ID:
                raise InvalidArgument("sweep_id", f"at most {MAX_SWEEP_ID} characters (its trials' job ids add "
                                                  "\"-t<n>\")")
        caller = self._allow(caller, Action.SUBMIT, target=sweep_id)
        parsed = self._check(text, caller)
        new_id = sweep_id or new_job_id(str(parsed.base.get("name", "sweep")))
        row, created = self.store.create_sweep(SweepRow(new_id, str(parsed.base.get("name", "sweep")), text,
                                                        JobState.RUNNING, created=time.time(), owner=caller.name))
        if not created and row.text != text:
            raise AlreadyExists(f"sweep_id: sweep {new_id} already exists with another file; choose another id",
                                kind=KIND_SWEEP)
        if not created and row.owner != caller.name and not caller.is_admin:  # a resubmission is its owner's
            raise AlreadyExists(f"sweep_id: sweep {new_id} already exists and belongs to {row.owner}; choose "
                                "another id", kind=KIND_SWEEP)
        self._parsed[new_id] = parsed
        if created:
            self.jobs.accounts.record(caller, "sweep.submit", new_id,
                                      detail=f"{parsed.spec.method}, {parsed.spec.trials} trial(s)")
        self.signal.changed()
        return self._view(row), created

    def get(self, sweep_id: str, caller: Caller | None = None) -> SweepView:
        row = self._find(sweep_id)
        self._allow(caller, Action.READ, row)
        return self._view(row)

    def list(self, page_size: int = 0, page_token: str = "", *, owner: str = "",
             caller: Caller | None = None) -> tuple[list[SweepView], str]:
        """A page of sweeps, newest first; `owner` only that user's (with --private-jobs, a member or viewer sees
        only their own whatever they ask)."""
        if owner:
            validate.user_name(owner, "owner")
        caller = caller or SYSTEM
        if self.jobs.private_jobs and not caller.is_admin:
            owner = caller.name
        size = validate.page_size(page_size, default=20, limit=LIST_PAGE_MAX)
        rows = self.store.list_sweeps(limit=size, before_seq=validate.page_token(page_token, call="ListSweeps"),
                                      owner=owner)
        return [self._view(r) for r in rows], (str(rows[-1].seq) if len(rows) == size else "")

    def cancel(self, sweep_id: str, caller: Caller | None = None) -> SweepView:
        row = self._find(sweep_id)
        caller = self._allow(caller, Action.CANCEL, row)
        with self._round:
            if row.state is JobState.RUNNING:
                self.store.end_sweep(row.id, JobState.CANCELLED, "cancelled on request")
            elif row.state is not JobState.CANCELLED:
                raise FailedPrecondition(f"sweep_id: sweep {sweep_id} already ended {row.state.name}", kind=KIND_SWEEP)
            for trial in self.store.trials(row.id):
                job = self.store.get_job(trial.job_id)
                # (a job of that id that is not the sweep owner's is not its trial: left alone)
                if job is not None and not job.state.is_terminal() and job.owner == row.owner:
                    self.jobs.cancel(job.id, caller=caller)
        self.jobs.accounts.record(caller, "sweep.cancel", row.id)
        self.signal.changed()
        return self._view(self._find(sweep_id))

    def delete(self, sweep_id: str, caller: Caller | None = None) -> DeletedSweep:
        """Remove an ended sweep: each trial job as Jobs.delete removes a job (crash-safe, one at a time), then the
        sweep's record. Interrupted (a crash, a trial whose ranks are still being stopped), it leaves the sweep
        with fewer trial jobs, and asked again goes on from there."""
        row = self._find(sweep_id)
        caller = self._allow(caller, Action.DELETE, row)
        if row.state is JobState.RUNNING:
            raise FailedPrecondition(f"sweep_id: sweep {sweep_id} is RUNNING; only an ended sweep can be deleted: "
                                     "cancel it first", kind=KIND_SWEEP)
        trials = files = freed = 0
        with self._round:
            for trial in self.store.trials(row.id):
                job = self.store.get_job(trial.job_id)
                # gone already (an interrupted delete), or a job of that id that is not the owner's: not its trial
                if job is None or job.owner != row.owner:
                    continue
                try:
                    gone = self.jobs.delete(job.id, caller=caller)
                except FailedPrecondition as err:
                    raise FailedPrecondition(f"sweep_id: sweep {sweep_id}'s trial {trial.trial} cannot be deleted yet "
                                             f"({err.args[0] if err.args else err})", kind=KIND_SWEEP) from None
                except NotFound:   # deleted by another call meanwhile
                    continue
                trials, files, freed = trials + 1, files + gone.files, freed + gone.bytes_freed
            if not self.store.delete_sweep(row.id):
                raise NotFound(f"sweep {sweep_id} not found", kind=KIND_SWEEP)
            self._parsed.pop(row.id, None)
        self.jobs.accounts.record(caller, "sweep.delete", row.id,
                                  detail=f"{trials} trial job(s), {files} file(s), {freed} bytes")
        self.signal.changed()
        return DeletedSweep(row.id, trials, files, freed)

    # ------------------------------------------------------------ the driver

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="gradmesh-sweeps", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def step(self) -> None:
        """One round over every running sweep."""
        with self._round:
            for row in self.store.list_sweeps(limit=1000, running_only=True):
                try:
                    drive(Context(self.store, self.jobs, self.total_slots, self._owner(row)), row, self._parse(row))
                except Exception:  # one sweep's bug must not stop the others
                    log.exception("sweep %s: the round failed", row.id)

    def _loop(self) -> None:
        seen = -1
        while not self._stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("the sweeps' round failed")
            self._stop.wait(MIN_ROUND_GAP_S)  # progress reports change the signal all the time: not a round each
            seen = self.signal.wait(seen, self.tick_s)
            if self.signal.closed:
                self._stop.wait(self.tick_s)

    # ------------------------------------------------------------ inside

    def _allow(self, caller: Caller | None, action: Action, row: SweepRow | None = None, target: str = "") -> Caller:
        """The caller (SYSTEM when None) when roles.may allows the action on the sweep; else PermissionDenied
        (kind "sweep", naming its owner), and a refused change is audited."""
        caller = caller or SYSTEM
        private = self.jobs.private_jobs
        if may(caller, action, row, private_jobs=private):
            return caller
        if action is not Action.READ:
            self.jobs.accounts.record(caller, f"sweep.{action.value}", row.id if row is not None else target,
                                      outcome="denied")
        check(caller, action, row, private_jobs=private, noun=KIND_SWEEP)
        return caller

    def _owner(self, row: SweepRow) -> Caller:
        """Who the driver acts as for the sweep: its owner, with the owner's role now (a user demoted to viewer
        or removed since can start no more trials: each is refused, and the sweep's message says why)."""
        user = self.store.user(row.owner)
        if user is not None:
            role = Role(user.role)
        else:  # the first administrator before any user was made (an embedded core), or a user removed since
            role = Role.ADMIN if row.owner == BOOTSTRAP_ADMIN else Role.VIEWER
        return Caller(row.owner, role, f"sweep {row.id}")

    def _find(self, sweep_id: str) -> SweepRow:
        validate.job_id(sweep_id, "sweep_id")
        row = self.store.get_sweep(sweep_id)
        if row is None:
            raise NotFound(f"sweep {sweep_id} not found", kind=KIND_SWEEP)
        return row

    def _view(self, row: SweepRow) -> SweepView:
        return sweep_view(self.store, row, self._parse(row), self.total_slots)

    def _parse(self, row: SweepRow) -> Parsed:
        parsed = self._parsed.get(row.id)
        if parsed is None:
            spec, base = parse_sweep(row.text)
            parsed = self._parsed[row.id] = _parsed(spec, base)
        return parsed

    def _check(self, text: str, caller: Caller) -> Parsed:
        """The sweep file parsed, and every trial's job spec checked as a submission's (for the caller: their
        --max-slots, and for a fork sweep their right to fork its job)."""
        limit = self.jobs.checks.limits.spec_bytes
        if not text.strip():
            raise InvalidArgument("text", "must not be empty (send the sweep file: a job spec with a [sweep] table)")
        if len(text.encode("utf-8", "surrogatepass")) > limit:
            raise InvalidArgument("text", f"at most {limit} bytes (--max-spec-bytes)")
        try:
            spec, base = parse_sweep(text)
        except SpecError as err:
            raise InvalidArgument(err.field, err.reason) from None
        parsed = _parsed(spec, base)
        for t in range(spec.trials):
            params = spec.params(t)
            try:
                if spec.fork is not None:
                    trial, _ = fork.fork_spec(self.jobs, spec.fork.job, spec.fork.step, {**flat(base), **params},
                                              caller=caller)
                else:
                    raw = trial_spec(base, params)
                    _, checked = self.jobs.checks.request(json.dumps(raw), "", trial_labels("s", t), 0)
                    trial = self.jobs.checks.runnable_spec(checked, 0)
                    self.jobs.within_cap(caller.name, trial.workers)
                _check_metric(spec.metric, trial)
            except SpecError as err:
                raise InvalidArgument(err.field, f"trial {t} ({_shown(params)}): {err.reason}") from None
            except InvalidArgument as err:
                raise InvalidArgument(err.field, f"trial {t} ({_shown(params)}): {err.reason}") from None
        return parsed


def _parsed(spec, base: dict) -> Parsed:
    train = base.get("train") if isinstance(base.get("train"), dict) else {}
    steps = train.get("steps", 0) if isinstance(train.get("steps", 0), int) else 0
    workers = base.get("workers", 1) if isinstance(base.get("workers", 1), int) else 1
    return Parsed(spec, base, spec.rungs(steps), workers)


def _check_metric(metric: str, trial) -> None:
    if metric == "val_accuracy" and trial.model.loss != "cross_entropy":
        raise InvalidArgument("sweep.metric", "val_accuracy needs model.loss = \"cross_entropy\" (mse has none)")
    if metric.startswith("val_") and trial.data.val_fraction == 0 and not trial.source_is_path:
        raise InvalidArgument("sweep.metric", f"{metric} needs a validation split: data.val_fraction is 0")


def _shown(params: dict) -> str:
    return ", ".join(f"{k} = {json.dumps(v)}" for k, v in params.items())[:200]
