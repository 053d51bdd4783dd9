"""`may(user, action, job)` over every role × operation × whose job × private jobs, against a table written out
by hand (coordinator/access/roles.py's docstring), and the refusal's message and kind."""
from __future__ import annotations

import itertools

import pytest

from coordinator.access.roles import Action, Caller, Role, check, may
from coordinator.errors import PermissionDenied
from coordinator.store.records import JobRow
from coordinator.states import JobState

ANA = {Role.ADMIN: Caller("ana", Role.ADMIN), Role.MEMBER: Caller("ana", Role.MEMBER),
       Role.VIEWER: Caller("ana", Role.VIEWER)}
OWN = JobRow(id="own-1", name="n", spec_json="{}", state=JobState.RUNNING, workers=1, owner="ana")
OTHERS = JobRow(id="bobs-1", name="n", spec_json="{}", state=JobState.RUNNING, workers=1, owner="bob")

# (role, action, whose) -> allowed, with jobs readable by all; `whose` is "own", "other" or None (no job)
Y, N = True, False
TABLE = {
    Role.ADMIN: {Action.READ: (Y, Y), Action.CANCEL: (Y, Y), Action.RESUME: (Y, Y), Action.DELETE: (Y, Y),
                 Action.SUBMIT: Y, Action.DRAIN: Y, Action.USERS: Y, Action.AUDIT: Y},
    Role.MEMBER: {Action.READ: (Y, Y), Action.CANCEL: (Y, N), Action.RESUME: (Y, N), Action.DELETE: (Y, N),
                  Action.SUBMIT: Y, Action.DRAIN: N, Action.USERS: N, Action.AUDIT: N},
    Role.VIEWER: {Action.READ: (Y, Y), Action.CANCEL: (N, N), Action.RESUME: (N, N), Action.DELETE: (N, N),
                  Action.SUBMIT: N, Action.DRAIN: N, Action.USERS: N, Action.AUDIT: N},
}
JOB_ACTIONS = (Action.READ, Action.CANCEL, Action.RESUME, Action.DELETE)


@pytest.mark.parametrize("role, action, private", list(itertools.product(Role, Action, (False, True))))
def test_every_role_and_operation(role, action, private):
    user = ANA[role]
    expected = TABLE[role][action]
    if action in JOB_ACTIONS:
        own, other = expected
        if private and action is Action.READ and role is not Role.ADMIN:
            other = False   # --private-jobs: only owners and administrators read a job
        assert may(user, action, OWN, private_jobs=private) is own
        assert may(user, action, OTHERS, private_jobs=private) is other
        if not other:
            with pytest.raises(PermissionDenied) as refused:
                check(user, action, OTHERS, private_jobs=private)
            assert "belongs to bob" in refused.value.message and refused.value.kind == "job"
            assert refused.value.code == "PERMISSION_DENIED"
        else:
            check(user, action, OTHERS, private_jobs=private)
    else:
        assert may(user, action, None, private_jobs=private) is expected
        if not expected:
            with pytest.raises(PermissionDenied) as refused:
                check(user, action, private_jobs=private)
            assert f"ana ({role.value}) may not" in refused.value.message
            assert refused.value.kind == {Action.SUBMIT: "job", Action.DRAIN: "host", Action.USERS: "user",
                                          Action.AUDIT: "audit"}[action]


def test_the_table_covers_every_role_and_action():
    assert set(TABLE) == set(Role) and all(set(row) == set(Action) for row in TABLE.values())


def test_roles_parse_from_their_names():
    assert Role.parse(" Member ") is Role.MEMBER
    with pytest.raises(ValueError, match="not a role"):
        Role.parse("root")
