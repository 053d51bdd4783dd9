"""The job state machine: every legal transition allowed, everything else refused; terminal states final."""
import itertools

import pytest

from coordinator.states import TERMINAL, IllegalTransition, JobState, check_transition, is_legal

S = JobState
LEGAL = {
    (S.QUEUED, S.RUNNING), (S.QUEUED, S.CANCELLED), (S.QUEUED, S.FAILED),
    (S.RUNNING, S.RESTARTING), (S.RUNNING, S.SUCCEEDED), (S.RUNNING, S.FAILED), (S.RUNNING, S.CANCELLED),
    (S.RESTARTING, S.RUNNING), (S.RESTARTING, S.FAILED), (S.RESTARTING, S.CANCELLED),
}


@pytest.mark.parametrize("old,new", list(itertools.product(S, S)))
def test_exactly_the_documented_transitions_are_legal(old, new):
    assert is_legal(old, new) == ((old, new) in LEGAL)
    if (old, new) in LEGAL:
        check_transition(old, new)
    else:
        with pytest.raises(IllegalTransition, match=f"{old.name} → {new.name}"):
            check_transition(old, new)


def test_terminal_states():
    assert {s for s in S if s.is_terminal()} == {S.SUCCEEDED, S.FAILED, S.CANCELLED} == set(TERMINAL)
    for s in TERMINAL:
        assert not any(is_legal(s, t) for t in S)


def test_restart_loop_is_a_legal_path():
    path = [S.QUEUED, S.RUNNING, S.RESTARTING, S.RUNNING, S.RESTARTING, S.RUNNING, S.SUCCEEDED]
    for a, b in zip(path, path[1:]):
        check_transition(a, b)
