"""Run a real `mpirun` under a timeout from a test, and prove it left no process behind.

    result = run_mpi(2, ["python", PROGRAM, "arg"], timeout=20)
    result.returncode, result.output, result.elapsed_s, result.timed_out, result.leftovers

Every launch gets a unique marker in its environment (GRADMESH_TEST_MARKER; hydra forwards the
environment to every rank). mpirun runs in its own session; on timeout the whole process group is
killed. Afterwards /proc is scanned for any process still carrying the marker: those are reported in
`leftovers` (and killed, so one failing test cannot poison the next).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

PROGRAMS = Path(__file__).resolve().parent
REPO = PROGRAMS.parent.parent
MARKER_VAR = "GRADMESH_TEST_MARKER"


def mpirun_path() -> str:
    """mpirun of the running venv (the `mpich` wheel) if there is one, else the first on PATH."""
    beside = Path(sys.executable).parent / "mpirun"
    if beside.exists():
        return str(beside)
    found = shutil.which("mpirun")
    if not found:
        raise RuntimeError("mpirun not found next to the interpreter nor on PATH (pip install mpich)")
    return found


@dataclass
class MpiResult:
    returncode: int | None
    output: str
    elapsed_s: float
    timed_out: bool
    leftovers: list[str] = field(default_factory=list)


def processes_with_marker(marker: str) -> list[tuple[int, str]]:
    """(pid, command line) of every live process whose environment holds marker (a /proc scan, no psutil)."""
    needle = f"{MARKER_VAR}={marker}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
            with open(f"/proc/{entry}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if state != "Z":  # a zombie already exited; its parent just has not reaped it yet
            found.append((int(entry), cmd))
    return found


def rank_pid(marker: str, rank: int, timeout: float = 10.0) -> int:
    """The pid of MPI rank `rank` of the job carrying marker (PMI_RANK in its environment)."""
    wanted = [f"{MARKER_VAR}={marker}".encode(), f"PMI_RANK={rank}".encode()]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for pid, _ in processes_with_marker(marker):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read().split(b"\0")
            except OSError:
                continue
            if all(w in env for w in wanted):
                return pid
        time.sleep(0.05)
    raise TimeoutError(f"rank {rank} of job {marker} did not appear within {timeout} s")


def run_mpi(nprocs: int | None, argv: list[str], *, timeout: float, env: dict[str, str] | None = None,
            mpirun_args: list[str] | None = None, settle_s: float = 3.0, cwd: Path | None = None,
            prefix: list[str] | None = None, during=None) -> MpiResult:
    """Run `[prefix] mpirun [-n nprocs] [mpirun_args] argv...` with the repo on PYTHONPATH.

    The output is stdout and stderr together; "python" in argv becomes this interpreter. `during`, if
    given, is called with the job's marker in a thread while the job runs (to inject a fault from outside).
    """
    marker = uuid.uuid4().hex
    full_env = dict(os.environ)
    full_env.update(env or {})
    full_env[MARKER_VAR] = marker
    full_env["PYTHONPATH"] = os.pathsep.join([str(REPO), full_env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    cmd = list(prefix or []) + [mpirun_path()]
    if nprocs is not None:
        cmd += ["-n", str(nprocs)]
    cmd += list(mpirun_args or []) + [sys.executable if a == "python" else a for a in argv]
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env,
                            start_new_session=True, cwd=cwd or REPO)
    if during is not None:
        threading.Thread(target=during, args=(marker,), daemon=True).start()
    timed_out = False
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(proc.pid)
        out, _ = proc.communicate(timeout=10)
    elapsed = time.monotonic() - started
    leftovers = _wait_for_no_leftovers(marker, settle_s)
    return MpiResult(None if timed_out else proc.returncode, out.decode(errors="replace"), elapsed,
                     timed_out, leftovers)


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _wait_for_no_leftovers(marker: str, settle_s: float) -> list[str]:
    """Processes may take a moment to die after mpirun returns; give them settle_s, then kill and report."""
    deadline = time.monotonic() + settle_s
    while True:
        alive = processes_with_marker(marker)
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    for pid, _ in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return [f"{pid}: {cmd}" for pid, cmd in alive]
