"""worker.comm under real mpirun (1, 2 and 3 ranks, watchdog off and on), and SerialComm without MPI.

tests/mpi_programs/comm_checks.py asserts on every rank: in-place allreduce of float32/float64 (exact on
integers, to rounding on random data), bad buffers refused, bcast_ and bcast_bytes from the first and the
last rank, assert_identical passing on equal vectors and naming the rank that differs by one ulp,
two overlapping iallreduces, barrier. Any failed check aborts the job, so the exit code is the verdict.
"""
import os
import subprocess
import sys

import pytest

from mpi_programs.launch import PROGRAMS, REPO, run_mpi

CHECKS = str(PROGRAMS / "comm_checks.py")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("nprocs", [1, 2, 3])
@pytest.mark.parametrize("watchdog", [None, 5.0], ids=["plain", "watchdog"])
def test_comm_methods_on_every_rank(nprocs, watchdog):
    argv = ["python", CHECKS] + ([] if watchdog is None else ["--watchdog", str(watchdog)])
    result = run_mpi(nprocs, argv, timeout=30)
    assert not result.timed_out, result.output
    assert result.returncode == 0, result.output
    for rank in range(nprocs):
        assert f"PASS comm checks on rank {rank} of {nprocs}" in result.output, result.output
    assert result.leftovers == []


@pytest.mark.timeout(30)
def test_serial_comm_without_a_launcher_never_imports_mpi4py():
    code = (
        "import sys, numpy as np\n"
        "from worker.comm import SerialComm, init_comm\n"
        "c = init_comm(hang_timeout_s=5)\n"
        "assert isinstance(c, SerialComm) and (c.rank, c.size, c.local_rank, c.local_size) == (0, 1, 0, 1)\n"
        "v = np.arange(5, dtype=np.float32); c.allreduce_sum_(v); c.bcast_(v); c.iallreduce_sum_(v).wait()\n"
        "assert v.tolist() == [0, 1, 2, 3, 4]\n"
        "assert c.bcast_bytes(b'abc') == b'abc'\n"
        "c.assert_identical(v, 'v'); c.barrier()\n"
        "try:\n    c.allreduce_sum_(np.zeros(3, np.int64))\nexcept TypeError: pass\n"
        "else: raise AssertionError('int64 accepted')\n"
        "assert 'mpi4py' not in sys.modules, 'SerialComm imported mpi4py'\n"
        "print('serial ok')\n"
    )
    env = {k: v for k, v in os.environ.items()
           if k not in ("PMI_RANK", "PMI_SIZE", "PMIX_RANK", "OMPI_COMM_WORLD_SIZE", "MPI_LOCALNRANKS",
                        "SLURM_STEP_NUM_TASKS")}
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=20)
    assert out.returncode == 0 and "serial ok" in out.stdout, out.stdout + out.stderr


@pytest.mark.timeout(30)
def test_launcher_detection():
    from worker.comm import launched_by_mpi
    assert launched_by_mpi({"PMI_RANK": "0", "PMI_SIZE": "2"})
    assert launched_by_mpi({"PMIX_RANK": "3"})
    assert launched_by_mpi({"OMPI_COMM_WORLD_SIZE": "4"})
    assert not launched_by_mpi({"SLURM_PROCID": "0", "HOME": "/root"})
