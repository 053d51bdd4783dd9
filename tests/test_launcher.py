"""The mpirun command line (exact argv, no MPI run), the worker environment, exit descriptions, log tails,
and process-group handling of a real child process group (a tiny stand-in program, not a worker)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from coordinator.supervision.launcher import (PROJECT_ROOT, Exit, WorkerProcess, build_mpirun_argv, build_worker_env,
                                  describe_exit, find_mpirun, log_tail)
from coordinator.supervision.outcomes import classify
from coordinator.supervision.processes import alive, group_alive
from coordinator.supervision.processes import tagged as tagged_processes
from coordinator.reports import WorkerEvent, from_legacy
from coordinator.states import JobState
from helpers import wait_for


def legacy(event: str, message: str = "") -> dict:
    """classify's worker_event/failure arguments for what an old rank 0 reported as a string event."""
    kind, failure = from_legacy(event, message)
    return {"worker_event": kind, "failure": failure, "worker_message": message}


def test_argv_local():
    argv = build_mpirun_argv(mpirun="/v/bin/mpirun", python="/v/bin/python", workers=2, hosts=None,
                             coordinator="127.0.0.1:5000", job_id="digits-1", attempt=1, workdir=Path("/d/runs/a"))
    assert argv == ["/v/bin/mpirun", "-n", "2", "/v/bin/python", "-m", "worker", "--coordinator", "127.0.0.1:5000",
                    "--job", "digits-1", "--attempt", "1", "--out", "/d/runs/a"]


def test_argv_hosts_and_extra_mpi_args():
    argv = build_mpirun_argv(mpirun="mpirun", python="python3", workers=4, hosts=[("n1", 2), ("n2", 2)],
                             coordinator="10.0.0.1:50051", job_id="j", attempt=3, workdir=Path("/w"),
                             mpi_args=["-bind-to", "core"])
    assert argv == ["mpirun", "-n", "4", "-hosts", "n1:2,n2:2", "-bind-to", "core", "python3", "-m", "worker",
                    "--coordinator", "10.0.0.1:50051", "--job", "j", "--attempt", "3", "--out", "/w"]


def test_worker_env_carries_token_ca_and_import_path():
    env = build_worker_env({"PATH": "/bin", "PYTHONPATH": "/other", "GRADMESH_TLS_CA": "/stale"},
                           job_token="tok", attempt_tag="abc", project_root=Path("/proj"))
    assert env["GRADMESH_JOB_TOKEN"] == "tok" and "GRADMESH_TLS_CA" not in env
    assert env["GRADMESH_ATTEMPT_TAG"] == "abc"
    assert env["PYTHONPATH"] == os.pathsep.join(["/proj", "/other"]) and env["PATH"] == "/bin"
    env = build_worker_env({}, job_token="t", tls_ca=Path("/ca.pem"))
    assert env["GRADMESH_TLS_CA"] == "/ca.pem" and env["PYTHONPATH"] == str(PROJECT_ROOT)
    # the worker's own knobs reach the ranks (the dashboard test shortens the progress lines' interval)
    env = build_worker_env({"GRADMESH_PROGRESS_EVERY_S": "0.5", "GRADMESH_MPI_WAIT": "spin"}, job_token="t")
    assert env["GRADMESH_PROGRESS_EVERY_S"] == "0.5" and env["GRADMESH_MPI_WAIT"] == "spin"


def test_mpirun_is_found_next_to_python():
    assert find_mpirun() == str(Path(sys.executable).parent / "mpirun")


def test_describe_exit():
    assert describe_exit(1) == "exit code 1"
    assert describe_exit(-9) == "killed by signal SIGKILL (9)"
    assert "SIGKILL" in describe_exit(137)
    assert "unknown" in describe_exit(None)


def test_log_tail(tmp_path):
    log = tmp_path / "a.log"
    log.write_text("".join(f"line {i}\n" for i in range(100)))
    assert log_tail(log, lines=3) == "line 97\nline 98\nline 99"
    assert log_tail(tmp_path / "missing.log") == ""


@pytest.mark.parametrize("code,cancel,final,event,state,retryable", [
    (0, False, 50, "finished", JobState.SUCCEEDED, False),
    (0, False, None, "finished", JobState.FAILED, True),     # no final checkpoint: never SUCCEEDED
    (4, True, None, "stopped", JobState.CANCELLED, False),
    (-15, True, None, "", JobState.CANCELLED, False),
    (2, False, None, "data", JobState.FAILED, False),
    (3, False, None, "nan", JobState.FAILED, False),
    (1, False, None, "", JobState.FAILED, True),
    (4, False, None, "stopped", JobState.FAILED, True),
    (None, False, 50, "finished", JobState.SUCCEEDED, False),  # re-adopted, ended while we were away
    (None, False, None, "", JobState.FAILED, True),
])
def test_classify(code, cancel, final, event, state, retryable):
    out = classify(Exit(code), cancel_requested=cancel, final_checkpoint_step=final, tail="Traceback: boom",
                   **legacy(event, "loss became NaN at step 7" if event == "nan" else ""))
    assert (out.state, out.retryable) == (state, retryable)
    if state is JobState.FAILED and code not in (None,):
        assert describe_exit(code) in out.message and "Traceback: boom" in out.message
    if event == "nan":
        assert "loss became NaN at step 7" in out.message


STANDIN = textwrap.dedent("""
    import os, signal, subprocess, sys, time
    # a parent with a child in a session of its own, like mpirun and hydra's proxies and ranks
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    print("child", child.pid, flush=True)
    if sys.argv[1] == "ignore-term":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.argv[1] == "exit-leaving-child":
        sys.exit(5)
    time.sleep(60)
""")


def _tagged_env(tag: str) -> dict:
    return build_worker_env(os.environ, job_token="t", attempt_tag=tag)


def _child_pid(log: Path) -> int:
    text = wait_for(lambda: log.exists() and "child" in log.read_text() and log.read_text(), timeout=10,
                    what="the stand-in to start")
    return int(text.split()[1])


@pytest.mark.timeout(30)
@pytest.mark.parametrize("mode,expect", [("term", -signal.SIGTERM), ("ignore-term", None)])
def test_stop_terminates_the_whole_group_then_kills(tmp_path, mode, expect):
    log = tmp_path / "p.log"
    tag = f"stop-{mode}-{os.getpid()}"
    proc = WorkerProcess.start([sys.executable, "-c", STANDIN, mode], _tagged_env(tag), log, cwd=tmp_path)
    assert proc.pgid == proc.pid and os.getpgid(proc.pid) == proc.pid  # its own session and group
    child = _child_pid(log)
    assert os.getpgid(child) != proc.pgid  # out of reach of the group: only the tag finds it
    assert proc.poll() is None and group_alive(proc.pgid) and sorted(tagged_processes(tag)) == sorted([proc.pid, child])
    t0 = time.monotonic()
    exit = proc.stop(grace_s=1.0)
    if expect is None:  # SIGTERM ignored by the leader: SIGKILL after the grace period
        assert exit.code == -signal.SIGKILL and time.monotonic() - t0 >= 1.0
    else:
        assert exit.code == expect
    wait_for(lambda: not alive(child), timeout=5, what="the child to die")  # a zombie counts as gone
    assert not alive(child) and not group_alive(proc.pgid) and tagged_processes(tag) == []


@pytest.mark.timeout(30)
def test_leftovers_of_an_exited_leader_are_killed_on_reap(tmp_path):
    log = tmp_path / "p.log"
    proc = WorkerProcess.start([sys.executable, "-c", STANDIN, "exit-leaving-child"], _tagged_env("leave"), log,
                               cwd=tmp_path)
    child = _child_pid(log)
    exit = wait_for(proc.poll, timeout=10, what="the leader's exit")
    assert exit == Exit(5)
    wait_for(lambda: not alive(child), timeout=5, what="the child to die")
    assert not alive(child)


@pytest.mark.timeout(30)
def test_an_exit_is_told_at_once_and_poll_still_reaps_it(tmp_path):
    import threading

    ended = threading.Event()
    proc = WorkerProcess.start([sys.executable, "-c", "import time; time.sleep(0.5)"], _tagged_env("told"),
                               tmp_path / "p.log", cwd=tmp_path)
    proc.notify_exit(ended.set)
    assert not ended.wait(0.2) and proc.poll() is None   # not before it exits
    assert ended.wait(10)
    assert os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None  # a zombie: not reaped
    assert proc.poll() == Exit(0)
    late = threading.Event()
    proc.notify_exit(late.set)   # asked after the reap: told at once all the same
    assert late.wait(5)


@pytest.mark.timeout(30)
def test_adopted_attempt_is_watched_by_liveness_of_its_tagged_processes(tmp_path):
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True,
                         env=_tagged_env("adopted"))
    try:
        # mpirun (pid 1 never matches) is gone: the attempt lives as long as a tagged process does
        adopted = WorkerProcess.adopt(pid=1 << 22, pgid=1 << 22, tag="adopted")
        wait_for(lambda: tagged_processes("adopted"), timeout=5, what="the tagged process")
        assert adopted.poll() is None
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        assert adopted.poll() == Exit(None)
    finally:
        p.kill()
        p.wait()


def test_classify_quotes_only_failure_messages_of_the_worker():
    started = classify(Exit(7), cancel_requested=False, final_checkpoint_step=None, tail="",
                       **legacy("started", "2 rank(s)"))
    assert started.message == "mpirun failed with exit code 7"
    error = classify(Exit(1), cancel_requested=False, final_checkpoint_step=None, tail="",
                     **legacy("error", "rank 1: ValueError: boom"))
    assert error.message == "mpirun failed with exit code 1: rank 1: ValueError: boom" and error.retryable


def test_restart_policy():
    from coordinator.supervision.outcomes import Outcome, decide
    failed = Outcome(JobState.FAILED, True, "mpirun failed with exit code 1", "failed")
    first = decide(failed, attempt=1, restarts=0, max_restarts=2, backoff_s=1.0)
    assert first.state is JobState.RESTARTING and first.delay_s == 1.0
    assert first.message.startswith("attempt 1 failed, restart 1 of 2 in 1.0 s: mpirun failed")
    assert decide(failed, attempt=2, restarts=1, max_restarts=2, backoff_s=1.0).delay_s == 2.0
    last = decide(failed, attempt=3, restarts=2, max_restarts=2, backoff_s=1.0)
    assert last.state is JobState.FAILED and "no restarts are left (max_restarts = 2)" in last.message
    nan = Outcome(JobState.FAILED, False, "loss became NaN at step 5", "nan")
    assert decide(nan, attempt=1, restarts=0, max_restarts=2, backoff_s=1.0).state is JobState.FAILED
    ok = Outcome(JobState.SUCCEEDED, False, "finished at step 60", "succeeded")
    assert decide(ok, attempt=1, restarts=0, max_restarts=2, backoff_s=1.0).state is JobState.SUCCEEDED
    assert decide(failed, attempt=1, restarts=0, max_restarts=0, backoff_s=1.0).message == failed.message


def test_hang_outcome_is_retryable_and_says_why():
    out = classify(Exit(-9), cancel_requested=False, final_checkpoint_step=None, worker_event=WorkerEvent.STARTED,
                   failure=None, tail="", killed=("hung", "no progress for 61 s at step 25"))
    assert out.state is JobState.FAILED and out.retryable and out.outcome == "hung"
    assert out.message.startswith("no progress for 61 s at step 25 (killed by signal SIGKILL")


def test_stored_host_allocation_round_trips():
    from coordinator.hosts import format_hosts, parse_formatted_hosts
    alloc = [("node1", 2), ("10.0.0.7", 4)]
    assert parse_formatted_hosts(format_hosts(alloc)) == alloc
    assert parse_formatted_hosts("") == [] and parse_formatted_hosts("bad,ok:1") == [("ok", 1)]
