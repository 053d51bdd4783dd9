"""`gradmesh users`, `tokens`, `audit` and `whoami`: the people who share a coordinator, and what they did.

    gradmesh users add ana --role member --max-slots 4 --token-expires 90d   # prints ana's token, once
    gradmesh users list                                   # NAME ROLE MAX SLOTS IN USE SHARE EXPIRES CREATED
    gradmesh users set ana --role viewer | --max-slots 0  # 0 = no cap
    gradmesh users remove ana                             # her token stops working; her jobs stay
    gradmesh tokens rotate [NAME] [--token-expires 30d]   # a new token (default: your own); the old one stops
    gradmesh audit [--user ana] [--since 24h|2026-12-01] [--json]
    gradmesh whoami

A new token goes to stdout alone (TOKEN=$(gradmesh users add ana)), what it belongs to to stderr. Managing
users takes an administrator's token; anyone may rotate their own and read their own audit rows.
"""
from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime
from typing import Callable, Sequence

from coordinator.cli.commands import EXIT_OK, EXIT_USAGE, CliError, make_client
from coordinator.cli.render import fmt_time, print_json, table
from coordinator.client import AuditEntry, UserInfo
from coordinator.files.expiry import parse_duration

ROLES = ("admin", "member", "viewer")


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def parse_since(text: str, now: float | None = None) -> float:
    """Unix time from a duration back from now ("24h", "30d") or a date/time ("2026-12-01", "2026-12-01T09:30")."""
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.strip()).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a duration back from now (24h, 30d) nor a date "
                                         "(2026-12-01 or 2026-12-01T09:30)") from None


def user_table(users: Sequence[UserInfo]) -> str:
    rows = [("NAME", "ROLE", "MAX SLOTS", "IN USE", "SHARE", "TOKEN EXPIRES", "CREATED")]
    rows += [(u.name, u.role, str(u.max_slots or "-"), str(u.slots_in_use), f"{u.share:g}",
              fmt_time(u.expires_unix) if u.expires_unix else "never", fmt_time(u.created_unix)) for u in users]
    return table(rows)


def audit_table(entries: Sequence[AuditEntry]) -> str:
    rows = [("TIME", "USER", "ACTION", "TARGET", "OUTCOME", "ADDRESS", "DETAIL")]
    rows += [(fmt_time(a.time_unix), a.user, a.action, a.target or "-", a.outcome, a.address or "-", a.detail)
             for a in entries]
    return table(rows)


def _print_token(args, user: UserInfo, token: str, what: str) -> None:
    if args.json:
        print_json({"user": user.to_dict(), "token": token})
        return
    expires = f", expires {fmt_time(user.expires_unix)}" if user.expires_unix else ""
    print(f"{what} token of {user.name} ({user.role}{expires}); shown once, only its hash is kept:", file=sys.stderr)
    print(token)


def cmd_users(args) -> int:
    action = args.users_action
    with make_client(args) as client:
        if action == "add":
            user, token = client.add_user(args.name, role=args.role, max_slots=args.max_slots or 0,
                                          token_expires_s=args.token_expires or 0.0)
            _print_token(args, user, token, "the")
            return EXIT_OK
        if action == "list":
            users = client.users()
        elif action == "remove":
            users = [client.remove_user(args.name)]
        else:
            if args.role is None and args.max_slots is None:
                raise CliError("users set: say what to change (--role, --max-slots)", EXIT_USAGE)
            users = [client.update_user(args.name, role=args.role, max_slots=args.max_slots)]
    if args.json:
        print_json([u.to_dict() for u in users] if action == "list" else users[0].to_dict())
    elif action == "remove":
        print(f"{users[0].name}: removed (their token no longer works; their jobs and audit rows stay)")
    else:
        print(user_table(users))
    return EXIT_OK


def cmd_tokens(args) -> int:
    with make_client(args) as client:
        user, token = client.rotate_token(args.name or "", token_expires_s=args.token_expires or 0.0)
    _print_token(args, user, token, "the new")
    return EXIT_OK


def cmd_audit(args) -> int:
    with make_client(args) as client:
        entries = client.audit(user=args.user or "", since=args.since or 0.0)
    if args.json:
        print_json([a.to_dict() for a in entries])
    else:
        print(audit_table(entries) if entries else "no audit rows")
    return EXIT_OK


def cmd_whoami(args) -> int:
    with make_client(args) as client:
        user = client.whoami()
    if args.json:
        print_json(user.to_dict())
    else:
        print(f"{user.name} ({user.role})")
    return EXIT_OK


def register(sub, add_globals: Callable[[argparse.ArgumentParser, bool], None]) -> None:
    """Add `users`, `tokens`, `audit` and `whoami` to the `gradmesh` parser's subcommands."""
    def parser(where, name: str, func, help_text: str) -> argparse.ArgumentParser:
        p = where.add_parser(name, help=help_text, description=help_text)
        add_globals(p, True)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
        return p

    users = parser(sub, "users", cmd_users, "the coordinator's users: add, list, set, remove (administrators)")
    actions = users.add_subparsers(dest="users_action", metavar="ACTION", required=True)
    p = parser(actions, "add", cmd_users, "add a user; prints their token, once")
    p.add_argument("name", metavar="NAME", help="1-32 of a-z 0-9 _ -, starting with a letter")
    p.add_argument("--role", choices=ROLES, default="member", help="admin, member (default) or viewer")
    p.add_argument("--max-slots", type=int, default=0, metavar="N",
                   help="worker slots the user's jobs may hold at once (default 0 = no cap)")
    p.add_argument("--token-expires", type=_duration, metavar="DURATION",
                   help="the token stops working after this long, e.g. 90d (default: never)")
    parser(actions, "list", cmd_users, "list the users (others than administrators see themselves)")
    p = parser(actions, "set", cmd_users, "change a user's role or slot cap")
    p.add_argument("name", metavar="NAME")
    p.add_argument("--role", choices=ROLES)
    p.add_argument("--max-slots", type=int, metavar="N", help="0 = no cap")
    p = parser(actions, "remove", cmd_users, "remove a user: their token stops working; their jobs stay")
    p.add_argument("name", metavar="NAME")

    tokens = parser(sub, "tokens", cmd_tokens, "rotate a token: yours, or (administrators) another user's")
    actions = tokens.add_subparsers(dest="tokens_action", metavar="ACTION", required=True)
    p = parser(actions, "rotate", cmd_tokens, "a new token (printed once); the old one stops working at once")
    p.add_argument("name", nargs="?", metavar="NAME", help="whose (default: your own)")
    p.add_argument("--token-expires", type=_duration, metavar="DURATION", help="e.g. 30d (default: never)")

    p = parser(sub, "audit", cmd_audit, "who did what, when, from where (administrators: everyone; others: "
                                        "their own)")
    p.add_argument("--user", metavar="NAME", help="only this user's rows")
    p.add_argument("--since", type=parse_since, metavar="WHEN", help="a duration back (24h, 7d) or a date (2026-12-01)")

    parser(sub, "whoami", cmd_whoami, "the user your token belongs to")
