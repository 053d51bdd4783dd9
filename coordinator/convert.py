"""Plain records of the core ↔ gradmesh.v1 messages. No logic beyond copying fields."""
from __future__ import annotations


from coordinator.jobs import CheckpointUpload, JobView
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.store import CheckpointRow, MetricRow, TransitionRow


def metric_to_pb(m: MetricRow) -> pb.MetricPoint:
    return pb.MetricPoint(step=m.step, epoch=m.epoch, train_loss=m.train_loss, val_loss=m.val_loss,
                          val_accuracy=m.val_accuracy, samples_per_second=m.samples_per_second, lr=m.lr,
                          time_unix=m.time_unix, attempt=m.attempt)


def metric_from_pb(p: pb.MetricPoint) -> MetricRow:
    return MetricRow(step=p.step, epoch=p.epoch, train_loss=p.train_loss, val_loss=p.val_loss,
                     val_accuracy=p.val_accuracy, samples_per_second=p.samples_per_second, lr=p.lr,
                     time_unix=p.time_unix, attempt=p.attempt)


def state_to_pb(t: TransitionRow) -> pb.StateChange:
    return pb.StateChange(state=int(t.state), message=t.message, time_unix=t.time, attempt=t.attempt)


def job_to_pb(v: JobView) -> pb.Job:
    j = v.job
    msg = pb.Job(id=j.id, name=j.name, spec_json=j.spec_json, state=int(j.state), message=j.message,
                 workers=j.workers, priority=j.priority, labels=j.labels, step=j.step, total_steps=j.total_steps,
                 epoch=j.epoch, samples_per_second=v.samples_per_second, eta_seconds=v.eta_seconds,
                 attempts=j.attempts, restarts=j.restarts, created_unix=j.created, started_unix=j.started,
                 ended_unix=j.ended, history=[state_to_pb(t) for t in v.history])
    if v.latest is not None:
        msg.latest.CopyFrom(metric_to_pb(v.latest))
    if v.best is not None:
        msg.best.CopyFrom(metric_to_pb(v.best))
    return msg


def checkpoint_to_pb(c: CheckpointRow) -> pb.CheckpointInfo:
    return pb.CheckpointInfo(step=c.step, epoch=c.epoch, size_bytes=c.size, sha256=c.sha256, val_loss=c.val_loss,
                             val_accuracy=c.val_accuracy, is_final=c.is_final, created_unix=c.created,
                             attempt=c.attempt)


def upload_info_from_pb(info: pb.CheckpointInfo, attempt: int) -> CheckpointUpload:
    return CheckpointUpload(step=info.step, epoch=info.epoch, size_bytes=info.size_bytes, sha256=info.sha256,
                            val_loss=info.val_loss, val_accuracy=info.val_accuracy, is_final=info.is_final,
                            attempt=attempt or info.attempt)


