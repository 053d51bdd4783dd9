"""coordinator/supervision/shm_leftovers.py against real MPI ranks: the /dev/shm segments of ranks killed by SIGKILL
stay behind (MPI_Finalize never ran), and sweep() removes exactly those: never one a live rank maps, never a
fresh one, never a file that is not MPICH's."""
import os
import signal
import subprocess
import sys
import time
import uuid

import pytest

from coordinator.supervision.processes import find
from coordinator.supervision.shm_leftovers import PREFIX, SHM_DIR, Janitor, mapped_paths, sweep
from helpers import wait_for
from mpi_programs.launch import REPO, mpirun_path

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="no /dev/shm on this system")

RANK = """
import sys, time
import numpy as np
from worker.comm import init_comm
comm = init_comm(hang_timeout_s=None)
buf = comm.reduction_buffer(1000)   # a shared window as well as MPICH's own cells
comm.allreduce_sum_(buf)
print("ready", flush=True)
time.sleep(120)
"""


def segments() -> set:
    return {p for p in SHM_DIR.iterdir() if p.name.startswith(PREFIX)}


@pytest.mark.timeout(90)
def test_segments_of_killed_ranks_are_removed_and_live_ones_kept():
    marker = uuid.uuid4().hex
    before = segments()
    env = {**os.environ, "PYTHONPATH": str(REPO), "GRADMESH_TEST_MARKER": marker}
    job = subprocess.Popen([mpirun_path(), "-n", "2", sys.executable, "-c", RANK], stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
    try:
        seen = ""
        while seen.count("ready") < 2:   # the two ranks' lines may arrive on one line
            line = job.stdout.readline()
            assert line, seen
            seen += line
        theirs = segments() - before
        assert theirs, "the ranks created no /dev/shm segment"
        assert all(str(p) in mapped_paths() for p in theirs)
        removed = sweep(grace_s=0)
        assert not (set(removed) & theirs), "a segment live ranks map was removed"
        assert theirs <= segments()
        ranks = [p for p in find(env={"GRADMESH_TEST_MARKER": marker}) if "mpirun" not in " ".join(p.argv())]
        for p in ranks:
            os.kill(p.pid, signal.SIGKILL)
        job.wait(timeout=30)
    finally:
        try:
            os.killpg(job.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        job.wait(timeout=30)
    wait_for(lambda: not find(env={"GRADMESH_TEST_MARKER": marker}), timeout=20, what="the ranks to be gone")
    left = theirs & segments()
    assert left, "killed ranks left nothing behind: this test proves nothing here"
    assert not (set(sweep(grace_s=3600)) & left), "fresh segments must be kept"
    assert left <= segments()
    removed = set(sweep(grace_s=0))
    assert removed & left   # (all of `left`, unless another test run on this host swept some first)
    assert not (left & segments())


@pytest.mark.timeout(30)
def test_only_mpich_files_of_ours_that_nothing_maps_and_are_old_enough_go(tmp_path):
    shm = tmp_path / "shm"
    shm.mkdir()
    old = shm / f"{PREFIX}old"
    fresh = shm / f"{PREFIX}fresh"
    foreign = shm / "someone_elses_segment"
    mapped = shm / f"{PREFIX}mapped"
    for p in (old, fresh, foreign, mapped):
        p.write_bytes(b"\0" * 4096)
    for p in (old, foreign, mapped):
        os.utime(p, (time.time() - 120, time.time() - 120))
    # ctime cannot be set back: a grace of 0 s stands for "old", a long one for "fresh"
    holder = subprocess.Popen([sys.executable, "-c", f"import mmap,sys,time\nf=open({str(mapped)!r},'r+b')\n"
                               "m=mmap.mmap(f.fileno(), 4096)\nprint('mapped', flush=True)\ntime.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "mapped"
        assert sweep(shm, grace_s=3600) == []
        removed = sweep(shm, grace_s=0)
        assert set(removed) == {old, fresh}
        assert foreign.exists() and mapped.exists()
    finally:
        holder.kill()
        holder.wait()
    assert sweep(shm, grace_s=0) == [mapped]   # once nothing maps it any more


@pytest.mark.timeout(30)
def test_the_janitor_sweeps_off_thread_after_an_attempt_and_again_after_the_grace():
    calls = []
    janitor = Janitor(grace_s=0.5, sweep_fn=lambda: calls.append(time.monotonic()))
    janitor.tick()
    assert calls == []   # nothing ended: nothing to do
    janitor.attempt_ended()
    janitor.tick()
    wait_for(lambda: len(calls) == 1, timeout=5, what="the first sweep")
    janitor.tick()
    time.sleep(0.2)
    assert len(calls) == 1   # the second waits for the grace
    time.sleep(1.4)
    janitor.tick()
    wait_for(lambda: len(calls) == 2, timeout=5, what="the sweep after the grace")
