"""Scheduling order (priority, then fair share with backfill: coordinator.team.fairshare) and slot accounting,
without processes."""
from coordinator.fleet import placement
from coordinator.scheduler import SlotPool, _whole_pool, scheduling_order
from coordinator.states import JobState
from coordinator.store.records import JobRow
from coordinator.team import fairshare


def job(seq, workers=1, priority=0, owner="admin"):
    return JobRow(id=f"j{seq}", name="n", spec_json="{}", state=JobState.QUEUED, workers=workers, priority=priority,
                  seq=seq, owner=owner, created=1000.0 + seq)


def starts(jobs, pool, *, now=1000.0, reserve_after_s=300.0):
    """What the scheduler would start from `jobs` on `pool`: fair share over a placer, as Scheduler._decide."""
    placer = placement.Placer(pool.capacity, pool.free, set(pool.capacity), _whole_pool)
    by_id = {j.id: j for j in jobs}
    candidates = [fairshare.Candidate(j.id, j.owner, j.priority, j.seq, j.workers, j.created) for j in jobs]
    decision = fairshare.plan(candidates, {}, shares=lambda u: 1.0, max_slots={}, reserve_after_s=reserve_after_s,
                              now=now, place=lambda c: placer.take(by_id[c.job_id], c.slots))
    return decision.started


def test_priority_first_then_fifo():
    jobs = [job(1), job(2, priority=3), job(3), job(4, priority=3), job(5, priority=-1)]
    assert [j.id for j in scheduling_order(jobs)] == ["j2", "j4", "j1", "j3", "j5"]


def test_small_jobs_backfill_past_a_big_one_until_it_has_waited_long_enough():
    pool = SlotPool.local_pool(3)
    assert starts([job(1, workers=2), job(2, workers=1), job(3, workers=1)], pool) == ["j1", "j2"]
    # the head needs 4 of 3 free: the small one behind it starts anyway (backfill) ...
    assert starts([job(1, workers=4), job(2, workers=1)], pool) == ["j2"]
    # ... until the big one has waited reserve_after_s: then it holds a reservation and nothing passes it
    assert starts([job(1, workers=4), job(2, workers=1)], pool, now=1001.0 + 300) == []
    assert starts([], SlotPool.local_pool(8)) == []


def test_two_jobs_that_do_not_fit_together_go_one_after_the_other():
    pool = SlotPool.local_pool(2)
    a, b = job(1, workers=2), job(2, workers=2)
    assert starts([a, b], pool) == ["j1"]
    alloc = pool.allocate(2)
    assert starts([b], pool) == []
    pool.release(alloc)
    assert starts([b], pool) == ["j2"]


def test_allocation_spans_hosts_in_order():
    pool = SlotPool([("a", 2), ("b", 2), ("c", 1)])
    assert pool.total == 5
    assert pool.allocate(3) == [("a", 2), ("b", 1)]
    assert pool.allocate(3) is None and pool.available == 2
    assert pool.allocate(2) == [("b", 1), ("c", 1)]
    pool.release([("a", 2)])
    assert pool.free == {"a": 2, "b": 0, "c": 0}


def test_progress_watch_flags_a_job_whose_step_stops_moving():
    from coordinator.supervision.watchdog import ProgressWatch
    now = [0.0]
    watch = ProgressWatch(clock=lambda: now[0], startup_s=5)
    watch.started("a", timeout_s=10)
    watch.started("b", timeout_s=10)
    now[0] = 1.0
    watch.progress("a", step=0, event=True)  # "started": where training begins
    watch.progress("b", step=0, event=True)
    now[0] = 8.0
    watch.progress("a", step=5)
    watch.progress("b", step=1)
    now[0] = 15.0
    watch.progress("a", step=5)  # a heartbeat at the same step is not progress
    assert watch.overdue() == []
    now[0] = 18.5
    overdue = watch.overdue()
    assert [j for j, _ in overdue] == ["a", "b"]
    assert "no progress for 10 s at step 5" in overdue[0][1]
    assert watch.overdue() == []  # reported once
    watch.forget("a")
    watch.started("c", timeout_s=1)  # never reports at all: it gets the start-up allowance of 5 s first
    now[0] = 23.0
    assert watch.overdue() == []
    now[0] = 24.0
    late = watch.overdue()
    assert [j for j, _ in late] == ["c"] and "no report before its first step" in late[0][1]


def test_the_start_up_allowance_lasts_until_the_first_real_step():
    """Rank 0 reports the step it starts (or resumes) at right after fetching the spec; loading data and the
    first step may take longer than a short hang_timeout_s on a loaded machine. Until a step past that first
    report, the job is measured against the bounded start-up allowance from its launch."""
    from coordinator.supervision.watchdog import ProgressWatch
    now = [0.0]
    watch = ProgressWatch(clock=lambda: now[0], startup_s=30)
    watch.started("fresh", timeout_s=3)
    watch.started("resumed", timeout_s=3)
    now[0] = 1.0
    watch.progress("fresh", step=0, event=True)       # "started" at step 0
    watch.progress("resumed", step=400, event=True)   # "started" at the checkpoint's step 400
    for t in range(2, 30):                            # heartbeats at the same step while data loads
        now[0] = float(t)
        watch.progress("fresh", step=0)
        watch.progress("resumed", step=400)
        assert watch.overdue() == [], t
    now[0] = 29.5
    watch.progress("fresh", step=1)                   # the first real step: hang_timeout_s applies from here
    now[0] = 31.0
    late = watch.overdue()
    assert [j for j, _ in late] == ["resumed"], late  # 30 s allowance over, still no step past 400
    assert "no step for 31 s at step 400 before its first step (start-up allowance 30 s)" in late[0][1]
    now[0] = 32.4
    assert watch.overdue() == []
    now[0] = 32.6
    late = watch.overdue()
    assert [j for j, _ in late] == ["fresh"] and "no progress for 3 s at step 1 (hang_timeout_s = 3)" in late[0][1]
