"""The coordinator's caps (coordinator.access.limits), attacked through a real server: memory bombs, huge integers,
unused settings, and every unbounded-growth path (points, checkpoints, spec size and depth, labels, queue).

Each test names the hole of issue 9 it closes. A refusal must come with the right code and the field, and
must leave nothing behind (no job, no file, no point).
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys

import grpc
import pytest

from conftest import AuthedJobStub
from coordinator.access.limits import Limits, parse_size
from coordinator.supervision.outcomes import Outcome, decide
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.states import JobState
from coordinator.wire import FIELD_TRAILER
from helpers import (SMALL_SPEC, cli_env, expect_error, idle_server, running_job, small_digits_spec,
                     upload_checkpoint, wait_for, worker_stub)
from worker.spec import SpecError, parse_spec, parse_spec_text

INVALID, EXHAUSTED = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED


def field_of(err: grpc.RpcError) -> str:
    return dict(err.trailing_metadata() or ()).get(FIELD_TRAILER, "")


def submit(api, spec, **kw):
    text = spec if isinstance(spec, str) else json.dumps(spec)
    return api.SubmitJob(pb.SubmitJobRequest(spec=text, **kw))


@pytest.fixture
def idle(start_coordinator):
    return idle_server(start_coordinator)


@pytest.fixture
def api(idle):
    with grpc.insecure_channel(idle.address) as ch:
        yield AuthedJobStub(ch, idle.token)


def no_jobs(api) -> bool:
    return not api.ListJobs(pb.ListJobsRequest()).jobs


# ---------------------------------------------------------------- memory bombs and unbounded work

@pytest.mark.parametrize("spec", [
    {**small_digits_spec(), "model": {"layers": [64, 1048576, 1048576, 10]}},
    # 2^21 × 1024 float32 samples: 8 GiB of x, generated whole by every rank
    {**small_digits_spec(), "model": {"layers": [1024, 8, 4]},
     "data": {"source": "synthetic", "synthetic": {"samples": 1 << 21, "features": 1024, "classes": 4}}},
], ids=["huge-layers", "huge-synthetic-data"])
def test_a_job_that_cannot_fit_a_slot_is_refused_naming_estimate_and_limit(idle, api, spec):
    err = expect_error(INVALID, submit, api, spec)
    assert field_of(err) == "model.layers"
    assert "per rank" in err.details() and "--memory-per-slot" in err.details() and "GiB" in err.details()
    assert no_jobs(api)


def test_memory_per_slot_is_the_flag_that_decides(start_coordinator):
    spec = {**small_digits_spec(), "model": {"layers": [64, 4096, 4096, 10]}}  # ~17M parameters: ~500 MiB a rank
    tight = idle_server(start_coordinator, limits=Limits(memory_per_slot=256 << 20))
    roomy = idle_server(start_coordinator, limits=Limits(memory_per_slot=8 << 30))
    with grpc.insecure_channel(tight.address) as a, grpc.insecure_channel(roomy.address) as b:
        expect_error(INVALID, submit, AuthedJobStub(a, tight.token), spec, match="256.0 MiB per rank")
        assert submit(AuthedJobStub(b, roomy.token), spec).job.state == pb.QUEUED
    assert parse_size("4G") == 4 << 30 and parse_size("512MiB") == 512 << 20 and parse_size("1024") == 1024


@pytest.mark.parametrize("train", [{"steps": 1 << 63}, {"steps": 10 ** 30}, {"seed": -1}, {"seed": 1 << 64}])
def test_integers_out_of_range_are_invalid_argument_never_internal(idle, api, train):
    spec = small_digits_spec()
    spec["train"].update(train)
    err = expect_error(INVALID, submit, api, spec)
    assert field_of(err).startswith("train.")
    assert no_jobs(api)


def test_huge_page_tokens_and_priorities_are_invalid_argument(idle, api):
    job_id, _ = running_job(idle)
    for token in ("9" * 30, "\u00b2", "-1", "0x10"):
        expect_error(INVALID, api.ListJobs, pb.ListJobsRequest(page_token=token))
        expect_error(INVALID, api.GetMetrics, pb.GetMetricsRequest(job_id=job_id, page_token=token))
    expect_error(INVALID, submit, api, {**small_digits_spec(), "priority": 1 << 70})
    for priority in ((1 << 63) - 1, -(1 << 63), 1 << 31):  # int64 in the spec, int32 on the wire (Job.priority)
        err = expect_error(INVALID, submit, api, {**small_digits_spec(), "priority": priority})
        assert field_of(err) == "priority"


def test_a_dataset_path_too_long_for_the_filesystem_is_invalid_argument(idle, api):
    spec = {**small_digits_spec(), "data": {"source": "\u30b8" * 300 + ".npz"}}  # 900 bytes in one name
    err = expect_error(INVALID, submit, api, spec)
    assert field_of(err) == "data.source" and "not a usable path" in err.details()
    expect_error(INVALID, submit, api, {**small_digits_spec(), "fault": {"max_restarts": 10 ** 6}})
    expect_error(INVALID, submit, api, {**small_digits_spec(), "fault": {"backoff_s": 1e300}})


def test_restart_backoff_is_capped_and_never_overflows():
    from coordinator.supervision.outcomes import MAX_RESTART_DELAY_S
    failed = Outcome(JobState.FAILED, True, "rank 1 died", "failed")
    assert decide(failed, attempt=2, restarts=1, max_restarts=3, backoff_s=0.5).delay_s == 1.0
    for restarts in (40, 1100, 10 ** 6):
        decision = decide(failed, attempt=restarts + 1, restarts=restarts, max_restarts=10 ** 9, backoff_s=3600.0)
        assert decision.state is JobState.RESTARTING and decision.delay_s == MAX_RESTART_DELAY_S


MEMORY_BOMB = """
name = "oom"
workers = 1
[model]
layers = [64, 32768, 32768, 10]
[train]
steps = 10
batch_size = 32
[checkpoint]
every_steps = 0
"""


def test_a_rank_out_of_memory_fails_the_job_at_once_without_a_restart(tmp_path):
    """End to end: a real `gradmesh serve` (and so its ranks) under an address-space limit, told every slot has
    plenty of memory so the job passes the estimate; the rank's MemoryError is reported, and not retried."""
    data = tmp_path / "coord"
    # 3 GiB of address space: the coordinator and its ranks start, a 4.3 GiB parameter vector cannot
    script = (f"ulimit -v {3 << 20} || exit 99; exec {sys.executable} -m coordinator.cli serve --port 0 --slots 1 "
              f"--data-dir {data} --data-root {tmp_path} --memory-per-slot 1T")
    proc = subprocess.Popen(["bash", "-c", script], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=cli_env(), start_new_session=True)
    try:
        line = proc.stdout.readline()
        if proc.poll() == 99:
            pytest.skip("ulimit -v is refused here")
        assert "listening on" in line, line
        address = line.split("listening on ")[1].strip()
        token = wait_for(lambda: (data / "token").exists() and (data / "token").read_text().strip(), 10, "the token")
        with grpc.insecure_channel(address) as ch:
            api = AuthedJobStub(ch, token, timeout=30)
            job_id = submit(api, MEMORY_BOMB).job.id
            job = wait_for(lambda: (j := api.GetJob(pb.GetJobRequest(job_id=job_id)))
                           and j.state in (pb.FAILED, pb.SUCCEEDED) and j, 90, "the job to end")
        assert job.state == pb.FAILED and job.attempts == 1 and job.restarts == 0, job
        assert "out of memory" in job.message.lower() and "not retried" in job.message, job.message
        print(job.message.splitlines()[0])
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


# ---------------------------------------------------------------- silently ignored settings

@pytest.mark.parametrize("section,values,key", [
    ("optim", {"name": "sgd", "momentum": 0.9}, "optim.momentum"),
    ("optim", {"name": "momentum", "beta1": 0.8}, "optim.beta1"),
    ("optim", {"name": "nesterov", "eps": 1e-6}, "optim.eps"),
    ("optim", {"name": "adam", "momentum": 0.5}, "optim.momentum"),
    ("optim", {"schedule": "constant", "gamma": 0.5}, "optim.gamma"),
    ("optim", {"schedule": "cosine", "step_size": 100}, "optim.step_size"),
    ("optim", {"schedule": "step", "min_lr": 1e-5}, "optim.min_lr"),
    ("data", {"source": "digits", "synthetic": {"samples": 100}}, "data.synthetic"),
    ("fault", {"max_restarts": 0, "backoff_s": 5.0}, "fault.backoff_s"),
])
def test_a_setting_the_chosen_option_does_not_use_is_refused(section, values, key):
    raw = {"model": {"layers": [64, 10]}, "train": {"epochs": 1}, section: values}
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.field == key and "not used" in err.value.reason


def test_settings_that_are_used_are_accepted_and_stored_specs_parse_again(idle, api):
    for optim in ({"name": "momentum", "momentum": 0.8}, {"name": "adamw", "beta1": 0.8, "eps": 1e-7},
                  {"name": "sgd", "schedule": "step", "step_size": 10, "gamma": 0.5},
                  {"name": "adam", "schedule": "cosine", "min_lr": 1e-5}):
        assert parse_spec({"model": {"layers": [64, 10]}, "train": {"epochs": 1}, "optim": optim}).optim.name
    err = expect_error(INVALID, submit, api, {**small_digits_spec(), "optim": {"name": "sgd", "momentum": 0.9}})
    assert field_of(err) == "optim.momentum" and "momentum" in err.details()
    job = submit(api, {**small_digits_spec(), "optim": {"name": "sgd", "lr": 0.1}}).job
    assert "momentum" not in json.loads(job.spec_json)["optim"]
    assert parse_spec_text(job.spec_json).optim.name == "sgd"  # what the ranks will parse


# ---------------------------------------------------------------- unbounded growth

def test_points_per_report_and_per_job_are_capped(start_coordinator):
    srv = idle_server(start_coordinator, limits=Limits(points_per_job=1500))
    job_id, token = running_job(srv)
    with grpc.insecure_channel(srv.address) as ch:
        w = worker_stub(ch, token)

        def report(steps):
            return w.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=1,
                                                             points=[pb.MetricPoint(step=s) for s in steps]))
        err = expect_error(INVALID, report, range(1, 1002))
        assert field_of(err) == "points" and "at most 1000" in err.details()
        report(range(1, 1001))
        report(range(1001, 1501))
        expect_error(EXHAUSTED, report, range(1501, 1502), match="--max-points-per-job")
        assert srv.store.count_metrics(job_id) == 1500
        api = AuthedJobStub(ch, srv.token)
        # a job that would report more than it may store is refused at submission, naming eval_every
        err = expect_error(INVALID, submit, api, small_digits_spec(steps=200_000, eval_every=1))
        assert field_of(err) == "train.eval_every" and "at least 134" in err.details()


def test_a_checkpoint_larger_than_its_spec_implies_is_refused_before_it_reaches_the_disk(idle):
    job_id, token = running_job(idle)
    with grpc.insecure_channel(idle.address) as ch:
        w = worker_stub(ch, token)
        big = b"\0" * (8 << 20)
        err = expect_error(INVALID, upload_checkpoint, w, job_id, 10, big)
        assert field_of(err) == "info.size_bytes" and "spec implies at most" in err.details()
        # announcing no size does not help: the stream is cut at the limit
        sha = hashlib.sha256(big).hexdigest()
        msgs = [pb.UploadCheckpointRequest(job_id=job_id, attempt=1, info=pb.CheckpointInfo(step=10, sha256=sha))]
        msgs += [pb.UploadCheckpointRequest(data=big[i:i + (1 << 20)]) for i in range(0, len(big), 1 << 20)]
        expect_error(INVALID, w.UploadCheckpoint, iter(msgs))
        assert upload_checkpoint(w, job_id, 10, b"x" * 5000).step == 10  # a plausible one is still taken
    leftovers = [p.name for p in (idle.data_dir / "checkpoints" / job_id).iterdir()]
    assert leftovers == ["step-00000010.npz"], leftovers


def test_checkpoints_per_job_and_keep_last_are_capped(start_coordinator):
    srv = idle_server(start_coordinator, limits=Limits(checkpoints_per_job=4))
    job_id, token = running_job(srv)
    with grpc.insecure_channel(srv.address) as ch:
        w = worker_stub(ch, token)
        for step in (10, 20, 30, 40):  # finals are all retained: the cap is what bounds them
            upload_checkpoint(w, job_id, step, b"ckpt %d" % step, final=True)
        err = expect_error(EXHAUSTED, lambda: upload_checkpoint(w, job_id, 50, b"one too many", final=True))
        assert "--max-checkpoints-per-job" in err.details()
        upload_checkpoint(w, job_id, 40, b"the same step again", final=True)  # replacing one is fine
        assert len(srv.store.checkpoints(job_id)) == 4
        api = AuthedJobStub(ch, srv.token)
        err = expect_error(INVALID, submit, api, {**small_digits_spec(), "checkpoint": {"keep_last": 3}})
        assert field_of(err) == "checkpoint.keep_last" and "at most 2" in err.details()


def test_spec_size_depth_and_labels_are_capped(idle, api):
    padded = SMALL_SPEC + "".join(f"# {'x' * 70}\n" for _ in range(1000))  # ~73 KB of comments
    err = expect_error(INVALID, submit, api, padded)
    assert field_of(err) == "spec" and "--max-spec-bytes" in err.details()
    nested = json.loads(json.dumps({**small_digits_spec(), "name": "deep"}))
    nested["model"]["layers"] = [64, 32, 10]
    deep = json.dumps(nested)[:-1] + ', "x": ' + "[" * 9 + "]" * 9 + "}"
    err = expect_error(INVALID, submit, api, deep)
    assert field_of(err) == "file" and "--max-spec-depth" in err.details()
    very_deep = '{"a": ' + "[" * 30000 + "]" * 30000 + "}"  # fits the size cap, not Python's recursion limit
    assert field_of(expect_error(INVALID, submit, api, very_deep)) == "file"
    labels = {f"k{i}": "v" for i in range(65)}
    assert field_of(expect_error(INVALID, lambda: submit(api, SMALL_SPEC, labels=labels))) == "labels"
    expect_error(INVALID, lambda: submit(api, SMALL_SPEC, labels={"k": "v" * 257}))
    expect_error(INVALID, lambda: submit(api, SMALL_SPEC, labels={"k" * 64: "v"}))
    assert no_jobs(api)


def test_the_queue_is_capped_and_a_resubmission_is_still_idempotent(start_coordinator):
    srv = idle_server(start_coordinator, limits=Limits(queued_jobs=3))
    with grpc.insecure_channel(srv.address) as ch:
        api = AuthedJobStub(ch, srv.token)
        for n in range(3):
            submit(api, SMALL_SPEC, job_id=f"q{n}")
        err = expect_error(EXHAUSTED, lambda: submit(api, SMALL_SPEC, job_id="q3"))
        assert "3 jobs are queued" in err.details() and "--max-queued-jobs" in err.details()
        assert submit(api, SMALL_SPEC, job_id="q1").job.id == "q1"  # the same id and spec: not a new job
        api.CancelJob(pb.CancelJobRequest(job_id="q0"))
        assert submit(api, SMALL_SPEC, job_id="q3").job.state == pb.QUEUED


def test_serve_flags_reach_the_limits():
    from coordinator.cli.main import build_parser
    args = build_parser().parse_args(["serve", "--max-queued-jobs", "7", "--memory-per-slot", "2G",
                                      "--max-points-per-report", "50"])
    limits = Limits.from_args(args)
    assert (limits.queued_jobs, limits.memory_per_slot, limits.points_per_report) == (7, 2 << 30, 50)
    assert limits.points_per_job == Limits().points_per_job
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--max-labels", "0"])
