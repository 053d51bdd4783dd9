"""The JobService's RPCs for a team: who am I, users, tokens and the audit trail, over coordinator.team.accounts.

    servicer = TeamServicer(core.jobs, core.streams, core.hosts, core.accounts,
                            slots_by_user=core.scheduler.slots_by_user, share=core.team.share, sweeps=core.sweeps)

The same thin adapters as coordinator.api.servicer (whose `rpc` maps the core's typed errors to status codes):
each unpacks, calls the core for the caller of the call, and packs the answer. A token travels back only in
AddUser's and RotateToken's answer, once.
"""
from __future__ import annotations

from typing import Callable

from coordinator.access.roles import Role
from coordinator.api.servicer import JobServicer, rpc
from coordinator.errors import InvalidArgument
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.store.records import AuditRow, UserRow

ROLE_TO_PB = {Role.ADMIN: pb.ROLE_ADMIN, Role.MEMBER: pb.ROLE_MEMBER, Role.VIEWER: pb.ROLE_VIEWER}
ROLE_FROM_PB = {v: k for k, v in ROLE_TO_PB.items()}


def role_from_pb(value: int, default: Role | None) -> Role | None:
    if value == pb.ROLE_UNSPECIFIED:
        return default
    if value not in ROLE_FROM_PB:
        raise InvalidArgument("role", f"{value} is not a role (ROLE_ADMIN, ROLE_MEMBER or ROLE_VIEWER)")
    return ROLE_FROM_PB[value]


def audit_to_pb(a: AuditRow) -> pb.AuditEntry:
    return pb.AuditEntry(id=a.id, time_unix=a.time, user=a.user, action=a.action, target=a.target, address=a.address,
                         outcome=a.outcome, detail=a.detail)


class TeamServicer(JobServicer):
    def __init__(self, jobs, streams, hosts=None, accounts=None, *,
                 slots_by_user: Callable[[], dict[str, int]] = dict, share: Callable[[str], float] = lambda u: 1.0,
                 sweeps=None):
        super().__init__(jobs, streams, hosts, accounts, sweeps)
        self.slots_by_user = slots_by_user
        self.share = share

    def _user(self, u: UserRow, used: dict[str, int] | None = None) -> pb.User:
        used = self.slots_by_user() if used is None else used
        return pb.User(name=u.name, role=ROLE_TO_PB[Role(u.role)], max_slots=u.max_slots, created_unix=u.created,
                       token_created_unix=u.token_created, expires_unix=u.expires, slots_in_use=used.get(u.name, 0),
                       share=self.share(u.name))

    @rpc
    def WhoAmI(self, request, context):
        caller = self.caller(context)
        row = self.accounts.store.user(caller.name)
        return self._user(row) if row is not None else pb.User(name=caller.name, role=ROLE_TO_PB[caller.role])

    @rpc
    def AddUser(self, request, context):
        row, token = self.accounts.add(self.caller(context), request.name, role_from_pb(request.role, Role.MEMBER),
                                       max_slots=request.max_slots, expires_in_s=request.token_expires_s)
        return pb.UserToken(user=self._user(row), token=token)

    @rpc
    def ListUsers(self, request, context):
        used = self.slots_by_user()
        return pb.ListUsersResponse(users=[self._user(u, used) for u in self.accounts.list(self.caller(context))])

    @rpc
    def UpdateUser(self, request, context):
        max_slots = request.max_slots if request.HasField("max_slots") else None
        return self._user(self.accounts.update(self.caller(context), request.name,
                                               role=role_from_pb(request.role, None), max_slots=max_slots))

    @rpc
    def RemoveUser(self, request, context):
        return self._user(self.accounts.remove(self.caller(context), request.name))

    @rpc
    def RotateToken(self, request, context):
        row, token = self.accounts.rotate(self.caller(context), request.name, expires_in_s=request.token_expires_s)
        return pb.UserToken(user=self._user(row), token=token)

    @rpc
    def ListAudit(self, request, context):
        rows, token = self.accounts.audit_rows(self.caller(context), user=request.user, since=request.since_unix,
                                               page_size=request.page_size, page_token=request.page_token)
        return pb.ListAuditResponse(entries=[audit_to_pb(a) for a in rows], next_page_token=token)
