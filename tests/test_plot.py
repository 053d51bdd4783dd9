"""`gradmesh plot` and `gradmesh metrics --csv`, run as the real CLI against a real coordinator whose jobs'
points the test reports as their rank 0 would."""
from __future__ import annotations

import csv
import io
import math
import struct
import time

import pytest

from coordinator.store.records import MetricRow
from coordinator.jobs.worker_api import ProgressReport
from helpers import cli_env, idle_server, running_job, run_cli

pytestmark = pytest.mark.timeout(60)


def report_curve(srv, job_id: str, token: str, scale: float) -> None:
    points = [MetricRow(step=s, epoch=s // 50, train_loss=scale * math.exp(-s / 80), lr=1e-3 * (1 - s / 400),
                        val_loss=scale * 1.1 * math.exp(-s / 90) if s % 20 == 0 else math.nan,
                        val_accuracy=1 - 0.9 * math.exp(-s / 70) if s % 20 == 0 else math.nan,
                        samples_per_second=800 + 50 * math.sin(s), time_unix=time.time(), attempt=1)
              for s in range(1, 301)]
    srv.core.workers.report_progress(job_id, token, ProgressReport(attempt=1, points=points, step=300,
                                                                   total_steps=400))


@pytest.fixture
def two_jobs(start_coordinator):
    srv = idle_server(start_coordinator)
    for job_id, scale in (("fast", 1.0), ("slow", 2.0)):
        running_job(srv, job_id, f"token-{job_id}")
        report_curve(srv, job_id, f"token-{job_id}", scale)
    return srv


def conn(srv) -> list[str]:
    return ["--address", srv.address, "--token", srv.token]


def test_plot_draws_the_curves_of_several_jobs(two_jobs, tmp_path):
    image = pytest.importorskip("matplotlib.image", reason="matplotlib (the plot extra) is not installed")
    out = tmp_path / "curves.png"
    done = run_cli(*conn(two_jobs), "plot", "fast", "slow", "-o", str(out))
    assert done.returncode == 0, done.stderr
    assert f"wrote {out}: 2 job(s), 600 points" in done.stdout
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height) == (1500, 800)
    pixels = image.imread(out)[..., :3]
    assert pixels.std() > 0.05  # not blank: drawn lines and text on white
    distinct = {tuple(p) for p in (pixels[::7, ::7] * 255).astype(int).reshape(-1, 3)}
    assert len(distinct) > 20  # two line colours with their antialiasing, axes, text


def test_plot_without_matplotlib_says_so_in_one_line(two_jobs, tmp_path):
    blocker = tmp_path / "blocker" / "matplotlib"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('blocked by the test')\n")
    env = cli_env()
    env["PYTHONPATH"] = f"{blocker.parent}:{env['PYTHONPATH']}"
    done = run_cli(*conn(two_jobs), "plot", "fast", "-o", str(tmp_path / "x.png"), env=env)
    assert done.returncode == 1 and not (tmp_path / "x.png").exists()
    assert done.stderr == "gradmesh: gradmesh plot needs matplotlib, which is not installed: " \
                          "pip install -e '.[plot]' in the gradmesh clone (or pip install matplotlib)\n"


def test_metrics_csv_is_a_header_and_one_row_per_point(two_jobs):
    done = run_cli(*conn(two_jobs), "metrics", "fast", "--csv")
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader(io.StringIO(done.stdout)))
    assert done.stdout.splitlines()[0] == "step,epoch,train_loss,val_loss,val_accuracy,samples_per_second,lr," \
                                          "time_unix,attempt"
    assert [int(r["step"]) for r in rows] == list(range(1, 301))
    assert float(rows[0]["train_loss"]) == pytest.approx(math.exp(-1 / 80), rel=1e-6)
    assert rows[0]["val_loss"] == "" and float(rows[19]["val_loss"]) == pytest.approx(1.1 * math.exp(-20 / 90), rel=1e-6)
