"""Which queued job starts next: fair share between users, per-user slot caps, backfill with a reservation, and
the jobs a preemption stops. Pure functions of the queue and the slots, unit-tested without a server.

    decision = plan(candidates, used={"ana": 2, "bob": 0}, shares=policy.share, max_slots={"ana": 2},
                    reserve_after_s=300, now=time.time(), place=try_to_take_slots, past={"ana": 5400.0})
    decision.started     # job ids, in the order they took their slots
    decision.reserved    # the job holding a reservation (later jobs may not take the slots it waits for)
    decision.waits       # job id -> why it still waits (a cap, a reservation)
    victims(candidate, free=0, running=[...])      # lower-priority jobs to stop so that it fits, or None

The rules, in order:
  1. Higher `priority` first, always.
  2. Within a priority, a job that has waited `reserve_after_s` holds a reservation and comes first (oldest
     first); the others come from the user furthest below their share: the fewest slots held now per unit of
     share (`used / share`, equal shares by default); between users who hold as many, the one who used the
     fewest slot-seconds lately (`past / share`, decayed: the scheduler halves it every `usage_half_life_s`),
     so a user whose short jobs keep ending does not win every tie; then first submitted first.
  3. A user's jobs never hold more than the user's `max_slots` together: a job that would exceed it waits.
  4. A job that does not fit in the free slots does not block the jobs behind it (backfill) — unless it holds
     a reservation: then nothing after it starts, so the slots it waits for gather as running jobs end, and it
     starts within `reserve_after_s` plus the time the jobs running then take to end.
`place(candidate)` takes the slots for a job when they are free (the caller knows hosts and their health)
and says whether it did; the free slots only shrink during a plan, so a job that did not fit once is not
tried again in the same plan. After every start the order is taken again, since the starter's usage grew.

Compared with Slurm: its multifactor priority mixes fair share (decayed past usage, a half-life of days)
with age and size into one number, and its backfill starts a small job early only if, by the jobs' time
limits, it ends before the reserved start of the job it jumps. Our jobs have no time limit, so fair share here
counts the slots held *now* first and recent usage (a half-life of an hour, kept in memory) only between
equals, and a job's reservation is earned by its wait, not planned from estimated end times.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection, Mapping, Sequence


@dataclass(frozen=True)
class Candidate:
    """A queued job as the plan sees it."""
    job_id: str
    user: str
    priority: int
    seq: int              # submission order
    slots: int            # the slots it would start with
    waiting_since: float  # unix time it was queued


@dataclass(frozen=True)
class RunningJob:
    """A running job as a preemption sees it."""
    job_id: str
    user: str
    priority: int
    slots: int
    started: float


@dataclass
class Decision:
    started: list[str] = field(default_factory=list)
    reserved: str | None = None
    waits: dict[str, str] = field(default_factory=dict)
    unplaced: list[str] = field(default_factory=list)   # did not fit, in the order they were tried


def plan(candidates: Sequence[Candidate], used: Mapping[str, int], *, shares: Callable[[str], float],
         max_slots: Mapping[str, int], reserve_after_s: float, now: float, place: Callable[[Candidate], bool],
         reserved: Collection[str] = (), past: Mapping[str, float] | None = None) -> Decision:
    """The jobs to start now, by the rules of the module docstring. `used`: slots each user's running jobs hold;
    `past`: each user's decayed slot-seconds; `reserved`: jobs that hold a reservation whatever their wait (one
    a preemption is making room for)."""
    past = past or {}
    used = dict(used)
    decision = Decision()
    left = list(candidates)

    def holds_reservation(c: Candidate) -> bool:
        return c.job_id in reserved or now - c.waiting_since >= reserve_after_s

    def key(c: Candidate) -> tuple:
        if holds_reservation(c):
            return (-c.priority, 0, 0.0, 0.0, c.seq)
        share = shares(c.user)
        return (-c.priority, 1, used.get(c.user, 0) / share, past.get(c.user, 0.0) / share, c.seq)

    while left:
        eligible = []
        for c in left:
            cap = max_slots.get(c.user, 0)
            if cap and used.get(c.user, 0) + c.slots > cap:
                decision.waits[c.job_id] = (f"waiting: {c.user}'s jobs hold {used.get(c.user, 0)} of the "
                                            f"{cap} slot(s) {c.user} may use (max slots)")
            else:
                eligible.append(c)
        started = None
        for c in sorted(eligible, key=key):
            if place(c):
                started = c
                break
            left.remove(c)
            decision.unplaced.append(c.job_id)
            if holds_reservation(c):
                decision.reserved = c.job_id
                decision.waits[c.job_id] = (f"holds a reservation: waiting for {c.slots} slot(s); jobs queued "
                                            "behind it wait until it has started")
                for other in left:
                    decision.waits.setdefault(other.job_id, f"waiting behind job {c.job_id}, which holds a "
                                                            "reservation")
                return decision
        if started is None:
            return decision
        left.remove(started)
        decision.started.append(started.job_id)
        decision.waits.pop(started.job_id, None)
        used[started.user] = used.get(started.user, 0) + started.slots
    return decision


def victims(job: Candidate, free: int, running: Sequence[RunningJob]) -> list[str] | None:
    """The running jobs of lower priority to stop so that `job` fits in `free` plus their slots: the lowest
    priority first, then the most recently started (the least work since its checkpoints); None when stopping
    all of them would still not make room (then none is stopped)."""
    if job.slots <= free:
        return []
    lower = sorted((r for r in running if r.priority < job.priority), key=lambda r: (r.priority, -r.started))
    chosen, room = [], free
    for r in lower:
        if room >= job.slots:
            break
        chosen.append(r.job_id)
        room += r.slots
    return chosen if room >= job.slots else None

