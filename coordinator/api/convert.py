"""Plain records of the core ↔ gradmesh.v1 messages: copying fields, and the one place where the
deprecated string `event` of ReportProgressRequest is read (reports.from_legacy)."""
from __future__ import annotations

import weakref

from coordinator.files.checkpoints import CheckpointUpload
from coordinator.errors import InvalidArgument
from coordinator.jobs.views import JobView
from coordinator.reports import FailureCause, WorkerEvent, WorkerFailure, from_legacy
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.fleet.fleet import HostView
from coordinator.supervision.slurm import UNSUBMITTED
from coordinator.fleet.health import HostState
from coordinator.store.records import AttemptRow, CheckpointRow, MetricRow, TransitionRow
from coordinator.jobs.worker_api import ProgressReport


def metric_to_pb(m: MetricRow) -> pb.MetricPoint:
    return pb.MetricPoint(step=m.step, epoch=m.epoch, train_loss=m.train_loss, val_loss=m.val_loss,
                          val_accuracy=m.val_accuracy, samples_per_second=m.samples_per_second, lr=m.lr,
                          time_unix=m.time_unix, attempt=_i32(m.attempt))


def metric_from_pb(p: pb.MetricPoint) -> MetricRow:
    return MetricRow(step=p.step, epoch=p.epoch, train_loss=p.train_loss, val_loss=p.val_loss,
                     val_accuracy=p.val_accuracy, samples_per_second=p.samples_per_second, lr=p.lr,
                     time_unix=p.time_unix, attempt=p.attempt)


def _i32(value: int) -> int:
    """A stored count as an int32 field carries it: a row written by hand must not make a reply unsendable."""
    return max(-2**31, min(2**31 - 1, value))


def state_to_pb(t: TransitionRow) -> pb.StateChange:
    return pb.StateChange(state=int(t.state), message=t.message, time_unix=t.time, attempt=_i32(t.attempt),
                          transition_id=t.id)


_built: dict[int, tuple] = {}   # id(view) -> (weak reference to the view, its message): see job_to_pb


def job_to_pb(v: JobView) -> pb.Job:
    """The Job message of a view. Views are immutable and Jobs.get hands out the same view object until
    anything changes, so a client polling GetJob gets the message built for that view the first time
    (callers only read it or copy it into another message)."""
    hit = _built.get(id(v))
    if hit is not None and hit[0]() is v:
        return hit[1]
    msg = _build_job_pb(v)
    if len(_built) > 10_000:
        _built.clear()
    _built[id(v)] = (weakref.ref(v), msg)
    return msg


def _build_job_pb(v: JobView) -> pb.Job:
    j = v.job
    msg = pb.Job(id=j.id, name=j.name, spec_json=j.spec_json, state=int(j.state), message=j.message,
                 workers=_i32(j.workers), priority=_i32(j.priority), labels=j.labels, step=j.step, total_steps=j.total_steps,
                 epoch=j.epoch, samples_per_second=v.samples_per_second, eta_seconds=v.eta_seconds,
                 attempts=_i32(j.attempts), restarts=_i32(j.restarts), created_unix=j.created, started_unix=j.started,
                 ended_unix=j.ended, history=[state_to_pb(t) for t in v.history], executor=j.executor,
                 attempt_history=[attempt_to_pb(a) for a in v.attempts], owner=j.owner)
    if v.latest is not None:
        msg.latest.CopyFrom(metric_to_pb(v.latest))
    if v.best is not None:
        msg.best.CopyFrom(metric_to_pb(v.best))
    return msg


def attempt_to_pb(a: AttemptRow) -> pb.AttemptSummary:
    return pb.AttemptSummary(attempt=_i32(a.attempt), ranks=_i32(a.ranks), hosts=a.hosts, outcome=a.outcome, message=a.message,
                             started_unix=a.started, ended_unix=a.ended, mpi_args=list(a.mpi_args),
                             slurm_job=a.slurm_job if a.slurm_job != UNSUBMITTED else "")


_HOST_STATES = {HostState.HEALTHY: pb.HOST_HEALTHY, HostState.SUSPECT: pb.HOST_SUSPECT,
                HostState.QUARANTINED: pb.HOST_QUARANTINED, HostState.DRAINED: pb.HOST_DRAINED}


def host_to_pb(v: HostView) -> pb.Host:
    s = v.status
    return pb.Host(name=s.host, slots=s.slots, free_slots=v.free, state=_HOST_STATES[s.state], failures=s.failures,
                   last_failure=s.last_failure, last_failure_unix=s.last_failure_time, returns_unix=s.returns_at)


def checkpoint_to_pb(c: CheckpointRow) -> pb.CheckpointInfo:
    return pb.CheckpointInfo(step=c.step, epoch=c.epoch, size_bytes=c.size, sha256=c.sha256, val_loss=c.val_loss,
                             val_accuracy=c.val_accuracy, is_final=c.is_final, created_unix=c.created,
                             attempt=c.attempt)


def upload_info_from_pb(info: pb.CheckpointInfo, attempt: int) -> CheckpointUpload:
    return CheckpointUpload(step=info.step, epoch=info.epoch, size_bytes=info.size_bytes, sha256=info.sha256,
                            val_loss=info.val_loss, val_accuracy=info.val_accuracy, is_final=info.is_final,
                            attempt=attempt or info.attempt)


def _enum(cls, value: int, field: str):
    try:
        return cls(value)
    except ValueError:
        raise InvalidArgument(field, f"{value} is not a known value") from None


def progress_from_pb(r: pb.ReportProgressRequest) -> ProgressReport:
    """The typed report; a request without `worker_event` is read from its deprecated string `event`."""
    if r.worker_event or r.HasField("failure"):
        event = _enum(WorkerEvent, r.worker_event, "worker_event")
        failure = None
        if r.HasField("failure"):
            f = r.failure
            # the failing rank: as the failure says, else the reporting rank (a rank reporting itself)
            failure = WorkerFailure(_enum(FailureCause, f.cause, "failure.cause"), f.message, rank=f.rank or r.rank,
                                    host=f.host, exception_type=f.exception_type, step=f.step)
    else:
        event, failure = from_legacy(r.event, r.message)
    return ProgressReport(attempt=r.attempt, rank=r.rank, points=[metric_from_pb(p) for p in r.points], step=r.step,
                          total_steps=r.total_steps, epoch=r.epoch, event=event, message=r.message, failure=failure,
                          exit_code=r.exit_code if r.exiting else None)
