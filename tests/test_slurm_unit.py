"""The Slurm executor's pure parts, without a Slurm: the exact sbatch command and batch script, reading
`scontrol show job --oneliner`, Slurm's job states → the attempt's Exit (and so the restart policy), the
pending message, and `gradmesh serve --executor slurm` refusing to start without Slurm's commands."""
from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from coordinator.supervision.outcomes import classify, decide
from coordinator.reports import WorkerEvent
from coordinator.supervision.slurm import SlurmQueue, build_sbatch, job_name
from coordinator.supervision.slurm_jobs import SlurmJobInfo, parse_scontrol, slurm_exit, waiting_text
from coordinator.states import JobState
from coordinator.supervision.executors import ExecutorUnavailable
from coordinator.supervision.slurm import SlurmJob
from coordinator.supervision.slurm_outage import Outage
from coordinator.supervision.slurm_submit import AnswerLost, Unconfirmed, sbatch
from helpers import run_cli, cli_env

SCRIPT = Path("/d/logs/digits-1/attempt-2.sbatch")


def test_the_sbatch_command_and_script_are_exact():
    """Nothing of the attempt on the coordinator's disk: node-local output, working and scratch directories."""
    argv, script = build_sbatch(sbatch="/usr/bin/sbatch", python="/venv/bin/python", workers=4,
                                coordinator="10.0.0.5:50051", job_id="digits-1", attempt=2, created=1796601600.0,
                                script_path=SCRIPT)
    assert argv == ["/usr/bin/sbatch", "--parsable", f"--job-name={job_name('digits-1', 2, 1796601600.0)}", "--ntasks=4",
                    "--output=/tmp/%x-%j.out", "--open-mode=append", "--chdir=/tmp", "--no-requeue", "--export=ALL",
                    str(SCRIPT)]
    assert "/d/" not in " ".join(argv[:-1]) and "/d/" not in script
    assert script.startswith("#!/bin/sh\n")
    body = [line for line in script.splitlines() if not line.startswith("#")]
    assert body[0] == 'scratch=$(mktemp -d "${TMPDIR:-/tmp}/"gradmesh-digits-1-a2.XXXXXX) || exit 1'
    link = ["--coordinator", "10.0.0.5:50051", "--job", "digits-1", "--attempt", "2"]
    assert shlex.split(body[-1]) == ["exec", "/venv/bin/python", "-m", "worker.slurm_step", *link, "--scratch",
                                     "$scratch", "--", "srun", "--mpi=pmi2", "--kill-on-bad-exit=1", "/venv/bin/python",
                                     "-m", "worker", *link, "--out", "$scratch"]
    checked = subprocess.run(["sh", "-n"], input=script, text=True, capture_output=True, timeout=10)
    assert checked.returncode == 0, checked.stderr


def test_partition_account_and_extra_sbatch_options_come_before_the_script():
    argv, _ = build_sbatch(sbatch="sbatch", python="python", workers=2, coordinator="h:1", job_id="j", attempt=1,
                           script_path=SCRIPT, partition="gpu", account="ml",
                           sbatch_args=["--time=60", "--cpus-per-task=4"])
    assert argv[-5:] == ["--partition=gpu", "--account=ml", "--time=60", "--cpus-per-task=4", str(SCRIPT)]
    assert job_name("j", 1, 0.0) == "gradmesh-j-a1-8aed64"


def test_a_job_deleted_and_submitted_again_gets_other_slurm_names():
    # a lost sbatch answer is looked up by name: an earlier job of the same id must not answer for it
    assert job_name("j", 1, 1796601600.0) == job_name("j", 1, 1796601600.0)
    assert job_name("j", 1, 1796601600.0) != job_name("j", 1, 1796601600.001)
    assert job_name("j", 1, 1796601600.0).startswith("gradmesh-j-a1-")


def test_the_owner_goes_to_slurm_as_the_comment():
    argv, _ = build_sbatch(sbatch="sbatch", python="python", workers=2, coordinator="h:1", job_id="j", attempt=1,
                           script_path=SCRIPT, account="ml", owner="ana",
                           sbatch_args=["--time=60"])
    assert argv[-4:] == ["--account=ml", "--comment=gradmesh owner=ana", "--time=60", str(SCRIPT)]


def test_paths_with_spaces_are_quoted_in_the_script():
    _, script = build_sbatch(sbatch="sbatch", python="/my venv/python", workers=1, coordinator="h:1", job_id="j",
                             attempt=1, script_path=SCRIPT)
    assert "'/my venv/python'" in script


SCONTROL = (
    "JobId=7 JobName=gradmesh-a-a1 UserId=root(0) JobState=PENDING Reason=Resources Dependency=(null) "
    "ExitCode=0:0 NodeList=(null) Command=/d/x.sbatch\n"
    "JobId=8 JobName=gradmesh-b-a1 JobState=FAILED Reason=NonZeroExitCode ExitCode=4:0 NodeList=vm\n"
    "JobId=9 JobName=gradmesh-c-a1 JobState=CANCELLED Reason=None ExitCode=0:15 NodeList=vm\n"
)


def test_scontrol_oneliner_output_is_read():
    jobs = parse_scontrol(SCONTROL)
    assert jobs["7"] == SlurmJobInfo("7", "gradmesh-a-a1", "PENDING", "Resources", 0, 0, "(null)")
    assert (jobs["8"].state, jobs["8"].exit_code, jobs["8"].nodes) == ("FAILED", 4, "vm")
    assert (jobs["9"].exit_code, jobs["9"].signal) == (0, 15)
    assert parse_scontrol("No jobs in the system\n") == {}


@pytest.mark.parametrize("state, code, sig, want", [
    ("COMPLETED", 0, 0, 0),
    ("FAILED", 1, 0, 1),
    ("FAILED", 4, 0, 4),           # the ranks stopped with a checkpoint: srun passes their code on
    ("CANCELLED", 4, 0, 4),        # scancel's SIGTERM reached the ranks, which stopped with a checkpoint
    ("CANCELLED", 0, 0, -15),      # cancelled with no code (e.g. while pending): Slurm's SIGTERM
    ("CANCELLED", 0, 9, -9),
    ("TIMEOUT", 0, 0, -9),         # Slurm ended it itself: killed
    ("NODE_FAIL", 0, 0, -9),
    ("OUT_OF_MEMORY", 0, 0, -9),
    ("PREEMPTED", 0, 0, -9),
])
def test_slurm_states_become_exits_naming_slurms_state(state, code, sig, want):
    exit = slurm_exit("12", SlurmJobInfo("12", state=state, reason="NonZeroExitCode", exit_code=code, signal=sig))
    assert exit.code == want and exit.launcher == "the Slurm job"
    assert f"Slurm job 12 ended {state}, reason NonZeroExitCode" in exit.describe()


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED"])
def test_a_job_slurm_still_holds_has_not_ended(state):
    assert slurm_exit("12", SlurmJobInfo("12", state=state)) is None


def test_a_job_slurm_forgot_ends_as_unknown():
    exit = slurm_exit("12", None)
    assert exit.code is None and "Slurm no longer knows job 12" in exit.describe()


@pytest.mark.parametrize("state, retried", [("NODE_FAIL", True), ("TIMEOUT", True), ("OUT_OF_MEMORY", True),
                                            ("FAILED", True), ("CANCELLED", True)])
def test_failed_slurm_jobs_follow_the_restart_policy_with_slurms_words(state, retried):
    exit = slurm_exit("12", SlurmJobInfo("12", state=state, reason="None", exit_code=1 if state == "FAILED" else 0))
    outcome = classify(exit, cancel_requested=False, final_checkpoint_step=None, worker_event=WorkerEvent.STARTED,
                       failure=None, tail="")
    decision = decide(outcome, attempt=1, restarts=0, max_restarts=2, backoff_s=1.0)
    assert (decision.state is JobState.RESTARTING) == retried
    assert f"Slurm job 12 ended {state}" in decision.message


def test_a_finished_run_succeeds_whatever_slurm_then_forgot():
    outcome = classify(slurm_exit("12", None), cancel_requested=False, final_checkpoint_step=60,
                       worker_event=WorkerEvent.FINISHED, failure=None, tail="")
    assert outcome.state is JobState.SUCCEEDED


def test_the_message_while_waiting_shows_slurms_reason():
    assert waiting_text("7", SlurmJobInfo("7", state="PENDING", reason="Resources")) == \
        "waiting in Slurm's queue: job 7 PENDING, reason Resources"
    assert waiting_text("7", SlurmJobInfo("7", state="PENDING", reason="None")) == \
        "waiting in Slurm's queue: job 7 PENDING"
    assert "RUNNING on vm; waiting for its ranks" in waiting_text("7", SlurmJobInfo("7", state="RUNNING", nodes="vm"))
    assert waiting_text("7", SlurmJobInfo("7", state="COMPLETED")) is None


def test_the_queue_reads_scontrol_once_per_interval_and_again_for_a_newer_job():
    calls = []

    def run(argv):
        calls.append(argv)
        return SCONTROL
    queue = SlurmQueue(poll_s=60, run=run)
    assert queue.info("7")[1].state == "PENDING"
    assert queue.info("8")[1].state == "FAILED" and len(calls) == 1
    import time
    queue.info("99", newer_than=time.monotonic())  # submitted after the last read: read again
    assert len(calls) == 2 and calls[0] == ["scontrol", "show", "job", "--oneliner"]


def test_serve_with_the_slurm_executor_and_no_slurm_says_what_is_missing_in_one_line(tmp_path):
    env = cli_env(PATH=str(Path(os.sys.executable).parent))  # no Slurm commands on this PATH
    done = run_cli("serve", "--executor", "slurm", "--data-dir", str(tmp_path / "d"), "--port", "0", env=env,
                   timeout=30)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "missing: sbatch, squeue, scontrol, scancel" in done.stderr, done.stderr


def test_slurm_options_need_the_slurm_executor(tmp_path):
    done = run_cli("serve", "--partition", "gpu", "--data-dir", str(tmp_path / "d"), "--port", "0", timeout=30)
    assert done.returncode == 2 and "go with --executor slurm" in done.stderr
    done = run_cli("serve", "--executor", "slurm", "--slots", "2", "--data-dir", str(tmp_path / "d"), timeout=30)
    assert done.returncode == 2 and "takes no --slots" in done.stderr


@pytest.mark.parametrize("said, raised", [
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
     ExecutorUnavailable),
    ("sbatch: error: Batch job submission failed: Socket timed out on send/recv operation", AnswerLost),
    ("sbatch: error: Batch job submission failed: Zero Bytes were transmitted or received", AnswerLost),
    ("sbatch: error: Batch job submission failed: Invalid partition name specified", OSError),
])
def test_sbatch_tells_a_request_never_sent_from_a_lost_answer_and_from_a_refusal(said, raised):
    outage = Outage()
    with pytest.raises(raised) as err:
        sbatch(["sh", "-c", f"echo '{said}' >&2; exit 1"], os.environ, outage)
    assert type(err.value) is raised  # AnswerLost and ExecutorUnavailable are OSErrors too
    assert outage.down == (raised is not OSError)
    assert sbatch(["sh", "-c", "echo '4242;gradmesh-test'"], os.environ, outage) == "4242" and not outage.down


def lost(jobs: list[str], settle_s: float = 0.0):
    """An Unconfirmed handle of gradmesh-j-a1 over a queue whose scontrol shows `jobs` (JobId=... lines), and
    the calls of its resubmit and confirm."""
    calls = {"sbatch": 0, "confirmed": []}

    def resubmit():
        calls["sbatch"] += 1
        jobs.append("JobId=77 JobName=gradmesh-j-a1 JobState=PENDING Reason=None")
        return "77"

    def confirm(slurm_id, how, submitted_at):
        calls["confirmed"].append(slurm_id)
        return SlurmJob(slurm_id, queue, submitted_at)
    queue = SlurmQueue(poll_s=0.0, run=lambda argv: "\n".join(jobs))
    return Unconfirmed("gradmesh-j-a1", queue, "Socket timed out", resubmit=resubmit, confirm=confirm,
                       settle_s=settle_s), calls


def test_a_lost_answer_whose_job_slurm_holds_adopts_it_and_never_submits_again():
    handle, calls = lost(["JobId=41 JobName=gradmesh-j-a2 JobState=RUNNING",
                          "JobId=42 JobName=gradmesh-j-a1 JobState=RUNNING NodeList=vm"], settle_s=60)
    assert handle.poll() is None and calls == {"sbatch": 0, "confirmed": ["42"]}
    assert handle.where() == "Slurm job 42" and "RUNNING on vm" in handle.waiting()


def test_a_lost_answer_without_a_job_submits_again_once_and_only_after_the_settling_time():
    handle, calls = lost([], settle_s=0.3)
    assert handle.poll() is None and calls["sbatch"] == 0
    assert "looking for Slurm job gradmesh-j-a1 before submitting it again" in handle.waiting()
    time.sleep(0.3)
    assert handle.poll() is None and handle.poll() is None
    assert calls == {"sbatch": 1, "confirmed": ["77"]} and "job 77 PENDING" in handle.waiting()


def test_a_stop_before_the_job_is_found_never_submits_it():
    handle, calls = lost([], settle_s=0.1)
    ended = handle.stop(grace_s=1)
    assert ended.code == -15 and "Slurm holds no job gradmesh-j-a1" in ended.detail and calls["sbatch"] == 0
