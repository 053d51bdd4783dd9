"""The dashboard's caps: connections, event streams, login attempts, and how long a connection may idle.

The HTTP side keeps the gRPC side's discipline (coordinator.access.admission): nothing anyone can reach
without the token holds a thread, a socket or memory without bound.

    limits = HttpLimits()                      # the defaults; start_dashboard(limits=...)
    streams = Counted(limits.event_streams, limits.streams_per_session)
    if not streams.enter(session_nonce): ...   # 429: too many open streams
    streams.leave(session_nonce)
    logins = LoginThrottle(limits)
    wait = logins.wait_s("127.0.0.1")          # 0.0: go ahead; else 429 with Retry-After

Connections over `connections` are answered 503 and closed before a thread is started for them
(coordinator.dashboard.app); a connection whose client sends nothing for `idle_timeout_s` (between requests,
or within one) is closed.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    connections: int = 256        # open connections at once; more are answered 503 and closed at once
    event_streams: int = 64       # open event streams in all (gRPC caps its watch streams at 64 too)
    streams_per_session: int = 16  # ... and from one login (a few pages open in a few tabs)
    idle_timeout_s: float = 60.0  # a connection whose client sends (or takes) nothing this long is closed
    backlog: int = 128            # connections the kernel queues before they are accepted
    login_burst: int = 10         # login attempts one address may make at once ...
    login_per_s: float = 1.0      # ... and then at this rate
    logins_per_s: float = 20.0    # login attempts from every address together (burst: 3 s worth)

    def __post_init__(self) -> None:
        for name in ("connections", "event_streams", "streams_per_session", "backlog", "login_burst"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("idle_timeout_s", "login_per_s", "logins_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")


class Counted:
    """A non-blocking count with a cap in all and a cap per key."""

    def __init__(self, total: int, per_key: int):
        self.total, self.per_key = total, per_key
        self._lock = threading.Lock()
        self._held: dict[str, int] = {}
        self.count = 0

    def enter(self, key: str = "") -> bool:
        with self._lock:
            if self.count >= self.total or self._held.get(key, 0) >= self.per_key:
                return False
            self.count += 1
            self._held[key] = self._held.get(key, 0) + 1
            return True

    def leave(self, key: str = "") -> None:
        with self._lock:
            self.count -= 1
            left = self._held.get(key, 1) - 1
            if left > 0:
                self._held[key] = left
            else:
                self._held.pop(key, None)


class _Bucket:
    def __init__(self, burst: float, rate: float, now: float):
        self.burst, self.rate, self.tokens, self.at = burst, rate, burst, now

    def take(self, now: float) -> float:
        """0.0 when a token was taken; else the seconds until one is there."""
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


class LoginThrottle:
    """Token buckets for login attempts: one per client address, one for all of them."""

    MAX_ADDRESSES = 10_000  # addresses remembered; a full bucket is forgotten first

    def __init__(self, limits: HttpLimits):
        self.limits = limits
        self._lock = threading.Lock()
        self._all = _Bucket(3 * limits.logins_per_s, limits.logins_per_s, time.monotonic())
        self._by_address: dict[str, _Bucket] = {}

    def wait_s(self, address: str) -> float:
        """0.0 when this attempt may go ahead; else how many seconds to wait (the attempt is not made)."""
        now = time.monotonic()
        with self._lock:
            bucket = self._by_address.get(address)
            if bucket is None:
                if len(self._by_address) >= self.MAX_ADDRESSES:
                    self._forget_full(now)
                bucket = self._by_address[address] = _Bucket(self.limits.login_burst, self.limits.login_per_s, now)
            wait = bucket.take(now)
            if wait:
                return wait
            wait = self._all.take(now)
            if wait:
                bucket.tokens += 1  # not this address's fault: give its token back
            return wait

    def _forget_full(self, now: float) -> None:
        for address, bucket in list(self._by_address.items()):
            if bucket.tokens + (now - bucket.at) * bucket.rate >= bucket.burst:
                del self._by_address[address]
        if len(self._by_address) >= self.MAX_ADDRESSES:
            self._by_address.clear()
