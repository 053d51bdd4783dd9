"""Which hosts may take new ranks: failures counted in a window, quarantine for a cool-down, operator drains.

    health = HostHealth([("a", 2), ("b", 2)], failures=2, window_s=600, cooldown_s=300)
    health.failed("b", "rank 2 (pid 41) on b ended: Killed (signal 9)")   # b: suspect
    health.failed("b", "...")                                             # 2 in the window: quarantined
    health.usable("b")        # False until the cool-down is over (then healthy again, its count cleared)
    health.quarantine("c", "unreachable at launch: ssh: ...")            # at once, whatever the count
    health.drain("a"); health.undrain("a")   # an operator's hold: no NEW ranks there; running ones stay
    health.status()           # [HostStatus(host, slots, state, failures, last_failure, ...)] for `gradmesh hosts`

A host quarantined again within the window after its last quarantine ended gets twice the cool-down of that
one (up to MAX_COOLDOWN_S): a host still unreachable is tried at a falling rate instead of every cool-down
(each try can cost a running elastic job a resize), and one window without a quarantine resets it.

A failure counts against a host only when the attempt's end names it (coordinator.fleet.placement.blamed_hosts:
a rank killed there, ranks there silent to the hang watchdog, the launcher unable to reach it). Suspect
hosts still take ranks; quarantined and drained ones take none. Nothing here stops a running attempt.
Thread-safe (the scheduler reads it, the supervisor and gRPC threads write it); the clock is injectable so
the window and the cool-down are unit-tested without waiting. The state lives in memory: a coordinator
restart forgets quarantines and drains.
"""
from __future__ import annotations

import enum
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence


class HostState(enum.Enum):
    HEALTHY = "healthy"
    SUSPECT = "suspect"          # failures in the window, fewer than the threshold: still used
    QUARANTINED = "quarantined"  # until its cool-down ends
    DRAINED = "drained"          # by an operator, until undrained


@dataclass(frozen=True)
class HostStatus:
    host: str
    slots: int
    state: HostState
    failures: int              # attributed failures in the current window
    last_failure: str = ""     # what the last one said
    last_failure_time: float = 0.0   # unix time; 0 = never
    returns_at: float = 0.0    # unix time a quarantine ends; 0 when not quarantined
    quarantined: bool = False  # also true for a drained host whose quarantine still runs

    @property
    def usable(self) -> bool:
        return self.state in (HostState.HEALTHY, HostState.SUSPECT)


DEFAULT_FAILURES = 2
DEFAULT_WINDOW_S = 600.0
DEFAULT_COOLDOWN_S = 300.0
MAX_COOLDOWN_S = 3600.0


@dataclass(frozen=True)
class HostPolicy:
    """`gradmesh serve --host-failures N --host-failure-window S --host-cooldown S`."""
    failures: int = DEFAULT_FAILURES
    window_s: float = DEFAULT_WINDOW_S
    cooldown_s: float = DEFAULT_COOLDOWN_S

    def kwargs(self) -> dict:
        return {"failures": self.failures, "window_s": self.window_s, "cooldown_s": self.cooldown_s}


class UnknownHost(KeyError):
    pass


class HostHealth:
    def __init__(self, hosts: Sequence[tuple[str, int]], *, failures: int = DEFAULT_FAILURES,
                 window_s: float = DEFAULT_WINDOW_S, cooldown_s: float = DEFAULT_COOLDOWN_S,
                 clock: Callable[[], float] = time.time):
        if failures < 1 or window_s <= 0 or cooldown_s < 0:
            raise ValueError("host health needs failures >= 1, a positive window and a cool-down >= 0")
        self.slots = {h: n for h, n in hosts}
        self.threshold = failures
        self.window_s = window_s
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._lock = threading.Lock()
        self._failures: dict[str, list[float]] = {h: [] for h in self.slots}   # times, within the window
        self._last: dict[str, tuple[float, str]] = {}
        self._until: dict[str, float] = {}    # host → end of its quarantine
        self._streak: dict[str, tuple[int, float]] = {}  # host → (quarantines in a row, when the last one ended)
        self._drained: set[str] = set()

    def failed(self, host: str, why: str) -> bool:
        """Count a failure against `host`; True when it is (now) quarantined. Unknown hosts are ignored."""
        now = self._clock()
        with self._lock:
            if host not in self.slots:
                return False
            self._expire(host, now)
            times = [t for t in self._failures[host] if now - t <= self.window_s] + [now]
            self._failures[host] = times
            self._last[host] = (now, why)
            if len(times) >= self.threshold and host not in self._until:
                self._quarantine(host, now)
            return host in self._until

    def quarantine(self, host: str, why: str) -> bool:
        """Count a failure against `host` and quarantine it at once (the launcher could not reach it: no rank
        can run there now, and trying again costs an attempt). False for an unknown host."""
        now = self._clock()
        with self._lock:
            if host not in self.slots:
                return False
            self._expire(host, now)
            self._failures[host] = [t for t in self._failures[host] if now - t <= self.window_s] + [now]
            self._last[host] = (now, why)
            if host not in self._until:
                self._quarantine(host, now)
            return True

    def _quarantine(self, host: str, now: float) -> None:
        streak, ended = self._streak.get(host, (0, 0.0))
        if streak and now - ended > self.window_s:
            streak = 0  # a window without a quarantine: a fresh start
        self._until[host] = now + min(self.cooldown_s * 2 ** streak, max(MAX_COOLDOWN_S, self.cooldown_s))
        self._streak[host] = (streak + 1, ended)

    def drain(self, host: str) -> None:
        with self._lock:
            self._known(host)
            self._drained.add(host)

    def undrain(self, host: str) -> None:
        with self._lock:
            self._known(host)
            self._drained.discard(host)

    def usable(self, host: str) -> bool:
        return self.state(host) in (HostState.HEALTHY, HostState.SUSPECT)

    def state(self, host: str) -> HostState:
        now = self._clock()
        with self._lock:
            self._expire(host, now)
            return self._state(host, now)

    def status(self) -> list[HostStatus]:
        now = self._clock()
        with self._lock:
            out = []
            for host, slots in self.slots.items():
                self._expire(host, now)
                when, why = self._last.get(host, (0.0, ""))
                recent = [t for t in self._failures[host] if now - t <= self.window_s]
                out.append(HostStatus(host, slots, self._state(host, now), len(recent), why, when,
                                      self._until.get(host, 0.0), host in self._until))
            return out

    def _known(self, host: str) -> None:
        if host not in self.slots:
            raise UnknownHost(host)

    def _state(self, host: str, now: float) -> HostState:
        if host in self._drained:
            return HostState.DRAINED
        if host in self._until:
            return HostState.QUARANTINED
        if any(now - t <= self.window_s for t in self._failures.get(host, ())):
            return HostState.SUSPECT
        return HostState.HEALTHY

    def _expire(self, host: str, now: float) -> None:
        """A quarantine that is over: the host is healthy again, its count cleared (a fresh window)."""
        until = self._until.get(host)
        if until is not None and now >= until:
            del self._until[host]
            self._failures[host] = []
            self._streak[host] = (self._streak.get(host, (1, 0.0))[0], until)
