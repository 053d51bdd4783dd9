"""Who may do what: roles, the operations they guard, and the one decision `may(user, action, job)`.

    user = Caller("ana", Role.MEMBER, address="ipv4:10.0.0.7:51000")
    may(user, Action.CANCEL, job)            # True only when job.owner == "ana"
    check(user, Action.CANCEL, job)          # the same, raising PermissionDenied that names the owner

A pure function of the caller's role and name, the job's owner and the coordinator's `private_jobs` setting:
no store, no gRPC, so the gRPC servicer, the CLI (through it) and the dashboard all ask the same question and
tests/test_roles.py checks every role against every operation.

    role     read jobs          submit   cancel / resume / delete   drain hosts   users, others' tokens   whole audit
    admin    all                yes      any job                    yes           yes                     yes
    member   all (own*)         yes      own jobs                   no            no                      no (own rows)
    viewer   all (own*)         no       no                         no            no                      no (own rows)
    (* with `gradmesh serve --private-jobs`: only their own jobs; administrators still read all)

Resuming is a fork: it makes a new job from this one's checkpoint, so it is guarded like a cancel (and so is
ForkJob, and a sweep whose trials fork a job). A sweep is owned like a job (`check(..., noun="sweep")`): its
owner submitted it, and its trials are that owner's jobs. Everyone may rotate their own token and read their
own audit rows.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from coordinator.errors import PermissionDenied
from coordinator.wire import KIND_JOB

BOOTSTRAP_ADMIN = "admin"   # the first administrator: the holder of DATA_DIR/token; owner of jobs older than users


class Role(str, enum.Enum):
    ADMIN = "admin"
    MEMBER = "member"
    VIEWER = "viewer"

    @classmethod
    def parse(cls, text: str) -> "Role":
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"{text!r} is not a role (admin, member or viewer)") from None


class Action(str, enum.Enum):
    READ = "read"            # get, list, watch, logs, metrics, checkpoints, download
    SUBMIT = "submit"        # submit a job, register a run
    CANCEL = "cancel"
    RESUME = "resume"        # a new job from this one's checkpoint (a fork)
    DELETE = "delete"
    DRAIN = "drain"          # drain or undrain a host
    USERS = "users"          # add, remove, change users; rotate another user's token
    AUDIT = "audit"          # read everyone's audit rows


JOB_ACTIONS = (Action.READ, Action.CANCEL, Action.RESUME, Action.DELETE)   # about one job, with an owner
OWNER_ACTIONS = (Action.CANCEL, Action.RESUME, Action.DELETE)              # a member's on their own jobs only
KIND_FOR = {Action.DRAIN: "host", Action.USERS: "user", Action.AUDIT: "audit", Action.SUBMIT: KIND_JOB}


class Owned(Protocol):
    """A job as `may` needs it (coordinator.store.records.JobRow is one)."""
    id: str
    owner: str


@dataclass(frozen=True)
class Caller:
    """Who makes a call: a user's name and role, and where the call came from (for the audit trail)."""
    name: str
    role: Role
    address: str = ""

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN


SYSTEM = Caller(BOOTSTRAP_ADMIN, Role.ADMIN, "coordinator")   # the coordinator's own operations (retention, ...)


def may(user: Caller, action: Action, job: Owned | None = None, *, private_jobs: bool = False) -> bool:
    """Whether `user` may take `action` (on `job`, for the job actions)."""
    if user.role is Role.ADMIN:
        return True
    owns = job is not None and job.owner == user.name
    if action is Action.READ:
        return job is None or owns or not private_jobs
    if user.role is Role.VIEWER:
        return False
    if action is Action.SUBMIT:
        return True
    if action in OWNER_ACTIONS:
        return owns
    return False   # drain, users, the whole audit: administrators only


def check(user: Caller, action: Action, job: Owned | None = None, *, private_jobs: bool = False,
          noun: str = KIND_JOB) -> None:
    """Return when `may` says yes; raise PermissionDenied (its message names the owner) when it says no.
    `noun`: what `job` is ("job", or "sweep": the message and the gradmesh-kind trailer say so)."""
    if may(user, action, job, private_jobs=private_jobs):
        return
    who = f"{user.name} ({user.role.value})"
    if job is not None and action in JOB_ACTIONS:
        verb = "read" if action is Action.READ else action.value
        tail = "" if user.role is Role.VIEWER and action is not Action.READ else "; only its owner or an administrator may"
        raise PermissionDenied(f"{who} may not {verb} {noun} {job.id}: it belongs to {job.owner}{tail}", kind=noun)
    what = {Action.SUBMIT: "submit jobs (viewers only read)", Action.DRAIN: "drain or undrain hosts",
            Action.USERS: "manage users or other users' tokens", Action.AUDIT: "read other users' audit rows"}
    raise PermissionDenied(f"{who} may not {what.get(action, action.value)}; ask an administrator",
                           kind=KIND_FOR.get(action, ""))
