"""EventTail: what happened to jobs and hosts, as events, for the counters, the notifier and the MLflow logger.

    tail = EventTail(store, signal, host_status=fleet.health.status)
    tail.listen(lambda event: print(event.kind, event.subject))
    tail.start()      # a thread: it wakes on every change the core signals, and at least every second
    tail.poll()       # or catch up now, on the caller's thread (a scrape does, so its counters are current)
    tail.stop()

Job events come from the store's transitions (coordinator.store.feed), followed by id from where the store
stood when the tail started: nothing is missed and nothing handled twice, however late a poll comes. Host
quarantines live in memory (coordinator.fleet.health); they are seen by comparing each host's state with the
last poll's. A listener that raises is logged and skipped: one broken exporter stops no other.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from coordinator.events import ChangeSignal
from coordinator.states import JobState
from coordinator.store.records import AttemptRow, JobRow, TransitionRow
from coordinator.store.store import Store

log = logging.getLogger("gradmesh.telemetry")

# the event kind of each state a job moves to
KIND_OF_STATE = {
    JobState.QUEUED: "job.queued", JobState.RUNNING: "job.running", JobState.RESTARTING: "job.restarted",
    JobState.SUCCEEDED: "job.succeeded", JobState.FAILED: "job.failed", JobState.CANCELLED: "job.cancelled",
}
HOST_QUARANTINED = "host.quarantined"
MIN_GAP_S = 0.1


@dataclass(frozen=True)
class Event:
    """A job event (`transition` set; `job` and `attempt` as the store holds them when it is handled) or a host
    event (`host` set, `detail` its status)."""
    kind: str
    time: float
    transition: TransitionRow | None = None
    job: JobRow | None = None
    attempt: AttemptRow | None = None
    host: str = ""
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        return self.host or (self.transition.job_id if self.transition else "")


class EventTail:
    def __init__(self, store: Store, signal: ChangeSignal, host_status: Callable[[], Sequence[Any]] | None = None,
                 interval_s: float = 1.0):
        self.store = store
        self.signal = signal
        self.host_status = host_status or (lambda: [])
        self.interval_s = interval_s
        self._listeners: list[Callable[[Event], None]] = []
        self._ticks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._after = store.last_transition_id()
        self._quarantined = {s.host for s in self.host_status() if getattr(s, "quarantined", False)}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def listen(self, listener: Callable[[Event], None]) -> None:
        """Call `listener(event)` for every event from now on (on the tail's thread or a poller's)."""
        self._listeners.append(listener)

    def every_poll(self, tick: Callable[[], None]) -> None:
        """Call `tick()` after every poll, events or not (followers of the metric history use it)."""
        self._ticks.append(tick)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="gradmesh-telemetry", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def poll(self) -> int:
        """Hand every event since the last poll to the listeners; the number of events."""
        with self._lock:
            events = self._job_events() + self._host_events()
            for event in events:
                for listener in self._listeners:
                    try:
                        listener(event)
                    except Exception:  # noqa: BLE001 - an exporter's bug must not stop the others
                        log.exception("telemetry: a listener failed on %s %s", event.kind, event.subject)
            for tick in self._ticks:
                try:
                    tick()
                except Exception:  # noqa: BLE001
                    log.exception("telemetry: a follower failed")
            return len(events)

    def _job_events(self) -> list[Event]:
        events = []
        while True:
            rows = self.store.transitions_after(self._after)
            for t in rows:
                job = self.store.get_job(t.job_id)
                attempt = self.store.attempt(t.job_id, t.attempt) if t.attempt else None
                events.append(Event(KIND_OF_STATE[t.state], t.time, transition=t, job=job, attempt=attempt))
                self._after = t.id
            if len(rows) < 500:
                return events

    def _host_events(self) -> list[Event]:
        events = []
        now_quarantined = set()
        for s in self.host_status():
            if not getattr(s, "quarantined", False):
                continue
            now_quarantined.add(s.host)
            if s.host not in self._quarantined:
                events.append(Event(HOST_QUARANTINED, time.time(), host=s.host, detail={
                    "host": s.host, "failures": s.failures, "last_failure": s.last_failure,
                    "returns_at": s.returns_at}))
        self._quarantined = now_quarantined
        return events

    def _run(self) -> None:
        seen = self.signal.version
        while not self._stop.is_set() and not self.signal.closed:
            try:
                self.poll()
            except Exception:  # noqa: BLE001 - e.g. the store closing under us; the next round tries again
                log.debug("telemetry: poll failed", exc_info=True)
            seen = self.signal.wait(seen, self.interval_s)
            self._stop.wait(MIN_GAP_S)  # a busy coordinator signals per report: follow it, not every beat
