"""The committed generated code in coordinator/rpc/ must equal what proto/generate.py produces now."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(60)
def test_generated_code_matches_proto():
    done = subprocess.run([sys.executable, "proto/generate.py", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=50)
    assert done.returncode == 0, done.stdout + done.stderr


def test_proto_states_match_the_state_machine():
    from coordinator.rpc import gradmesh_pb2 as pb
    from coordinator.states import JobState
    for state in JobState:
        assert pb.JobState.Value(state.name) == int(state)


def test_proto_worker_enums_match_the_cores():
    from coordinator.reports import FailureCause, WorkerEvent
    from coordinator.rpc import gradmesh_pb2 as pb
    assert {f"WORKER_EVENT_{e.name}": int(e) for e in WorkerEvent} == dict(pb.WorkerEvent.items())
    assert {f"FAILURE_CAUSE_{c.name}": int(c) for c in FailureCause} == dict(pb.FailureCause.items())
