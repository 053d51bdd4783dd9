"""The fair-share decision (coordinator.team.fairshare), a pure function, on slot counts without processes:
who goes next within a priority, per-user caps, backfill, the reservation after a bounded wait, preemption's
choice of victims; and a whole queue simulated slot by slot to check that shares come out equal."""
from __future__ import annotations

from coordinator.team import fairshare
from coordinator.team.fairshare import Candidate, RunningJob

NOW = 10_000.0


def cand(job_id, user, slots=1, priority=0, seq=0, waited=0.0):
    return Candidate(job_id, user, priority, seq, slots, NOW - waited)


class Slots:
    """`place` for the plan: a count of free slots."""

    def __init__(self, free):
        self.free = free

    def __call__(self, c):
        if c.slots > self.free:
            return False
        self.free -= c.slots
        return True


def plan(candidates, free, used=None, *, shares=None, max_slots=None, reserve_after_s=300.0, reserved=(),
         past=None):
    return fairshare.plan(candidates, used or {}, shares=lambda u: (shares or {}).get(u, 1.0),
                          max_slots=max_slots or {}, reserve_after_s=reserve_after_s, now=NOW, place=Slots(free),
                          reserved=reserved, past=past)


def test_the_user_furthest_below_their_share_goes_first():
    queue = [cand(f"a{i}", "ana", seq=i) for i in range(5)] + [cand("b0", "bob", seq=10)]
    # ana holds 2 slots already, bob none: bob's job goes first although submitted last
    assert plan(queue, 1, used={"ana": 2}).started == ["b0"]
    # with 3 free slots: bob, then ana and bob alternate by slots held per share (ties: first submitted)
    assert plan(queue, 3, used={"ana": 1}).started == ["b0", "a0", "a1"]
    # shares weigh it: bob's weight 3 lets him hold 3 slots per ana's 1
    queue = [cand(f"a{i}", "ana", seq=i) for i in range(4)] + [cand(f"b{i}", "bob", seq=10 + i) for i in range(4)]
    started = plan(queue, 4, shares={"bob": 3.0}).started
    assert sorted(started) == ["a0", "b0", "b1", "b2"]


def test_between_users_holding_as_many_slots_the_one_who_used_fewer_lately_goes_first():
    queue = [cand("a3", "ana", seq=3), cand("c0", "cy", seq=20)]
    # both hold nothing now (ana's short jobs just ended); ana has used 500 slot-seconds lately, cy none
    assert plan(queue, 1, past={"ana": 500.0}).started == ["c0"]
    assert plan(queue, 1).started == ["a3"]   # without a past: first submitted first
    # slots held now come first: cy holding 1 loses to ana holding none, whatever ana's past
    assert plan(queue, 1, used={"cy": 1}, past={"ana": 500.0}).started == ["a3"]


def test_priority_comes_before_fair_share():
    queue = [cand("a0", "ana", seq=1, priority=5), cand("b0", "bob", seq=2)]
    assert plan(queue, 1, used={"ana": 10}).started == ["a0"]


def test_a_users_max_slots_is_never_exceeded_and_the_job_says_why():
    queue = [cand(f"a{i}", "ana", seq=i) for i in range(5)]
    decision = plan(queue, 8, used={"ana": 1}, max_slots={"ana": 3})
    assert decision.started == ["a0", "a1"]
    assert "hold 3 of the 3 slot(s) ana may use" in decision.waits["a2"]
    big = plan([cand("big", "ana", slots=4)], 8, max_slots={"ana": 3})
    assert big.started == [] and "max slots" in big.waits["big"]


def test_backfill_then_a_reservation_that_later_jobs_may_not_take():
    queue = [cand("big", "ana", slots=2, seq=1, waited=10), cand("s1", "bob", seq=2), cand("s2", "bob", seq=3)]
    # before the bound, the big job (2 of 1 free) does not block the small ones behind it
    decision = plan(queue, 1)
    assert decision.started == ["s1"] and decision.reserved is None and "big" in decision.unplaced
    # after waiting reserve_after_s it holds a reservation: nothing behind it starts, the slot stays free for it
    queue[0] = cand("big", "ana", slots=2, seq=1, waited=301)
    decision = plan(queue, 1)
    assert decision.started == [] and decision.reserved == "big"
    assert "holds a reservation" in decision.waits["big"] and "behind job big" in decision.waits["s1"]
    # and starts as soon as its slots are free, ahead of users below their share
    assert plan(queue, 2, used={"ana": 5}).started == ["big"]
    # a higher priority still goes first; jobs the reserved one cannot use do not start (no slot is left)
    urgent = cand("urgent", "bob", slots=1, seq=9, priority=1)
    assert plan([*queue, urgent], 1).started == ["urgent"]


def test_a_reservation_is_held_for_the_job_a_preemption_makes_room_for():
    queue = [cand("high", "ana", slots=2, seq=1, priority=5), cand("low", "bob", seq=2)]
    assert plan(queue, 1).started == ["low"]              # backfilled into the first freed slot...
    assert plan(queue, 1, reserved={"high"}).started == []  # ...unless that slot is being freed for "high"


def test_victims_are_lower_priority_newest_first_and_only_when_enough():
    running = [RunningJob("old-low", "bob", 0, 1, started=100.0), RunningJob("new-low", "bob", 0, 1, started=200.0),
               RunningJob("mid", "ana", 3, 2, started=300.0), RunningJob("same", "eve", 5, 1, started=50.0)]
    high = cand("high", "ana", slots=2, priority=5)
    assert fairshare.victims(high, 0, running) == ["new-low", "old-low"]
    assert fairshare.victims(high, 1, running) == ["new-low"]
    assert fairshare.victims(high, 2, running) == []
    assert fairshare.victims(cand("huge", "ana", slots=9, priority=5), 0, running) is None  # never half a room
    assert fairshare.victims(cand("low", "ana", slots=1, priority=0), 0, running) is None  # nothing lower


def test_a_long_queue_shares_the_slots_equally():
    """User ana queues 40 one-slot jobs first, bob and cy 10 each later; on 3 slots, every job lasting one tick,
    each tick's starts give each user one slot while all three have jobs queued."""
    queue = [cand(f"a{i}", "ana", seq=i) for i in range(40)] + [cand(f"b{i}", "bob", seq=100 + i) for i in range(10)] \
        + [cand(f"c{i}", "cy", seq=200 + i) for i in range(10)]
    per_tick = []
    while queue:
        started = set(plan(queue, 3).started)
        per_tick.append(sorted(j[0] for j in started))
        queue = [c for c in queue if c.job_id not in started]
    assert per_tick[:10] == [["a", "b", "c"]] * 10
    assert all(tick == ["a", "a", "a"] for tick in per_tick[10:])
