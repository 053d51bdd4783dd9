"""The gradmesh Python client: submit, watch and fetch training jobs from a running coordinator.

    from coordinator.client import Client, JobState, MetricReported, NotFound

    with Client("127.0.0.1:50051", token="...") as gm:          # or GRADMESH_ADDRESS / GRADMESH_TOKEN,
        job = gm.submit("examples/digits.toml", workers=2)     # or Client(data_dir="~/.gradmesh")
        for event in gm.watch(job.id):                         # ends when the job ends; survives reconnects
            if isinstance(event, MetricReported):
                print(event.point.step, event.point.train_loss)
        job = gm.get(job.id)
        if job.state is JobState.SUCCEEDED:
            gm.download(job.id, "best.npz", best=True)         # lowest val loss; sha256-verified, renamed

Modules: `client` (the Client), `downloads` (a checkpoint streamed to disk, verified, renamed into place),
`types` (the frozen results: JobInfo, MetricPoint, CheckpointInfo, ...),
`errors` (status code + trailers → the classes of `coordinator.errors`, re-exported here). Every failure is
a `GradmeshError`: InvalidArgument (`.field`, `.reason`; InvalidSpec when SubmitJob refused the spec),
NotFound (`.kind` "job" or "checkpoint"), AlreadyExists, FailedPrecondition, Unauthenticated, PermissionDenied
(a user whose role does not allow it; the message names the job's owner),
ResourceExhausted, Unavailable, DeadlineExceeded, DataLoss (ChecksumMismatch for a download that does not
match its sha256), Unimplemented, Internal. `str(err)` is one line a person can act on.

May import: only the shared vocabulary (coordinator.errors, states, wire) and the generated rpc package,
so a client-only installation needs nothing of the server.
"""
from coordinator.client.client import Client, read_spec_text, resolve_token
from coordinator.client.errors import InvalidSpec, translate_error
from coordinator.client.sweeps import DeletedSweep, SweepInfo, TrialInfo
from coordinator.client.types import (
    AttemptInfo, AuditEntry, CheckpointInfo, DeletedJob, Download, HostInfo, JobInfo, JobSnapshot, JobState, JobStateChanged, MetricPoint, MetricReported,
    StateChange, UserInfo, WatchEvent, parse_state,
)
from coordinator.errors import (
    AlreadyExists, ChecksumMismatch, DataLoss, DeadlineExceeded, FailedPrecondition, GradmeshError, Internal,
    InvalidArgument, NotFound, PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable, Unimplemented,
)
from coordinator.wire import DEFAULT_ADDRESS, KIND_CHECKPOINT, KIND_JOB, TOKEN_FILE

__all__ = [
    "Client", "JobState", "JobInfo", "AttemptInfo", "HostInfo", "MetricPoint", "StateChange", "CheckpointInfo", "DeletedJob", "Download",
    "WatchEvent", "JobSnapshot", "JobStateChanged", "MetricReported", "parse_state",
    "GradmeshError", "InvalidArgument", "InvalidSpec", "NotFound", "AlreadyExists", "FailedPrecondition",
    "Unauthenticated", "PermissionDenied", "UserInfo", "AuditEntry", "ResourceExhausted", "Unavailable", "DeadlineExceeded", "DataLoss", "ChecksumMismatch",
    "Unimplemented", "Internal", "translate_error", "resolve_token", "read_spec_text",
    "DEFAULT_ADDRESS", "TOKEN_FILE", "KIND_JOB", "KIND_CHECKPOINT", "SweepInfo", "TrialInfo", "DeletedSweep",
]
