"""Fair share, per-user slot caps and backfill with a reservation, on a real coordinator with real jobs.

  - ana (--max-slots 2) queues 20 one-slot jobs, then bob queues 2, with every slot busy: when the first slot
    frees, bob's first job takes it (not ana's third); ana never holds more than 2 slots; the next slot to
    free goes back to ana, who then holds fewer.
  - a 2-slot job queued before a stream of 1-slot jobs on 2 slots: small jobs pass it while it waits (backfill),
    and once it has waited --reserve-after it holds a reservation: no small job starts until it has, and it
    starts within that bound plus the time the small jobs running then need to end.
Times are measured on this machine (a first job's duration), never fixed seconds.
"""
from __future__ import annotations

import dataclasses
import time

import pytest

from coordinator.client import Client, JobState
from coordinator.team.policy import TeamPolicy
from helpers import small_digits_spec, wait_for

pytestmark = pytest.mark.timeout(300)
ROUND_S = 1.0   # a scheduler round and an mpirun launch: well under this on a quiet machine, slack on a busy one
# The small jobs of the reservation test: every bound there is derived from how long they take here, so they need
# only be long enough to be seen running (a second or so, mostly the launch, on a quiet machine)
SMALL_STEPS = 1000


def one_slot(steps: int) -> dict:
    return small_digits_spec(steps=steps, workers=1, eval_every=1000)


def attempts_of(client: Client, job_ids) -> list[tuple[str, float, float]]:
    """(job id, started, ended) of every attempt of these jobs; ended is +inf while running."""
    out = []
    for job_id in job_ids:
        for a in client.get(job_id).attempt_history:
            out.append((job_id, a.started_unix, a.ended_unix or float("inf")))
    return out


def most_at_once(intervals) -> int:
    events = sorted([(s, 1) for _, s, _ in intervals] + [(e, -1) for _, _, e in intervals])
    held = most = 0
    for _, delta in events:
        held += delta
        most = max(most, held)
    return most


def test_the_first_free_slot_goes_to_the_user_below_their_share_and_caps_hold(start_coordinator):
    srv = start_coordinator(slots=3)
    admin = Client(srv.address, token=srv.token)
    _, ana_token = admin.add_user("ana", max_slots=2)
    _, bob_token = admin.add_user("bob")
    ana, bob = Client(srv.address, token=ana_token), Client(srv.address, token=bob_token)
    try:
        blocker = admin.submit(one_slot(10**7))
        wait_for(lambda: admin.get(blocker.id).state is JobState.RUNNING, 60, what="the blocker to run")
        mine = [ana.submit(one_slot(10**7)).id for _ in range(20)]
        running = lambda c, ids: [j for j in ids if c.get(j).state is JobState.RUNNING]  # noqa: E731
        first_two = wait_for(lambda: len(running(ana, mine)) == 2 and running(ana, mine), 60,
                             what="ana's first two jobs to run")
        # the round that starts ana's second job may end before the one that says why her third waits
        queued = wait_for(lambda: "max slots" in (j := ana.get(mine[2])).message and j, 10 * ROUND_S + 5,
                          what="ana's third job to say it waits for her max slots")
        assert queued.state is JobState.QUEUED and "max slots" in queued.message, queued.message
        theirs = [bob.submit(one_slot(10**7)).id for _ in range(2)]
        time.sleep(2 * ROUND_S)   # rounds go by with every slot busy: nothing starts
        assert running(ana, mine) == first_two and not running(bob, theirs)

        ana.cancel(first_two[0])   # the first slot frees: bob holds none, ana one
        wait_for(lambda: running(bob, theirs), 60, what="bob's first job to take the free slot")
        assert running(bob, theirs) == [theirs[0]] and running(ana, mine) == [first_two[1]]
        ana.cancel(first_two[1])   # the next one: ana holds none now, bob one
        third = wait_for(lambda: [j for j in running(ana, mine) if j not in first_two], 60,
                         what="ana's third job to take the next free slot")
        assert third == [mine[2]] and running(bob, theirs) == [theirs[0]]
        # over the whole run, ana's jobs never held more than her 2 slots at once
        assert most_at_once(attempts_of(admin, mine)) == 2
    finally:
        for job in admin.list(states=["QUEUED", "RUNNING"]):
            admin.cancel(job.id)
        for client in (admin, ana, bob):
            client.close()


def test_a_big_job_is_passed_by_small_ones_then_holds_a_reservation(start_coordinator):
    srv = start_coordinator(slots=2, team=TeamPolicy(reserve_after_s=3600))
    admin = Client(srv.address, token=srv.token)
    _, bob_token = admin.add_user("bob")
    _, cy_token = admin.add_user("cy")
    bob, cy = Client(srv.address, token=bob_token), Client(srv.address, token=cy_token)
    try:
        # how long a small job takes here, two at a time as below: the reservation bound is set from it, so a
        # slot frees inside the backfill window however loaded the machine is
        warm = [admin.wait(j) for j in [admin.submit(one_slot(SMALL_STEPS)).id for _ in range(2)]]
        small_s = max(w.attempt_history[-1].ended_unix - w.attempt_history[-1].started_unix for w in warm)
        reserve_s = max(6.0, 3 * small_s)
        srv.core.scheduler.policy = dataclasses.replace(srv.core.scheduler.policy, reserve_after_s=reserve_s)

        first = [bob.submit(one_slot(SMALL_STEPS)).id for _ in range(2)]
        wait_for(lambda: all(bob.get(j).state is not JobState.QUEUED for j in first), 60,
                 what="two small jobs to fill the slots")
        big = cy.submit(small_digits_spec(steps=50, workers=2)).id
        stream = [bob.submit(one_slot(SMALL_STEPS)).id for _ in range(int(4 * reserve_s / small_s) + 4)]
        # a slot frees at once, inside the backfill window however slow the machine is today: the big job
        # cannot use one slot, so a small one behind it must
        bob.cancel(first[0])
        big_job = wait_for(lambda: (j := cy.get(big)).started_unix and j, 20 * reserve_s + 60,
                           what="the 2-slot job to start")
        queued_at, started_at = big_job.created_unix, big_job.started_unix
        small = attempts_of(bob, first + stream)
        longest = max(e - s for _, s, e in small if e != float("inf"))
        # backfill: small jobs started after the big one was queued, while it waited for its reservation
        assert any(queued_at < s < queued_at + reserve_s for _, s, _ in small), (queued_at, small)
        # the reservation: from reserve_after_s on, no small job starts until the big one has
        late = [(j, s - queued_at) for j, s, _ in small if queued_at + reserve_s + ROUND_S < s < started_at]
        assert not late, late
        # so it starts within its bound plus the time the small jobs running then take to end
        assert started_at - queued_at <= reserve_s + longest + 2 * ROUND_S, (started_at - queued_at, reserve_s,
                                                                             longest)
    finally:
        for job in admin.list(states=["QUEUED", "RUNNING"]):
            admin.cancel(job.id)
        for client in (admin, bob, cy):
            client.close()
