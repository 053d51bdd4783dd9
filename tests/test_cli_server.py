"""The real `gradmesh` CLI, run as a subprocess, against a real coordinator on 127.0.0.1:0 with real mpirun
workers: submit → watch (exit 0 only on SUCCEEDED) → status/list/metrics/checkpoints --json → download with
sha256 check → the .npz loads with numpy at the reported accuracy; bad specs and failing jobs give one clear
line and a non-zero exit; `serve` runs and stops cleanly on SIGTERM/SIGINT; `demo` works end to end."""
from __future__ import annotations

import contextlib
import hashlib
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.helpers import ROOT, cli_env, numpy_accuracy, run_cli, self_signed_cert

SMALL_JOB = """
name = "cli-digits"
workers = 2
[model]
layers = [64, 32, 10]
[data]
source = "digits"
[train]
steps = 60
batch_size = 64
eval_every = 10
[optim]
lr = 0.003
[checkpoint]
every_steps = 20
keep_last = 2
"""


def conn(srv) -> list[str]:
    return ["--address", srv.address, f"--token={srv.token}"]  # a token may start with "-"


def one_error_line(proc) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[0].startswith("gradmesh: ") and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.mark.timeout(180)
def test_submit_watch_inspect_download(coordinator, tmp_path):
    spec = tmp_path / "job.toml"
    spec.write_text(SMALL_JOB)
    sub = run_cli(*conn(coordinator), "submit", str(spec), "--label", "suite=cli", "--id", "cli-job-1")
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    assert job_id == "cli-job-1"

    # token from the data directory's file, address from the environment
    env = cli_env(GRADMESH_ADDRESS=coordinator.address)
    watch = run_cli("watch", job_id, "--data-dir", str(coordinator.data_dir), env=env, timeout=120)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    assert re.search(r"60/60 +100\.0%", watch.stdout) and "SUCCEEDED" in watch.stdout
    assert "\r" not in watch.stdout  # not a TTY: plain lines

    status = json.loads(run_cli(*conn(coordinator), "status", job_id, "--json").stdout)
    assert status["id"] == job_id and status["state"] == "SUCCEEDED" and status["step"] == 60
    assert status["labels"] == {"suite": "cli"} and status["spec"]["model"]["layers"] == [64, 32, 10]
    human = run_cli(*conn(coordinator), "status", job_id)
    assert human.returncode == 0 and "SUCCEEDED" in human.stdout and "step 60/60" in human.stdout

    listed = json.loads(run_cli(*conn(coordinator), "list", "--json").stdout)
    assert job_id in [j["id"] for j in listed]
    only_failed = json.loads(run_cli(*conn(coordinator), "list", "--state", "FAILED", "--json").stdout)
    assert job_id not in [j["id"] for j in only_failed]

    metrics = json.loads(run_cli(*conn(coordinator), "metrics", job_id, "--json").stdout)
    assert {p["step"] for p in metrics if p["val_loss"] is not None} >= set(range(10, 61, 10))
    ckpts = json.loads(run_cli(*conn(coordinator), "checkpoints", job_id, "--json").stdout)
    assert ckpts[-1]["step"] == 60 and ckpts[-1]["is_final"]

    out = tmp_path / "best.npz"
    dl = run_cli(*conn(coordinator), "download", job_id, "--best", "-o", str(out))
    assert dl.returncode == 0, dl.stderr
    assert "verified" in dl.stdout
    best = min((c for c in ckpts if c["val_loss"] is not None), key=lambda c: c["val_loss"])
    assert hashlib.sha256(out.read_bytes()).hexdigest() == best["sha256"]
    with np.load(out, allow_pickle=False) as npz:
        assert {"layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b", "meta"} <= set(npz.files)
    accuracy, _ = numpy_accuracy(out)
    assert accuracy == pytest.approx(best["val_accuracy"], abs=1e-6)

    by_step = run_cli(*conn(coordinator), "download", job_id, "--step", str(ckpts[0]["step"]), "-o",
                      str(tmp_path / "first.npz"), "--json")
    assert json.loads(by_step.stdout)["checkpoint"]["sha256"] == ckpts[0]["sha256"]
    missing = run_cli(*conn(coordinator), "download", job_id, "--step", "7", "-o", str(tmp_path / "none.npz"))
    assert "7" in one_error_line(missing) and not (tmp_path / "none.npz").exists()

    logs = run_cli(*conn(coordinator), "logs", job_id)
    assert logs.returncode == 0 and f"attempt 1 of {job_id}" in logs.stdout


@pytest.mark.timeout(120)
def test_watch_and_status_without_a_validation_set_say_so(coordinator, tmp_path):
    """val_fraction = 0: no `val_loss 0.0000 | val_acc 0.00%` anywhere, "no validation set" instead."""
    spec = tmp_path / "job.toml"
    spec.write_text(SMALL_JOB.replace('source = "digits"', 'source = "digits"\nval_fraction = 0.0'))
    job_id = run_cli(*conn(coordinator), "submit", str(spec)).stdout.strip()
    watch = run_cli(*conn(coordinator), "watch", job_id, timeout=90)
    status = run_cli(*conn(coordinator), "status", job_id)
    assert watch.returncode == 0 and status.returncode == 0, watch.stdout + watch.stderr
    for text in (watch.stdout, status.stdout):
        assert "no validation set" in text and "0.00%" not in text and "0.0000 " not in text, text
    assert watch.stdout.splitlines()[-1].endswith(", no validation set")


@pytest.mark.timeout(60)
def test_bad_spec_names_the_field(coordinator, tmp_path):
    cases = {"train.batch_size": SMALL_JOB.replace("batch_size = 64", "batch_size = 0"),
             "train.bogus": SMALL_JOB.replace("steps = 60", "steps = 60\nbogus = 1"),
             "file": "this is [not toml"}
    for field, text in cases.items():
        spec = tmp_path / "bad.toml"
        spec.write_text(text)
        proc = run_cli(*conn(coordinator), "submit", str(spec))
        line = one_error_line(proc)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
        assert line.startswith(f"gradmesh: invalid job spec: {field}:"), line
    spec.write_text(SMALL_JOB)
    too_many = run_cli(*conn(coordinator), "submit", str(spec), "--workers", "99")
    assert "workers" in one_error_line(too_many)
    assert json.loads(run_cli(*conn(coordinator), "list", "--json").stdout) == []  # nothing was stored


@pytest.mark.timeout(120)
def test_watch_of_a_failing_job_exits_nonzero_with_its_message(coordinator, tmp_path):
    bad_data = tmp_path / "five_features.npz"
    np.savez(bad_data, x=np.zeros((40, 5), np.float32), y=np.zeros(40, np.int64))
    spec = tmp_path / "job.toml"
    spec.write_text(SMALL_JOB.replace('source = "digits"', f'source = "{bad_data}"'))
    sub = run_cli(*conn(coordinator), "submit", str(spec))
    assert sub.returncode == 0, sub.stderr
    job_id = sub.stdout.strip()
    watch = run_cli(*conn(coordinator), "watch", job_id, timeout=90)
    assert watch.returncode == 1
    first = one_error_line(watch)
    assert first.startswith(f"gradmesh: job {job_id} FAILED")
    assert "5 features" in watch.stderr  # the worker's own reason travels to the person watching
    status = json.loads(run_cli(*conn(coordinator), "status", job_id, "--json").stdout)
    assert status["state"] == "FAILED" and status["attempts"] == 1  # a data error is not retried


@pytest.mark.timeout(180)
def test_cancel_with_checkpoint_then_resume_on_fewer_workers(coordinator, tmp_path):
    spec = tmp_path / "long.toml"
    spec.write_text(SMALL_JOB.replace("steps = 60", "steps = 4000"))
    job_id = run_cli(*conn(coordinator), "submit", str(spec)).stdout.strip()
    deadline = time.monotonic() + 60
    while json.loads(run_cli(*conn(coordinator), "status", job_id, "--json").stdout)["step"] < 1:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.2)
    cancel = run_cli(*conn(coordinator), "cancel", job_id, "--checkpoint")
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout
    watch = run_cli(*conn(coordinator), "watch", job_id, timeout=60)
    assert watch.returncode == 1 and f"job {job_id} CANCELLED" in one_error_line(watch)
    stopped_at = max(c["step"] for c in json.loads(run_cli(*conn(coordinator), "checkpoints", job_id, "--json").stdout))
    assert 0 < stopped_at < 4000

    resume = run_cli(*conn(coordinator), "resume", job_id, "--workers", "1")
    assert resume.returncode == 0, resume.stderr
    new_id = resume.stdout.strip()
    assert new_id.startswith(job_id) and new_id != job_id  # terminal states are final: a new job continues
    watch = run_cli(*conn(coordinator), "watch", new_id, timeout=120)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    status = json.loads(run_cli(*conn(coordinator), "status", new_id, "--json").stdout)
    assert status["state"] == "SUCCEEDED" and status["workers"] == 1 and status["step"] == 4000
    assert status["labels"]["resumed_from"] == job_id
    steps = [p["step"] for p in json.loads(run_cli(*conn(coordinator), "metrics", new_id, "--json").stdout)]
    assert steps and steps[0] > stopped_at - 10  # continued from the checkpoint, not from step 0
    assert steps == list(range(steps[0], 4001, 10))  # and without a gap
    again = run_cli(*conn(coordinator), "resume", new_id)
    assert "SUCCEEDED" in one_error_line(again)  # only FAILED or CANCELLED jobs resume


@contextlib.contextmanager
def _serving(tmp_path: Path, *extra: str, slots: str | None = "1") -> Iterator[tuple[subprocess.Popen, str]]:
    """`gradmesh serve` started, with the address it prints; killed at the end if the test did not stop it."""
    pool = ["--slots", slots] if slots else []
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(tmp_path / "d"),
                             "--port", "0", *pool, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=cli_env(), cwd=tmp_path)
    try:
        lines, address = [], None
        for line in proc.stdout:
            lines.append(line)
            match = re.search(r"listening on (\S+)", line)
            if match:
                address = match.group(1)
                break
            if len(lines) > 20:
                break
        assert address, "serve did not print its address:\n" + "".join(lines)
        yield proc, address
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_serve_prints_where_and_stops_cleanly(tmp_path, sig):
    with _serving(tmp_path) as (proc, address):
        token_file = tmp_path / "d" / "token"
        listed = run_cli("--address", address, "--data-dir", str(tmp_path / "d"), "list")
        assert listed.returncode == 0 and listed.stdout.strip() == "no jobs", listed.stderr
        no_token = run_cli("--address", address, "list")
        assert "not authorized" in one_error_line(no_token)
        proc.send_signal(sig)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest
        assert "stopping" in rest and "Traceback" not in rest
        assert oct(token_file.stat().st_mode & 0o777) == "0o600"


@pytest.mark.timeout(60)
def test_serve_with_a_retention_says_so(tmp_path):
    with _serving(tmp_path, "--delete-ended-after", "36h") as (proc, address):
        startup = []
        for line in proc.stdout:  # the rest of what serve prints at start, up to its last line (the token)
            startup.append(line)
            if line.startswith("client token"):
                break
        assert any("ended jobs are deleted 36 h after they end" in line for line in startup), startup
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0


@pytest.mark.timeout(30)
def test_serve_on_all_interfaces_needs_an_advertise_address(tmp_path):
    """Remote ranks would dial 127.0.0.1 and fail only at the hang timeout: refused at start, one line, exit 2."""
    proc = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--host", "0.0.0.0", "--port", "0", timeout=20)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("gradmesh: serve: ") and "Traceback" not in proc.stderr
    assert "advertise" in proc.stderr
    assert "listening" not in proc.stdout


@pytest.mark.timeout(30)
def test_serve_refuses_bad_options(tmp_path):
    both = run_cli("serve", "--data-dir", str(tmp_path), "--slots", "2", "--hosts", "a:2")
    assert "only one of" in one_error_line(both)
    half_tls = run_cli("serve", "--data-dir", str(tmp_path), "--tls-cert", "c.pem")
    assert "--tls-cert and --tls-key" in one_error_line(half_tls)


@pytest.mark.timeout(240)
def test_demo_end_to_end(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "coordinator.cli", "demo", "--keep-dir", str(tmp_path / "demo")],
                          capture_output=True, text=True, timeout=200, env=cli_env(), cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    match = re.search(r"evaluated on the (\d+) held-out digits: accuracy ([\d.]+)%", proc.stdout)
    assert match, proc.stdout[-2000:]
    assert float(match.group(2)) >= 95.0
    checkpoint = tmp_path / "demo" / "best.npz"
    assert checkpoint.is_file() and str(checkpoint) in proc.stdout
    assert numpy_accuracy(checkpoint)[0] == pytest.approx(float(match.group(2)) / 100, abs=5e-5)
    assert "SUCCEEDED" in proc.stdout
    # the "best" the demo prints is the checkpoint it downloaded, named by its validation loss
    best = re.search(r"best checkpoint \(lowest val loss\): step (\d+), val loss ([\d.]+) \(acc ([\d.]+)%\)",
                     proc.stdout)
    assert best, proc.stdout[-2000:]
    with np.load(checkpoint, allow_pickle=False) as npz:
        meta = json.loads(str(npz["meta"]))
    assert int(best.group(1)) == meta["step"]
    assert "best val acc" not in proc.stdout
    job_id = re.search(r"submitted job (\S+):", proc.stdout).group(1)
    leftover = subprocess.run(["pgrep", "-f", job_id], capture_output=True, text=True).stdout.split()
    assert leftover == []  # no worker left behind


@pytest.mark.timeout(120)
def test_tls_end_to_end(start_coordinator, tmp_path):
    """Over TLS the CLI needs --tls-ca; the workers (given the certificate by the coordinator) report too."""
    cert, key = self_signed_cert(tmp_path)
    srv = start_coordinator(tls_cert=cert, tls_key=key)
    spec = tmp_path / "job.toml"
    spec.write_text(SMALL_JOB.replace("steps = 60", "steps = 20"))
    plain = run_cli("--address", srv.address, f"--token={srv.token}", "list", timeout=30)
    assert "give --tls-ca" in one_error_line(plain) and len(plain.stderr.strip().splitlines()) == 1
    secure = [*conn(srv), "--tls-ca", str(cert)]
    job_id = run_cli(*secure, "submit", str(spec)).stdout.strip()
    assert job_id
    watch = run_cli(*secure, "watch", job_id, timeout=90)
    assert watch.returncode == 0, watch.stdout + watch.stderr
    env = cli_env(GRADMESH_TLS_CA=str(cert), GRADMESH_TOKEN=srv.token, GRADMESH_ADDRESS=srv.address)
    follow = run_cli("logs", job_id, "-f", "--json", env=env, timeout=30)
    text = "".join(json.loads(line)["text"] for line in follow.stdout.splitlines())
    assert follow.returncode == 0 and f"attempt 1 of {job_id}" in text


@pytest.mark.timeout(120)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_demo_leaves_no_worker(tmp_path, sig):
    proc = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "demo", "--epochs", "5000", "--keep-dir",
                             str(tmp_path / "demo")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=cli_env(), cwd=ROOT)
    job_id = None
    try:
        for line in proc.stdout:
            match = re.search(r"submitted job (\S+):", line)
            job_id = job_id or (match and match.group(1))
            if job_id and "/" in line and "loss" in line:  # training is under way
                break
        assert job_id, "the demo never submitted its job"
        proc.send_signal(sig)
        proc.communicate(timeout=60)
        assert proc.returncode == 130
        leftover = subprocess.run(["pgrep", "-f", job_id], capture_output=True, text=True).stdout.split()
        assert leftover == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.timeout(60)
def test_serve_with_a_hostfile(tmp_path):
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# three slots on this machine\nlocalhost:3\n")
    with _serving(tmp_path, "--hostfile", str(hostfile), slots=None) as (proc, address):
        spec = tmp_path / "job.toml"
        spec.write_text(SMALL_JOB)
        refused = run_cli("--address", address, "--data-dir", str(tmp_path / "d"), "submit", str(spec),
                          "--workers", "4")
        assert "has 3 in all" in one_error_line(refused)  # the pool is the hostfile's
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
        assert proc.returncode == 0
    both = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--hostfile", str(hostfile), "--slots", "2")
    assert "only one of" in one_error_line(both)


# ---------------------------------------------------------------- one data directory, one coordinator

@pytest.mark.timeout(120)
def test_one_data_directory_one_coordinator(tmp_path):
    """A second serve on the same --data-dir is refused in one line naming the first one's pid and address; a
    client given only --data-dir finds the coordinator that owns it (not whatever answers on 50051)."""
    with _serving(tmp_path) as (first, address):
        second = run_cli("serve", "--data-dir", str(tmp_path / "d"), "--port", "0", "--slots", "1", timeout=60)
        assert second.returncode == 1, second.stdout + second.stderr
        line = one_error_line(second)
        assert f"pid {first.pid}" in line and address in line and "in use" in line, line
        assert "listening" not in second.stdout
        owner = json.loads((tmp_path / "d" / "coordinator.json").read_text())
        assert owner["pid"] == first.pid and owner["address"] == address
        assert oct((tmp_path / "d" / "coordinator.json").stat().st_mode & 0o777) == "0o600"
        # the client: --data-dir alone gives it the token and the address
        listed = run_cli("--data-dir", str(tmp_path / "d"), "list", env=cli_env(HOME=str(tmp_path)))
        assert listed.returncode == 0 and listed.stdout.strip() == "no jobs", listed.stderr
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
        assert first.returncode == 0
    assert not (tmp_path / "d" / "coordinator.json").exists()
    # the lock went with it: the directory serves again
    with _serving(tmp_path) as (again, _):
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)
        assert again.returncode == 0


@pytest.mark.timeout(120)
def test_a_killed_coordinator_leaves_no_lock_and_its_stale_address_is_not_trusted(tmp_path):
    with _serving(tmp_path) as (first, address):
        first.kill()
        first.wait(timeout=30)
    assert (tmp_path / "d" / "coordinator.json").exists()  # stale, as a kill -9 leaves it
    from coordinator.wire import owner_address
    assert owner_address(tmp_path / "d") is None  # nobody holds the lock: the file is not believed
    with _serving(tmp_path) as (again, new_address):
        assert owner_address(tmp_path / "d") == new_address
        again.send_signal(signal.SIGTERM)
        again.communicate(timeout=30)
