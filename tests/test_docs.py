"""The documentation's commands, run for real: every fenced ```sh and ```python block of README.md and
docs/*.md runs here, unless the line just before its fence marks it:

    <!-- not run: REASON -->                           skipped and counted; the reason is required
    <!-- background: ready when it prints "TEXT" -->  a server: started in the background, ready once TEXT
                                                       is in its output, stopped with SIGINT (Ctrl-C) after
                                                       the page's last block

The blocks of one page run in order in one bash with `set -euo pipefail`, so variables and files carry from
block to block as in a terminal (a ```python block runs as `python -` there). The working directory is a
fresh temporary one holding a copy of examples/ and a link to this checkout's .venv (so `source
.venv/bin/activate` works as written), and HOME is there too (so ~/.gradmesh starts empty). Where Linux
allows it (root, or unprivileged user namespaces), a page runs in a network namespace of its own, so the
coordinator's default ports 50051/50052 are private and only its loopback exists; otherwise a page with a
server needs those ports free on 127.0.0.1, and is skipped when they are not. Afterwards every process of the
page (its process group, anything in its network namespace, anything working under its directory) is
stopped. ```toml blocks must parse as job specs.

A page's time limit is its measured duration on a quiet 2-core machine times four (at least a minute),
scaled by how much slower this machine runs a fixed calibration workload right now than that machine did.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUN_LANGUAGES = ("sh", "python")
# Seconds each page's blocks take on the reference machine (2 cores of an AMD EPYC VM; measured 13.6, 7.7 and
# 2.1 s on 2026-12-07, rounded up); a page missing here gets DEFAULT_BUDGET_S.
BUDGET_S = {"README.md": 20.0, "training.md": 10.0, "operations.md": 5.0}
DEFAULT_BUDGET_S = 20.0
CALIBRATION_REFERENCE_S = 0.5   # the calibration below on the reference machine, quiet (the least of 12 runs)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(\S.*?)\s*-->")
BACKGROUND = re.compile(r'<!--\s*background:\s*ready when it prints "([^"]+)"\s*-->')
README_COMMANDS = (  # .ci/run runs the second; new users paste the first
    "python3 -m venv .venv && .venv/bin/pip install -e '.[mpi]' && .venv/bin/gradmesh demo",
    "python3 -m venv .venv && .venv/bin/pip install -e '.[mpi,test]' && .venv/bin/python -m pytest",
)
SERVER_PORTS = (50051, 50052)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int            # of the opening fence, 1-based
    language: str        # the info string's first word
    text: str
    marker: str          # the comment line just before the fence, or ""

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"

    @property
    def not_run_reason(self) -> str | None:
        found = NOT_RUN.fullmatch(self.marker.strip())
        return found.group(1) if found else None

    @property
    def ready_text(self) -> str | None:
        found = BACKGROUND.fullmatch(self.marker.strip())
        return found.group(1) if found else None


def fenced_blocks(page: Path) -> list[Block]:
    blocks, lines = [], page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = re.match(r"^(```+)\s*(\S*)", lines[i])
        if not fence:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith(fence.group(1))), None)
        assert end is not None, f"{page.name}:{i + 1}: a fence that is never closed"
        marker = lines[i - 1] if i > 0 and lines[i - 1].lstrip().startswith("<!--") else ""
        blocks.append(Block(page, i + 1, fence.group(2).lower(), "\n".join(lines[i + 1:end]) + "\n", marker))
        i = end + 1
    return blocks


def all_blocks() -> list[Block]:
    return [b for page in PAGES for b in fenced_blocks(page)]


# ---- what the pages must hold, checked without running anything ------------------------------------------

def test_every_shell_and_python_block_is_run_or_marked_with_a_reason():
    blocks = all_blocks()
    shells = [b for b in blocks if b.language in ("bash", "shell", "console", "zsh")]
    assert not shells, f"write ```sh so the docs test sees them: {[b.where for b in shells]}"
    checked = [b for b in blocks if b.language in RUN_LANGUAGES]
    bad_markers = [b.where for b in checked if b.marker and b.not_run_reason is None and b.ready_text is None]
    assert not bad_markers, f"a comment before a block that is neither 'not run: REASON' nor a background: {bad_markers}"
    background_python = [b.where for b in checked if b.ready_text and b.language != "sh"]
    assert not background_python, f"only ```sh blocks can run in the background: {background_python}"
    not_run = [b for b in checked if b.not_run_reason is not None]
    run = [b for b in checked if b.not_run_reason is None]
    assert len(run) + len(not_run) == len(checked)
    print(f"\n{len(checked)} sh/python blocks: {len(run)} run "
          f"({sum(1 for b in run if b.ready_text)} in the background), {len(not_run)} marked not run:")
    for b in not_run:
        print(f"  {b.where}: {b.not_run_reason}")
    assert len(run) >= 10, "the walkthroughs are meant to run"


def test_toml_blocks_are_valid_job_specs():
    from worker.spec import parse_spec_text
    specs = [b for b in all_blocks() if b.language == "toml"]
    assert specs
    for b in specs:
        parse_spec_text(b.text)  # raises SpecError naming the key


def test_readme_is_for_users_short_and_keeps_the_two_commands():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 250
    for command in README_COMMANDS:
        assert command in text.splitlines(), command
    assert text.index(README_COMMANDS[0]) < text.index("## Concepts")


def test_readme_table_has_one_row_for_every_gradmesh_command():
    import argparse
    from coordinator.cli.main import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    rows = re.findall(r"^\| `gradmesh ([a-z]+)", (ROOT / "README.md").read_text(), re.M)
    assert sorted(rows) == sorted(sub.choices), "README's command table against `gradmesh --help`"


def test_no_page_speaks_of_work_sessions_or_issue_numbers():
    for page in PAGES:
        for n, line in enumerate(page.read_text().splitlines(), 1):
            words = line.lower()
            assert not re.search(r"\bissue\s*#?\d", words), f"{page.name}:{n}: {line}"
            assert "session" not in words.replace("login session", "").replace("session cookie", ""), \
                f"{page.name}:{n}: {line}"


def test_relative_links_between_pages_resolve():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: a link to {target}"


# ---- running the blocks -----------------------------------------------------------------------------------

def _calibration_s() -> float:
    """Seconds of a fixed workload like the pages' own, on both cores at once as two ranks would: two
    processes that each start the interpreter, import the CLI and run small GEMMs."""
    code = ("import numpy as np, coordinator.cli.main\n"
            "a = np.ones((256, 256), np.float32)\n"
            "for _ in range(400): a = (a @ a) * np.float32(1e-3)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
    started = time.monotonic()
    procs = [subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env) for _ in range(2)]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    return time.monotonic() - started


@pytest.fixture
def slowness() -> float:
    """How much slower than the reference this machine is right now (measured just before each page, since
    a shared machine's load comes and goes); at least 1."""
    return max(1.0, _calibration_s() / CALIBRATION_REFERENCE_S)


def _isolation() -> list[str] | None:
    """The command prefix that runs a page in a network namespace of its own, or None when Linux refuses."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return None
    for prefix in (["unshare", "--net"], ["unshare", "--map-root-user", "--net"]):
        probe = subprocess.run([*prefix, "ip", "link", "set", "lo", "up"], capture_output=True, timeout=30)
        if probe.returncode == 0:
            return prefix
    return None


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _script(blocks: list[Block], state: Path) -> str:
    """One bash program: the page's blocks in order, each announced; background blocks in their own group."""
    out = [textwrap.dedent(f"""\
        set -euo pipefail
        __STATE={state}
        __BG=()
        __stop_background() {{
            for pid in "${{__BG[@]}}"; do kill -INT -- "-$pid" 2>/dev/null || true; done
            for pid in "${{__BG[@]}}"; do
                for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
                kill -KILL -- "-$pid" 2>/dev/null || true
            done
        }}
        trap __stop_background EXIT
        __background() {{  # __background N READY_TEXT < block
            cat > ".docs-bg-$1.sh"
            setsid bash ".docs-bg-$1.sh" > ".docs-bg-$1.log" 2>&1 < /dev/null &
            __BG+=($!)
            for _ in $(seq 600); do
                grep -qF -- "$2" ".docs-bg-$1.log" && return 0
                kill -0 "$!" 2>/dev/null || {{ echo "the background block ended:"; cat ".docs-bg-$1.log"; return 1; }}
                sleep 0.1
            done
            echo "the background block never printed '$2':"; cat ".docs-bg-$1.log"; return 1
        }}
        """)]
    for n, block in enumerate(blocks):
        out.append(f"echo {n} > \"$__STATE\"; printf '\\n::: block {n} ({block.where}) at %s s :::\\n' \"$SECONDS\"")
        if block.ready_text:
            out.append(f"__background {n} {_quote(block.ready_text)} <<'__GRADMESH_BLOCK__'\n{block.text}"
                       "__GRADMESH_BLOCK__")
        elif block.language == "python":
            out.append(f"python - <<'__GRADMESH_BLOCK__'\n{block.text}__GRADMESH_BLOCK__")
        else:
            out.append(block.text)
    out.append("echo done > \"$__STATE\"")
    return "\n".join(out) + "\n"


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def _processes_of(workspace: Path, netns: str) -> list[int]:
    """Every process working under the page's directory or living in its network namespace."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            ns = os.readlink(f"/proc/{entry}/ns/net")
        except OSError:
            continue
        if cwd == str(workspace) or cwd.startswith(str(workspace) + os.sep) or (netns and ns == netns):
            found.append(int(entry))
    return found


def _stop_everything(proc: subprocess.Popen, workspace: Path) -> list[int]:
    """SIGTERM, then SIGKILL, to the page's group and to whatever else of the page still runs; returns the
    pids that needed killing beyond the group (the coordinator's ranks run in groups of their own)."""
    netns_file = workspace / ".docs-netns"
    netns = netns_file.read_text().strip() if netns_file.exists() else ""
    if netns == os.readlink("/proc/self/ns/net"):
        netns = ""  # not a namespace of the page's own: never match everything
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        if sig == signal.SIGTERM:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
    proc.wait()
    left = _processes_of(workspace, netns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _processes_of(workspace, netns):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and _processes_of(workspace, netns):
            time.sleep(0.1)
    return left


def _environment(workspace: Path) -> dict[str, str]:
    from worker.blas import cache_path
    venv_bin = str(Path(sys.executable).parent)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GRADMESH_") and k != "VIRTUAL_ENV"}
    (workspace / "home").mkdir()
    (workspace / "tmp").mkdir()
    env.update({
        "PATH": os.pathsep.join([venv_bin, env.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(workspace / "home"),
        "TMPDIR": str(workspace / "tmp"),
        "PYTHONPATH": str(ROOT),              # this checkout's code, whichever environment installed it
        "GRADMESH_BLAS_CACHE": str(cache_path()),   # the host's measured BLAS kernel, not measured again
        "PYTHONUNBUFFERED": "1",
    })
    return env


def _runnable_pages() -> list[Path]:
    return [p for p in PAGES if any(b.language in RUN_LANGUAGES and b.not_run_reason is None
                                    for b in fenced_blocks(p))]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("page", _runnable_pages(), ids=lambda p: p.name)
def test_the_page_runs_as_written(page, tmp_path, slowness):
    venv = Path(sys.prefix)
    if venv == Path(sys.base_prefix):
        pytest.skip("the tests do not run from a virtual environment, and the pages use .venv/bin")
    blocks = [b for b in fenced_blocks(page) if b.language in RUN_LANGUAGES and b.not_run_reason is None]
    workspace = tmp_path / "ws"
    workspace.mkdir()
    shutil.copytree(ROOT / "examples", workspace / "examples")
    (workspace / ".venv").symlink_to(venv)
    state = workspace / ".docs-state"
    prelude = ""
    isolation = _isolation()
    if isolation is not None:  # the namespace's name, to find what of the page still runs there afterwards
        prelude = f"ip link set lo up\nreadlink /proc/self/ns/net > {workspace / '.docs-netns'}\n"
    elif any(b.ready_text for b in blocks) and not all(_port_free(p) for p in SERVER_PORTS):
        pytest.skip(f"no network namespace to be had here, and 127.0.0.1 ports {SERVER_PORTS} are taken")
    script = workspace / ".docs-page.sh"
    script.write_text(prelude + _script(blocks, state))
    timeout = max(60.0, 4 * BUDGET_S.get(page.name, DEFAULT_BUDGET_S) * slowness)
    started = time.monotonic()
    # Output to a file, not a pipe: a process a block left running (`cmd &`) keeps a pipe open, and waiting
    # for the end of the output would turn a failed block into a time-out.
    log = workspace / ".docs-output"
    with log.open("w") as out:
        proc = subprocess.Popen([*(isolation or []), "bash", str(script)], cwd=workspace,
                                env=_environment(workspace), stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    timed_out = False
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        leftovers = _stop_everything(proc, workspace)
    elapsed = time.monotonic() - started
    output = log.read_text(errors="replace")
    reached = state.read_text().strip() if state.exists() else "?"
    where = blocks[int(reached)] if reached.isdigit() else None
    background_logs = "".join(f"\n--- {log.name}\n{log.read_text()[-3000:]}"
                              for log in sorted(workspace.glob(".docs-bg-*.log")))
    assert not timed_out, (f"{page.name} did not finish within {timeout:.0f} s (at {where.where if where else reached})"
                           f"\n{output[-6000:]}{background_logs}")
    assert proc.returncode == 0 and reached == "done", (
        f"{page.name}: the block at {where.where if where else reached} failed (exit {proc.returncode}):\n"
        f"{where.text if where else ''}\n--- output\n{output[-6000:]}{background_logs}")
    print(f"\n{page.name}: {len(blocks)} blocks in {elapsed:.1f} s (limit {timeout:.0f} s, slowness {slowness:.1f}); "
          f"{len(leftovers)} process(es) stopped afterwards")
