"""The Slurm executor: each attempt is a Slurm batch job, so Slurm owns queueing, placement and nodes, and
gradmesh keeps the spec, metrics, checkpoints, restarts and the API (`gradmesh serve --executor slurm`).

The command is built by a pure function, so tests assert it without a Slurm:

    argv, script = build_sbatch(sbatch="sbatch", python="/venv/bin/python", workers=2,
                                coordinator="10.0.0.5:50051", job_id="digits-1", attempt=1,
                                created=1796601600.0, script_path=Path("/d/logs/digits-1/attempt-1.sbatch"))
    → ["sbatch", "--parsable", "--job-name=gradmesh-digits-1-a1-434394", "--ntasks=2", "--output=/tmp/%x-%j.out",
       "--open-mode=append", "--chdir=/tmp", "--no-requeue", "--export=ALL", "/d/logs/digits-1/attempt-1.sbatch"]
    script: scratch=$(mktemp -d ...) … exec python -m worker.slurm_step … -- srun --mpi=pmi2 … python -m worker …

No shared filesystem: nothing of the attempt touches the coordinator's disk on the compute side. sbatch
reads the script here and hands its text to Slurm; the batch step works in node-local places (`--chdir=/tmp`,
`--output` in /tmp, a fresh scratch directory under $TMPDIR as the ranks' --out); the ranks fetch the spec
and checkpoint and send reports and checkpoints over gRPC, and worker/slurm_step.py sends everything the
step prints (the ranks' output and srun's) to the coordinator, which appends it to the attempt's log (so
`gradmesh logs` and the dashboard show it), then removes the scratch directory. The node-local --output
file keeps a copy for when the coordinator could not be reached.

sbatch (run by coordinator.supervision.slurm_submit, which looks a job whose answer was lost up by its name
before it submits it again, so no attempt runs twice) runs with the ranks' allowlisted environment
(coordinator.supervision.launcher.build_worker_env, the attempt's token included) and exports it to the job.
`--no-requeue`: a failed attempt is gradmesh's to restart (from the newest checkpoint that reached the
coordinator).

Watching: one `scontrol show job --oneliner` (every job the controller still holds) per `poll_s`, shared by
every attempt. PENDING with Slurm's reason is what the job's message shows while it waits; a job in an
ended state becomes an Exit naming Slurm's state and reason (coordinator.supervision.slurm_jobs). Without an accounting
database an ended job stays visible only MinJobAge seconds (300 by default): an attempt whose job is gone
ends as "unknown to Slurm" (its outcome then rests on what its ranks reported). While the controller does
not answer, every job is taken to run on (coordinator.supervision.slurm_outage says so and retries).

Stopping: `scancel --signal=TERM` reaches srun's tasks (not `--full`: srun itself would take the SIGTERM as
"abort the step" and kill the ranks), so they stop at a step boundary with a checkpoint and exit 4, and the
batch step then cancels its own Slurm job, so Slurm shows a stop on request as CANCELLED; after the grace
period a plain `scancel` (SIGTERM, Slurm's KillWait, SIGKILL). A job still PENDING is simply cancelled.
"""
from __future__ import annotations

import hashlib
import logging
import shlex
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

from coordinator.supervision.executors import Launch, log_command
from coordinator.supervision.slurm_outage import Outage, is_controller_down
from coordinator.supervision.slurm_jobs import SlurmJobInfo, is_count, parse_scontrol, slurm_exit, waiting_text
from coordinator.supervision.slurm_submit import LAUNCHER, AnswerLost, Unconfirmed, sbatch
from coordinator.supervision.launcher import Exit
from coordinator.store.records import AttemptRow, JobRow
from coordinator.store.store import Store

log = logging.getLogger("gradmesh.slurm")

TOOLS = ("sbatch", "squeue", "scontrol", "scancel")
UNSUBMITTED = "?"            # the attempt's slurm_job between its record and sbatch's answer
STEP_ENDED_GRACE_S = 15.0    # the batch step said its ranks ended; Slurm, answering, has not: trust the step



def job_name(job_id: str, attempt: int, created: float) -> str:
    """The Slurm job name of an attempt: `squeue` shows which gradmesh job and attempt it is. The last part
    (from the job's submission time) tells a job apart from an earlier one of the same id, deleted and submitted
    again while Slurm still shows the first one's attempts: a lost sbatch answer is looked up by this name."""
    return f"gradmesh-{job_id}-a{attempt}-{hashlib.sha256(repr(float(created)).encode()).hexdigest()[:6]}"


NODE_OUTPUT = "/tmp/%x-%j.out"   # sbatch's --output on the compute node: a copy of what reaches the attempt log


def build_sbatch(*, sbatch: str, python: str, workers: int, coordinator: str, job_id: str, attempt: int,
                 created: float = 0.0, script_path: Path, partition: str = "", account: str = "",
                 sbatch_args: Sequence[str] = (), owner: str = "") -> tuple[list[str], str]:
    """The exact sbatch command of one attempt, and its batch script. `owner`, the gradmesh user whose job it is,
    goes to Slurm as the job's comment (`squeue -o %k`, sacct's Comment), so Slurm's side shows who ran what."""
    argv = [sbatch, "--parsable", f"--job-name={job_name(job_id, attempt, created)}", f"--ntasks={workers}",
            f"--output={NODE_OUTPUT}", "--open-mode=append", "--chdir=/tmp", "--no-requeue", "--export=ALL"]
    if partition:
        argv.append(f"--partition={partition}")
    if account:
        argv.append(f"--account={account}")
    if owner:
        argv.append(f"--comment=gradmesh owner={owner}")
    argv += list(sbatch_args)
    argv.append(str(script_path))
    link = ["--coordinator", coordinator, "--job", job_id, "--attempt", str(attempt)]
    step = [python, "-m", "worker.slurm_step", *link, "--scratch"]
    ranks = ["srun", "--mpi=pmi2", "--kill-on-bad-exit=1", python, "-m", "worker", *link, "--out"]
    quoted = lambda args: " ".join(shlex.quote(a) for a in args)  # noqa: E731
    template = shlex.quote(f"gradmesh-{job_id}-a{attempt}.XXXXXX")
    script = "\n".join([
        "#!/bin/sh",
        f"# gradmesh job {job_id}, attempt {attempt}, submitted by the coordinator at {coordinator}.",
        "# The environment is the coordinator's allowlist for ranks (sbatch --export=ALL of it), with the",
        "# attempt's token. Nothing here needs the coordinator's disk: the ranks work in a node-local scratch",
        "# directory, and worker.slurm_step sends everything srun prints to the coordinator's log of the attempt.",
        "# srun starts one rank per task, wired up through PMI-2; `scancel --signal=TERM` reaches its tasks:",
        "# they stop at a step boundary with a checkpoint.",
        f'scratch=$(mktemp -d "${{TMPDIR:-/tmp}}/"{template}) || exit 1',
        'cd "$scratch" || exit 1',
        f'exec {quoted(step)} "$scratch" -- {quoted(ranks)} "$scratch"',
        "",
    ])
    return argv, script


def missing_tools(which: Callable[[str], str | None] = shutil.which) -> list[str]:
    return [tool for tool in TOOLS if which(tool) is None]


def check_slurm(env: Mapping[str, str] | None = None, timeout_s: float = 15.0) -> str | None:
    """None when Slurm's commands are here and its controller answers; else one line saying what is missing."""
    missing = missing_tools()
    if missing:
        return f"--executor slurm needs Slurm's commands on PATH; missing: {', '.join(missing)}"
    try:
        done = subprocess.run(["squeue", "--noheader", "--format=%i", "--states=PENDING"], capture_output=True,
                              text=True, timeout=timeout_s, env=None if env is None else dict(env))
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"--executor slurm: squeue did not answer ({err})"
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"--executor slurm: squeue cannot reach the Slurm controller: {said[-1] if said else done.returncode}"
    return None


class SlurmQueue:
    """What Slurm's controller says of every job, read at most once per `poll_s` and shared by all handles."""

    def __init__(self, poll_s: float = 1.0, run: Callable[[Sequence[str]], str] | None = None,
                 outage: Outage | None = None):
        self.poll_s = poll_s
        self.outage = outage or Outage()  # shared with sbatch and scancel: the controller's reachability
        # while the controller is away each read fails only after Slurm's own retries (~9 s): a shorter cap
        # then, so that its return is seen soon
        self._run = run or (lambda argv: _scontrol(argv, timeout=5.0 if self.outage.down else 30.0))
        self._lock = threading.Lock()
        self._jobs: dict[str, SlurmJobInfo] = {}
        self._read_at = self._began = -float("inf")
        self._ok = False

    def info(self, slurm_id: str, *, newer_than: float = 0.0) -> tuple[bool, SlurmJobInfo | None]:
        """(whether Slurm answered, the job's info or None when unknown); read again when the last read is
        older than poll_s or than `newer_than` (a job submitted after the last read is not in it)."""
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.poll_s or self._began < newer_than:
                self._began = now  # a job submitted after the read began may be missing from it
                try:
                    self._jobs = parse_scontrol(self._run(["scontrol", "show", "job", "--oneliner"]))
                    self._ok = True
                    if self.outage.recovered():
                        log.warning("Slurm's controller answers again")
                except (OSError, subprocess.SubprocessError) as err:
                    if self._ok:
                        log.warning("scontrol failed (%s); keeping the last answer", err)
                    self._ok = False
                    if is_controller_down(str(err)) or isinstance(err, subprocess.TimeoutExpired):
                        self.outage.failed(f"scontrol: {err}")
                self._read_at = time.monotonic()  # the next read poll_s after this one's end, however long it took
            return self._ok, self._jobs.get(slurm_id)

    def lookup(self, name: str, newer_than: float) -> tuple[bool, SlurmJobInfo | None]:
        """(whether Slurm answered, the newest job of that name) from a read begun after `newer_than`."""
        ok, _ = self.info("", newer_than=newer_than)
        with self._lock:
            named = [j for j in self._jobs.values() if j.name == name and is_count(j.id)]
        return ok, max(named, key=lambda j: int(j.id), default=None) if ok else None

    def find(self, name: str) -> SlurmJobInfo | None:
        """The newest job of that name (an attempt whose Slurm job id was never recorded)."""
        return self.lookup(name, newer_than=time.monotonic())[1]


def _scontrol(argv: Sequence[str], timeout: float = 30.0) -> str:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 and "No jobs in the system" not in done.stdout + done.stderr:
        raise subprocess.SubprocessError(done.stderr.strip() or f"{argv[0]} exited {done.returncode}")
    return done.stdout


class SlurmJob:
    """The handle of one attempt submitted as Slurm job `slurm_id`."""

    def __init__(self, slurm_id: str, queue: SlurmQueue, submitted_at: float = 0.0):
        self.slurm_id = slurm_id
        self.queue = queue
        self.submitted_at = submitted_at  # monotonic; reads older than this do not know the job yet
        self._exit: Exit | None = None
        self._step_ended: tuple[int, float] | None = None  # (srun's exit code, when the batch step said so)
        self._lock = threading.Lock()

    def where(self) -> str:
        return f"Slurm job {self.slurm_id}"

    def _info(self) -> tuple[bool, SlurmJobInfo | None]:
        return self.queue.info(self.slurm_id, newer_than=self.submitted_at)

    def step_ended(self, exit_code: int) -> None:
        """The batch step said its ranks exited with `exit_code` (its last AppendLog)."""
        with self._lock:
            self._step_ended = (exit_code, time.monotonic())

    def poll(self) -> Exit | None:
        with self._lock:
            if self._exit is None:
                ok, info = self._info()
                if ok:  # while the controller does not answer, the job is taken to run on...
                    self._exit = slurm_exit(self.slurm_id, info)
                if self._exit is None and self._step_ended is not None:
                    # ...unless its batch step said its ranks are over: Slurm's word is awaited while the
                    # controller answers (briefly), not while it is away
                    code, said_at = self._step_ended
                    if not ok or time.monotonic() - said_at > STEP_ENDED_GRACE_S:
                        away = "; Slurm's controller unreachable" if not ok else ""
                        self._exit = Exit(code, LAUNCHER,
                                          f"the batch step of Slurm job {self.slurm_id} reported the end of its "
                                          f"ranks{away}")
            return self._exit

    def waiting(self) -> str | None:
        ok, info = self._info()
        if not ok and self.queue.outage.down:
            return f"{self.queue.outage.text()}; Slurm job {self.slurm_id} submitted"
        return waiting_text(self.slurm_id, info) if ok else None

    def trouble(self) -> str | None:
        """What the job message adds while the attempt runs: the controller's outage, if any."""
        return self.queue.outage.text() or None

    def alive(self) -> bool:
        return self.poll() is None

    def stop(self, grace_s: float = 5.0) -> Exit:
        """SIGTERM to the ranks (a PENDING job is cancelled outright), `grace_s` to stop, then scancel."""
        ok, info = self._info()
        pending = ok and info is not None and info.state == "PENDING"
        if self.poll() is None:
            _scancel([self.slurm_id] if pending else ["--signal=TERM", self.slurm_id])
            deadline = time.monotonic() + grace_s
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            retry_at = 0.0
            while self.poll() is None:  # Slurm sends SIGTERM, waits KillWait, then SIGKILL
                if time.monotonic() >= retry_at:
                    _scancel([self.slurm_id])
                    retry_at = time.monotonic() + 10
                time.sleep(0.2)
        return self.poll()  # type: ignore[return-value]


def _scancel(args: Sequence[str]) -> None:
    try:
        subprocess.run(["scancel", *args], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        log.warning("scancel %s failed: %s", " ".join(args), err)


class SlurmExecutor:
    """Attempts as Slurm batch jobs (see the module's docstring)."""
    name = "slurm"
    queues = True

    def __init__(self, store: Store, *, python: str, partition: str = "", account: str = "",
                 sbatch_args: Sequence[str] = (), poll_s: float = 1.0, accounts: Mapping[str, str] | None = None):
        self.store = store
        self.python = python
        self.partition = partition
        self.account = account
        self.accounts = dict(accounts or {})   # gradmesh user -> the Slurm account their jobs are charged to
        self.sbatch_args = tuple(sbatch_args)
        self.queue = SlurmQueue(poll_s)
        self.outage = self.queue.outage

    def unavailable(self) -> tuple[str, float] | None:
        """(why, seconds to wait) while the controller is away and the next try is not due; None: try now."""
        wait = self.outage.retry_in()
        return (self.outage.text(), wait) if self.outage.down and wait > 0 else None

    def trouble(self) -> str:
        """What troubles the executor now, for the message of a job submitted meanwhile ("" when nothing)."""
        return self.outage.text()

    def launch(self, request: Launch) -> SlurmJob | Unconfirmed:
        attempt = request.attempt
        log_path = Path(attempt.log_path)
        script_path = log_path.with_suffix(".sbatch")
        argv, script = build_sbatch(sbatch=shutil.which("sbatch") or "sbatch", python=self.python,
                                    workers=request.job.workers, coordinator=request.coordinator,
                                    job_id=request.job.id, attempt=attempt.attempt, created=request.job.created,
                                    script_path=script_path,
                                    partition=self.partition, account=self.accounts.get(request.job.owner, self.account),
                                    sbatch_args=self.sbatch_args, owner=request.job.owner)
        log_command(log_path, request, argv)
        script_path.write_text(script)

        def confirm(slurm_id: str, how: str, submitted_at: float) -> SlurmJob:
            _note(log_path, f"{how} {slurm_id}")
            self.store.record_slurm_job(request.job.id, attempt.attempt, slurm_id)
            return SlurmJob(slurm_id, self.queue, submitted_at)
        submitted_at = time.monotonic()
        submit = lambda: sbatch(argv, request.env, self.outage)  # noqa: E731
        try:  # ExecutorUnavailable (not sent: the job waits) and OSError (refused) go to the supervisor
            return confirm(submit(), "submitted as Slurm job", submitted_at)
        except AnswerLost as lost:  # the job may be in Slurm: the same attempt, looked up before it is sent again
            name = job_name(request.job.id, attempt.attempt, request.job.created)
            _note(log_path, f"sbatch's answer was lost ({lost}); looking for Slurm job {name} before submitting again")
            return Unconfirmed(name, self.queue, str(lost), resubmit=submit, confirm=confirm)

    def adopt(self, job: JobRow, attempt: AttemptRow) -> SlurmJob:
        slurm_id = attempt.slurm_job
        if not slurm_id or slurm_id == UNSUBMITTED:  # a coordinator stopped between the record and sbatch's answer
            found = (self.queue.find(job_name(job.id, attempt.attempt, job.created))  # (names before 2026-12-07:)
                     or self.queue.find(f"gradmesh-{job.id}-a{attempt.attempt}"))
            slurm_id = found.id if found is not None else "(never submitted)"
        return SlurmJob(slurm_id, self.queue)


def _note(log_path: Path, line: str) -> None:
    with open(log_path, "a") as f:
        f.write(f"gradmesh: {line}\n")
