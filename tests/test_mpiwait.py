"""worker/mpiwait.py: MPICH's waiting is changed only when the ranks fill the cores, never over the user's."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from worker.mpiwait import YIELD_CVARS, set_wait_policy, wait_policy

ROOT = Path(__file__).resolve().parent.parent


def test_ranks_that_fill_the_cores_yield_while_waiting():
    env = {"MPI_LOCALNRANKS": "2"}
    why = set_wait_policy(env, cores=2)
    assert "fill 2 core(s)" in why and all(env[k] == v for k, v in YIELD_CVARS.items())


def test_fewer_ranks_than_cores_or_no_launcher_change_nothing():
    for env, cores in (({"MPI_LOCALNRANKS": "2"}, 4), ({}, 2)):
        before = dict(env)
        set_wait_policy(env, cores=cores)
        assert env == before


def test_the_users_choice_wins():
    env = {"MPI_LOCALNRANKS": "4", "MPIR_CVAR_POSIX_POLL_FREQUENCY": "5000"}
    set_wait_policy(env, cores=2)
    assert env["MPIR_CVAR_POSIX_POLL_FREQUENCY"] == "5000"        # a CVAR the user set is kept
    assert wait_policy({"MPI_LOCALNRANKS": "4", "GRADMESH_MPI_WAIT": "spin"}, cores=2)[0] == {}
    assert wait_policy({"GRADMESH_MPI_WAIT": "yield"}, cores=64)[0] == YIELD_CVARS
    assert "MPIR_CVAR_CH4_PROGRESS_THROTTLE" in wait_policy({"GRADMESH_MPI_WAIT": "throttle"}, cores=2)[0]


def test_a_rank_runs_with_the_policy(tmp_path):
    """Under mpirun -n 2 on 2 cores, each rank's environment carries the CVARs before MPI_Init (MPICH reads them
    there); the job still trains."""
    mpirun = Path(sys.executable).parent / "mpirun"
    code = ("import os, sys; from worker.comm import init_comm; c = init_comm(); "
            f"open(os.path.join({str(tmp_path)!r}, f'rank{{c.rank}}'), 'w').write("
            "f\"{c.rank} {os.environ.get('MPIR_CVAR_POSIX_POLL_FREQUENCY')} {c.wait_policy}\")")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MPIR_CVAR")}, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([str(mpirun), "-n", "2", sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = sorted(p.read_text() for p in tmp_path.glob("rank*"))   # one file per rank: prints interleave
    cores = len(os.sched_getaffinity(0))
    expected = "10" if cores <= 2 else "None"
    assert [ln.split()[1] for ln in lines] == [expected, expected], out.stdout
