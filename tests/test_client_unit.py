"""The client's own behaviour against a scripted gRPC server: status codes and trailers become the right typed
errors (never the words of a message), watch() reconnects after a dropped stream and after a server restart
without missing a step or a state change, list() and metrics() walk every page by token, download()
verifies sha256/size and never leaves a bad file behind."""
from __future__ import annotations

import hashlib
import socket
import threading
import time

import grpc
import pytest

from coordinator.client import (
    KIND_CHECKPOINT, KIND_JOB, AlreadyExists, ChecksumMismatch, Client, DataLoss, FailedPrecondition, Internal,
    InvalidArgument, InvalidSpec, JobSnapshot, JobState, JobStateChanged, MetricReported, NotFound,
    PermissionDenied, ResourceExhausted, Unauthenticated, Unavailable, read_spec_text, resolve_token,
)
from coordinator.rpc import gradmesh_pb2 as pb
from tests.scripted_server import ScriptedServer, abort_with, job_pb

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("code, details, kind, cls", [
    (grpc.StatusCode.NOT_FOUND, "job_id: no job 'nope'", KIND_JOB, NotFound),
    (grpc.StatusCode.NOT_FOUND, "checkpoint: job 'x' has no checkpoint at step 40", KIND_CHECKPOINT, NotFound),
    (grpc.StatusCode.FAILED_PRECONDITION, "job 'x' is RUNNING; only FAILED or CANCELLED jobs resume", KIND_JOB,
     FailedPrecondition),
    (grpc.StatusCode.ALREADY_EXISTS, "job_id: 'x' exists with a different spec", KIND_JOB, AlreadyExists),
    (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token", "token", Unauthenticated),
    (grpc.StatusCode.PERMISSION_DENIED, "ana (member) may not cancel job x: it belongs to bob", KIND_JOB,
     PermissionDenied),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 1000 queued jobs", "", ResourceExhausted),
    (grpc.StatusCode.INTERNAL, "boom", "", Internal),
    (grpc.StatusCode.DATA_LOSS, "checkpoint file of step 40 is corrupt on the coordinator", KIND_CHECKPOINT,
     DataLoss),
])
def test_status_codes_become_typed_errors(code, details, kind, cls):
    with ScriptedServer({"GetJob": abort_with(code, details, kind=kind)}) as srv, \
            Client(srv.address, token="t") as client:
        with pytest.raises(cls) as info:
            client.get("x")
    assert details in info.value.message
    assert info.value.kind == kind


def test_not_found_kind_comes_from_the_trailer_not_the_message():
    """A message that mentions a checkpoint does not make a job's NOT_FOUND a checkpoint's, and vice versa."""
    handlers = {"GetJob": abort_with(grpc.StatusCode.NOT_FOUND, "no checkpoint-job 'x'", kind=KIND_JOB),
                "ListCheckpoints": abort_with(grpc.StatusCode.NOT_FOUND, "job 'x' has none at step 7",
                                              kind=KIND_CHECKPOINT)}
    with ScriptedServer(handlers) as srv, Client(srv.address, token="t") as client:
        with pytest.raises(NotFound) as job_err:
            client.get("x")
        with pytest.raises(NotFound) as ckpt_err:
            client.checkpoints("x")
    assert (job_err.value.kind, ckpt_err.value.kind) == (KIND_JOB, KIND_CHECKPOINT)


def test_invalid_argument_names_the_field_and_submit_raises_invalid_spec():
    handlers = {"SubmitJob": abort_with(grpc.StatusCode.INVALID_ARGUMENT, "train.batch_size: must be at least 1",
                                        field="train.batch_size"),
                "GetJob": abort_with(grpc.StatusCode.INVALID_ARGUMENT, "job_id: must not be empty", field="job_id")}
    with ScriptedServer(handlers) as srv, Client(srv.address, token="t") as client:
        with pytest.raises(InvalidSpec) as spec_err:
            client.submit("[train]\nbatch_size = 0\n")
        with pytest.raises(InvalidArgument) as arg_err:
            client.get("")
    assert (spec_err.value.field, spec_err.value.reason) == ("train.batch_size", "must be at least 1")
    assert not isinstance(arg_err.value, InvalidSpec)
    assert (arg_err.value.field, arg_err.value.reason) == ("job_id", "must not be empty")
    assert spec_err.value.message == "train.batch_size: must be at least 1"


def test_field_comes_from_the_trailer_only():
    """The field is the gradmesh-field trailer; a message that merely looks like "field: reason" is not parsed."""
    handlers = {"SubmitJob": abort_with(grpc.StatusCode.INVALID_ARGUMENT, "optim.lr: must be positive",
                                        field="optim.lr"),
                "GetJob": abort_with(grpc.StatusCode.INVALID_ARGUMENT, "job_id: must not be empty")}
    with ScriptedServer(handlers) as srv, Client(srv.address) as client:
        with pytest.raises(InvalidSpec) as info:
            client.submit({"optim": {"lr": -1}})
        with pytest.raises(InvalidArgument) as untagged:
            client.get("")
    assert info.value.field == "optim.lr" and info.value.reason == "must be positive"
    assert untagged.value.field == "" and untagged.value.reason == "job_id: must not be empty"


def test_unreachable_server_is_unavailable_naming_the_address():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", token="t", timeout=5, retries=False) as client:
        start = time.monotonic()
        with pytest.raises(Unavailable) as info:
            client.get("x")
    assert f"127.0.0.1:{port}" in str(info.value)
    assert time.monotonic() - start < 5  # fails fast, does not wait for the deadline


def test_with_retries_a_read_rides_out_a_coordinator_that_comes_up_late():
    """The default client lets gRPC retry idempotent reads on UNAVAILABLE (wire.SERVICE_CONFIG): a GetJob sent
    while nothing listens succeeds once a server appears on the port within the retry backoff."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    late: dict[str, ScriptedServer] = {}
    starter = threading.Timer(0.5, lambda: late.__setitem__(
        "srv", ScriptedServer({"GetJob": lambda request, context: job_pb(request.job_id)}, port=port)))
    starter.start()
    try:
        with Client(f"127.0.0.1:{port}", token="t", timeout=10) as client:
            assert client.get("late").id == "late"
    finally:
        starter.join()
        if "srv" in late:
            late["srv"].stop()


def test_token_and_deadline_are_sent_on_every_call():
    seen = {}

    def get_job(request, context):
        seen["remaining"] = context.time_remaining()
        return job_pb(request.job_id)
    with ScriptedServer({"GetJob": get_job}) as srv, Client(srv.address, token="s3cret", timeout=7) as client:
        job = client.get("abc")
        metadata = srv.service.calls[0][2]
    assert metadata["authorization"] == "Bearer s3cret"
    assert 5 < seen["remaining"] <= 7.5  # the 7 s deadline travelled with the call
    assert job.id == "abc" and job.state is JobState.RUNNING and job.eta_seconds is None


def test_token_resolution_order(tmp_path, monkeypatch):
    (tmp_path / "token").write_text("from-file\n")
    monkeypatch.delenv("GRADMESH_TOKEN", raising=False)
    assert resolve_token(None, tmp_path) == "from-file"
    monkeypatch.setenv("GRADMESH_TOKEN", "from-env")
    assert resolve_token(None, tmp_path) == "from-env"
    assert resolve_token("from-arg", tmp_path) == "from-arg"
    monkeypatch.delenv("GRADMESH_TOKEN")
    with pytest.raises(Unauthenticated, match="token file"):
        resolve_token(None, tmp_path / "missing")


def test_spec_sources(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text('name = "x"\n')
    assert read_spec_text(path) == 'name = "x"\n'
    assert read_spec_text(str(path)) == 'name = "x"\n'
    assert read_spec_text({"name": "x"}) == '{"name": "x"}'
    assert read_spec_text('name = "y"') == 'name = "y"'
    with pytest.raises(InvalidSpec) as info:
        read_spec_text(str(tmp_path / "missing.toml"))
    assert info.value.field == "file" and "missing.toml" in info.value.message


def test_list_walks_every_page_and_passes_states():
    pages = {"": (["a", "b"], "p2"), "p2": (["c", "d"], "p3"), "p3": (["e"], "")}

    def list_jobs(request, context):
        ids, nxt = pages[request.page_token]
        return pb.ListJobsResponse(jobs=[job_pb(i) for i in ids], next_page_token=nxt)
    with ScriptedServer({"ListJobs": list_jobs}) as srv, Client(srv.address) as client:
        ids = [job.id for job in client.list(states=["running", JobState.QUEUED], page_size=2)]
        requests = srv.service.requests("ListJobs")
    assert ids == ["a", "b", "c", "d", "e"]
    assert list(requests[0].states) == [pb.RUNNING, pb.QUEUED] and requests[0].page_size == 2


def test_list_rejects_unknown_state_locally():
    with Client("127.0.0.1:1") as client, pytest.raises(InvalidArgument, match="state"):
        list(client.list(states=["DONE"]))


def _watch_script():
    """First stream: snapshot, steps 1-2, then the connection drops. Second: snapshot whose history shows a
    restart that happened meanwhile, step 3, SUCCEEDED."""
    queued, running, restarting, running2 = (pb.QUEUED, 1.0), (pb.RUNNING, 2.0), (pb.RESTARTING, 3.0), (pb.RUNNING, 4.0)

    def watch(request, context):
        if request.from_step == 0:
            yield pb.WatchJobEvent(snapshot=job_pb(state=pb.RUNNING, history=(queued, running)))
            yield pb.WatchJobEvent(metric=pb.MetricPoint(step=1, train_loss=1.0, val_loss=float("nan")))
            yield pb.WatchJobEvent(metric=pb.MetricPoint(step=2, train_loss=0.5, val_loss=float("nan")))
            context.abort(grpc.StatusCode.UNAVAILABLE, "connection reset")
        yield pb.WatchJobEvent(snapshot=job_pb(state=pb.RUNNING, step=3,
                                               history=(queued, running, restarting, running2)))
        for step in range(request.from_step, 4):
            yield pb.WatchJobEvent(metric=pb.MetricPoint(step=step, train_loss=0.1, val_loss=0.2, val_accuracy=0.9))
        yield pb.WatchJobEvent(state=pb.StateChange(state=pb.SUCCEEDED, time_unix=5.0, message="done",
                                                    transition_id=5))
        yield pb.WatchJobEvent(metric=pb.MetricPoint(step=99))  # after the terminal event: must not be read
    return watch


def test_watch_reconnects_with_last_step_and_replays_missed_state_changes():
    with ScriptedServer({"WatchJob": _watch_script()}) as srv, Client(srv.address) as client:
        events = list(client.watch("job-1"))
        from_steps = [r.from_step for r in srv.service.requests("WatchJob")]
    kinds = [type(e).__name__ for e in events]
    steps = [e.point.step for e in events if isinstance(e, MetricReported)]
    states = [e.change.state for e in events if isinstance(e, JobStateChanged)]
    assert from_steps == [0, 3]
    assert steps == [1, 2, 3]
    assert states == [JobState.RESTARTING, JobState.RUNNING, JobState.SUCCEEDED]
    assert kinds[0] == "JobSnapshot" and kinds[-1] == "JobStateChanged"
    assert events[1].point.val_loss is None and events[-2].point.val_accuracy == 0.9


@pytest.mark.timeout(60)
def test_watch_survives_a_server_restart_on_the_same_port():
    """The first server dies mid-stream (like a killed coordinator); a new one comes up on the same port
    two seconds later; the watcher picks up at the next step."""
    release = threading.Event()

    def first_watch(request, context):
        yield pb.WatchJobEvent(snapshot=job_pb(state=pb.RUNNING, history=((pb.RUNNING, 1.0),)))
        yield pb.WatchJobEvent(metric=pb.MetricPoint(step=5))
        release.wait(30)

    def second_watch(request, context):
        yield pb.WatchJobEvent(snapshot=job_pb(state=pb.RUNNING, history=((pb.RUNNING, 1.0),)))
        for step in range(request.from_step, 8):
            yield pb.WatchJobEvent(metric=pb.MetricPoint(step=step))
        yield pb.WatchJobEvent(state=pb.StateChange(state=pb.FAILED, time_unix=9.0, message="rank 1 died",
                                                    transition_id=2))

    first = ScriptedServer({"WatchJob": first_watch})
    holder: dict[str, ScriptedServer] = {}
    restarter = threading.Thread(target=lambda: (time.sleep(2.0), holder.__setitem__(
        "second", ScriptedServer({"WatchJob": second_watch}, port=first.port))))
    got = []
    try:
        with Client(first.address, reconnect_timeout=30) as client:
            for event in client.watch("job-1"):
                got.append(event)
                if isinstance(event, MetricReported) and event.point.step == 5:
                    release.set()
                    first.stop()
                    restarter.start()
        from_steps = [r.from_step for r in holder["second"].service.requests("WatchJob")]
    finally:
        release.set()
        first.stop()
        if restarter.is_alive() or restarter.ident:
            restarter.join(10)
        if "second" in holder:
            holder["second"].stop()
    steps = [e.point.step for e in got if isinstance(e, MetricReported)]
    assert steps == [5, 6, 7]
    assert from_steps == [6]
    assert isinstance(got[-1], JobStateChanged) and got[-1].change.state is JobState.FAILED
    assert sum(isinstance(e, JobSnapshot) for e in got) == 2


def test_watch_gives_up_after_reconnect_timeout():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with Client(f"127.0.0.1:{port}", reconnect_timeout=1.0) as client:
        start = time.monotonic()
        with pytest.raises(Unavailable, match="lost the watch"):
            list(client.watch("x"))
    assert time.monotonic() - start < 10


def test_watch_not_found_is_not_retried():
    with ScriptedServer({"WatchJob": abort_with(grpc.StatusCode.NOT_FOUND, "job_id: no job 'x'", kind=KIND_JOB)}) as srv, \
            Client(srv.address) as client:
        with pytest.raises(NotFound) as info:
            list(client.watch("x"))
        assert info.value.kind == KIND_JOB
        assert len(srv.service.requests("WatchJob")) == 1


def _download_handler(payload: bytes, announced_sha: str, announced_size: int | None = None):
    def download(request, context):
        info = pb.CheckpointInfo(step=40, sha256=announced_sha,
                                 size_bytes=len(payload) if announced_size is None else announced_size)
        for offset in range(0, max(len(payload), 1), 1 << 20):
            chunk = pb.CheckpointChunk(data=payload[offset:offset + (1 << 20)])
            if offset == 0:
                chunk.info.CopyFrom(info)
            yield chunk
    return download


def test_download_verifies_and_renames(tmp_path):
    payload = bytes(range(256)) * 9000  # ~2.2 MiB: several chunks
    sha = hashlib.sha256(payload).hexdigest()
    with ScriptedServer({"DownloadCheckpoint": _download_handler(payload, sha)}) as srv, Client(srv.address) as c:
        result = c.download("job-1", tmp_path / "sub" / "ckpt.npz", best=True)
        request = srv.service.requests("DownloadCheckpoint")[0]
    assert result.path.read_bytes() == payload and result.info.sha256 == sha and result.info.step == 40
    assert request.WhichOneof("which") == "best"
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["ckpt.npz"]


def test_download_data_loss_at_the_end_leaves_nothing(tmp_path):
    """The coordinator verifies its copy while streaming and ends with DATA_LOSS after the last chunk."""
    payload = b"y" * 5000

    def download(request, context):
        chunk = pb.CheckpointChunk(data=payload)
        chunk.info.CopyFrom(pb.CheckpointInfo(step=40, sha256=hashlib.sha256(payload).hexdigest(), size_bytes=5000))
        yield chunk
        context.abort(grpc.StatusCode.DATA_LOSS, "checkpoint at step 40 of job j is corrupt on the coordinator")
    with ScriptedServer({"DownloadCheckpoint": download}) as srv, Client(srv.address) as client:
        with pytest.raises(DataLoss, match="corrupt on the coordinator") as info:
            client.download("j", tmp_path / "c.npz")
    assert not isinstance(info.value, ChecksumMismatch)  # the coordinator's copy, not the bytes received
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["sha", "size"])
def test_download_mismatch_raises_and_leaves_nothing(tmp_path, bad):
    payload = b"x" * 3000
    sha = hashlib.sha256(payload).hexdigest()
    handler = _download_handler(payload, "0" * 64 if bad == "sha" else sha, 2999 if bad == "size" else None)
    target = tmp_path / "ckpt.npz"
    target.write_bytes(b"previous")
    with ScriptedServer({"DownloadCheckpoint": handler}) as srv, Client(srv.address) as client:
        with pytest.raises(ChecksumMismatch, match="corrupt"):
            client.download("job-1", target, step=40)
        request = srv.service.requests("DownloadCheckpoint")[0]
    assert target.read_bytes() == b"previous"  # untouched
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.npz"]  # no temp file left
    assert request.WhichOneof("which") == "step" and request.step == 40


def test_download_rejects_two_selectors(tmp_path):
    with Client("127.0.0.1:1") as client, pytest.raises(InvalidArgument, match="at most one"):
        client.download("j", tmp_path / "x", step=3, best=True)


def test_logs_yield_bytes():
    def logs(request, context):
        yield pb.LogChunk(data=b"line 1\n", attempt=1)
        yield pb.LogChunk(data=b"line 2\n", attempt=1)
    with ScriptedServer({"StreamLogs": logs}) as srv, Client(srv.address) as client:
        assert b"".join(client.logs("j", follow=True)) == b"line 1\nline 2\n"
        assert srv.service.requests("StreamLogs")[0].follow is True


def test_watch_of_an_ended_job_still_replays_its_metrics():
    """The server answers a watch of an ended job with the terminal snapshot, the history, then the final
    state again; the client must yield all of it and stop."""
    def watch(request, context):
        yield pb.WatchJobEvent(snapshot=job_pb(state=pb.SUCCEEDED, history=((pb.RUNNING, 1.0), (pb.SUCCEEDED, 2.0))))
        for step in (10, 20):
            yield pb.WatchJobEvent(metric=pb.MetricPoint(step=step))
        yield pb.WatchJobEvent(state=pb.StateChange(state=pb.SUCCEEDED, time_unix=2.0, transition_id=2))
    with ScriptedServer({"WatchJob": watch}) as srv, Client(srv.address) as client:
        events = list(client.watch("job-1"))
        assert len(srv.service.requests("WatchJob")) == 1
    assert [type(e).__name__ for e in events] == ["JobSnapshot", "MetricReported", "MetricReported"]
    assert events[0].job.state is JobState.SUCCEEDED


def test_metrics_follows_next_page_token_to_the_end():
    """A long history comes in pages: the client asks again with each reply's next_page_token until it is
    empty — also after a short page (the length of a reply says nothing)."""
    pages = {"": (range(1, 1501), "p2"), "p2": (range(1501, 1601), "p3"), "p3": (range(1601, 4001), "")}

    def get_metrics(request, context):
        steps, nxt = pages[request.page_token]
        return pb.GetMetricsResponse(points=[pb.MetricPoint(step=s, val_loss=float("nan")) for s in steps],
                                     next_page_token=nxt)
    with ScriptedServer({"GetMetrics": get_metrics}) as srv, Client(srv.address) as client:
        points = client.metrics("j", from_step=1)
        requests = srv.service.requests("GetMetrics")
    assert [p.step for p in points] == list(range(1, 4001))
    assert [r.page_token for r in requests] == ["", "p2", "p3"]
    assert all(r.from_step == 1 and r.job_id == "j" for r in requests)


def test_metrics_stops_at_an_empty_token_even_after_a_full_page():
    def get_metrics(request, context):
        return pb.GetMetricsResponse(points=[pb.MetricPoint(step=s) for s in range(1, 20_001)])
    with ScriptedServer({"GetMetrics": get_metrics}) as srv, Client(srv.address) as client:
        assert len(client.metrics("j")) == 20_000
        assert len(srv.service.requests("GetMetrics")) == 1


def test_watch_deduplicates_state_changes_by_transition_id():
    """Transitions are told apart by their id, not by (state, time, attempt): a restart whose RUNNING carries
    the same time and attempt as the first RUNNING (a coarse clock) is still yielded, while the repeat of a
    transition already in the snapshot's history is not."""
    def watch(request, context):
        yield pb.WatchJobEvent(snapshot=job_pb(state=pb.RUNNING, history=((pb.QUEUED, 1.0), (pb.RUNNING, 2.0))))
        for state, transition_id in ((pb.RUNNING, 2), (pb.RESTARTING, 3), (pb.RUNNING, 4), (pb.FAILED, 5)):
            yield pb.WatchJobEvent(state=pb.StateChange(state=state, time_unix=2.0, transition_id=transition_id))
    with ScriptedServer({"WatchJob": watch}) as srv, Client(srv.address) as client:
        changes = [e.change for e in client.watch("job-1") if isinstance(e, JobStateChanged)]
    assert [(c.state, c.transition_id) for c in changes] == [
        (JobState.RESTARTING, 3), (JobState.RUNNING, 4), (JobState.FAILED, 5)]
