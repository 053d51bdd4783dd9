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
