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
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

PROJECT_ROOT = Path(__file__).resolve().parent.parent  # holds the `worker` package the ranks import


def find_mpirun() -> str:
    """mpirun next to this Python (the venv's MPICH wheel) first, so ranks match the coordinator's MPI."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun")
    if not found:
        raise FileNotFoundError("mpirun not found next to the Python executable or on PATH")
    return found


def format_hosts(hosts: Sequence[tuple[str, int]]) -> str:
    return ",".join(f"{h}:{n}" for h, n in hosts)


def parse_formatted_hosts(text: str) -> list[tuple[str, int]]:
    """The inverse of format_hosts, for allocations read back from the store (malformed items skipped)."""
    alloc = []
    for part in filter(None, text.split(",")):
        host, _, n = part.rpartition(":")
        if host and n.isdigit():
            alloc.append((host, int(n)))
    return alloc


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


TAG_VARIABLE = "GRADMESH_ATTEMPT_TAG"


def build_worker_env(base: Mapping[str, str], *, job_token: str, attempt_tag: str = "", tls_ca: Path | None = None,
                     project_root: Path = PROJECT_ROOT) -> dict[str, str]:
    """The ranks' environment (hydra forwards it to every host): the job token, the attempt's tag (how the
    coordinator finds every process of the attempt), the TLS CA, and an import path that finds this
    checkout's `worker` package first."""
    env = dict(base)
    env["GRADMESH_JOB_TOKEN"] = job_token
    if attempt_tag:
        env[TAG_VARIABLE] = attempt_tag
    else:
        env.pop(TAG_VARIABLE, None)
    if tls_ca is not None:
        env["GRADMESH_TLS_CA"] = str(tls_ca)
    else:
        env.pop("GRADMESH_TLS_CA", None)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(project_root) not in paths:
        paths.insert(0, str(project_root))
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"  # log lines reach the attempt log (and StreamLogs) as they are printed
    return env


@dataclass(frozen=True)
class Exit:
    """How an attempt ended. `code` is None when unknown (an adopted group whose leader was not our child);
    negative = killed by that signal (Popen's convention)."""
    code: int | None

    def describe(self) -> str:
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


def group_alive(pgid: int) -> bool:
    """Whether any live (non-zombie) process is in group `pgid`. Zombies are skipped because an init that does
    not reap (as in some containers) would otherwise make a finished group look alive forever."""
    if pgid <= 0:
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    proc = Path("/proc")
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _live(pid: int) -> bool:
    """Not gone and not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2:].split()[0] not in ("Z", "X")


def tagged_processes(tag: str) -> list[int]:
    """Live processes whose environment holds GRADMESH_ATTEMPT_TAG=<tag> (Linux /proc; [] elsewhere)."""
    if not tag:
        return []
    needle = f"{TAG_VARIABLE}={tag}".encode()
    found = []
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    me = os.getpid()
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and _live(int(entry.name)):
            found.append(int(entry.name))
    return found


class WorkerProcess:
    """One attempt's processes: started by us (`start`) or re-adopted after a coordinator restart (`adopt`).
    `pid`/`pgid` are mpirun's; `tag` finds the proxies and ranks in their own sessions."""

    def __init__(self, pid: int, pgid: int, popen: subprocess.Popen | None = None, tag: str = ""):
        self.pid = pid
        self.pgid = pgid
        self.tag = tag
        self._popen = popen
        self._exit: Exit | None = None

    @classmethod
    def start(cls, argv: Sequence[str], env: Mapping[str, str], log_path: Path, cwd: Path) -> "WorkerProcess":
        log_path.parent.mkdir(parents=True, exist_ok=True)
        cwd.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     env=dict(env), cwd=str(cwd), start_new_session=True, close_fds=True)
        # start_new_session makes the child a session and group leader: its pgid is its pid.
        return cls(popen.pid, popen.pid, popen, tag=env.get(TAG_VARIABLE, ""))

    @classmethod
    def adopt(cls, pid: int, pgid: int, tag: str = "") -> "WorkerProcess":
        return cls(pid, pgid, None, tag=tag)

    def alive(self) -> bool:
        """Whether any process of the attempt still runs (mpirun's group or a tagged process)."""
        return group_alive(self.pgid) or bool(tagged_processes(self.tag))

    def poll(self) -> Exit | None:
        """None while running; the Exit once the attempt is over (stragglers in its group killed first)."""
        if self._exit is not None:
            return self._exit
        if self._popen is None:
            if self.alive():
                return None
            self._exit = Exit(None)
            return self._exit
        try:
            # Look without reaping: while the leader is an unreaped zombie its group id cannot be reused,
            # so killing the group's leftovers cannot hit an unrelated process.
            seen = os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            seen = True
        if seen is None:
            return None
        self._kill_all()
        self._exit = Exit(self._popen.wait())
        return self._exit

    def running(self) -> bool:
        return self.poll() is None

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.pgid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    def _kill_all(self) -> None:
        """SIGKILL mpirun's group and every tagged process (ranks and proxies in their own sessions)."""
        self._signal_group(signal.SIGKILL)
        for pid in tagged_processes(self.tag):
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def stop(self, grace_s: float = 5.0) -> Exit:
        """SIGTERM to mpirun's group, up to `grace_s` to exit, then SIGKILL to every process of the attempt."""
        if self.poll() is not None:
            return self._exit  # type: ignore[return-value]
        self._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            if self.poll() is not None:
                return self._exit  # type: ignore[return-value]
            time.sleep(0.05)
        self._kill_all()
        deadline = time.monotonic() + 10
        while self.poll() is None:
            if time.monotonic() > deadline:  # a process in uninterruptible sleep: try again
                self._kill_all()
                deadline = time.monotonic() + 10
            time.sleep(0.02)
        return self._exit  # type: ignore[return-value]
