"""Users, their tokens and the audit trail, free of gRPC: what `gradmesh users`, `tokens` and `audit` do.

    accounts = Accounts(store, token_file=DATA_DIR / "token")
    accounts.bootstrap(client_token)               # the first administrator, "admin", holds DATA_DIR/token
    user, token = accounts.add(caller, "ana", Role.MEMBER, max_slots=2, expires_in_s=90 * 86400)
    accounts.caller(token, address="ipv4:10.0.0.7:5100")   # Caller("ana", MEMBER, ...); Unauthenticated if not
    accounts.record(caller, "cancel", "digits-1")  # one audit row
    rows, next_token = accounts.audit_rows(caller, user="ana", since=0, page_size=100, page_token="")

A token is printed once, when made (`add`, `rotate`); only its sha256 is stored, so a lost token is replaced,
never recovered. The first administrator's token is DATA_DIR/token (or `gradmesh serve --token`): a single-user
setup changes nothing, and rotating that user's token rewrites the file. Who a token belongs to is looked up
once and then kept in memory until any user changes (`caller` runs for every client call).
"""
from __future__ import annotations

import os
import secrets
import threading
import time
from pathlib import Path

from coordinator.access import validate
from coordinator.access.roles import BOOTSTRAP_ADMIN, SYSTEM, Action, Caller, Role, check
from coordinator.access.tokens import hash_token
from coordinator.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unauthenticated
from coordinator.store.records import AuditRow, UserRow
from coordinator.store.store import Store
from coordinator.store.users import AUDIT_PAGE_MAX

KIND_USER = "user"
MAX_SLOTS_LIMIT = 1 << 20
MAX_EXPIRY_S = 100 * 365 * 86400.0


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


class Accounts:
    def __init__(self, store: Store, *, token_file: Path | None = None):
        self.store = store
        self.token_file = token_file   # where the first administrator's token lives (None: given by --token)
        self._lock = threading.Lock()
        self._known: dict[str, UserRow] = {}   # token hash -> its user, until any user changes
        self._caps: dict[str, int] | None = None

    # ------------------------------------------------------------ who calls

    def bootstrap(self, token: str) -> None:
        """Make sure the first administrator exists and holds `token` (DATA_DIR/token, or --token)."""
        token_hash = hash_token(token)
        row = self.store.user(BOOTSTRAP_ADMIN)
        if row is None:
            self.store.add_user(UserRow(BOOTSTRAP_ADMIN, Role.ADMIN.value, token_hash))
        elif row.token_hash != token_hash or row.role != Role.ADMIN.value or row.expires:
            self.store.update_user(BOOTSTRAP_ADMIN, role=Role.ADMIN.value)
            self.store.set_token(BOOTSTRAP_ADMIN, token_hash, 0.0)
        self._changed()

    def user_of(self, token: str) -> UserRow | None:
        """The user whose token this is (expired or not), None for any other string."""
        token_hash = hash_token(token.strip())
        with self._lock:
            row = self._known.get(token_hash)
        if row is None:
            row = self.store.user_of_token(token_hash)
            if row is not None:
                with self._lock:
                    if len(self._known) > 10_000:
                        self._known.clear()
                    self._known[token_hash] = row
        return row

    def refusal(self, token: str) -> str | None:
        """Why `token` may not call (for the server's interceptor); None when it may."""
        return self._refusal(token, self.user_of(token) if token else None)

    @staticmethod
    def _refusal(token: str, row: UserRow | None) -> str | None:
        if row is None:
            return ("authorization: " + ("missing" if not token else "wrong") + " bearer token (send metadata "
                    "'authorization: Bearer <token>'; your token is the one `gradmesh users add` printed, or the "
                    "coordinator's DATA_DIR/token for its first administrator)")
        if row.expires and row.expires <= time.time():
            return (f"authorization: the token of user {row.name} expired on {_when(row.expires)}; an administrator "
                    f"can issue a new one (gradmesh tokens rotate {row.name})")
        return None

    def caller(self, token: str, address: str = "") -> Caller:
        """The caller holding `token`; Unauthenticated (kind "token") when it is no live token of a user."""
        row = self.user_of(token) if token else None  # one hash and lookup for the check and the caller
        why = self._refusal(token, row)
        if why is not None:
            raise Unauthenticated(why, kind="token")
        return Caller(row.name, Role(row.role), address)

    def max_slots(self) -> dict[str, int]:
        """Each user's cap on the slots their jobs hold at once (only users that have one); the scheduler asks
        every round, so it is read from the store only after a change."""
        with self._lock:
            caps = self._caps
        if caps is None:
            caps = {u.name: u.max_slots for u in self.store.users() if u.max_slots > 0}
            with self._lock:
                self._caps = caps
        return dict(caps)

    # ------------------------------------------------------------ users

    def add(self, caller: Caller, name: str, role: Role, *, max_slots: int = 0,
            expires_in_s: float = 0.0) -> tuple[UserRow, str]:
        """A new user and their token (returned once; only its hash is kept)."""
        self._allowed(caller, Action.USERS, "users.add", name)
        validate.user_name(name)
        _check_slots(max_slots)
        token = secrets.token_hex(32)
        now = time.time()
        row = UserRow(name, role.value, hash_token(token), max_slots=max_slots, created=now, token_created=now,
                      expires=_expiry(expires_in_s, now))
        if not self.store.add_user(row):
            raise AlreadyExists(f"name: user {name} exists; change it with `gradmesh users set {name}` or rotate its "
                                "token", kind=KIND_USER)
        self._changed()
        self.record(caller, "users.add", name, detail=f"role={role.value} max_slots={max_slots}" +
                    (f" expires={_when(row.expires)}" if row.expires else ""))
        return row, token

    def list(self, caller: Caller) -> list[UserRow]:
        """Every user for an administrator; only themselves for anyone else."""
        rows = self.store.users()
        return rows if caller.is_admin else [r for r in rows if r.name == caller.name]

    def remove(self, caller: Caller, name: str) -> UserRow:
        self._allowed(caller, Action.USERS, "users.remove", name)
        row = self._existing(name)
        if name == BOOTSTRAP_ADMIN:
            raise FailedPrecondition(f"name: {name} is the first administrator (the holder of DATA_DIR/token) and "
                                     "cannot be removed; rotate its token instead", kind=KIND_USER)
        self.store.remove_user(name)
        self._changed()
        self.record(caller, "users.remove", name, detail=f"role={row.role}")
        return row

    def update(self, caller: Caller, name: str, *, role: Role | None = None, max_slots: int | None = None) -> UserRow:
        self._allowed(caller, Action.USERS, "users.set", name)
        before = self._existing(name)
        if name == BOOTSTRAP_ADMIN and role not in (None, Role.ADMIN):
            raise FailedPrecondition(f"role: {name} is the first administrator and stays one", kind=KIND_USER)
        if max_slots is not None:
            _check_slots(max_slots)
        row = self.store.update_user(name, role=role.value if role else None, max_slots=max_slots)
        if row is None:
            raise NotFound(f"user {name} not found", kind=KIND_USER)
        self._changed()
        changes = [f"{k}: {getattr(before, k)} -> {getattr(row, k)}" for k in ("role", "max_slots")
                   if getattr(before, k) != getattr(row, k)]
        self.record(caller, "users.set", name, detail="; ".join(changes) or "no change")
        return row

    def rotate(self, caller: Caller, name: str = "", *, expires_in_s: float = 0.0) -> tuple[UserRow, str]:
        """A new token for `name` (default: the caller); the old one stops working at once."""
        name = name or caller.name
        if name != caller.name:
            self._allowed(caller, Action.USERS, "tokens.rotate", name)
        self._existing(name)
        if name == BOOTSTRAP_ADMIN and self.token_file is None:
            raise FailedPrecondition(f"name: the token of {name} is given by `gradmesh serve --token`; change it "
                                     "there", kind=KIND_USER)
        token = secrets.token_hex(32)
        if name == BOOTSTRAP_ADMIN:
            _replace_token_file(self.token_file, token)
        row = self.store.set_token(name, hash_token(token), 0.0 if name == BOOTSTRAP_ADMIN
                                   else _expiry(expires_in_s, time.time()))
        self._changed()
        self.record(caller, "tokens.rotate", name, detail=f"expires={_when(row.expires)}" if row.expires else "")
        return row, token

    # ------------------------------------------------------------ the audit trail

    def record(self, caller: Caller | None, action: str, target: str = "", *, outcome: str = "ok",
               detail: str = "") -> None:
        caller = caller or SYSTEM
        self.store.audit(caller.name, action, target=target, address=caller.address, outcome=outcome, detail=detail)

    def audit_rows(self, caller: Caller, *, user: str = "", since: float = 0.0, page_size: int = 0,
                   page_token: str = "") -> tuple[list[AuditRow], str]:
        """Oldest first. Administrators read every user's rows; anyone else only their own."""
        if not caller.is_admin:
            if user and user != caller.name:
                check(caller, Action.AUDIT)   # raises: another user's rows
            user = caller.name
        if not since >= 0:
            raise InvalidArgument("since_unix", "must be a time after 1970 (seconds), or 0 for the beginning")
        size = validate.page_size(page_size, default=AUDIT_PAGE_MAX, limit=AUDIT_PAGE_MAX)
        after = validate.page_token(page_token, call="ListAudit")
        rows = self.store.audit_rows(user=user, since=since, after_id=after, limit=size)
        return rows, str(rows[-1].id) if len(rows) == size else ""

    # ------------------------------------------------------------ inside

    def _allowed(self, caller: Caller, action: Action, what: str, target: str) -> None:
        try:
            check(caller, action)
        except Exception:
            self.record(caller, what, target, outcome="denied")
            raise

    def _existing(self, name: str) -> UserRow:
        validate.user_name(name)
        row = self.store.user(name)
        if row is None:
            raise NotFound(f"user {name} not found (gradmesh users list)", kind=KIND_USER)
        return row

    def _changed(self) -> None:
        with self._lock:
            self._known.clear()
            self._caps = None


def _check_slots(max_slots: int) -> None:
    if not 0 <= max_slots <= MAX_SLOTS_LIMIT:
        raise InvalidArgument("max_slots", f"must be 0 (no cap) to {MAX_SLOTS_LIMIT}, got {max_slots}")


def _expiry(expires_in_s: float, now: float) -> float:
    if not 0 <= expires_in_s <= MAX_EXPIRY_S:   # NaN too
        raise InvalidArgument("token_expires_s", f"must be 0 (never) to {MAX_EXPIRY_S:.0f} seconds, got "
                                                 f"{expires_in_s}")
    return now + expires_in_s if expires_in_s else 0.0


def _replace_token_file(path: Path, token: str) -> None:
    """Write the new token next to DATA_DIR/token (0600, never through a link) and rename it into place."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
