"""Recovery time: from a worker rank's death (kill -9) to the job training again, and the steps lost.

    PYTHONPATH=. python bench/recovery.py               # 3 kills, ~1 minute
    PYTHONPATH=. python bench/recovery.py --runs 5 --every-steps 50

A real coordinator (start_server on 127.0.0.1, 2 slots) runs a real 2-rank job. Once it has passed a
checkpoint, the bench sends SIGKILL to rank 1 (found in /proc by the job's id and PMI_RANK) and records:

  detect    kill → the coordinator records the attempt's end (RESTARTING)
  relaunch  kill → the new mpirun starts (RUNNING, next attempt), with [fault] backoff_s = 0
  first new kill → the new attempt's first stored metric point (eval_every = 1: every step is a
            timestamped point; points of redone steps already stored are dropped as duplicates, so this
            is the first step past the last one delivered before the kill)
  caught up kill → the new attempt passes the step the old one had reached when killed (extrapolated
            from the old attempt's point timestamps: rank 0 delivers points about once a second)
  lost      steps reached before the kill minus the checkpoint resumed from (the newest one stored)

Target: detect + relaunch < 3 s, plus worker start-up; lost: at most the steps since the last
checkpoint that reached the coordinator (one still uploading when the rank dies is not there yet).
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from coordinator.client import Client  # noqa: E402
from coordinator.supervision.processes import find  # noqa: E402
from coordinator.access.limits import Limits  # noqa: E402
from coordinator.api.server import start_server  # noqa: E402


def job_spec(every_steps: int) -> dict:
    return {
        "name": "recovery-bench", "workers": 2,
        "model": {"layers": [784, 256, 256, 10]},
        "data": {"source": "synthetic", "val_fraction": 0.01,
                 "synthetic": {"samples": 20000, "features": 784, "classes": 10}},
        "train": {"steps": 100000, "batch_size": 256, "eval_every": 1, "threads_per_rank": 1},
        "optim": {"name": "adam", "lr": 0.001},
        "checkpoint": {"every_steps": every_steps, "keep_last": 2},
        "fault": {"max_restarts": 100, "backoff_s": 0.0, "hang_timeout_s": 60.0},
    }


def rank_pid(job_id: str, rank: int) -> int | None:
    found = find(argv_has=["worker", job_id], env={"PMI_RANK": str(rank)})
    return found[0].pid if found else None


def wait_for(predicate, timeout: float, what: str):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise TimeoutError(f"timed out waiting for {what}")


def one_kill(client: Client, job_id: str, attempt: int, after_step: int) -> dict:
    wait_for(lambda: client.get(job_id).step >= after_step and client.get(job_id).attempts == attempt,
             120, f"attempt {attempt} to pass step {after_step}")
    pid = wait_for(lambda: rank_pid(job_id, 1), 30, "rank 1's process")
    killed_at = time.time()
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: any(s.state.name == "RUNNING" and s.attempt == attempt + 1 for s in client.get(job_id).history),
             60, "the relaunch")
    # the dead ranks can upload nothing more, so the newest checkpoint now is the one the relaunch resumes from
    resumed_from = max(c.step for c in client.checkpoints(job_id))
    job = client.get(job_id)
    restarting = [s for s in job.history if s.state.name == "RESTARTING" and s.time_unix >= killed_at - 1]
    running = [s for s in job.history if s.state.name == "RUNNING" and s.attempt == attempt + 1]
    # rank 0 delivers its points in batches (about once a second), so the last delivered point is behind the
    # step it had reached; extrapolate from its own timestamps at the rate it was training
    before = [p for p in client.metrics(job_id) if p.attempt == attempt]
    last, earlier = before[-1], before[max(0, len(before) - 50)]
    rate = (last.step - earlier.step) / max(last.time_unix - earlier.time_unix, 1e-9)
    reached = last.step + max(0.0, killed_at - last.time_unix) * rate
    beyond = wait_for(lambda: [p for p in client.metrics(job_id) if p.attempt == attempt + 1 and p.step > reached],
                      120, "the new attempt to pass the step reached before the kill")[0]
    first_new = [p for p in client.metrics(job_id) if p.attempt == attempt + 1][0]
    return {"detect": restarting[0].time_unix - killed_at if restarting else float("nan"),
            "relaunch": running[0].time_unix - killed_at if running else float("nan"),
            "training": first_new.time_unix - killed_at,
            "caught_up": beyond.time_unix - killed_at,
            "lost": reached - resumed_from, "resumed_from": resumed_from, "killed_after": reached}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="kills in one job")
    parser.add_argument("--every-steps", type=int, default=50, help="checkpoint interval")
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gradmesh-recovery-") as tmp:
        # a point every step of 100,000 steps: one more than a job may store by default (coordinator.access.limits)
        srv = start_server(Path(tmp) / "data", slots=2, data_roots=[Path(tmp)], limits=Limits(points_per_job=10 ** 6))
        try:
            client = Client(srv.address, token=srv.token)
            job = client.submit(job_spec(opts.every_steps))
            rows = []
            for i in range(opts.runs):
                start = client.get(job.id).step if i else 0
                # kill somewhere between two checkpoints, at a different offset each time
                target = start + opts.every_steps + (opts.every_steps * (i + 1)) // (opts.runs + 1)
                rows.append(one_kill(client, job.id, attempt=i + 1, after_step=target))
                r = rows[-1]
                print(f"kill {i + 1}: at step ~{r['killed_after']:.0f}, resumed from {r['resumed_from']} "
                      f"(lost ~{r['lost']:.0f} steps) | detect {r['detect']:.2f} s, relaunch {r['relaunch']:.2f} s, "
                      f"first new point {r['training']:.2f} s, caught up {r['caught_up']:.2f} s", flush=True)
            client.cancel(job.id)
            print(f"median of {len(rows)}: detect {statistics.median(r['detect'] for r in rows):.2f} s, "
                  f"relaunch {statistics.median(r['relaunch'] for r in rows):.2f} s, "
                  f"first new point {statistics.median(r['training'] for r in rows):.2f} s, "
                  f"caught up {statistics.median(r['caught_up'] for r in rows):.2f} s; "
                  f"steps lost {[round(r['lost']) for r in rows]} with a checkpoint every {opts.every_steps} steps")
        finally:
            srv.stop(grace=5.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
