"""DeleteJob: an ended job goes with everything kept of it, a job that has not ended is refused untouched, a
job resumed from it keeps its checkpoint, and a deletion cut short by a crash is settled at the next start."""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from pathlib import Path

import grpc
import pytest

from conftest import job_stub
from coordinator.client import Client, JobState, NotFound
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.states import JobState as StoreState
from helpers import expect_error, idle_server, run_cli, running_job, small_digits_spec, upload_checkpoint, wait_for
from helpers import worker_stub

pytestmark = pytest.mark.timeout(120)
KINDS = ("checkpoints", "logs", "runs")
TABLES = ("jobs", "attempts", "transitions", "metrics", "checkpoints")


def job_dirs(data_dir: Path, job_id: str) -> dict[str, bool]:
    return {kind: (data_dir / kind / job_id).exists() for kind in KINDS}


def rows_of(data_dir: Path, job_id: str) -> dict[str, int]:
    with sqlite3.connect(data_dir / "gradmesh.db") as db:
        return {t: db.execute(f"SELECT COUNT(*) FROM {t} WHERE {'id' if t == 'jobs' else 'job_id'} = ?",
                              (job_id,)).fetchone()[0] for t in TABLES}


def files_under(data_dir: Path, job_id: str) -> tuple[int, int]:
    """(files, bytes) of the job's three directories, as the coordinator should count them."""
    count = size = 0
    for kind in KINDS:
        for path in (data_dir / kind / job_id).rglob("*"):
            if path.is_file() and not path.is_symlink():
                count += 1
                size += path.stat().st_size if path.stat().st_nlink == 1 else 0
    return count, size


def test_a_finished_job_is_deleted_with_its_records_and_files_and_its_id_runs_anew(coordinator):
    srv = coordinator
    client = Client(srv.address, token=srv.token)
    job = client.submit(small_digits_spec(steps=60), job_id="to-delete")
    done = wait_for(lambda: (j := client.get(job.id)).is_terminal() and j, 90, "the job to end")
    assert done.state is JobState.SUCCEEDED, done.message
    assert all(job_dirs(srv.data_dir, job.id).values()), job_dirs(srv.data_dir, job.id)
    assert all(rows_of(srv.data_dir, job.id)[t] for t in TABLES)
    checkpoints = len(client.checkpoints(job.id))
    files, size = files_under(srv.data_dir, job.id)
    assert checkpoints >= 2 and files > checkpoints and size > 0

    result = run_cli("--address", srv.address, "--token", srv.token, "delete", job.id)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{job.id}: deleted ({checkpoints} checkpoint(s), {files} file(s), "), result.stdout

    assert job_dirs(srv.data_dir, job.id) == {kind: False for kind in KINDS}
    assert rows_of(srv.data_dir, job.id) == {t: 0 for t in TABLES}
    assert not any((srv.data_dir / "trash").iterdir())
    # nor is anything of it left in memory: the record of which files were hashed (coordinator.files.verified)
    assert not [p for p in srv.core.checkpoints.verified._seen if f"/{job.id}/" in p]
    with pytest.raises(NotFound):
        client.get(job.id)
    assert job.id not in [j.id for j in client.list()]
    with pytest.raises(NotFound):
        client.delete(job.id)  # a second time: nothing left to delete

    # the id is free: a new job of that id runs from scratch, with nothing of the old one in its log or history
    again = client.submit(small_digits_spec(steps=20), job_id=job.id)
    done = wait_for(lambda: (j := client.get(again.id)).is_terminal() and j, 90, "the new job to end")
    assert done.state is JobState.SUCCEEDED and done.attempts == 1, done.message
    assert [p.step for p in client.metrics(job.id)] == [10, 20]
    assert [c.step for c in client.checkpoints(job.id)] == [20]
    client.close()


def test_a_job_that_has_not_ended_is_refused_and_keeps_everything(start_coordinator):
    srv = idle_server(start_coordinator)
    job_id, token = running_job(srv)
    with grpc.insecure_channel(srv.address) as ch:
        upload_checkpoint(worker_stub(ch, token), job_id, 10, b"weights" * 1000)
        api = job_stub(srv, ch)
        before = rows_of(srv.data_dir, job_id), files_under(srv.data_dir, job_id)
        err = expect_error(grpc.StatusCode.FAILED_PRECONDITION, api.DeleteJob, pb.DeleteJobRequest(job_id=job_id))
        assert "RUNNING" in err.details() and "cancel it first" in err.details(), err.details()
        assert (rows_of(srv.data_dir, job_id), files_under(srv.data_dir, job_id)) == before
        expect_error(grpc.StatusCode.NOT_FOUND, api.DeleteJob, pb.DeleteJobRequest(job_id="no-such-job"))
        err = expect_error(grpc.StatusCode.INVALID_ARGUMENT, api.DeleteJob, pb.DeleteJobRequest(job_id="../w1"))
        assert err.details().startswith("job_id:"), err.details()
        assert (rows_of(srv.data_dir, job_id), files_under(srv.data_dir, job_id)) == before

        srv.store.transition(job_id, StoreState.FAILED, "failed for the test", attempt=1)
        gone = api.DeleteJob(pb.DeleteJobRequest(job_id=job_id))
        assert (gone.job_id, gone.checkpoints, gone.files, gone.bytes_freed) == (job_id, 1, 1, 7000)


def test_a_job_resumed_from_a_deleted_one_keeps_its_checkpoint(start_coordinator):
    srv = idle_server(start_coordinator)
    job_id, token = running_job(srv)
    payload = b"the weights at step 20" * 500
    with grpc.insecure_channel(srv.address) as ch:
        worker = worker_stub(ch, token)
        upload_checkpoint(worker, job_id, 10, b"older" * 100)
        upload_checkpoint(worker, job_id, 20, payload)
    srv.store.transition(job_id, StoreState.FAILED, "failed for the test", attempt=1)
    client = Client(srv.address, token=srv.token)
    resumed = client.resume(job_id)
    gone = client.delete(job_id)
    # the step-20 file is linked into the resumed job: removed from the deleted one, but not freed
    assert (gone.checkpoints, gone.files, gone.bytes_freed) == (2, 2, 500)
    [seed] = client.checkpoints(resumed.id)
    assert seed.step == 20
    download = client.download(resumed.id, srv.data_dir.parent / "seed.npz")
    assert Path(download.path).read_bytes() == payload
    assert client.get(resumed.id).labels["resumed_from"] == job_id
    client.close()


def test_delete_of_several_ids_goes_on_past_one_it_cannot_delete(start_coordinator):
    srv = idle_server(start_coordinator)
    ended, _ = running_job(srv, "ended", "token-ended")
    srv.store.transition(ended, StoreState.CANCELLED, "cancelled for the test", attempt=1)
    live, _ = running_job(srv, "live", "token-live")
    result = run_cli("--address", srv.address, "--token", srv.token, "delete", "live", "ended", "--json")
    assert result.returncode == 1
    assert "job live is RUNNING" in result.stderr and "cancel it first" in result.stderr, result.stderr
    assert [d["job_id"] for d in json.loads(result.stdout)] == ["ended"]
    assert srv.store.get_job("ended") is None and srv.store.get_job("live") is not None


def test_a_deletion_whose_records_were_not_deleted_puts_the_files_back(start_coordinator, monkeypatch):
    srv = idle_server(start_coordinator)
    job_id, token = running_job(srv)
    with grpc.insecure_channel(srv.address) as ch:
        upload_checkpoint(worker_stub(ch, token), job_id, 10, b"weights" * 100)
    srv.store.transition(job_id, StoreState.SUCCEEDED, "done", attempt=1)
    (srv.data_dir / "logs" / job_id).mkdir(parents=True, exist_ok=True)
    (srv.data_dir / "logs" / job_id / "attempt-1.log").write_text("rank 0: trained\n")
    before = files_under(srv.data_dir, job_id)

    def disk_full(job_id):
        raise sqlite3.OperationalError("database or disk is full")
    monkeypatch.setattr(srv.store, "delete_job", disk_full)
    client = Client(srv.address, token=srv.token)
    with pytest.raises(Exception):
        client.delete(job_id)
    assert files_under(srv.data_dir, job_id) == before
    assert client.get(job_id).state is JobState.SUCCEEDED
    [row] = srv.store.checkpoints(job_id)
    assert Path(row.path).read_bytes() == b"weights" * 100
    assert not any((srv.data_dir / "trash").iterdir())
    client.close()


def test_a_start_up_settles_what_a_crash_mid_deletion_left_in_the_trash(start_coordinator, tmp_path):
    data_dir = tmp_path / "data"
    srv = idle_server(start_coordinator, data_dir=data_dir)
    kept, token = running_job(srv, "kept", "token-kept")
    with grpc.insecure_channel(srv.address) as ch:
        upload_checkpoint(worker_stub(ch, token), kept, 10, b"kept weights" * 100)
    srv.store.transition(kept, StoreState.FAILED, "failed for the test", attempt=1)
    srv.stop(grace=1.0, stop_jobs=False)
    # killed after the renames, before the records' commit: "kept" still exists, its files are in the trash
    entry = data_dir / "trash" / "kept.0badc0de"
    entry.mkdir(parents=True)
    os.rename(data_dir / "checkpoints" / kept, entry / "checkpoints")
    # killed after the commit, before the removal: "gone" has no record, its files are in the trash
    gone = data_dir / "trash" / "gone.r1.5eed5eed"
    (gone / "logs").mkdir(parents=True)
    (gone / "logs" / "attempt-1.log").write_text("old output\n")

    srv = start_coordinator(data_dir)
    [row] = srv.store.checkpoints(kept)
    assert Path(row.path).read_bytes() == b"kept weights" * 100
    assert Path(row.path).parent == data_dir / "checkpoints" / kept
    assert not any((data_dir / "trash").iterdir())
    with grpc.insecure_channel(srv.address) as ch:
        reply = job_stub(srv, ch).DeleteJob(pb.DeleteJobRequest(job_id=kept))
    assert (reply.checkpoints, reply.files) == (1, 1)



def test_a_download_under_way_when_its_job_is_deleted_still_completes_intact(start_coordinator):
    srv = idle_server(start_coordinator)
    job_id, token = running_job(srv)
    payload = os.urandom(4 << 20)  # several 1 MiB chunks (the most a checkpoint of this spec can be)
    with grpc.insecure_channel(srv.address) as ch:
        upload_checkpoint(worker_stub(ch, token), job_id, 10, payload)
        srv.store.transition(job_id, StoreState.SUCCEEDED, "done", attempt=1)
        api = job_stub(srv, ch)
        stream = api.DownloadCheckpoint(pb.DownloadCheckpointRequest(job_id=job_id, step=10))
        first = next(stream)
        gone = api.DeleteJob(pb.DeleteJobRequest(job_id=job_id))
        assert gone.checkpoints == 1 and not (srv.data_dir / "checkpoints" / job_id).exists()
        received = first.data + b"".join(chunk.data for chunk in stream)
    assert first.info.sha256 == hashlib.sha256(payload).hexdigest() and received == payload
