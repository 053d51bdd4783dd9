"""Every failing rank says why in the typed field of its last report, under real mpirun.

The worker runs for real (`mpirun -n 2 python -m worker --coordinator ...`) against a real gRPC server
(tests/helpers.py's RecordingWorkerService: the generated WorkerService, recording every ReportProgress),
so this tests the worker's side of the wire while the coordinator's core changes independently. Faults
are real (worker/faults.py: an exception, a NaN loss, a stalled rank) or a real bad data file.
"""
from __future__ import annotations

import socket

import numpy as np
import pytest

from coordinator.rpc import gradmesh_pb2 as pb
from helpers import RecordingWorkerService, small_digits_spec
from mpi_programs.launch import run_mpi
from worker.comm import SerialComm
from worker.failure import EXIT_CONFIG, EXIT_ERROR, EXIT_NAN, exit_code, failure_from_exception
from worker.spec import parse_spec

pytestmark = pytest.mark.timeout(90)


def spec_json(steps: int = 2000, hang_timeout_s: float = 60.0, **data) -> str:
    raw = small_digits_spec(steps=steps, workers=2)
    raw["fault"] = {"hang_timeout_s": hang_timeout_s}
    raw["data"].update(data)
    return parse_spec(raw).to_json()


def run_job(coord: RecordingWorkerService, tmp_path, fault: str = "", nprocs: int = 2):
    env = {**coord.worker_env(), "GRADMESH_FAULT": fault}
    result = run_mpi(nprocs, ["python", *coord.worker_argv(tmp_path / "out")], timeout=45, env=env)
    assert not result.timed_out and result.leftovers == [], result.output
    return result


def test_an_exception_on_rank_1_is_reported_by_rank_1(tmp_path):
    with RecordingWorkerService(spec_json()) as coord:
        result = run_job(coord, tmp_path, fault="raise:rank=1:step=20")
        failures = coord.failures()
    assert result.returncode == EXIT_ERROR, result.output
    mine = [f for f in failures if f.rank == 1]
    assert len(mine) == 1, failures
    f = mine[0]
    assert (f.cause, f.exception_type, f.message, f.step) == (
        pb.FAILURE_CAUSE_RANK_ERROR, "RuntimeError", "injected fault at step 20", 20)
    assert f.host == socket.gethostname() and f"[rank 1 on {f.host}]" in result.output  # the traceback too
    report = next(r for r in coord.reports if r.worker_event == pb.WORKER_EVENT_FAILING and r.rank == 1)
    assert report.job_id == "job" and report.attempt == 1 and not report.event  # no free-text event any more


def test_a_nan_loss_is_reported_once_by_rank_0(tmp_path):
    with RecordingWorkerService(spec_json()) as coord:
        result = run_job(coord, tmp_path, fault="nan:step=5")
        failures = coord.failures()
    assert result.returncode == EXIT_NAN, result.output
    assert len(failures) == 1, failures
    f = failures[0]
    assert (f.cause, f.rank, f.host, f.exception_type, f.message, f.step) == (
        pb.FAILURE_CAUSE_NAN, 0, socket.gethostname(), "", "loss became NaN at step 5", 5)
    assert coord.events()[0] == "WORKER_EVENT_STARTED" and "WORKER_EVENT_FINISHED" not in coord.events()


def test_a_bad_data_file_is_reported_as_bad_data(tmp_path):
    data = tmp_path / "wrong.npz"
    np.savez(data, x=np.zeros((50, 12), np.float32), y=np.zeros(50, np.int64))
    with RecordingWorkerService(spec_json(source=str(data))) as coord:
        result = run_job(coord, tmp_path)
        failures = coord.failures()
    assert result.returncode == EXIT_CONFIG, result.output
    assert failures, result.output  # every rank hits it; whichever aborts first may cut the other short
    for f in failures:
        assert (f.cause, f.exception_type, f.host, f.step) == (
            pb.FAILURE_CAUSE_BAD_DATA, "", socket.gethostname(), 0), f
        assert f.rank in (0, 1) and "12 features but model.layers[0] is 64" in f.message, f


def test_a_stalled_rank_is_reported_as_a_hang_by_the_watchdog_that_caught_it(tmp_path):
    with RecordingWorkerService(spec_json(hang_timeout_s=2.0)) as coord:
        result = run_job(coord, tmp_path, fault="hang:rank=1:step=20")
        failures = coord.failures()
    assert result.returncode not in (0, None), result.output
    assert len(failures) == 1, failures
    f = failures[0]
    assert (f.cause, f.rank, f.host, f.exception_type) == (pb.FAILURE_CAUSE_HANG, 0, socket.gethostname(), "")
    assert "did not complete within 2 s; silent rank(s): 1 (busy outside any collective" in f.message, f.message


def test_a_finished_run_reports_typed_events_and_one_epoch_convention(tmp_path):
    # digits with batch 64: 26 steps per epoch, so 52 steps are 2 epochs; evaluated at each epoch's end
    raw = small_digits_spec(steps=52, workers=2, eval_every=26)
    with RecordingWorkerService(parse_spec(raw).to_json()) as coord:
        result = run_job(coord, tmp_path)
        reports, events, uploaded = list(coord.reports), coord.events(), coord.uploaded_steps
    assert result.returncode == 0, result.output
    assert events == ["WORKER_EVENT_STARTED", "WORKER_EVENT_FINISHED"] and not any(r.event for r in reports)
    points = sorted((p.step, p.epoch) for r in reports for p in r.points)
    assert sorted(set(points)) == [(26, 1), (52, 2)]      # the epoch each step belongs to, counted from 1
    assert reports[-1].epoch == 2 and reports[-1].step == 52
    assert 52 in uploaded


@pytest.mark.parametrize("exc,cause,code", [
    (MemoryError(), pb.FAILURE_CAUSE_OUT_OF_MEMORY, EXIT_ERROR),
    (ValueError("boom"), pb.FAILURE_CAUSE_RANK_ERROR, EXIT_ERROR),
    (KeyError("k"), pb.FAILURE_CAUSE_RANK_ERROR, EXIT_ERROR),
])
def test_other_exceptions_map_to_their_cause(exc, cause, code):
    f = failure_from_exception(exc, SerialComm(), step=7)
    assert (f.cause, f.exception_type, f.step, f.rank) == (cause, type(exc).__name__, 7, 0)
    assert f.message and exit_code(f.cause) == code
