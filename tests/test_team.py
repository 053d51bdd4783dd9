"""A coordinator shared by three users, for real: a server on 127.0.0.1:0, real clients, real jobs.

What is proved:
  - a member's cancel of another member's job is refused (PERMISSION_DENIED naming the owner, one line in the
    CLI) and the job keeps running; a viewer reads but cannot submit or cancel;
  - a removed user's token, a rotated-away token and an expired token get UNAUTHENTICATED;
  - the audit trail lists every action with its user, its address and whether it was allowed, and a member
    reads only their own rows;
  - users and tokens: only hashes are stored, the first administrator holds DATA_DIR/token, and a database from
    before users gives its jobs to that administrator.
"""
from __future__ import annotations

import json
import sqlite3
import time

import pytest

from coordinator.client import (
    AlreadyExists, Client, FailedPrecondition, InvalidArgument, JobState, NotFound, PermissionDenied, Unauthenticated,
)
from coordinator.access.tokens import hash_token
from helpers import run_cli, small_digits_spec, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def team(start_coordinator):
    """A server, its administrator's client, and clients of ana and bob (members) and vic (a viewer)."""
    srv = start_coordinator(slots=2)
    admin = Client(srv.address, token=srv.token)
    clients = {"admin": admin}
    tokens = {"admin": srv.token}
    for name, role in (("ana", "member"), ("bob", "member"), ("vic", "viewer")):
        user, token = admin.add_user(name, role=role)
        assert (user.name, user.role) == (name, role)
        tokens[name] = token
        clients[name] = Client(srv.address, token=token)
    yield srv, clients, tokens
    for client in clients.values():
        client.close()


def test_members_act_on_their_own_jobs_viewers_read_and_the_audit_says_who(team, tmp_path):
    srv, c, tokens = team
    ana, bob, vic, admin = c["ana"], c["bob"], c["vic"], c["admin"]
    job = ana.submit(small_digits_spec(steps=100_000, workers=1))
    assert job.owner == "ana"
    wait_for(lambda: ana.get(job.id).step >= 5, 60, what="ana's job to train")

    with pytest.raises(PermissionDenied) as refused:
        bob.cancel(job.id)
    assert "belongs to ana" in refused.value.message and refused.value.kind == "job"
    cli = run_cli("--address", srv.address, "--token", tokens["bob"], "cancel", job.id)
    assert cli.returncode == 1 and cli.stderr.strip().count("\n") == 0, cli.stderr
    assert cli.stderr.startswith("gradmesh: bob (member) may not cancel job") and "belongs to ana" in cli.stderr
    for refused_call in (lambda: bob.resume(job.id), lambda: bob.delete(job.id), lambda: vic.cancel(job.id),
                         lambda: vic.submit(small_digits_spec(steps=10)), lambda: bob.drain("localhost"),
                         lambda: bob.add_user("mallory", role="admin")):
        with pytest.raises(PermissionDenied):
            refused_call()
    # the job keeps running: its steps go on after every refusal
    step = ana.get(job.id).step
    wait_for(lambda: ana.get(job.id).step > step, 60, what="ana's job to keep training")
    assert ana.get(job.id).state is JobState.RUNNING
    # reading is everyone's: the viewer sees the job, its owner and its metrics
    assert vic.get(job.id).owner == "ana" and vic.metrics(job.id) is not None
    assert {j.id for j in vic.list(owner="ana")} == {job.id} and not list(vic.list(owner="bob"))

    # tokens: removed, rotated away, expired → UNAUTHENTICATED
    admin.remove_user("bob")
    with pytest.raises(Unauthenticated):
        bob.get(job.id)
    _, new_token = ana.rotate_token()
    with pytest.raises(Unauthenticated):
        ana.get(job.id)
    with Client(srv.address, token=new_token) as ana_again:
        assert ana_again.whoami().name == "ana"
        ana_again.cancel(job.id)
        assert ana_again.wait(job.id).state is JobState.CANCELLED
    _, short_token = admin.add_user("eve", role="member", token_expires_s=1.0)
    eve_expires = next(u for u in admin.users() if u.name == "eve").expires_unix
    wait_for(lambda: time.time() > eve_expires + 0.1, 10, what="eve's token to expire")
    with Client(srv.address, token=short_token) as eve, pytest.raises(Unauthenticated) as expired:
        eve.get(job.id)
    assert "expired" in expired.value.message and "tokens rotate eve" in expired.value.message

    rows = [(a.user, a.action, a.target, a.outcome) for a in admin.audit()]
    for row in [("admin", "users.add", "ana", "ok"), ("ana", "submit", job.id, "ok"),
                ("bob", "cancel", job.id, "denied"), ("bob", "resume", job.id, "denied"),
                ("bob", "delete", job.id, "denied"), ("vic", "cancel", job.id, "denied"),
                ("vic", "submit", "", "denied"), ("bob", "drain", "localhost", "denied"),
                ("bob", "users.add", "mallory", "denied"), ("admin", "users.remove", "bob", "ok"),
                ("ana", "tokens.rotate", "ana", "ok"), ("ana", "cancel", job.id, "ok"),
                ("admin", "users.add", "eve", "ok")]:
        assert row in rows, row
    assert rows.index(("ana", "submit", job.id, "ok")) < rows.index(("bob", "cancel", job.id, "denied")) < \
        rows.index(("ana", "cancel", job.id, "ok"))
    assert all(a.address.startswith("ipv4:127.0.0.1:") for a in admin.audit())
    # a member reads their own rows only, and may not ask for another's
    assert {a.user for a in c["vic"].audit()} == {"vic"}
    with pytest.raises(PermissionDenied):
        c["vic"].audit(user="admin")
    last = admin.audit()[-1]
    assert [(a.id, a.target) for a in admin.audit(since=last.time_unix)] == [(last.id, "eve")]
    cli = run_cli("--address", srv.address, "--token", srv.token, "audit", "--user", "ana", "--json")
    assert cli.returncode == 0 and '"action": "tokens.rotate"' in cli.stdout, cli.stderr


def test_only_hashes_are_stored_and_the_first_administrator_holds_the_token_file(team):
    srv, c, tokens = team
    stored = {r[0]: r[1] for r in sqlite3.connect(srv.data_dir / "gradmesh.db").execute(
        "SELECT name, token_hash FROM users")}
    assert stored == {name: hash_token(token) for name, token in tokens.items()}
    assert (srv.data_dir / "token").read_text().strip() == tokens["admin"]
    with pytest.raises(AlreadyExists):
        c["admin"].add_user("ana")
    with pytest.raises(InvalidArgument) as bad:
        c["admin"].add_user("Ana Smith")
    assert bad.value.field == "name"
    with pytest.raises(NotFound):
        c["admin"].remove_user("nobody")
    # rotating the first administrator's token rewrites DATA_DIR/token (0600), so a one-user setup keeps working
    _, new_token = c["admin"].rotate_token()
    assert (srv.data_dir / "token").read_text().strip() == new_token
    assert oct((srv.data_dir / "token").stat().st_mode & 0o777) == "0o600"
    with Client(srv.address, data_dir=srv.data_dir) as admin:
        assert admin.whoami().role == "admin"
        for keep_first in (lambda: admin.update_user("admin", role="viewer"), lambda: admin.remove_user("admin")):
            with pytest.raises(FailedPrecondition):   # demoting or removing the first administrator is refused...
                keep_first()
        assert admin.update_user("ana", role="viewer").role == "viewer"
        with pytest.raises(PermissionDenied):   # ...and ana, a viewer now, may not submit
            c["ana"].submit(small_digits_spec(steps=10))


def test_a_job_needing_more_than_its_owners_cap_is_refused_at_submission(team):
    srv, c, _ = team
    c["admin"].update_user("ana", max_slots=1)
    with pytest.raises(InvalidArgument) as refused:
        c["ana"].submit(small_digits_spec(steps=10, workers=2))
    assert refused.value.field == "workers" and "at most 1 slot" in refused.value.reason


def test_jobs_from_before_users_belong_to_the_first_administrator(start_coordinator, tmp_path):
    from coordinator.store.schema import SCHEMA
    data = tmp_path / "old"
    data.mkdir(mode=0o700)
    db = sqlite3.connect(data / "gradmesh.db")
    db.executescript(SCHEMA)   # the tables of a coordinator from before users: no owner column
    db.execute("INSERT INTO jobs (id, name, spec_json, state, workers, created) VALUES ('old-1', 'n', '{}', "
               "'SUCCEEDED', 1, 1.0)")
    db.commit()
    db.close()
    srv = start_coordinator(data_dir=data)
    with Client(srv.address, token=srv.token) as admin:
        assert admin.get("old-1").owner == "admin"


def test_the_cli_adds_users_prints_the_token_alone_and_lists_them(team):
    srv, _, _ = team
    admin = ("--address", srv.address, "--token", srv.token)
    added = run_cli(*admin, "users", "add", "zed", "--role", "viewer", "--token-expires", "30d")
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    assert len(token) == 64 and "\n" not in token and "the token of zed (viewer, expires" in added.stderr
    me = run_cli("--address", srv.address, "--token", token, "whoami")
    assert me.stdout.strip() == "zed (viewer)", me.stderr
    listed = run_cli(*admin, "users", "list").stdout.splitlines()
    assert listed[0].split()[:3] == ["NAME", "ROLE", "MAX"] and any(line.split()[:2] == ["zed", "viewer"]
                                                                   for line in listed)
    refused = run_cli("--address", srv.address, "--token", token, "users", "remove", "ana")
    assert refused.returncode == 1 and refused.stderr.startswith("gradmesh: zed (viewer) may not manage users")
    changed = run_cli(*admin, "users", "set", "zed", "--max-slots", "3", "--json")
    assert json.loads(changed.stdout)["max_slots"] == 3, changed.stderr
    nothing = run_cli(*admin, "users", "set", "zed")
    assert nothing.returncode == 2 and "say what to change" in nothing.stderr


def test_team_settings_refuse_nonsense():
    from coordinator.cli.users import parse_since
    from coordinator.team.policy import TeamPolicy, parse_shares
    assert parse_shares(["ana=2", " bob = 0.5"]) == {"ana": 2.0, "bob": 0.5}
    for bad in (["ana"], ["ana=0"], ["=2"], ["ana=nan"], ["ana=x"]):
        with pytest.raises(ValueError, match="NAME=WEIGHT"):
            parse_shares(bad)
    with pytest.raises(ValueError):
        TeamPolicy(reserve_after_s=-1)
    assert parse_since("2h", now=10_000.0) == 10_000.0 - 7200
    assert parse_since("2026-12-01") > parse_since("2026-11-30")
    with pytest.raises(Exception, match="neither a duration"):
        parse_since("yesterday")
