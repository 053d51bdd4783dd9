"""A wake-up signal for streams: writers call `changed()` after committing, watchers wait for it.

Watchers then re-read the store (after the last transition id / metric step they sent), so the store
stays the only source of truth and a missed wake-up costs at most one `timeout` of latency, never an event.
"""
from __future__ import annotations

import threading


class ChangeSignal:
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._version = 0
        self.closed = False

    @property
    def version(self) -> int:
        return self._version

    def changed(self) -> None:
        with self._cond:
            self._version += 1
            self._cond.notify_all()

    def wait(self, seen_version: int, timeout: float) -> int:
        """Block until the version moves past `seen_version` (or timeout / close); return the new version."""
        with self._cond:
            if self._version == seen_version and not self.closed:
                self._cond.wait(timeout)
            return self._version

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
