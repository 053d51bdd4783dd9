"""Only our own processes are ever signalled: a stored pid/pgid is a hint, not proof.

After a reboot or pid reuse, the process group recorded for an attempt may belong to an unrelated process.
Re-adoption, a stop and the hang watch must then leave it alone: a process is the attempt's only if it
carries the attempt's tag (and, when recorded, mpirun's start time and boot id), and killpg is never sent to
group 0, 1 or the coordinator's own group.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from coordinator.supervision import processes
from coordinator.supervision.launcher import WorkerProcess
from coordinator.supervision.processes import Identity
from coordinator.store.records import JobRow
from coordinator.states import JobState
from coordinator.store.store import Store
from coordinator.access.tokens import hash_token
from helpers import wait_for
from worker.spec import parse_spec_text

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent

SPEC = """
name = "stale-pgid"
workers = 1
[model]
layers = [64, 32, 10]
[train]
steps = 40
batch_size = 32
[fault]
max_restarts = 0
hang_timeout_s = 1.0
"""


@pytest.fixture
def bystander():
    """An unrelated `sleep` in a session of its own: its pid is its process group id."""
    proc = subprocess.Popen(["sleep", "120"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(timeout=10)


def test_an_adopted_group_whose_leader_is_not_ours_is_never_signalled(bystander):
    for identity in (None, Identity(1, processes.boot_id()), Identity(processes.identity(bystander.pid).start_ticks,
                                                                      "another-boot")):
        adopted = WorkerProcess.adopt(bystander.pid, bystander.pid, tag="tag-of-an-attempt-long-gone",
                                      identity=identity)
        assert not adopted.alive()
        adopted.stop(grace_s=0.2)
        assert bystander.poll() is None, f"the unrelated process was killed (recorded identity {identity})"


def test_group_zero_and_our_own_are_never_signalled():
    # A re-adopted attempt with a live tagged rank but no usable pgid (0, or the coordinator's own group) is
    # stopped through its tagged processes. Run in a session of its own, so a regression kills only this child.
    script = textwrap.dedent("""
        import os, subprocess
        from coordinator.supervision.launcher import WorkerProcess
        for pid, pgid in ((0, 0), (os.getpid(), os.getpgrp())):
            rank = subprocess.Popen(["sleep", "60"], env=dict(os.environ, GRADMESH_ATTEMPT_TAG="some-tag"),
                                    start_new_session=True)
            WorkerProcess.adopt(pid, pgid, tag="some-tag").stop(grace_s=5)
            assert rank.wait(timeout=10) != 0, "the tagged rank was not stopped"
        print("survived", flush=True)
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=20,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)), start_new_session=True)
    assert result.stdout.strip() == "survived", (result.returncode, result.stderr[-2000:])


@pytest.mark.parametrize("recorded", ["identity from another boot", "no identity (an older database)"])
def test_re_adoption_after_a_reboot_spares_the_process_now_holding_the_stored_pgid(recorded, bystander, tmp_path,
                                                                                   start_coordinator):
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o700)
    store = Store(data_dir / "gradmesh.db")
    store.create_job(JobRow(id="stale", name="stale-pgid", spec_json=parse_spec_text(SPEC).to_json(),
                            state=JobState.QUEUED, workers=1))
    store.begin_attempt("stale", hosts="localhost:1", log_dir=data_dir / "logs" / "stale",
                        run_dir=data_dir / "runs" / "stale", token_hash=hash_token("old-token"), message="test")
    if recorded.startswith("identity"):
        store.record_launch("stale", 1, bystander.pid, bystander.pid, start_ticks=12345, boot_id="a-boot-before")
    else:
        store.record_launch("stale", 1, bystander.pid, bystander.pid)
    store.close()

    srv = start_coordinator(data_dir)
    wait_for(lambda: srv.store.get_job("stale").state.is_terminal() or bystander.poll() is not None, timeout=20,
             what="the stale attempt to be settled")
    assert bystander.poll() is None, "the unrelated process holding the stored pgid was killed"
    job = srv.store.get_job("stale")
    assert job.state is JobState.FAILED and "coordinator restarted while the job ran" in job.message, job.message
    assert bystander.poll() is None, "the unrelated process holding the stored pgid was killed"
    assert not srv.core.supervisor.is_active("stale")
