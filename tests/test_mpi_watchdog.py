"""The hang watchdog: a rank that goes silent makes the others abort the job in time, and it is named.

Cases (timeout 2 s): a rank SIGSTOPs itself before a collective (no answer), sleeps in Python (its watchdog
answers: busy outside any collective), exits early (it waits in the exit barrier: a different collective),
or is SIGSTOPped from outside while the ranks loop over allreduces. The job must end within timeout +
answer grace + start-up (asserted < 12 s of wall time, against a 25 s subprocess timeout), print which
rank is silent and why, and leave no process: a stopped rank included (hydra kills it with SIGKILL,
which works on stopped processes).
"""
import os
import re
import signal
import time

import pytest

from helpers import wait_for
from mpi_programs.launch import PROGRAMS, rank_pid, run_mpi

PROGRAM = str(PROGRAMS / "hang.py")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nprocs,silent,how,why", [
    (2, 1, "sigstop", "no answer"),
    (3, 1, "sigstop", "no answer"),
    (3, 2, "sleep", "busy outside any collective; has entered 5 of 6 collectives"),
    (3, 1, "exit", "inside a different collective: barrier at exit #6"),
])
def test_watchdog_aborts_and_names_the_silent_rank(nprocs, silent, how, why):
    result = run_mpi(nprocs, ["python", PROGRAM, "--rank", str(silent), "--step", "5", "--how", how,
                              "--timeout", "2"], timeout=25)
    assert not result.timed_out, "the watchdog did not fire:\n" + result.output
    assert result.returncode not in (0, None), result.output
    assert result.elapsed_s < 12, f"took {result.elapsed_s:.1f} s for a 2 s timeout"
    line = re.search(r"rank (\d+) on \S+: collective allreduce #6 did not complete within 2 s; "
                     r"silent rank\(s\): (.*)", result.output)
    assert line, result.output
    assert int(line.group(1)) != silent
    assert line.group(2).startswith(f"{silent} ({why}"), line.group(0)
    assert "finished" not in result.output
    assert result.leftovers == [], result.leftovers


@pytest.mark.timeout(60)
def test_a_rank_stopped_from_outside_mid_collective_is_caught(tmp_path):
    """SIGSTOP sent by someone else while the ranks loop over allreduces (so usually inside one)."""
    ready = tmp_path / "ready"

    def stop_rank_1(marker):
        pid = rank_pid(marker, 1)
        wait_for(ready.exists, timeout=20, what="the collectives to flow", interval=0.02)
        time.sleep(0.2)  # let them run on: rank 1 is then usually inside one when it stops
        os.kill(pid, signal.SIGSTOP)

    result = run_mpi(3, ["python", PROGRAM, "--rank", "-1", "--step", "0", "--how", "sleep", "--timeout", "2",
                         "--ready-file", str(ready)], timeout=25, during=stop_rank_1)
    assert ready.exists(), result.output
    assert not result.timed_out, "the watchdog did not fire:\n" + result.output
    assert result.returncode not in (0, None), result.output
    assert re.search(r"rank [02] on \S+: collective allreduce #\d+ did not complete within 2 s; "
                     r"silent rank\(s\): 1 \(no answer", result.output), result.output
    assert result.leftovers == [], result.leftovers
