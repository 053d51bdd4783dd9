"""A real `gradmesh serve` for the benchmarks: `python -m coordinator.cli serve` in its own process group,
on a free port of 127.0.0.1, with a data directory of its own.

    server = ServeProcess(tmp / "coordinator", "--max-queued-jobs", "500", slots=2)
    client = Client(server.address, token=server.token)
    server.rss_bytes()     # its resident memory (Linux /proc)
    server.stop()          # SIGTERM: it stops its running jobs and exits; SIGKILL to the group if it hangs
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


class ServeProcess:
    def __init__(self, data_dir: Path, *serve_args: str, slots: int = 2):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("GRADMESH_TOKEN", None)
        env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")  # the venv's mpirun
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(data_dir), "--port", "0",
             "--slots", str(slots), "--data-root", str(data_dir), *serve_args],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self.address, lines, deadline = None, [], time.monotonic() + 60
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"listening on (\S+)", line)
            if found:
                self.address = found.group(1)
                break
        if self.address is None:
            self.stop()
            raise RuntimeError("gradmesh serve did not start:\n" + "".join(lines))
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # drain its output
        self.token = (data_dir / "token").read_text().strip()

    def rss_bytes(self) -> int:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the server stops its running jobs, then exits
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
