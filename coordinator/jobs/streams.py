"""Streams a client follows: a job's events (WatchJob) and an attempt's log (StreamLogs).

    streams = Streams(store, signal, views=jobs.get)
    for kind, value in streams.watch("digits-1", from_step=0): ...   # ("snapshot"|"metric"|"state", ...)
    for attempt, data in streams.logs("digits-1", follow=True): ...

Both read the store and the log files in pages (at most PAGE metric points, LOG_CHUNK_BYTES of log at a
time), never a whole history or a whole log in memory, and wake on the change signal, re-reading after
the last transition id / metric step / log offset they sent, so a missed wake-up costs latency, never an
event. Both end with UNAVAILABLE when the coordinator shuts down.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from coordinator.access import validate
from coordinator.errors import InvalidArgument, Unavailable
from coordinator.events import ChangeSignal
from coordinator.jobs.views import JobView, find_job
from coordinator.store.records import MetricRow
from coordinator.store.store import Store

PAGE = 1000                # metric points read from the store at a time
LOG_CHUNK_BYTES = 64 << 10


class Streams:
    def __init__(self, store: Store, signal: ChangeSignal, views: Callable[[str], JobView]):
        self.store = store
        self.signal = signal
        self.views = views

    def _metrics(self, job_id: str, from_step: int) -> Iterator[MetricRow]:
        """The job's points from `from_step` in step order, read a page at a time."""
        while True:
            page = self.store.metrics(job_id, from_step, limit=PAGE)
            yield from page
            if len(page) < PAGE:
                return
            from_step = page[-1].step + 1

    def watch(self, job_id: str, from_step: int = 0, is_active: Callable[[], bool] = lambda: True,
              poll_s: float = 1.0) -> Iterator[tuple[str, object]]:
        """("snapshot", JobView), then ("metric", MetricRow) from `from_step`, then live ("state", TransitionRow)
        and metrics. Always ends with the state event of the terminal state (re-sent when the job had already
        ended), so a clean end of the stream means the job ended."""
        validate.non_negative(from_step, "from_step")
        view = self.views(job_id)
        yield "snapshot", view
        last_transition = view.history[-1].id if view.history else 0
        next_step = from_step
        if view.job.state.is_terminal():
            for point in self._metrics(job_id, next_step):
                yield "metric", point
            yield "state", view.history[-1]
            return
        while is_active():
            if self.signal.closed:
                raise Unavailable("coordinator is shutting down; watch again from your last step")
            seen = self.signal.version
            # Transitions first, then metrics: every point committed before the terminal state is sent before it.
            transitions = self.store.transitions(job_id, last_transition)
            for point in self._metrics(job_id, next_step):
                next_step = point.step + 1
                yield "metric", point
            for change in transitions:
                last_transition = change.id
                yield "state", change
                if change.state.is_terminal():
                    return
            self.signal.wait(seen, poll_s)

    def logs(self, job_id: str, *, follow: bool = False, attempt: int = 0,
             is_active: Callable[[], bool] = lambda: True, poll_s: float = 0.25) -> Iterator[tuple[int, bytes]]:
        """(attempt, bytes) chunks of an attempt's log. With `follow`, keep reading until the job ends; when
        following the latest attempt (attempt=0), continue into the next attempt after a restart."""
        validate.non_negative(attempt, "attempt")
        job = find_job(self.store, job_id)
        if attempt > job.attempts:
            raise InvalidArgument("attempt", f"job {job_id} has {job.attempts} attempt(s), there is no attempt {attempt}")
        number = attempt or job.attempts
        offset = 0
        while is_active():
            if self.signal.closed:
                raise Unavailable("coordinator is shutting down")
            seen = self.signal.version
            job = find_job(self.store, job_id)
            row = self.store.attempt(job_id, number) if number else None
            if row is not None:
                for offset, chunk in _read_from(Path(row.log_path), offset):
                    yield number, chunk
            if not follow:
                return
            if number == 0 and job.attempts > 0:
                number = job.attempts
                continue
            if row is not None and row.ended and attempt == 0 and job.attempts > number:
                number, offset = number + 1, 0
                continue
            if job.state.is_terminal() and (row is None or row.ended):
                if row is not None:
                    for offset, chunk in _read_from(Path(row.log_path), offset):
                        yield number, chunk
                return
            self.signal.wait(seen, poll_s)


def _read_from(path: Path, offset: int) -> Iterator[tuple[int, bytes]]:
    """(offset after the chunk, chunk) from `offset` to the current end of the file (nothing if it is missing)."""
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        while data := f.read(LOG_CHUNK_BYTES):
            offset += len(data)
            yield offset, data
