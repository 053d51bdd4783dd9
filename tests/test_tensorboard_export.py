"""`gradmesh metrics ID --tensorboard DIR`, run as the real CLI against a real coordinator, read back with
TensorBoard's own reader (EventAccumulator) and compared value by value with `gradmesh metrics ID --csv`.

Three jobs whose rank 0 the test plays: "solo", and two trials of the sweep "sw" (label sweep=sw), named on the
command line by the sweep's id. Skips where the tensorboard package (the test extra) is missing.
"""
from __future__ import annotations

import csv
import io
import math
import time

import numpy as np
import pytest

from coordinator.access.tokens import hash_token
from coordinator.jobs.worker_api import ProgressReport
from coordinator.states import JobState
from coordinator.store.records import JobRow, MetricRow
from coordinator.telemetry.tensorboard import SCALARS, crc32c
from helpers import SMALL_SPEC, idle_server, run_cli

pytestmark = pytest.mark.timeout(90)


def running(srv, job_id: str, labels: dict[str, str]) -> str:
    """A RUNNING job with attempt 1 whose rank 0 holds the token "token-<id>"."""
    from worker.spec import parse_spec_text
    srv.store.create_job(JobRow(id=job_id, name=job_id, spec_json=parse_spec_text(SMALL_SPEC).to_json(),
                                state=JobState.QUEUED, workers=1, labels=labels))
    srv.store.begin_attempt(job_id, hosts="localhost:1", log_dir=srv.data_dir / "logs" / job_id,
                            run_dir=srv.data_dir / "runs" / job_id, token_hash=hash_token(f"token-{job_id}"),
                            message="test")
    return job_id


def report(srv, job_id: str, scale: float) -> None:
    now = time.time()
    points = [MetricRow(step=s, epoch=s // 40, train_loss=scale * math.exp(-s / 60), lr=3e-3 * (1 - s / 200),
                        val_loss=scale * 1.1 * math.exp(-s / 70) if s % 10 == 0 else math.nan,
                        val_accuracy=1 - 0.9 * math.exp(-s / 50) if s % 10 == 0 else math.nan,
                        samples_per_second=900 + 37 * math.sin(s), time_unix=now - 200 + s, attempt=1)
              for s in range(1, 151)]
    srv.core.workers.report_progress(job_id, f"token-{job_id}", ProgressReport(attempt=1, points=points, step=150,
                                                                               total_steps=200))


def test_every_value_matches_the_csv(start_coordinator, tmp_path):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                      reason="the tensorboard package (in the test extra) is not installed")
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value, before anything depends on it
    srv = idle_server(start_coordinator)
    for job_id, labels, scale in (("solo", {}, 1.0), ("trial-1", {"sweep": "sw"}, 2.0),
                                  ("trial-2", {"sweep": "sw"}, 3.0)):
        running(srv, job_id, labels)
        report(srv, job_id, scale)
    conn = ["--address", srv.address, "--token", srv.token]
    out = tmp_path / "tb"
    done = run_cli(*conn, "metrics", "solo", "sw", "--tensorboard", str(out))
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["solo", "trial-1", "trial-2"]  # one run per job

    for job_id in ("solo", "trial-1", "trial-2"):
        listed = run_cli(*conn, "metrics", job_id, "--csv")
        assert listed.returncode == 0, listed.stderr
        rows = list(csv.DictReader(io.StringIO(listed.stdout)))
        assert len(rows) == 150
        ea = accumulator.EventAccumulator(str(out / job_id), size_guidance={accumulator.SCALARS: 0})
        ea.Reload()
        assert set(ea.Tags()["scalars"]) == set(SCALARS)
        compared = 0
        for tag in SCALARS:
            events = {e.step: e for e in ea.Scalars(tag)}
            expected = {int(r["step"]): r for r in rows if r[tag] != ""}  # empty in the CSV: not measured
            assert sorted(events) == sorted(expected), tag
            for step, e in events.items():
                row = expected[step]
                assert e.value == np.float32(float(row[tag])), (job_id, tag, step)  # TensorBoard keeps float32
                assert e.wall_time == pytest.approx(float(row["time_unix"]), abs=1e-6)
                compared += 1
        assert compared == 150 * 5 + 15 * 2  # five columns at every step, the validation ones every 10th


def test_an_unknown_id_is_an_error_naming_it(start_coordinator, tmp_path):
    srv = idle_server(start_coordinator)
    done = run_cli("--address", srv.address, "--token", srv.token, "metrics", "nothing-here", "--tensorboard",
                   str(tmp_path / "tb"))
    assert done.returncode == 1
    assert "nothing-here is neither a job nor a sweep with trials" in done.stderr
    assert not (tmp_path / "tb").exists()
    several = run_cli("--address", srv.address, "--token", srv.token, "metrics", "a", "b", "--csv")
    assert several.returncode == 2 and "one job at a time" in several.stderr
