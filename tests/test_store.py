"""The SQLite store: jobs, transitions, attempts, metrics, checkpoint records and retention, on a real file."""
import math
import sqlite3
import threading

import pytest

from coordinator.store.checkpoints import RetentionPolicy
from coordinator.states import IllegalTransition, JobState
from coordinator.store.records import CheckpointRow, JobRow, MetricRow
from coordinator.store.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "gradmesh.db")
    yield s
    s.close()


def job(id="j1", priority=0, workers=1):
    return JobRow(id=id, name="n", spec_json='{"a": 1}', state=JobState.QUEUED, workers=workers, priority=priority,
                  labels={"team": "x"})


def ckpt(step, val_loss=math.nan, final=False):
    return CheckpointRow(job_id="j1", step=step, epoch=0, size=1, sha256="0" * 64, val_loss=val_loss,
                         val_accuracy=math.nan, is_final=final, created=0.0, attempt=1, path=f"/x/{step}")


def test_wal_and_foreign_keys_are_on(store, tmp_path):
    con = sqlite3.connect(tmp_path / "gradmesh.db")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()
    with pytest.raises(sqlite3.IntegrityError):  # a metric for a job that does not exist
        store.add_metrics("nope", [MetricRow(step=1)])


def test_create_is_idempotent_on_id_and_records_the_first_transition(store):
    row, created = store.create_job(job())
    assert created and row.state is JobState.QUEUED and row.labels == {"team": "x"}
    again, created2 = store.create_job(job())
    assert not created2 and again.seq == row.seq
    assert [t.state for t in store.transitions("j1")] == [JobState.QUEUED]


def test_transitions_are_checked_and_recorded_with_time(store):
    store.create_job(job())
    attempt, _ = store.begin_attempt("j1", hosts="localhost:1", log_dir=store.path.parent / "l",
                                     run_dir=store.path.parent / "r", token_hash="h", message="go", now=10.0)
    assert attempt.attempt == 1 and attempt.log_path.endswith("attempt-1.log")
    row = store.get_job("j1")
    assert row.state is JobState.RUNNING and row.started == 10.0 and row.attempts == 1 and row.token_hash == "h"
    store.transition("j1", JobState.SUCCEEDED, "done", attempt=1, now=20.0)
    with pytest.raises(IllegalTransition):
        store.transition("j1", JobState.RUNNING, "again")
    with pytest.raises(IllegalTransition):
        store.begin_attempt("j1", hosts="", log_dir=store.path.parent, run_dir=store.path.parent, token_hash="",
                            message="")
    history = store.transitions("j1")
    assert [(t.state, t.time) for t in history][1:] == [(JobState.RUNNING, 10.0), (JobState.SUCCEEDED, 20.0)]
    assert store.get_job("j1").ended == 20.0
    assert store.attempts("j1")[0].attempt == 1  # the refused begin_attempt left no half-made attempt


def test_conditional_transition_refuses_when_state_moved(store):
    store.create_job(job())
    store.transition("j1", JobState.CANCELLED, "cancel")
    with pytest.raises(IllegalTransition):
        store.transition("j1", JobState.FAILED, "late", expect=[JobState.RUNNING])


def test_duplicate_metric_points_are_ignored_and_nan_round_trips(store):
    store.create_job(job())
    pts = [MetricRow(step=s, train_loss=1.0 / s, val_loss=math.nan if s % 2 else 0.5 / s) for s in (1, 2, 3)]
    assert store.add_metrics("j1", pts) == 3
    assert store.add_metrics("j1", pts + [MetricRow(step=4, train_loss=0.1)]) == 1
    got = store.metrics("j1")
    assert [m.step for m in got] == [1, 2, 3, 4]
    assert math.isnan(got[0].val_loss) and got[1].val_loss == 0.25
    assert [m.step for m in store.metrics("j1", from_step=3)] == [3, 4]
    assert store.latest_metric("j1").step == 4 and store.best_metric("j1").step == 2


def test_jobs_in_scheduling_order(store):
    for i, prio in enumerate([0, 5, 0, 5]):
        store.create_job(job(id=f"j{i}", priority=prio))
    assert [j.id for j in store.jobs_in(JobState.QUEUED)] == ["j1", "j3", "j0", "j2"]
    assert [j.id for j in store.list_jobs(limit=2)] == ["j3", "j2"]
    assert [j.id for j in store.list_jobs(limit=2, before_seq=store.get_job("j2").seq)] == ["j1", "j0"]


def test_retention_keeps_last_best_and_final():
    rows = [ckpt(100, 0.9), ckpt(200, 0.3), ckpt(300, 0.5), ckpt(400, 0.6), ckpt(500, 0.7), ckpt(600, 0.8, final=True)]
    assert RetentionPolicy(2).retained(rows) == {500, 600, 200}
    assert RetentionPolicy(1).retained([ckpt(1), ckpt(2)]) == {2}


def test_add_checkpoint_drops_records_past_retention_in_one_transaction(store):
    store.create_job(job())
    dropped = []
    for step, loss in [(10, 0.5), (20, 0.1), (30, 0.4), (40, 0.3)]:
        dropped += store.add_checkpoint(ckpt(step, loss), RetentionPolicy(2))
    assert [c.step for c in store.checkpoints("j1")] == [20, 30, 40]
    assert [c.step for c in dropped] == [10]


def test_concurrent_writers_keep_the_database_intact(store):
    store.create_job(job())

    def write(offset):
        for s in range(50):
            store.add_metrics("j1", [MetricRow(step=offset * 1000 + s)])
            store.update_progress("j1", step=s, total_steps=100, epoch=0)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.metrics("j1")) == 200 and store.integrity_ok()
