"""The client's result types, made from gradmesh.v1 messages without their dataclass __init__ (for speed):
each must be exactly what the __init__ would have made, every field set, still frozen and hashable."""
from __future__ import annotations

import dataclasses
import math

import pytest

from coordinator.client import AttemptInfo, Internal, JobInfo, JobState, MetricPoint, StateChange
from coordinator.client.types import state_from_pb
from coordinator.rpc import gradmesh_pb2 as pb


def full_job() -> pb.Job:
    point = dict(epoch=2, train_loss=0.5, val_loss=float("nan"), val_accuracy=0.75, samples_per_second=900.0,
                 lr=0.01, time_unix=1.7e9, attempt=2)
    return pb.Job(id="j-1", name="digits", spec_json='{"workers": 2}', state=pb.RUNNING, message="training",
                  workers=2, priority=3, labels={"team": "ml"}, step=40, total_steps=100, epoch=2,
                  latest=pb.MetricPoint(step=40, **point), best=pb.MetricPoint(step=30, **point),
                  samples_per_second=900.0, eta_seconds=-1, attempts=2, restarts=1, created_unix=1.6e9,
                  started_unix=1.65e9, ended_unix=0,
                  history=[pb.StateChange(state=pb.QUEUED, message="queued", time_unix=1.6e9, transition_id=1),
                           pb.StateChange(state=pb.RUNNING, message="on localhost:2", time_unix=1.65e9, attempt=1,
                                          transition_id=2)],
                  attempt_history=[pb.AttemptSummary(attempt=1, ranks=2, hosts="localhost:2", outcome="failed",
                                                     message="rank 1 died", started_unix=1.65e9, ended_unix=1.66e9,
                                                     mpi_args=["-genv", "X", "1"], slurm_job="17"),
                                   pb.AttemptSummary(attempt=2, ranks=2, hosts="localhost:2", started_unix=1.67e9)])


def same_as_init(obj) -> None:
    cls = type(obj)
    names = [f.name for f in dataclasses.fields(cls)]
    assert sorted(vars(obj)) == sorted(names), "every field set, nothing else"
    again = cls(**{name: getattr(obj, name) for name in names})
    assert again == obj and repr(again) == repr(obj)
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, names[0], None)


def test_a_job_and_everything_in_it_are_what_their_init_makes():
    info = JobInfo.from_pb(full_job())
    for obj in (info, info.latest, info.best, *info.history, *info.attempt_history):
        same_as_init(obj)
    assert info.state is JobState.RUNNING and info.eta_seconds is None and info.ended_unix is None
    assert info.latest.val_loss is None and info.latest.train_loss == 0.5 and info.best.step == 30
    assert [s.state for s in info.history] == [JobState.QUEUED, JobState.RUNNING]
    assert info.attempt_history[0].mpi_args == ("-genv", "X", "1") and info.attempt_history[1].ended_unix is None
    assert hash(info.latest) == hash(MetricPoint(**vars(info.latest)))
    assert hash(info.history[0]) == hash(StateChange(**vars(info.history[0])))
    assert hash(info.attempt_history[0]) == hash(AttemptInfo(**vars(info.attempt_history[0])))
    assert info.to_dict()["labels"] == {"team": "ml"} and info.spec == {"workers": 2}


def test_a_job_without_optional_parts():
    info = JobInfo.from_pb(pb.Job(id="q", state=pb.QUEUED, eta_seconds=12.5))
    same_as_init(info)
    assert info.latest is None and info.best is None and info.history == () and info.eta_seconds == 12.5
    assert info.started_unix is None and not math.isnan(info.created_unix)


def test_an_unknown_state_is_refused():
    with pytest.raises(Internal, match="unknown job state 0"):
        state_from_pb(0)
    with pytest.raises(Internal, match="unknown job state 99"):
        JobInfo.from_pb(pb.Job(id="x", state=99))
