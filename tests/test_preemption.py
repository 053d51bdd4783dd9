"""Preemption (`gradmesh serve --preempt`), for real: a low-priority job holding every slot is stopped at a step
boundary with a checkpoint when a high-priority job arrives, requeues, and after the high one has run continues
from that checkpoint to final parameters bit-identical to an uninterrupted run's. It has max_restarts = 0, so a
preemption that counted as a restart would fail it; its restarts stay 0.
"""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from coordinator.client import Client, JobState
from coordinator.team.policy import TeamPolicy
from helpers import digits_toml, wait_for

pytestmark = pytest.mark.timeout(300)
ROOT = Path(__file__).resolve().parent.parent
# The low job must still train when the high one arrives (after its step 200) and the scheduler stops it (a round
# and a progress report later: well under a second, hundreds of steps, on a quiet machine); it trains twice, here
# and as the reference, so no longer than that margin needs
STEPS = 4_000


def low_spec() -> str:
    text = digits_toml("low", steps=STEPS, workers=2, lr=0.01, eval_every=500, every_steps=1000, max_restarts=0)
    return text.replace('name = "low"', 'name = "low"\npriority = 0')


def arrays(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k != "meta"}


def test_a_preempted_job_requeues_and_ends_bit_identical(start_coordinator, tmp_path):
    # the reference: the same spec, uninterrupted, on 2 ranks without a coordinator
    (tmp_path / "low.toml").write_text(low_spec())
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("GRADMESH_FAULT", None)
    done = subprocess.run([str(Path(sys.executable).parent / "mpirun"), "-n", "2", sys.executable, "-m", "worker",
                           "--spec", str(tmp_path / "low.toml"), "--out", str(tmp_path / "clean")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout + done.stderr
    with np.load(tmp_path / "clean" / "final.npz") as npz:
        clean = {k: npz[k] for k in npz.files if k != "meta"}

    srv = start_coordinator(slots=2, team=TeamPolicy(preempt=True))
    with Client(srv.address, token=srv.token) as client:
        low = client.submit(low_spec()).id
        wait_for(lambda: client.get(low).step >= 200, 120, what="the low-priority job to train a while")
        high = client.submit(digits_toml("high", steps=40, workers=1).replace('name = "high"',
                                                                               'name = "high"\npriority = 5')).id
        assert client.wait(high).state is JobState.SUCCEEDED
        final = client.wait(low)
        assert final.state is JobState.SUCCEEDED, final.message
        assert final.restarts == 0 and final.attempts == 2
        first, second = final.attempt_history
        assert first.outcome == "preempted" and f"preempted by job {high}" in first.message, first
        assert [h.state for h in final.history] == [
            JobState.QUEUED, JobState.RUNNING, JobState.RESTARTING, JobState.RUNNING, JobState.SUCCEEDED]
        high_job = client.get(high)
        # the high-priority job ran in the slots the low one gave up, and the low one came back after it
        assert first.ended_unix <= high_job.started_unix and second.started_unix >= high_job.started_unix
        stopped_at = int(first.message.rsplit("at step ", 1)[1])
        assert 200 <= stopped_at < STEPS, first.message
        client.download(low, tmp_path / "low-final.npz")   # the latest checkpoint: the final one
    got = arrays((tmp_path / "low-final.npz").read_bytes())
    assert sorted(got) == sorted(clean)
    for key in clean:
        assert got[key].dtype == clean[key].dtype and np.array_equal(got[key], clean[key]), key

