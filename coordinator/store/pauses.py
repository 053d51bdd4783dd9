"""The store's record of paused jobs: a job told to stop at a step with a checkpoint and wait there.

A sweep's trial runs to its next rung and pauses (coordinator.sweeps): its ranks learn the step from FetchJob,
stop there with a checkpoint (exit 4), and the supervisor settles that attempt as a pause: the job goes to
RESTARTING, held, spending no restart. It is launched again (from that checkpoint) only once released, with
the next step to pause at (0: run to the end). Kept here, so a coordinator restart keeps every hold.

    store.set_pause("sw-t003", 100)           # before the job exists: its first attempt stops at step 100
    store.pause_of("sw-t003")                 # Pause(at_step=100, held=False)
    store.hold("sw-t003")                     # the settlement: it stopped there; wait
    store.release("sw-t003", 300)             # promoted: run on to step 300 (the scheduler may launch it)
"""
from __future__ import annotations

from dataclasses import dataclass

from coordinator.store.connection import StoreConnection


@dataclass(frozen=True)
class Pause:
    at_step: int      # 0 = no pause
    held: bool        # stopped at at_step, waiting to be released


class PauseRecords(StoreConnection):
    def set_pause(self, job_id: str, at_step: int) -> None:
        """Pause the job at `at_step` (0: none), not held; replaces an earlier pause."""
        with self._tx(f"the pause of job {job_id}") as db:
            db.execute("INSERT INTO pauses (job_id, at_step, held) VALUES (?, ?, 0) ON CONFLICT(job_id) DO UPDATE "
                       "SET at_step = excluded.at_step, held = 0", (job_id, at_step))

    def pause_of(self, job_id: str) -> Pause | None:
        rows = self._query("SELECT at_step, held FROM pauses WHERE job_id = ?", (job_id,))
        return Pause(rows[0]["at_step"], bool(rows[0]["held"])) if rows else None

    def hold(self, job_id: str) -> None:
        with self._tx(f"the hold of job {job_id}") as db:
            db.execute("UPDATE pauses SET held = 1 WHERE job_id = ?", (job_id,))

    def release(self, job_id: str, next_step: int) -> None:
        """Let a held job run on, to pause again at `next_step` (0: to the end)."""
        self.set_pause(job_id, next_step)

    def held_jobs(self) -> list[str]:
        """Jobs paused and waiting (RESTARTING, held): the scheduler must not launch them."""
        rows = self._query("SELECT p.job_id FROM pauses p JOIN jobs j ON j.id = p.job_id "
                           "WHERE p.held = 1 AND j.state = 'RESTARTING' ORDER BY p.job_id", ())
        return [r["job_id"] for r in rows]
