"""BLAS threads per rank: automatic from the affinity mask and ranks per host, the spec, the user's env.

Each case runs tests/mpi_programs/threads_report.py under mpirun and reads what configure_blas_threads
decided and what the loaded BLAS (via threadpoolctl) then reports.
"""
import json
import os
import re

import pytest

from mpi_programs.launch import PROGRAMS, run_mpi

PROGRAM = str(PROGRAMS / "threads_report.py")
CORES = len(os.sched_getaffinity(0))


def reports(result):
    assert result.returncode == 0 and not result.timed_out, result.output
    # Ranks share mpirun's stdout, so two lines can run together: pick the JSON objects out by pattern.
    rows = [json.loads(found) for found in re.findall(r"THREADS (\{[^{}]*\})", result.output)]
    return sorted(rows, key=lambda row: row["rank"])


def clean_env(**extra):
    env = {name: "" for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update(extra)
    return env


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nprocs", [1, 2, 3])
def test_automatic_divides_the_cores_among_the_ranks_of_the_host(nprocs):
    rows = reports(run_mpi(nprocs, ["python", PROGRAM], timeout=20, env=clean_env()))
    assert len(rows) == nprocs
    for row in rows:
        assert row["local_size"] == nprocs
        assert row["threads"] == row["blas"] == max(1, CORES // nprocs), row
        assert row["source"].startswith("automatic"), row


@pytest.mark.timeout(60)
def test_affinity_mask_counts_not_the_machine():
    # taskset pins mpirun and so every rank to one core: automatic must say 1, whatever the machine has.
    rows = reports(run_mpi(1, ["taskset", "-c", "0", "python", PROGRAM], timeout=20, env=clean_env()))
    assert rows[0]["cores"] == 1 and rows[0]["threads"] == 1 == rows[0]["blas"], rows


@pytest.mark.timeout(60)
def test_spec_request_applies():
    rows = reports(run_mpi(2, ["python", PROGRAM, "--requested", "2"], timeout=20, env=clean_env()))
    for row in rows:
        assert row["threads"] == row["blas"] == 2 and row["source"] == "spec train.threads_per_rank", row


@pytest.mark.timeout(60)
@pytest.mark.parametrize("var", ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"])
def test_user_environment_wins_over_the_spec(var):
    rows = reports(run_mpi(1, ["python", PROGRAM, "--requested", "2"], timeout=20, env=clean_env(**{var: "1"})))
    assert rows[0]["threads"] == rows[0]["blas"] == 1 and rows[0]["source"] == f"environment {var}=1", rows
