"""Kill-safety: a rank that raises mid-run takes the whole job down at once, loudly, leaving nothing behind.

The baseline is measured too: the same program on bare mpi4py (no abort hook) hangs — the raising rank
waits in MPI_Finalize while its peers wait in their next allreduce — so it is the hook that makes the
difference, and the first test could fail.
"""
import pytest

from mpi_programs.launch import PROGRAMS, run_mpi

PROGRAM = str(PROGRAMS / "raise_midway.py")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nprocs,bad_rank", [(2, 1), (3, 1), (3, 0)])
def test_a_raising_rank_aborts_the_job_within_seconds(nprocs, bad_rank):
    result = run_mpi(nprocs, ["python", PROGRAM, "--rank", str(bad_rank), "--step", "5"], timeout=20)
    assert not result.timed_out, "the job hung:\n" + result.output
    assert result.returncode not in (0, None), result.output
    assert result.elapsed_s < 10, f"took {result.elapsed_s:.1f} s"
    tag = f"[rank {bad_rank} on "
    assert f"{tag}" in result.output and "Traceback (most recent call last)" in result.output, result.output
    assert f"RuntimeError: injected failure on rank {bad_rank} at step 5" in result.output, result.output
    assert "finished all" not in result.output
    assert result.leftovers == [], result.leftovers


@pytest.mark.timeout(60)
def test_without_the_hook_the_same_failure_hangs():
    result = run_mpi(2, ["python", PROGRAM, "--rank", "1", "--step", "5", "--plain"], timeout=6)
    assert result.timed_out, "bare mpi4py did not hang; the kill-safety test above proves less than it says"
    assert "injected failure on rank 1" in result.output
    assert result.leftovers == [], result.leftovers  # the harness killed the process group
