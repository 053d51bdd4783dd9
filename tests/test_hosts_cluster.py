"""A real coordinator over hosts made of network namespaces (tests/netns_hosts.py), with real ranks.

    coordinator (this namespace, 10.77.K.254) ── switch ── host 10.77.K.1 (2 slots) ── host 10.77.K.2 (2 slots)

The coordinator is started with `start_server(hosts=[(h1, 2), (h2, 2)], host=HEAD, mpi_args=[-launcher ssh
-launcher-exec SCRIPT -localhost HEAD ...])`: it binds HEAD, which the ranks in every namespace dial, and
its mpirun (here) launches one hydra proxy per host through the ssh stand-in. Links are cut with
`ip link set gm0 down` inside a host's namespace: its ranks live on, cut off from everyone, as when a
cable is pulled. Skipped with the reason where namespaces cannot be made.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from coordinator.client import Client, JobState
from coordinator.hosthealth import HostPolicy
from coordinator.server import start_server
from mpi_programs.launch import run_mpi
from netns_hosts import netns_cluster

LAYERS = [64, 128, 128, 10]
GRADIENT_BYTES = 4 * sum(i * o + o for i, o in zip(LAYERS[:-1], LAYERS[1:]))


def spec(name: str, *, steps: int, workers: int = 4, min_workers: int = 0, every: int = 20,
         hang_timeout_s: float = 3.0, eval_every: int = 10) -> dict:
    fault = {"max_restarts": 3, "backoff_s": 0.0, "hang_timeout_s": hang_timeout_s}
    if min_workers:
        fault["min_workers"] = min_workers
    return {"name": name, "workers": workers,
            "model": {"layers": LAYERS}, "data": {"source": "digits"},
            "train": {"steps": steps, "batch_size": 64, "eval_every": eval_every, "threads_per_rank": 1},
            "checkpoint": {"every_steps": every, "keep_last": 30}, "fault": fault}


def wait_for(what, predicate, timeout: float, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def cluster(tmp_path):
    with netns_cluster(tmp_path, hosts=2) as c:
        yield c


@pytest.fixture
def coordinator(cluster, tmp_path):
    servers = []

    def start(**policy):
        srv = start_server(tmp_path / "coord", host=cluster.head, hosts=[(h, 2) for h in cluster.hosts],
                           data_roots=[tmp_path], mpi_args=cluster.mpirun_args,
                           host_policy=HostPolicy(**policy))
        servers.append(srv)
        return srv, Client(srv.address, token=srv.token, timeout=10)

    yield start
    for srv in servers:
        srv.stop(grace=1.0)


def attempts(client, job_id):
    return client.get(job_id).attempt_history


@pytest.mark.timeout(90)
def test_a_two_host_job_succeeds_with_gradients_over_the_link(cluster, coordinator):
    srv, client = coordinator()
    a, b = cluster.hosts
    before = cluster.link_bytes(b)
    steps = 40
    job = client.submit(spec("two-hosts", steps=steps, every=0))
    done = wait_for("the job to end", lambda: (j := client.get(job.id)).is_terminal() and j, 60)
    after = cluster.link_bytes(b)
    assert done.state is JobState.SUCCEEDED, (done.message, Path(srv.data_dir, "logs", job.id, "attempt-1.log").read_text())
    [attempt] = done.attempt_history
    assert attempt.ranks == 4 and attempt.hosts == f"{a}:2,{b}:2", attempt
    assert "-launcher-exec" in attempt.mpi_args  # stored with the attempt
    rx, tx = after[0] - before[0], after[1] - before[1]
    print(f"host {b}: rx {rx:,} B, tx {tx:,} B for {steps} steps of a {GRADIENT_BYTES:,} B gradient")
    assert rx >= steps * GRADIENT_BYTES and tx >= steps * GRADIENT_BYTES, (rx, tx)
