"""Sweeps and forks on a coordinator shared by several users, for real: a server on 127.0.0.1:0, real clients,
real trials.

What is proved:
  - a sweep belongs to the member who submitted it, and so do its trials' jobs (the driver submits them as that
    user, so fair share and --max-slots see them as theirs);
  - another member may read the sweep but not cancel it (PERMISSION_DENIED, kind "sweep", naming the owner); a
    viewer reads but may not submit one; the owner cancels it, and its running trials with it;
  - a sweep whose trials would exceed the owner's --max-slots is refused at submission;
  - with --private-jobs a member lists and reads only their own sweeps;
  - a fork is guarded like a resume (only the parent's owner or an administrator) and belongs to the forker;
  - an ended sweep is deleted by its owner with every trial job (not while it runs: FAILED_PRECONDITION; not by
    another member: PERMISSION_DENIED);
  - the audit trail has sweep.submit, sweep.cancel, sweep.delete (ok and denied) and fork.
"""
from __future__ import annotations

import pytest

from coordinator.client import Client, FailedPrecondition, InvalidArgument, JobState, NotFound, PermissionDenied
from coordinator.team.policy import TeamPolicy
from helpers import digits_toml, wait_for

pytestmark = pytest.mark.timeout(300)

GRID = '[sweep]\nmethod = "grid"\nmax_concurrent = 1\n[sweep.parameters]\n"optim.lr" = { values = [0.01, 0.003] }\n'


def _team(start_coordinator, **kwargs):
    srv = start_coordinator(slots=2, **kwargs)
    admin = Client(srv.address, token=srv.token)
    clients = {"admin": admin}
    for name, role, slots in (("ana", "member", 0), ("bob", "member", 1), ("vic", "viewer", 0)):
        _, token = admin.add_user(name, role=role, max_slots=slots)
        clients[name] = Client(srv.address, token=token)
    return srv, clients


@pytest.fixture
def team(start_coordinator):
    srv, clients = _team(start_coordinator)
    yield srv, clients
    for client in clients.values():
        client.close()


def test_a_sweep_and_its_trials_are_its_submitters_and_roles_apply(team):
    srv, c = team
    ana, bob, vic, admin = c["ana"], c["bob"], c["vic"], c["admin"]
    text = digits_toml("owned", steps=100_000, workers=1, every_steps=0) + GRID
    sweep = ana.submit_sweep(text, sweep_id="anas")
    assert sweep.owner == "ana"
    wait_for(lambda: (s := ana.sweep("anas")).trials and s.trials[0].job_id and s.trials[0].step > 0, 120,
             what="the first trial to train")
    first = ana.sweep("anas").trials[0]
    assert ana.get(first.job_id).owner == "ana"          # submitted as the sweep's owner, not the coordinator

    # others read it; a member who does not own it may not cancel it; a viewer may not submit one
    assert bob.sweep("anas").owner == "ana" and vic.sweep("anas").owner == "ana"
    assert [s.id for s in vic.sweeps(owner="ana")] == ["anas"] and not list(vic.sweeps(owner="bob"))
    with pytest.raises(PermissionDenied) as refused:
        bob.cancel_sweep("anas")
    assert refused.value.kind == "sweep" and "belongs to ana" in refused.value.message
    with pytest.raises(PermissionDenied):
        vic.submit_sweep(text, sweep_id="vics")
    with pytest.raises(PermissionDenied):   # a fork is guarded like a resume: the parent's owner or an administrator
        bob.fork(first.job_id, 0)
    assert bob.sweep("anas").state is JobState.RUNNING

    # bob's cap is 1 slot: a sweep of 2-worker trials could never start, so it is refused whole
    with pytest.raises(InvalidArgument) as capped:
        bob.submit_sweep(digits_toml("wide", steps=20, workers=2) + GRID)
    assert "at most 1 slot" in capped.value.message

    with pytest.raises(FailedPrecondition) as running:   # a running sweep's trials would be cut from under it
        ana.delete_sweep("anas")
    assert "RUNNING" in running.value.message and "cancel it first" in running.value.message

    cancelled = ana.cancel_sweep("anas")
    assert cancelled.state is JobState.CANCELLED
    wait_for(lambda: ana.get(first.job_id).is_terminal(), 60, what="the running trial to be cancelled")
    assert ana.get(first.job_id).state is JobState.CANCELLED

    # once ended it is deleted by its owner, not by another member, with every trial job and their files
    trial_ids = [t.job_id for t in ana.sweep("anas").trials if t.job_id]
    wait_for(lambda: all(ana.get(j).is_terminal() for j in trial_ids), 60, what="every trial to end")
    with pytest.raises(PermissionDenied) as refused:
        bob.delete_sweep("anas")
    assert refused.value.kind == "sweep" and "belongs to ana" in refused.value.message
    on_disk = [srv.data_dir / kind / j for kind in ("checkpoints", "logs", "runs") for j in trial_ids]
    assert any(p.exists() for p in on_disk)
    gone = ana.delete_sweep("anas")
    assert (gone.sweep_id, gone.trials) == ("anas", len(trial_ids)) and gone.files > 0
    with pytest.raises(NotFound):
        ana.sweep("anas")
    for job_id in trial_ids:
        with pytest.raises(NotFound):
            ana.get(job_id)
    assert not any(p.exists() for p in on_disk)
    assert "anas" not in [s.id for s in admin.sweeps()]

    rows = [(a.user, a.action, a.target, a.outcome) for a in admin.audit()]
    for row in [("ana", "sweep.submit", "anas", "ok"), ("ana", "submit", first.job_id, "ok"),
                ("bob", "sweep.cancel", "anas", "denied"), ("vic", "sweep.submit", "vics", "denied"),
                ("bob", "resume", first.job_id, "denied"), ("ana", "sweep.cancel", "anas", "ok"),
                ("bob", "sweep.delete", "anas", "denied"), ("ana", "sweep.delete", "anas", "ok")]:
        assert row in rows, row
    trial_submit = next(a for a in admin.audit() if a.action == "submit" and a.target == first.job_id)
    assert trial_submit.address == "sweep anas"


def test_a_fork_belongs_to_the_forker(team):
    srv, c = team
    ana, admin = c["ana"], c["admin"]
    parent = ana.submit(digits_toml("parent", steps=20, workers=1, every_steps=10), job_id="anas-parent")
    assert ana.wait(parent.id).state is JobState.SUCCEEDED
    mine = ana.fork(parent.id, 10, {"optim.lr": 0.001})
    theirs = admin.fork(parent.id, 10, {}, new_job_id="admins-fork")
    assert (mine.owner, theirs.owner) == ("ana", "admin")
    assert ("ana", "fork", parent.id, "ok") in [(a.user, a.action, a.target, a.outcome) for a in admin.audit()]
    assert ana.get(mine.id).labels["forked_from"] == parent.id


def test_private_jobs_keep_sweeps_private_too(start_coordinator):
    srv, c = _team(start_coordinator, team=TeamPolicy(private_jobs=True))
    try:
        text = digits_toml("private", steps=100_000, workers=1, every_steps=0) + GRID
        c["ana"].submit_sweep(text, sweep_id="anas-private")
        with pytest.raises(PermissionDenied) as refused:
            c["bob"].sweep("anas-private")
        assert refused.value.kind == "sweep"
        assert not list(c["bob"].sweeps()) and not list(c["bob"].sweeps(owner="ana"))
        assert [s.id for s in c["ana"].sweeps()] == ["anas-private"]
        assert [s.id for s in c["admin"].sweeps()] == ["anas-private"]
        c["ana"].cancel_sweep("anas-private")
    finally:
        for client in c.values():
            client.close()
