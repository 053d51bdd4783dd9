"""ForkJob (`gradmesh fork JOB --from-step K --set key=value`), end to end on a real coordinator with real ranks.

  - a fork with no setting changed continues bit-identically: its final parameters equal the parent's;
  - a fork with a new learning rate starts from the parent's step-K state (its history up to K is the parent's)
    and ends elsewhere;
  - shape-changing keys (model.layers, optim.name) are refused with INVALID_ARGUMENT naming the key; a step with
    no checkpoint is NOT_FOUND listing the stored steps; a bad JSON value names its setting;
  - a sweep seeded from a fork point starts every trial from that checkpoint.
"""
from __future__ import annotations

import json
import time

import grpc
import numpy as np
import pytest

from conftest import AuthedJobStub
from coordinator.client import Client, InvalidArgument, JobState, NotFound
from coordinator.rpc import gradmesh_pb2 as pb
from helpers import cli_env, digits_toml, expect_error, run_cli, wait_for

pytestmark = pytest.mark.timeout(900)


def params(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files if k.startswith("layers.")}


def run_to_end(client: Client, job_id: str, timeout: float):
    wait_for(lambda: client.get(job_id).is_terminal(), timeout=timeout, what=f"job {job_id} to end")
    job = client.get(job_id)
    assert job.state is JobState.SUCCEEDED, job.message
    return job


@pytest.fixture
def parent(start_coordinator, tmp_path):
    srv = start_coordinator()
    client = Client(srv.address, token=srv.token)
    started = time.monotonic()
    job = client.submit(digits_toml("parent", steps=60, workers=1, every_steps=20, keep_last=5), job_id="parent")
    run_to_end(client, job.id, timeout=600)
    pace = time.monotonic() - started
    client.download("parent", tmp_path / "parent.npz", step=60)
    yield srv, client, pace
    client.close()


def test_a_fork_with_nothing_changed_ends_bit_identical_to_its_parent(parent, tmp_path):
    srv, client, pace = parent
    fork = client.fork("parent", 20, {})
    assert fork.id == "parent-f1" and fork.labels["forked_from"] == "parent" and fork.labels["fork_step"] == "20"
    run_to_end(client, fork.id, timeout=60 + 20 * pace)
    client.download(fork.id, tmp_path / "fork.npz", step=60)
    a, b = params(tmp_path / "parent.npz"), params(tmp_path / "fork.npz")
    assert sorted(a) == sorted(b) and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_fork_with_a_new_lr_shares_the_history_up_to_k_and_then_diverges(parent, tmp_path):
    srv, client, pace = parent
    fork = client.fork("parent", 40, {"optim.lr": 0.0001}, new_job_id="slower")
    job = run_to_end(client, fork.id, timeout=60 + 20 * pace)
    assert json.loads(job.spec_json)["optim"]["lr"] == 0.0001
    mine, theirs = client.metrics("slower"), client.metrics("parent")
    assert [p for p in mine if p.step <= 40] == [p for p in theirs if p.step <= 40]
    assert [p.step for p in mine if p.step > 40] == [50, 60]
    assert mine[-1].lr == pytest.approx(0.0001) and mine[-1].val_loss != theirs[-1].val_loss
    client.download("slower", tmp_path / "slower.npz", step=60)
    a, b = params(tmp_path / "parent.npz"), params(tmp_path / "slower.npz")
    assert not all(np.array_equal(a[k], b[k]) for k in a)


def test_shape_changing_keys_and_missing_steps_are_refused(parent):
    srv, client, _ = parent
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, srv.token)
        for key, value in (("model.layers", "[64, 16, 10]"), ("optim.name", '"sgd"')):
            err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.ForkJob,
                               pb.ForkJobRequest(job_id="parent", from_step=20, settings={key: value}))
            assert dict(err.trailing_metadata())["gradmesh-field"] == key and "a fork keeps it" in err.details()
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.ForkJob,
                           pb.ForkJobRequest(job_id="parent", from_step=20, settings={"optim.lr": "fast"}))
        assert dict(err.trailing_metadata())["gradmesh-field"] == "settings[optim.lr]"
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.ForkJob,
                           pb.ForkJobRequest(job_id="parent", from_step=20, settings={"optim.lrr": "0.1"}))
        assert dict(err.trailing_metadata())["gradmesh-field"] == "optim.lrr"
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.ForkJob,
                           pb.ForkJobRequest(job_id="parent", from_step=40, settings={"train.steps": "40"}))
        assert dict(err.trailing_metadata())["gradmesh-field"] == "train.steps"
        err = expect_error(grpc.StatusCode.NOT_FOUND, api.ForkJob, pb.ForkJobRequest(job_id="parent", from_step=30))
        assert "stored steps: 20, 40, 60" in err.details()
        expect_error(grpc.StatusCode.NOT_FOUND, api.ForkJob, pb.ForkJobRequest(job_id="nobody", from_step=30))
    with pytest.raises(InvalidArgument) as err:
        client.fork("parent", 20, {"model.layers": [64, 16, 10]})
    assert err.value.field == "model.layers"
    with pytest.raises(NotFound):
        client.fork("parent", 30)


def test_the_cli_forks_with_toml_values(parent):
    srv, client, _ = parent
    env = cli_env(GRADMESH_ADDRESS=srv.address, GRADMESH_TOKEN=srv.token)
    proc = run_cli("fork", "parent", "--from-step", "40", "--set", "optim.lr=0.002", "--set", "optim.schedule=cosine",
                   "--id", "cli-fork", env=env)
    assert proc.returncode == 0 and proc.stdout.strip() == "cli-fork", proc.stderr
    spec = json.loads(client.get("cli-fork").spec_json)
    assert spec["optim"]["lr"] == 0.002 and spec["optim"]["schedule"] == "cosine"
    proc = run_cli("fork", "parent", "--from-step", "40", "--set", "model.layers=[64, 8, 10]", env=env)
    assert proc.returncode == 1 and "model.layers" in proc.stderr and "a fork keeps it" in proc.stderr


def test_a_sweep_seeded_from_a_fork_point_starts_every_trial_there(parent):
    srv, client, pace = parent
    text = digits_toml("from-fork", steps=60, workers=1) + ('[sweep]\nmethod = "grid"\n[sweep.fork]\njob = "parent"\n'
                                                            'step = 40\n[sweep.parameters]\n'
                                                            '"optim.lr" = { values = [0.003, 0.0003] }\n')
    sweep = client.submit_sweep(text, sweep_id="forked-sweep")
    wait_for(lambda: client.sweep(sweep.id).is_terminal(), timeout=60 + 40 * pace, what="the forked sweep")
    sweep = client.sweep(sweep.id)
    assert sweep.state is JobState.SUCCEEDED, sweep.message
    parent_history = [p for p in client.metrics("parent") if p.step <= 40]
    for trial in sweep.trials:
        job = client.get(trial.job_id)
        assert job.labels["forked_from"] == "parent" and job.labels["sweep"] == sweep.id
        assert [p for p in client.metrics(job.id) if p.step <= 40] == parent_history
    bad = text.replace('"optim.lr" = { values = [0.003, 0.0003] }', '"model.layers" = { values = [[64, 8, 10]] }')
    with pytest.raises(InvalidArgument) as err:
        client.submit_sweep(bad)
    assert err.value.field == "model.layers" and "trial 0" in str(err.value)
