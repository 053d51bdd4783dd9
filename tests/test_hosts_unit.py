"""The pure parts of host handling, without processes: the health window and quarantine, placement and
blame, the elastic decisions."""
import json

import pytest

from coordinator.fleet import elastic, placement
from coordinator.fleet.health import HostHealth, HostState, UnknownHost
from coordinator.store.records import JobRow
from coordinator.reports import FailureCause, WorkerFailure
from coordinator.states import JobState


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_failures_in_the_window_quarantine_a_host_until_its_cooldown_ends():
    clock = Clock()
    h = HostHealth([("a", 2), ("b", 2)], failures=2, window_s=60, cooldown_s=30, clock=clock)
    assert not h.failed("b", "one")
    assert h.state("b") is HostState.SUSPECT and h.usable("b")
    clock.now += 61  # the first failure left the window: one more is not enough
    assert not h.failed("b", "two")
    clock.now += 10
    assert h.failed("b", "three")
    assert h.state("b") is HostState.QUARANTINED and not h.usable("b")
    [_, b] = h.status()
    assert b.failures == 2 and b.last_failure == "three" and b.returns_at == clock.now + 30
    clock.now += 30  # cool-down over: healthy, count cleared
    assert h.state("b") is HostState.HEALTHY and h.status()[1].failures == 0
    assert h.state("a") is HostState.HEALTHY
    assert not h.failed("nowhere", "ignored")


def test_drain_is_an_operators_hold_over_any_health():
    h = HostHealth([("a", 1)], failures=1, cooldown_s=10, clock=Clock())
    h.drain("a")
    assert h.state("a") is HostState.DRAINED and not h.usable("a")
    h.failed("a", "x")
    assert h.state("a") is HostState.DRAINED and h.status()[0].quarantined
    h.undrain("a")
    assert h.state("a") is HostState.QUARANTINED
    with pytest.raises(UnknownHost):
        h.drain("z")


def job(id, workers, min_workers=0, seq=1):
    fault = {"min_workers": min_workers} if min_workers else {}
    return JobRow(id=id, name=id, spec_json=json.dumps({"fault": fault}), state=JobState.QUEUED, workers=workers,
                  seq=seq)


def test_rank_hosts_and_allocation_skip_unusable_hosts():
    assert placement.rank_hosts([("a", 2), ("b", 1)]) == ["a", "a", "b"]
    free = {"a": 2, "b": 2, "c": 1}
    assert placement.allocate(3, free, {"a", "b", "c"}) == [("a", 2), ("b", 1)]
    assert placement.allocate(3, free, {"b", "c"}) == [("b", 2), ("c", 1)]
    assert placement.allocate(4, free, {"b", "c"}) is None
    assert placement.allocate(2, {"a": -1, "b": 2}, {"a", "b"}) == [("b", 2)]  # overcommitted a: nothing


def test_placer_never_shares_a_slot_and_names_what_a_job_lacks():
    capacity = {"a": 2, "b": 2}
    placer = placement.Placer(capacity, dict(capacity), {"a", "b"}, elastic.job_launch_size)
    one, two, three = job("one", 2, seq=1), job("two", 2, seq=2), job("three", 1, seq=3)
    assert placer.take(one, 2) and placer.take(two, 2) and not placer.take(three, 1)
    assert placer.taken == {"one": [("a", 2)], "two": [("b", 2)]}
    assert placer.lacking(three, 1) is None  # three waits for slots other jobs hold: no message
    # b quarantined: a 4-rank job cannot start at all and says what it lacks
    placer = placement.Placer(capacity, dict(capacity), {"a"}, elastic.job_launch_size,
                              why_not=lambda h: "quarantined until 12:00:00")
    big = job("big", 4)
    assert placer.size(big) is None and not placer.take(big, 4)
    assert placer.lacking(big, None) == ("waiting for 4 worker slot(s): 2 free on usable hosts; unavailable: b (2 "
                                         "slot(s), quarantined until 12:00:00)")
    # the same job elastic down to 2 starts on a
    elastic_big = job("big", 4, min_workers=2)
    assert placer.size(elastic_big) == 2 and placer.take(elastic_big, 2)
    assert placer.taken["big"] == [("a", 2)]


def test_elastic_sizes_and_grow():
    assert elastic.launch_size(4, 2, 8) == 4
    assert elastic.launch_size(4, 2, 3) == 3
    assert elastic.launch_size(4, 2, 1) is None
    assert elastic.launch_size(4, 4, 3) is None
    assert elastic.min_workers(job("j", 4)) == 4 and not elastic.is_elastic(job("j", 4))
    assert elastic.min_workers(job("j", 4, 2)) == 2 and elastic.is_elastic(job("j", 4, 2))
    assert elastic.should_grow(2, 4, usable_free=2, own_usable=2)
    assert not elastic.should_grow(2, 4, usable_free=1, own_usable=2)
    assert not elastic.should_grow(2, 4, usable_free=2, own_usable=0)  # its own host was drained
    assert not elastic.should_grow(4, 4, usable_free=8, own_usable=4)


ALLOC = [("a", 2), ("b", 2)]


def hang(rank, silent):
    text = "; ".join(f"{r} (no answer: stopped, stuck in C code, dead or cut off)" for r in silent)
    return WorkerFailure(FailureCause.HANG, f"rank {rank} on a: collective allreduce #7 did not complete within "
                                            f"3 s; silent rank(s): {text}", rank=rank, host="a")


def test_blame_silent_hosts_killed_ranks_and_unreachable_hosts_only():
    assert [h for h, _ in placement.blamed_hosts(ALLOC, hang(0, [2, 3]), "")] == ["b"]
    assert placement.blamed_hosts(ALLOC, hang(0, [1, 2]), "") == []   # b answered in part: not a host loss
    assert placement.blamed_hosts(ALLOC, hang(2, [0, 1]), "")[0][0] == "a"
    tail = ("BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n   PID 4242 RUNNING AT b\n"
            "   EXIT STRING: Killed (signal 9)")
    assert placement.blamed_hosts(ALLOC, None, tail) == [("b", "a rank on b was killed (Killed (signal 9))")]
    assert placement.blamed_hosts(ALLOC, None, tail.replace("Killed (signal 9)", "exit code 1")) == []
    ssh = "ssh: connect to host b port 22: No route to host"
    assert placement.blamed_hosts(ALLOC, None, ssh)[0][0] == "b"
    assert placement.blamed_hosts([("a", 4)], None, ssh) == []  # not a host of this attempt
    error = WorkerFailure(FailureCause.RANK_ERROR, "boom", rank=3, host="b", exception_type="ValueError")
    assert placement.blamed_hosts(ALLOC, error, tail) == []  # the job's own error, not the host's


def test_a_rank_killed_on_another_host_is_blamed_from_hydras_exit_code_alone():
    """Across hosts, hydra's report of a SIGKILLed rank has no EXIT STRING line: only the host and the signal
    as the exit code (the proxy there saw it die of signal 9)."""
    tail = ("=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES\n=   PID 4242 RUNNING AT b\n"
            "=   EXIT CODE: 9\n=   CLEANING UP REMAINING PROCESSES\n")
    assert placement.blamed_hosts(ALLOC, None, tail) == [("b", "a rank on b was killed (hydra: EXIT CODE 9, SIGKILL)")]
    assert placement.blamed_hosts(ALLOC, None, tail.replace("CODE: 9", "CODE: 137"))[0][0] == "b"
    assert placement.blamed_hosts(ALLOC, None, tail.replace("CODE: 9", "CODE: 1")) == []   # MPI_Abort, an error
    assert placement.blamed_hosts(ALLOC, None, tail.replace("AT b", "AT elsewhere")) == []
    error = WorkerFailure(FailureCause.RANK_ERROR, "boom", rank=3, host="b", exception_type="ValueError")
    assert placement.blamed_hosts(ALLOC, error, tail) == []  # a rank said why: its own error


def test_a_host_unreachable_at_launch_is_quarantined_at_once():
    ssh = "ssh: connect to host b port 22: No route to host\n[mpiexec@x] control_cb: bad launch"
    assert placement.unreachable_at_launch(ALLOC, ssh) == [("b", "ssh: connect to host b port 22: No route to host")]
    assert placement.unreachable_at_launch([("a", 4)], ssh) == []
    clock = Clock()
    h = HostHealth([("a", 2), ("b", 2)], failures=3, window_s=60, cooldown_s=30, clock=clock)
    assert h.quarantine("b", "unreachable at launch")  # one failure, below the threshold of 3: quarantined anyway
    [_, b] = h.status()
    assert b.state is HostState.QUARANTINED and b.failures == 1 and b.returns_at == clock.now + 30
    assert not h.quarantine("nowhere", "ignored")
    clock.now += 30
    assert h.state("b") is HostState.HEALTHY


def test_a_host_quarantined_again_right_after_its_cooldown_waits_twice_as_long():
    """A host still cut off fails again as soon as its quarantine ends: it is tried at a falling rate, and a
    window without a quarantine starts it afresh."""
    clock = Clock()
    h = HostHealth([("a", 2), ("b", 2)], failures=1, window_s=100, cooldown_s=10, clock=clock)
    ends = []
    for _ in range(4):
        assert h.quarantine("b", "unreachable at launch")
        ends.append(h.status()[1].returns_at - clock.now)
        clock.now = h.status()[1].returns_at  # the cool-down is over; the next launch fails again at once
        assert h.state("b") is HostState.HEALTHY
    assert ends == [10, 20, 40, 80]
    clock.now += 101  # a whole window without a quarantine
    assert h.failed("b", "killed")
    assert h.status()[1].returns_at - clock.now == 10
