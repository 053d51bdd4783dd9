"""Upgrades: a data directory and checkpoints written by an earlier release, opened by today's code.

The fixture (tests/fixtures/upgrade-2026-11-28/, made with the release of 2026-11-28 by the script beside it)
holds two jobs done, one cancelled and one RUNNING when its server stopped (its processes then killed, as a
reboot for the upgrade would). Opened here from another place than where it was written, by a real coordinator:
listing, status and metrics read as stored, the old checkpoints download with the same bytes, `gradmesh
evaluate`/`predict` read them (a note says what the old format carried), the running job is restarted from
its checkpoint and finishes, and the cancelled one resumes to the end.

Also: a store written by a newer release is refused with one line, and the lenient reading of stored specs
does not make new submissions lenient.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import sqlite3
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.client import Client
from coordinator.states import JobState
from helpers import cli_env, run_cli, wait_for

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "upgrade-2026-11-28" / "datadir.tar.gz"
OLD_PLACE = "/tmp/gradmesh-upgrade-97otjiss/data"   # where the release of 2026-11-28 wrote it


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _unpack(into: Path) -> Path:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(into, filter="data")
    return into / "data"


def _db(data: Path, sql: str):
    conn = sqlite3.connect(data / "gradmesh.db")
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def _seconds_per_cli_call() -> float:
    """The machine's speed now: one CLI process start (imports numpy, grpc). Timeouts are multiples of it."""
    started = time.monotonic()
    run_cli("--help", timeout=120)
    return time.monotonic() - started


@pytest.mark.timeout(900)
def test_a_data_directory_of_the_2026_11_28_release_runs_its_jobs_to_the_end(start_coordinator, tmp_path):
    data = _unpack(tmp_path / "moved")
    old_sums = {(p.parent.name, p.name): _sha256(p) for p in (data / "checkpoints").rglob("*.npz")}
    assert _db(data, "PRAGMA user_version") == [(0,)]  # what that release wrote: no version at all
    assert _db(data, "SELECT path FROM checkpoints LIMIT 1")[0][0].startswith(OLD_PLACE + "/")
    unit = _seconds_per_cli_call()
    srv = start_coordinator(data_dir=data, slots=4)
    assert _db(data, "PRAGMA user_version") == [(1,)]
    assert _db(data, "SELECT value FROM store_info WHERE key = 'data_dir'") == [(str(data.resolve()),)]
    client = Client(srv.address, data_dir=data)

    # listing, status, metrics: as the old release stored them
    jobs = {j.id: j for j in client.list()}
    assert set(jobs) == {"done-adam", "done-momentum", "cancelled", "running"}
    assert jobs["done-adam"].state == jobs["done-momentum"].state == JobState.SUCCEEDED
    assert jobs["cancelled"].state == JobState.CANCELLED
    assert [p.step for p in client.metrics("done-adam")] == [20, 40, 60]
    assert client.get("done-momentum").best.val_accuracy is not None
    # the same spec resubmitted under the same id is still the same job (the store holds it with every default)
    from worker.spec import parse_stored_spec
    same = parse_stored_spec(json.loads(jobs["done-adam"].spec_json))[0].to_dict()
    assert client.submit(same, job_id="done-adam").state == JobState.SUCCEEDED
    status = run_cli("--address", srv.address, "--data-dir", str(data), "status", "done-adam")
    assert status.returncode == 0 and "finished at step 60" in status.stdout, status.stderr

    # every old checkpoint downloads with the bytes that were uploaded
    downloaded = {}
    for job_id in ("done-adam", "done-momentum", "cancelled"):
        for info in client.checkpoints(job_id):
            out = tmp_path / f"{job_id}-{info.step}.npz"
            client.download(job_id, out, step=info.step)
            assert _sha256(out) == info.sha256 == old_sums[(job_id, f"step-{info.step:08d}.npz")], (job_id, info.step)
            downloaded[(job_id, info.step)] = out
    assert len(downloaded) == 6

    # gradmesh evaluate, predict and plain numpy agree on an old checkpoint; a note says what was dropped
    old = downloaded[("done-adam", 60)]
    proc = run_cli("evaluate", str(old), "--data", "digits", "--split", "val", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "note:" in proc.stderr and "optim.momentum" in proc.stderr and "format 1" in proc.stderr
    report = json.loads(proc.stdout)
    stored = [c for c in client.checkpoints("done-adam") if c.step == 60][0]
    assert abs(report["accuracy"] - stored.val_accuracy) < 1e-9, (report, stored)
    proc = run_cli("predict", str(downloaded[("done-momentum", 60)]), "--data", "digits", "-o", str(tmp_path / "p.npy"))
    assert proc.returncode == 0, proc.stderr
    probabilities = np.load(tmp_path / "p.npy")
    assert probabilities.shape == (1797, 10) and np.allclose(probabilities.sum(axis=1), 1, atol=1e-5)
    if importlib.util.find_spec("onnx") is not None:  # the onnx extra
        proc = run_cli("export", str(old), "-o", str(tmp_path / "old.onnx"))
        assert proc.returncode == 0 and "note:" in proc.stderr and (tmp_path / "old.onnx").stat().st_size > 0, proc.stderr

    # the job that was running is restarted from its checkpoint at step 200 and finishes
    deadline = 200 * unit + 120
    wait_for(lambda: client.get("running").state.is_terminal(), timeout=deadline, what="the running job to end")
    running = client.get("running")
    assert running.state == JobState.SUCCEEDED and running.step == 600, running.message
    later = [p.step for p in client.metrics("running") if p.attempt > 1]
    assert later and min(later) > 200 and max(later) == 600, later  # resumed, not started over
    log = b"".join(client.logs("running", attempt=running.attempts)).decode()
    assert "note: the stored spec sets optim.momentum" in log, log

    # the cancelled one resumes from its checkpoint at step 200 and finishes
    resumed = client.resume("cancelled")
    wait_for(lambda: client.get(resumed.id).state.is_terminal(), timeout=deadline, what="the resumed job to end")
    final = client.get(resumed.id)
    assert final.state == JobState.SUCCEEDED and final.step == 600, final.message
    assert min(p.step for p in client.metrics(resumed.id)) > 200
    # both continued the same trajectory from the same step-200 state: the same final weights
    a, b = tmp_path / "running-final.npz", tmp_path / "resumed-final.npz"
    client.download("running", a, latest=True)
    client.download(resumed.id, b, latest=True)
    with np.load(a) as za, np.load(b) as zb:
        for name in za.files:
            if name != "meta":
                np.testing.assert_array_equal(za[name], zb[name], err_msg=name)
        assert json.loads(str(za["meta"]))["format_version"] == 2

    # the old files are untouched: the store points at them in their new place
    for job_id in ("done-adam", "done-momentum", "cancelled"):
        now = {(job_id, p.name): _sha256(p) for p in (data / "checkpoints" / job_id).glob("*.npz")}
        assert now == {k: v for k, v in old_sums.items() if k[0] == job_id}
    assert all(row[0].startswith(str(data.resolve()) + "/") for row in _db(data, "SELECT path FROM checkpoints"))
    client.close()


def test_a_store_written_by_a_newer_release_is_refused_in_one_line(tmp_path):
    data = _unpack(tmp_path)
    conn = sqlite3.connect(data / "gradmesh.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(data), "--port", "0"],
                          capture_output=True, text=True, timeout=120, env=cli_env())
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "gradmesh.server" not in line]
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    assert "store is format 99, written by a newer gradmesh" in lines[0] and "up to 1" in lines[0]


def test_opening_twice_in_one_place_rewrites_nothing_and_a_second_move_is_followed(tmp_path):
    from coordinator.store.store import Store
    first = _unpack(tmp_path / "a")
    Store(first / "gradmesh.db").close()
    paths = _db(first, "SELECT path FROM checkpoints ORDER BY path")
    Store(first / "gradmesh.db").close()
    assert _db(first, "SELECT path FROM checkpoints ORDER BY path") == paths
    assert all(p.startswith(str(first) + "/checkpoints/") and Path(p).is_file() for (p,) in paths)
    second = tmp_path / "b" / "data"
    second.parent.mkdir()
    first.rename(second)
    Store(second / "gradmesh.db").close()
    assert all(p.startswith(str(second) + "/") and Path(p).is_file()
               for (p,) in _db(second, "SELECT path FROM checkpoints UNION SELECT log_path FROM attempts"))


def test_stored_specs_are_read_leniently_and_new_submissions_strictly(tmp_path):
    from worker.spec import SpecError, parse_spec, parse_stored_spec
    stored = json.loads(_db(_unpack(tmp_path), "SELECT spec_json FROM jobs WHERE id = 'running'")[0][0])
    assert stored["optim"]["name"] == "adam" and "momentum" in stored["optim"]  # every key, as 2026-11-28 stored
    spec, dropped = parse_stored_spec(stored)
    assert dropped == ["optim.momentum", "optim.step_size", "optim.gamma", "optim.min_lr", "data.synthetic"]
    assert spec.optim.name == "adam" and "momentum" not in spec.to_dict()["optim"]
    with pytest.raises(SpecError, match="optim.momentum: not used"):
        parse_spec(stored)
    with pytest.raises(SpecError, match="model.layers"):  # leniency is for unused settings only
        parse_stored_spec({**stored, "model": {**stored["model"], "layers": [64]}})
