"""An sbatch whose answer is lost ("Socket timed out on send/recv operation"), against a real single-node Slurm
(tests/slurm_cluster.py): the attempt must run once, not once per try.

The fault is injected around the real Slurm: an `sbatch` first on the coordinator's PATH that runs the real
sbatch and then fails as a lost answer does (Slurm holds the job; the coordinator did not hear its id), or,
for the other case, fails once without running it (the request never made it; its second call is sent on).
What is shown: in the first case the coordinator finds the job by its name and adopts it, sbatch is called
once and Slurm holds one job of that name; in the second it submits again, once, after it saw no such job.
Each gradmesh job succeeds in one attempt, with no restart spent.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from slurm_serve import Serve

pytestmark = pytest.mark.timeout(240)

LOST = "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation"


def lossy_sbatch(directory: Path, real: str) -> Path:
    """An sbatch that loses its answer once for each job name listed in `lose-after` (after the real sbatch
    ran) or `lose-before` (without running it), listed without the name's last part (the job's submission,
    known only once it is submitted): "gradmesh-JOB-a1". Every call's whole job name is appended to `calls`."""
    directory.mkdir(parents=True, exist_ok=True)
    for listing in ("lose-after", "lose-before", "calls"):
        (directory / listing).touch()
    wrapper = directory / "sbatch"
    wrapper.write_text(f"""#!/bin/sh
here='{directory}'
for arg; do case "$arg" in --job-name=*) name=${{arg#--job-name=}};; esac; done
echo "$name" >> "$here/calls"
listed=${{name%-*}}
if grep -qxF "$listed" "$here/lose-before" && mkdir "$here/lost-$name" 2>/dev/null; then
  echo '{LOST}' >&2; exit 1
fi
said=$('{real}' "$@") || exit $?
if grep -qxF "$listed" "$here/lose-after" && mkdir "$here/lost-$name" 2>/dev/null; then
  echo '{LOST}' >&2; exit 1
fi
echo "$said"
""")
    wrapper.chmod(0o755)
    return wrapper


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    real = shutil.which("sbatch")
    if real is None:
        pytest.skip("no sbatch here")
    return lossy_sbatch(tmp_path_factory.mktemp("lossy") / "bin", real).parent


@pytest.fixture(scope="module")
def serve(slurm, faults):
    server = Serve(slurm, slurm.hidden / "lost-answer", path=str(faults))
    yield server
    server.stop()


def slurm_jobs_of(slurm, job: str) -> list[str]:
    """Every Slurm job of any attempt of the gradmesh job that the controller holds, in any state (ended ones
    stay MinJobAge, 300 s here), as "id|name|state"."""
    out = slurm.run(["squeue", "--states=all", "--noheader", "--format=%i|%j|%T"]).stdout
    return [line for line in out.splitlines() if line.split("|")[1].startswith(f"gradmesh-{job}-a")]


def check_ran_once(serve, slurm, faults: Path, job: str, calls: int) -> str:
    done = serve.wait_state(job, "SUCCEEDED", timeout=120)
    assert done["attempts"] == 1 and done["restarts"] == 0, dict(done)
    name = serve.slurm_name(job)
    assert (faults / f"lost-{name}").is_dir(), "the fault was not injected"
    assert (faults / "calls").read_text().split().count(name) == calls
    ran = slurm_jobs_of(slurm, job)
    assert len(ran) == 1 and ran[0].endswith(f"|{name}|COMPLETED"), ran
    assert serve.slurm_job(job) == ran[0].split("|")[0]
    return serve.cli("logs", job).stdout


def test_a_job_slurm_took_whose_answer_was_lost_is_adopted_not_submitted_again(serve, slurm, faults, tmp_path):
    with open(faults / "lose-after", "a") as f:
        f.write("gradmesh-lost-after-a1\n")
    job = serve.submit(tmp_path, "lost-after", steps=40)
    log = check_ran_once(serve, slurm, faults, job, calls=1)
    assert "sbatch's answer was lost (" + LOST in log, log[:3000]
    assert f"found by its name {serve.slurm_name(job)}" in log, log[:3000]


def test_a_submission_slurm_never_saw_is_sent_again_once_no_job_of_its_name_shows(serve, slurm, faults, tmp_path):
    with open(faults / "lose-before", "a") as f:
        f.write("gradmesh-lost-before-a1\n")
    job = serve.submit(tmp_path, "lost-before", steps=40)
    log = check_ran_once(serve, slurm, faults, job, calls=2)
    assert "submitted again after a lost answer as Slurm job" in log, log[:3000]


def test_a_lost_answer_is_not_taken_for_an_earlier_job_of_the_same_id(serve, slurm, faults, tmp_path):
    # Slurm still shows the deleted job's attempt (MinJobAge): the new job's lookup must not adopt it
    job = serve.submit(tmp_path, "reused", steps=40)
    serve.wait_state(job, "SUCCEEDED", timeout=120)
    earlier, earlier_name = serve.slurm_job(job), serve.slurm_name(job)
    serve.cli("delete", job)
    with open(faults / "lose-before", "a") as f:
        f.write(f"gradmesh-{job}-a1\n")
    serve.submit(tmp_path, "reused", steps=40)
    done = serve.wait_state(job, "SUCCEEDED", timeout=120)
    assert done["attempts"] == 1 and done["restarts"] == 0, dict(done)
    name = serve.slurm_name(job)
    assert name != earlier_name and (faults / f"lost-{name}").is_dir(), "the fault was not injected"
    assert (faults / "calls").read_text().split().count(name) == 2  # lost, then sent again: not adopted
    assert serve.slurm_job(job) != earlier
    assert f"{serve.slurm_job(job)}|{name}|COMPLETED" in slurm_jobs_of(slurm, job)
    assert "submitted again after a lost answer as Slurm job" in serve.cli("logs", job).stdout
