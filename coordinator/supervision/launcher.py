"""Launching one attempt of a job: the `mpirun` command line, its environment, and the process group.

The command is built by a pure function, so tests assert the exact argv without running MPI:

    build_mpirun_argv(mpirun="/venv/bin/mpirun", python="/venv/bin/python", workers=2, hosts=None,
                      coordinator="127.0.0.1:50051", job_id="digits-1", attempt=1, workdir=Path("/d/runs/x"))
    → ["/venv/bin/mpirun", "-n", "2", "/venv/bin/python", "-m", "worker", "--coordinator",
       "127.0.0.1:50051", "--job", "digits-1", "--attempt", "1", "--out", "/d/runs/x"]

`WorkerProcess.start()` runs it in a new session (its own process group, which survives a coordinator
crash), with stdout and stderr appended to the attempt's log file. MPICH's hydra puts its proxy and
every rank in sessions of their own, so the group alone does not hold the job: every process of an
attempt also carries GRADMESH_ATTEMPT_TAG=<tag> in its environment, which finds them all — even ranks
orphaned by a dead mpirun, and after a coordinator restart. `stop()` sends SIGTERM to mpirun's group
(hydra forwards it to the ranks, which stop at a step boundary), waits a grace period, then SIGKILLs
every tagged process. When mpirun has exited, tagged stragglers are killed before the exit is reported,
so a finished attempt never leaves a worker behind.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

from coordinator.supervision import processes
from coordinator.hosts import format_hosts
from coordinator.supervision.processes import ATTEMPT_TAG_ENV
from coordinator.wire import DATA_ROOTS_ENV, JOB_TOKEN_ENV, TLS_CA_ENV

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # holds the `worker` package the ranks import
SINK_DRAIN_S = 5.0  # how long a reaped attempt waits for its log writer to write the last lines


def find_mpirun() -> str:
    """mpirun next to this Python (the venv's MPICH wheel) first, so ranks match the coordinator's MPI."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun")
    if not found:
        raise FileNotFoundError("mpirun not found next to the Python executable or on PATH")
    return found


def build_mpirun_argv(*, mpirun: str, python: str, workers: int, hosts: Sequence[tuple[str, int]] | None,
                      coordinator: str, job_id: str, attempt: int, workdir: Path,
                      mpi_args: Sequence[str] = ()) -> list[str]:
    """The exact command of one attempt. `hosts` None = all ranks on this machine (no host list)."""
    argv = [mpirun, "-n", str(workers)]
    if hosts:
        argv += ["-hosts", format_hosts(hosts)]
    argv += list(mpi_args)
    argv += [python, "-m", "worker", "--coordinator", coordinator, "--job", job_id,
             "--attempt", str(attempt), "--out", str(workdir)]
    return argv


# What the ranks inherit from the coordinator's environment: nothing else. The coordinator may hold secrets
# (GRADMESH_TOKEN, cloud credentials, ...) that hydra would forward to every worker host.
FORWARDED_ENV = frozenset({
    "PATH", "PYTHONPATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TMP", "TEMP",
    "LD_LIBRARY_PATH", "VIRTUAL_ENV", "PYTHONHASHSEED",
    "GRADMESH_FAULT",  # fault injection for tests (worker/faults.py): inert unless set on purpose
    "GRADMESH_BLAS_KERNEL", "GRADMESH_BLAS_CACHE",  # the OpenBLAS kernel override and cache (worker/blas.py)
    "GRADMESH_MPI_WAIT",  # how a waiting rank polls (worker/mpiwait.py)
    "GRADMESH_PROGRESS_EVERY_S",  # how often rank 0 says "at step S/T" between evaluations (worker/hooks.py)
})
FORWARDED_ENV_PREFIXES = (
    "LC_",                                              # locale
    "OMP_", "OPENBLAS_", "MKL_", "GOTO_", "BLIS_",      # BLAS thread counts (worker/threads.py reads them)
    "MPICH_", "MPIR_CVAR_", "HYDRA_", "UCX_", "FI_",    # MPICH, its launcher and fabrics
    "PMI_", "PMIX_", "SLURM_",                          # process managers (hydra under Slurm reads SLURM_*)
)


def build_worker_env(base: Mapping[str, str], *, job_token: str, attempt_tag: str = "", tls_ca: Path | None = None,
                     data_roots: Sequence[Path] = (), project_root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The ranks' environment (hydra forwards it to every host), built from an allowlist, never the coordinator's
    whole environment:

    - from `base`, only FORWARDED_ENV and names starting with FORWARDED_ENV_PREFIXES: PATH, PYTHONPATH, HOME,
      USER, LOGNAME, LANG, LANGUAGE, LC_*, TZ, TMPDIR/TMP/TEMP, LD_LIBRARY_PATH, VIRTUAL_ENV, PYTHONHASHSEED,
      the BLAS thread variables (OMP_*, OPENBLAS_*, MKL_*, GOTO_*, BLIS_*), MPICH_*, MPIR_CVAR_*, HYDRA_*,
      UCX_*, FI_*, PMI_*, PMIX_*, SLURM_*, GRADMESH_FAULT (test fault injection), GRADMESH_BLAS_KERNEL,
      GRADMESH_BLAS_CACHE, GRADMESH_MPI_WAIT and GRADMESH_PROGRESS_EVERY_S;
    - set here: GRADMESH_JOB_TOKEN (the attempt's token), GRADMESH_ATTEMPT_TAG (how the coordinator finds
      every process of the attempt), GRADMESH_TLS_CA (with TLS), GRADMESH_DATA_ROOTS (the roots every
      dataset file must resolve under), PYTHONUNBUFFERED=1, and a PYTHONPATH that finds this checkout's
      `worker` package first.

    So GRADMESH_TOKEN (the client token), GRADMESH_ADDRESS and any credential of the coordinator's user stay
    with the coordinator."""
    env = {k: v for k, v in base.items() if k in FORWARDED_ENV or k.startswith(FORWARDED_ENV_PREFIXES)}
    env[JOB_TOKEN_ENV] = job_token
    if attempt_tag:
        env[ATTEMPT_TAG_ENV] = attempt_tag
    if tls_ca is not None:
        env[TLS_CA_ENV] = str(tls_ca)
    if data_roots:
        env[DATA_ROOTS_ENV] = os.pathsep.join(str(Path(r).resolve()) for r in data_roots)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(project_root) not in paths:
        paths.insert(0, str(project_root))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the attempt log (and StreamLogs) as they are printed
    return env


@dataclass(frozen=True)
class Exit:
    """How an attempt ended. `code` is None when unknown (an adopted group whose leader was not our child);
    negative = killed by that signal (Popen's convention). `launcher` names what ran the ranks in failure
    messages, and `detail` is what it said about the end (Slurm's job state and reason: coordinator.supervision.slurm)."""
    code: int | None
    launcher: str = "mpirun"
    detail: str = ""

    def describe(self) -> str:
        if self.detail:
            return self.detail if self.code is None else f"{describe_exit(self.code)}; {self.detail}"
        return describe_exit(self.code)


def describe_exit(code: int | None) -> str:
    if code is None:
        return "exit status unknown (the process was not started by this coordinator)"
    if code < 0:
        return f"killed by signal {_signal_name(-code)}"
    if code > 128 and code - 128 < 65:
        return f"exit code {code} (a process died of signal {_signal_name(code - 128)})"
    return f"exit code {code}"


def _signal_name(number: int) -> str:
    try:
        return f"{signal.Signals(number).name} ({number})"
    except ValueError:
        return str(number)


def log_tail(path: Path, lines: int = 15, max_bytes: int = 16384) -> str:
    """The last `lines` lines of a log (reads at most `max_bytes` from its end)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


class WorkerProcess:
    """One attempt's processes: started by us (`start`) or re-adopted after a coordinator restart (`adopt`).
    `pid`/`pgid` are mpirun's; `tag` finds the proxies and ranks in their own sessions.

    `poll` and `stop` may be called from several threads at once (the scheduler reaps while a stopper
    thread stops): one lock orders reaping and signalling, so no thread signals a group whose leader
    another thread has already reaped (its pgid could then belong to an unrelated process)."""

    def __init__(self, pid: int, pgid: int, popen: subprocess.Popen | None = None, tag: str = "",
                 identity: processes.Identity | None = None):
        self.pid = pid
        self.pgid = pgid
        self.tag = tag
        self.identity = identity  # mpirun's start time and boot, recorded at launch (None: not recorded)
        self._popen = popen
        self._sink: subprocess.Popen | None = None  # the log writer of an attempt started here (log_sink)
        self._exit: Exit | None = None
        self._lock = threading.Lock()

    @classmethod
    def start(cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> "WorkerProcess":
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        # mpirun writes into a pipe that log_sink empties into the log: a full disk then costs log lines, not the job
        read_end, write_end = os.pipe()
        try:
            sink = subprocess.Popen([sys.executable, "-m", "coordinator.supervision.log_sink", str(log_path)],
                                    stdin=read_end, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    start_new_session=True, close_fds=True)
            try:
                popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=write_end,
                                         stderr=subprocess.STDOUT, env=dict(env), cwd=str(cwd),
                                         start_new_session=True, close_fds=True)
            except BaseException:
                sink.kill()
                raise
        finally:
            os.close(read_end)
            os.close(write_end)
        # start_new_session makes the child a session and group leader: its pgid is its pid.
        process = cls(popen.pid, popen.pid, popen, tag=env.get(ATTEMPT_TAG_ENV, ""),
                      identity=processes.identity(popen.pid))
        process._sink = sink
        return process

    @classmethod
    def adopt(cls, pid: int, pgid: int, tag: str = "", identity: processes.Identity | None = None) -> "WorkerProcess":
        """An attempt launched by an earlier coordinator. Its stored pid and pgid are only hints: after a reboot
        or pid reuse they may name unrelated processes, so the group is used only while its leader is still
        the recorded mpirun (same start time and boot, carrying the attempt's tag); otherwise only the tagged
        processes count as the attempt's."""
        return cls(pid, pgid, None, tag=tag, identity=identity)

    def _group_is_ours(self) -> bool:
        """Whether mpirun's group may be signalled: never group 0, 1 or ours; for a child we started, while it
        is unreaped (until then its pgid cannot be reused); for an adopted one, while its leader is verified."""
        if not processes.may_signal_group(self.pgid):
            return False
        if self._popen is not None:
            return True
        return self.pgid == self.pid and processes.is_ours(self.pid, self.tag, self.identity)

    def where(self) -> str:
        return f"process group {self.pgid}"

    def waiting(self) -> str | None:
        """Never: mpirun starts the ranks at once (a Slurm job may wait in Slurm's queue first)."""
        return None

    def notify_exit(self, callback) -> None:
        """Call `callback()` from a thread of its own as soon as mpirun exits (without reaping it: `poll` still
        does that), so whoever reaps need not wait for its next round: a sweep's trial pauses at every rung,
        and each pause's slot went idle until the scheduler's next tick. Only for an attempt started here."""
        if self._popen is None:
            return

        def watch() -> None:
            try:
                os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
            except ChildProcessError:  # reaped already
                pass
            callback()

        threading.Thread(target=watch, name=f"gradmesh-exit-{self.pid}", daemon=True).start()

    def alive(self) -> bool:
        """Whether any process of the attempt still runs (mpirun's group, when it is ours, or a tagged process)."""
        if self._group_is_ours() and processes.group_alive(self.pgid):
            return True
        return bool(processes.tagged(self.tag))

    def poll(self) -> Exit | None:
        """None while running; the Exit once the attempt is over (stragglers in its group killed first)."""
        with self._lock:
            return self._poll_locked()

    def _poll_locked(self) -> Exit | None:
        if self._exit is not None:
            return self._exit
        if self._popen is None:
            if self.alive():
                return None
            self._exit = Exit(None)
            return self._exit
        # Look without reaping: while the leader is an unreaped zombie its group id cannot be reused,
        # so killing the group's leftovers cannot hit an unrelated process. Only this method reaps it,
        # under the lock, so the leader is still ours here.
        try:
            if os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                return None
            self._kill_all()
        except ChildProcessError:  # reaped outside this object: its pgid may be reused, spare the group
            self._kill_tagged()
        self._exit = Exit(self._popen.wait())
        self._drain_log()
        return self._exit

    def _drain_log(self) -> None:
        """Wait for the log writer to write what the ended attempt printed (its input ends once every writer has
        been killed above), so whoever reads the log tail next reads it all."""
        if self._sink is None:
            return
        try:
            self._sink.wait(timeout=SINK_DRAIN_S)
        except subprocess.TimeoutExpired:  # something untagged still holds the pipe: stop waiting for it
            self._sink.kill()
            self._sink.wait()

    def _signal_group(self, sig: int) -> None:
        """`sig` to mpirun's group when it is provably ours; else to every tagged process instead."""
        if not self._group_is_ours():
            self._signal_tagged(sig)
            return
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_all(self) -> None:
        """SIGKILL mpirun's group and every tagged process (ranks and proxies in their own sessions)."""
        self._signal_group(signal.SIGKILL)
        self._kill_tagged()

    def _kill_tagged(self) -> None:
        self._signal_tagged(signal.SIGKILL)

    def _signal_tagged(self, sig: int) -> None:
        for pid in processes.tagged(self.tag):
            try:
                os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass

    def _signal_unless_over(self, kill_all: bool) -> bool:
        """Under the lock: SIGTERM the group (or SIGKILL everything) unless the attempt is over; True if over."""
        with self._lock:
            if self._poll_locked() is not None:
                return True
            if kill_all:
                self._kill_all()
            else:
                self._signal_group(signal.SIGTERM)
            return False

    def stop(self, grace_s: float = 5.0) -> Exit:
        """SIGTERM to mpirun's group, up to `grace_s` to exit, then SIGKILL to every process of the attempt."""
        if not self._signal_unless_over(kill_all=False):
            deadline = time.monotonic() + grace_s
            while self.poll() is None and time.monotonic() < deadline:
                time.sleep(0.05)
            retry_at = 0.0
            while self.poll() is None:
                if time.monotonic() >= retry_at:  # again every 10 s: a process in uninterruptible sleep
                    self._signal_unless_over(kill_all=True)
                    retry_at = time.monotonic() + 10
                time.sleep(0.02)
        return self.poll()  # type: ignore[return-value]
