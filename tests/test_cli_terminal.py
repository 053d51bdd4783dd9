"""The `gradmesh` command where people meet it: what reaches their terminal, and one clear line for each
mistake they make. A real coordinator on 127.0.0.1 and the real CLI in a subprocess; the tests that need
training run it under real `mpirun`.

    escaped output (names, labels, hosts, messages), `gradmesh` alone, --version, --workers 0,
    an address without a port, the dashboard's port as the gRPC address, a port in use (gRPC and dashboard),
    a registered run's attempt line, progress lines in `logs -f`, Ctrl-C in watch and in serve
"""
from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from coordinator.client import Client
from helpers import ROOT, cli_env, idle_server, run_cli, small_digits_spec, wait_for

pytestmark = pytest.mark.timeout(180)
RAW_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e]")


def _cli(srv, *args: str, home: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_cli("--address", srv.address, "--token", srv.token, *args, env=cli_env(HOME=str(home)),
                   timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    return proc.stderr.strip()


# ---------------------------------------------------------------- output

def test_control_characters_in_names_and_labels_print_escaped(start_coordinator, tmp_path):
    srv = idle_server(start_coordinator)
    forged = "evil\nforged-row  RUNNING  999/999\r\x1b[31mred\x1b]0;title\x07\u202eesrever"
    with Client(srv.address, token=srv.token) as client:
        spec = small_digits_spec(steps=40, workers=1)
        spec["name"] = forged
        job = client.submit(spec, labels={"team": "ml\n\x1b[2Jcleared"})
    listed = _cli(srv, "list", home=tmp_path)
    assert listed.returncode == 0, listed.stderr
    assert not RAW_CONTROL.search(listed.stdout), repr(listed.stdout)
    assert listed.stdout.count("\n") == 2  # the header and one row: no forged row
    assert "evil\\nforged-row" in listed.stdout and "\\x1b[31mred" in listed.stdout and "\\u202e" in listed.stdout
    status = _cli(srv, "status", job.id, home=tmp_path)
    assert status.returncode == 0 and not RAW_CONTROL.search(status.stdout), repr(status.stdout)
    assert "ml\\n\\x1b[2Jcleared" in status.stdout


def test_gradmesh_alone_prints_the_help_and_version_says_which(tmp_path):
    alone = run_cli(env=cli_env(HOME=str(tmp_path)))
    assert alone.returncode == 0 and "usage: gradmesh" in alone.stdout and "submit" in alone.stdout, alone.stderr
    assert alone.stderr == ""
    version = run_cli("--version", env=cli_env(HOME=str(tmp_path)))
    assert version.returncode == 0 and re.fullmatch(r"gradmesh \S+\n", version.stdout), version.stdout


@pytest.mark.parametrize("args", [("submit", "job.toml", "--workers", "0"), ("submit", "job.toml", "--workers", "-2"),
                                  ("resume", "j", "--workers", "0"), ("submit", "job.toml", "--workers", "\u0662"),
                                  ("demo", "--workers", "0")])
def test_zero_workers_is_refused(tmp_path, args):
    done = run_cli(*args, env=cli_env(HOME=str(tmp_path)))
    assert done.returncode == 2 and "--workers" in done.stderr and "at least 1" in done.stderr, done.stderr


# ---------------------------------------------------------------- addresses and ports

def test_address_mistakes_each_get_one_line(start_coordinator, tmp_path):
    srv = idle_server(start_coordinator, http_port=0)
    env = cli_env(HOME=str(tmp_path))
    no_port = run_cli("--address", "127.0.0.1", "--token", srv.token, "list", env=env)
    assert no_port.returncode == 1 and "has no port" in one_line(no_port) and "HOST:PORT" in no_port.stderr
    dashboard = run_cli("--address", f"127.0.0.1:{srv.dashboard.port}", "--token", srv.token, "list", env=env)
    line = one_line(dashboard)
    assert dashboard.returncode == 1 and "dashboard" in line and "not gRPC" in line, line
    for taken in (str(srv.port), "0"):  # the gRPC port in use; then the dashboard's port in use
        extra = ["--http-port", str(srv.dashboard.port)] if taken == "0" else ["--http-port", "0"]
        serve = run_cli("serve", "--data-dir", str(tmp_path / f"d{taken}"), "--port", taken, "--slots", "1", *extra,
                        env=env, timeout=60)
        line = one_line(serve)
        assert serve.returncode == 1 and "already in use" in line and "listening" not in serve.stdout, line
        assert ("--port" if taken != "0" else "--http-port") in line
    for args in (("--port", "\u0661\u0662"), ("--slots", "1_0"), ("--port", " 7")):  # ASCII digits only
        bad = run_cli("serve", "--data-dir", str(tmp_path / "dp"), *args, env=env)
        assert bad.returncode == 2 and "is not a whole number" in bad.stderr, bad.stderr
    for port in ("70000", "-1"):
        bad = run_cli("serve", "--data-dir", str(tmp_path / "dp"), "--port", port, env=env)
        assert bad.returncode == 2 and "is not a port" in one_line(bad)


# ---------------------------------------------------------------- with training under mpirun

def test_a_registered_runs_attempt_line_names_its_hosts(start_coordinator, tmp_path):
    srv = start_coordinator(slots=1)
    spec = tmp_path / "reg.toml"
    spec.write_text('name = "registered"\n[model]\nlayers = [64, 16, 10]\n[train]\nsteps = 30\nbatch_size = 32\n'
                    "eval_every = 10\n")
    mpirun = Path(sys.executable).parent / "mpirun"
    run = subprocess.run([str(mpirun), "-n", "2", sys.executable, "-m", "worker", "--spec", str(spec), "--register",
                          "--coordinator", srv.address, "--token", srv.token, "--out", str(tmp_path / "out")],
                         capture_output=True, text=True, timeout=150, env=cli_env(HOME=str(tmp_path)), cwd=ROOT)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    job_id = re.search(r"registered as job (\S+)", run.stdout + run.stderr).group(1)
    status = _cli(srv, "status", job_id, home=tmp_path)
    host = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())
    assert re.search(rf"#1  2 rank\(s\) on {re.escape(host)}:2  ", status.stdout), status.stdout


def test_logs_follow_shows_progress_and_ctrl_c_in_watch_and_serve_say_what_they_did(tmp_path):
    env = cli_env(HOME=str(tmp_path))
    data_dir = tmp_path / "d"
    serve = subprocess.Popen([sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(data_dir), "--port",
                              "0", "--slots", "1", "--http-port", "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    try:
        for line in serve.stdout:
            if "listening on" in line:
                break
        common = ["--data-dir", str(data_dir)]  # the address comes from the data directory
        short = tmp_path / "short.toml"
        short.write_text('name = "short"\nworkers = 1\n[model]\nlayers = [64, 16, 10]\n[train]\nsteps = 60\n'
                         "batch_size = 32\neval_every = 20\n")
        job = run_cli(*common, "submit", str(short), env=env).stdout.strip()
        logs = run_cli(*common, "logs", "-f", job, env=env, timeout=150)
        assert logs.returncode == 0, logs.stderr
        for step in (20, 40, 60):  # the progress lines, as rank 0 prints them
            assert re.search(rf"^step {step}/60 \| epoch \d+ \| loss ", logs.stdout, re.M), logs.stdout[-2000:]

        long = tmp_path / "long.toml"
        long.write_text('name = "long"\nworkers = 1\n[model]\nlayers = [64, 16, 10]\n[train]\nsteps = 1000000\n'
                        "batch_size = 32\neval_every = 100\n")
        job = run_cli(*common, "submit", str(long), env=env).stdout.strip()
        watch = subprocess.Popen([sys.executable, "-m", "coordinator.cli", *common, "watch", job],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
        first = watch.stdout.readline()
        assert job in first, first
        wait_for(lambda: "RUNNING" in run_cli(*common, "status", job, env=env).stdout, 120, "the long job to run")
        watch.send_signal(signal.SIGINT)
        _, err = watch.communicate(timeout=30)
        assert watch.returncode == 130 and f"job {job} keeps running" in err and "Traceback" not in err, err
        assert "RUNNING" in run_cli(*common, "status", job, env=env).stdout

        serve.send_signal(signal.SIGINT)
        rest, _ = serve.communicate(timeout=60)
        assert serve.returncode == 0
        stopping = next(line for line in rest.splitlines() if "stopping" in line)
        assert f"1 running job(s): {job} (step" in stopping and "restarts them" in stopping, stopping
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()


def test_a_plain_cancel_writes_no_checkpoint_and_cancel_checkpoint_does(start_coordinator, tmp_path):
    """As the README says: `gradmesh cancel` stops at the next step boundary without a checkpoint, and only
    `--checkpoint` writes one (periodic checkpoints are off here, so any checkpoint is the cancel's)."""
    srv = start_coordinator(slots=1)
    spec = small_digits_spec(steps=1_000_000, workers=1, eval_every=50)
    spec["checkpoint"] = {"every_steps": 0, "keep_last": 2}
    with Client(srv.address, token=srv.token) as client:
        for flag, expected in (((), 0), (("--checkpoint",), 1)):
            job = client.submit(spec)
            wait_for(lambda: client.get(job.id).step >= 50, 120, "the job to train")
            done = _cli(srv, "cancel", job.id, *flag, home=tmp_path)
            assert done.returncode == 0 and "cancel requested" in done.stdout, done.stderr
            ended = wait_for(lambda: (j := client.get(job.id)).is_terminal() and j, 120, "the cancel")
            assert ended.state.name == "CANCELLED", ended.message
            assert len(client.checkpoints(job.id)) == expected, (flag, client.checkpoints(job.id), ended.message)
