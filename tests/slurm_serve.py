"""`gradmesh serve --executor slurm` run inside a test Slurm's namespace (tests/slurm_cluster.py), for the Slurm
executor tests: it starts the server, runs the CLI beside it, and reads job states straight from its SQLite
file (a reader beside the coordinator, cheap to poll).

    server = Serve(slurm, slurm.hidden / "data")      # a data directory the compute side cannot see
    job = server.submit(tmp_path, "name", steps=40)   # the CLI; returns the job id
    server.wait_state(job, "SUCCEEDED"); server.cli("status", job); server.stop()
"""
from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

from coordinator.supervision.slurm import job_name
from helpers import ROOT, cli_env, digits_toml, wait_for

WORKER_THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


class Serve:
    """A `gradmesh serve --executor slurm` inside the cluster's namespace."""

    dashboard = ""  # its URL

    def __init__(self, slurm, data_dir: Path, port: int = 0,
                 executor: tuple[str, ...] = ("--executor", "slurm", "--slurm-poll", "0.3"), path: str = "",
                 dashboard: bool = False):
        """`path`: directories put first on the coordinator's PATH (a fault injected around Slurm's commands);
        `dashboard`: serve one too, on a free port (`self.dashboard` is its URL)."""
        self.slurm = slurm
        self.data_dir = data_dir
        self.log = data_dir.parent / f"{data_dir.name}-serve.log"
        env = cli_env(**WORKER_THREADS)
        if path:
            env["PATH"] = path + os.pathsep + env["PATH"]
        self.proc = slurm.popen([sys.executable, "-m", "coordinator.cli", "serve", *executor,
                                 "--data-dir", str(data_dir), "--port", str(port),
                                 *([] if dashboard else ["--http-port", "0"])],
                                env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=open(self.log, "a"), text=True)
        line = ""
        deadline = time.monotonic() + 30
        while "listening on" not in line:
            line = self.proc.stdout.readline()
            if not line and (self.proc.poll() is not None or time.monotonic() > deadline):
                raise AssertionError(f"serve did not start:\n{self.log.read_text()}")
        self.address = line.split("listening on", 1)[1].strip()
        self.port = int(self.address.rsplit(":", 1)[1])
        for _ in range(2):  # the dashboard's address (in the cluster's namespace) follows the data directory's
            line = self.proc.stdout.readline()
            if "web dashboard on" in line:
                self.dashboard = line.split("web dashboard on", 1)[1].split()[0]

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.slurm.run([sys.executable, "-m", "coordinator.cli", *args, "--address", self.address,
                               "--data-dir", str(self.data_dir)], env=cli_env(), cwd=ROOT, check=check,
                              timeout=timeout)

    def submit(self, tmp_path: Path, name: str, **spec) -> str:
        path = tmp_path / f"{name}.toml"
        path.write_text(digits_toml(name, **spec))
        self.cli("submit", str(path), "--id", name)
        return name

    def job(self, job_id: str) -> sqlite3.Row | None:
        db = sqlite3.connect(f"file:{self.data_dir / 'gradmesh.db'}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        finally:
            db.close()

    def query(self, sql: str, *args) -> list[sqlite3.Row]:
        db = sqlite3.connect(f"file:{self.data_dir / 'gradmesh.db'}?mode=ro", uri=True, timeout=10)
        db.row_factory = sqlite3.Row
        try:
            return db.execute(sql, args).fetchall()
        finally:
            db.close()

    def wait_state(self, job_id: str, *states: str, timeout: float = 90) -> sqlite3.Row:
        def reached():
            row = self.job(job_id)
            if row is not None and row["state"] in ("FAILED", "CANCELLED", "SUCCEEDED") and row["state"] not in states:
                raise AssertionError(f"{job_id} ended {row['state']}: {row['message']}\n{self.log.read_text()[-3000:]}")
            return row if row is not None and row["state"] in states else None
        return wait_for(reached, timeout=timeout, what=f"{job_id} to be {'/'.join(states)}", interval=0.1)

    def slurm_job(self, job_id: str, attempt: int = 1) -> str:
        return wait_for(lambda: next((r["slurm_job"] for r in self.query(
            "SELECT slurm_job FROM attempts WHERE job_id = ? AND attempt = ?", job_id, attempt)
            if r["slurm_job"] not in ("", "?")), None), timeout=30, what=f"the Slurm job of {job_id}")

    def slurm_name(self, job_id: str, attempt: int = 1) -> str:
        """The Slurm job name of the job's attempt (it carries the job's submission time)."""
        return job_name(job_id, attempt, self.job(job_id)["created"])

    def kill9(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
