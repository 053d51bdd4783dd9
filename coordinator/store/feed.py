"""The store read as a feed, for the exporters that follow it (coordinator.telemetry): every transition of
every job after a given id, in order, and the jobs counted by state for a scrape.

Transitions are the one durable log of what happened to jobs (queued, running, restarting, ended), so a
follower that remembers the last id it handled misses nothing and handles nothing twice.
"""
from __future__ import annotations

from coordinator.store.connection import StoreConnection
from coordinator.store.records import TransitionRow
from coordinator.states import JobState


class Feed(StoreConnection):
    def transitions_after(self, after_id: int, limit: int = 500) -> list[TransitionRow]:
        """The transitions of all jobs with an id above `after_id`, oldest first, at most `limit`."""
        rows = self._query("SELECT * FROM transitions WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit))
        return [TransitionRow(r["id"], r["job_id"], JobState[r["state"]], r["message"], r["time"], r["attempt"])
                for r in rows]

    def last_transition_id(self) -> int:
        return self._query("SELECT COALESCE(MAX(id), 0) FROM transitions", ())[0][0]

    def jobs_by_state(self) -> dict[JobState, int]:
        """How many jobs are in each state (every state present, 0 when none)."""
        counts = {state: 0 for state in JobState}
        for r in self._query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", ()):
            counts[JobState[r["state"]]] = r["n"]
        return counts
