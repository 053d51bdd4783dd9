"""The CLI's parsing and formatting, and its error behaviour run as a real subprocess: one line on stderr,
non-zero exit, no traceback. Commands against a server that misbehaves on purpose use the scripted server."""
from __future__ import annotations

import io
import json
import socket

import grpc
import pytest

from coordinator.cli import commands, render
from coordinator.cli.main import build_parser
from coordinator.client import JobInfo, JobState, MetricPoint, StateChange
from coordinator.hosts import HostListError, parse_hostfile, parse_hosts
from coordinator.rpc import gradmesh_pb2 as pb
from tests.helpers import cli_env, run_cli
from tests.scripted_server import ScriptedServer, abort_with, job_pb

pytestmark = pytest.mark.timeout(60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_one_line_error(proc, *needles: str) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gradmesh: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# ---------------------------------------------------------------- pure functions

def test_fmt_duration():
    assert [render.fmt_duration(s) for s in (0, 59.4, 61, 3600 + 62, None, -1, float("inf"))] == \
        ["0:00", "0:59", "1:01", "1:01:02", "?", "?", "?"]


def test_progress_line_contents():
    line = render.progress_line(state=JobState.RUNNING, step=390, total=780, loss=0.08123, val_accuracy=0.975,
                             eta=14.2, samples_per_second=12345, width=10)
    assert line.startswith("[#####.....] 390/780  50.0%")
    for part in ("loss 0.0812", "val acc 97.50%", "12,345 samples/s", "ETA 0:14", "RUNNING"):
        assert part in line
    unknown = render.progress_line(state="QUEUED", step=0, total=0, loss=None, val_accuracy=None, eta=None, width=4)
    assert unknown.startswith("[????] 0/?") and "loss -" in unknown and "ETA ?" in unknown


def test_parse_hosts_and_hostfile(tmp_path):
    """The CLI's --hosts/--hostfile go through coordinator.hosts (serve turns HostListError into one line)."""
    assert parse_hosts("a:2, b:4,c") == [("a", 2), ("b", 4), ("c", 1)]
    with pytest.raises(HostListError, match="whole number"):
        parse_hosts("a:two")
    with pytest.raises(HostListError, match="at least 1"):
        parse_hosts("a:0")
    hostfile = tmp_path / "hosts"
    hostfile.write_text("# cluster\nnode1:4\nnode2 slots=2  # Open MPI style\n\nnode3\n")
    assert parse_hostfile(hostfile) == [("node1", 4), ("node2", 2), ("node3", 1)]
    with pytest.raises(HostListError, match="cannot read"):
        parse_hostfile(tmp_path / "missing")


def test_parse_labels():
    assert commands.parse_labels(["team=ml", "run = 3", "empty="]) == {"team": "ml", "run": "3", "empty": ""}
    with pytest.raises(commands.CliError, match="KEY=VALUE"):
        commands.parse_labels(["oops"])


def test_global_options_before_or_after_the_command():
    parser = build_parser()
    before = parser.parse_args(["--address", "h:1", "--token", "t", "status", "J"])
    after = parser.parse_args(["status", "J", "--address", "h:2", "--json"])
    neither = parser.parse_args(["status", "J"])
    assert (before.address, before.token, before.json) == ("h:1", "t", False)
    assert (after.address, after.token, after.json) == ("h:2", None, True)
    assert (neither.address, neither.timeout) == (None, 10.0)


def test_download_selectors_are_exclusive():
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["download", "J", "--best", "--step", "3", "-o", "x"])
    assert info.value.code == 2


def _job(**kw) -> JobInfo:
    point = MetricPoint(step=100, epoch=4, train_loss=0.1, val_loss=0.2, val_accuracy=0.95, samples_per_second=5000,
                        lr=1e-3, time_unix=2.0, attempt=1)
    base = dict(id="j1", name="digits", spec_json='{"train": {"batch_size": 64}}', state=JobState.RUNNING,
                message="", workers=2, priority=0, labels={"team": "ml"}, step=100, total_steps=780, epoch=4,
                latest=point, best=point, samples_per_second=5000.0, eta_seconds=8.7, attempts=1, restarts=0,
                created_unix=1.7e9, started_unix=1.7e9 + 1, ended_unix=None,
                history=(StateChange(JobState.QUEUED, "queued", 1.7e9, 0),))
    base.update(kw)
    return JobInfo(**base)


def test_describe_job_and_table():
    text = render.describe_job(_job(message="waiting"))
    for part in ("j1", "RUNNING", "message    waiting", "step 100/780 (12.8%)", "val_acc 95.00%", "team=ml",
                 "ETA 0:09"):
        assert part in text
    table = render.job_table([_job(), _job(id="j2", state=JobState.FAILED)]).splitlines()
    assert table[0].split()[:3] == ["ID", "STATE", "STEP"] and len(table) == 3
    assert table[2].split()[:3] == ["j2", "FAILED", "100/780"]


def test_job_to_dict_is_json():
    data = json.loads(json.dumps(_job().to_dict()))
    assert data["state"] == "RUNNING" and data["spec"] == {"train": {"batch_size": 64}}
    assert data["latest"]["val_accuracy"] == 0.95 and data["history"][0]["state"] == "QUEUED"


def test_progress_view_plain_lines_when_not_a_tty():
    out = io.StringIO()
    view = render.ProgressView(out, tty=False)
    view.on_snapshot(_job(step=0, latest=None, best=None))
    view.on_metric(MetricPoint(step=390, epoch=15, train_loss=0.05, val_loss=0.1, val_accuracy=0.97,
                               samples_per_second=6400, lr=1e-3, time_unix=3.0, attempt=1))
    view.on_state(StateChange(JobState.SUCCEEDED, "done", 4.0, 1))
    view.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue() and len(lines) == 3
    assert "390/780" in lines[1] and "val acc 97.00%" in lines[1] and "ETA 0:09" in lines[1]  # the job's ETA
    assert lines[2] == "SUCCEEDED: done"


def test_progress_view_redraws_in_place_on_a_tty():
    out = io.StringIO()
    view = render.ProgressView(out, tty=True, min_interval=0)
    view.on_snapshot(_job(step=0, latest=None, best=None))
    for step in (100, 200):
        view.on_metric(MetricPoint(step=step, epoch=1, train_loss=0.5, val_loss=None, val_accuracy=None,
                                   samples_per_second=1000, lr=1e-3, time_unix=1.0, attempt=1))
    view.finish()
    text = out.getvalue()
    assert text.count("\r\x1b[K") >= 3 and text.endswith("\n") and text.count("\n") == 1
    assert "200/780" in text.rsplit("\r\x1b[K", 1)[1]


# ---------------------------------------------------------------- the real CLI process

def test_unreachable_server_one_line():
    port = _free_port()
    proc = run_cli("--address", f"127.0.0.1:{port}", "status", "some-job")
    _assert_one_line_error(proc, "cannot reach the coordinator", f"127.0.0.1:{port}")


def test_address_from_environment():
    port = _free_port()
    proc = run_cli("list", env=cli_env(GRADMESH_ADDRESS=f"127.0.0.1:{port}"))
    _assert_one_line_error(proc, f"127.0.0.1:{port}")


def test_missing_spec_file_names_the_file(tmp_path):
    proc = run_cli("--address", f"127.0.0.1:{_free_port()}", "submit", str(tmp_path / "nope.toml"))
    _assert_one_line_error(proc, "invalid job spec", "file", "nope.toml")


def test_usage_error_exits_2():
    proc = run_cli("download", "J")  # -o is required
    assert proc.returncode == 2 and "-o" in proc.stderr


def test_missing_token_file_says_so(tmp_path):
    proc = run_cli("--data-dir", str(tmp_path), "status", "J")
    _assert_one_line_error(proc, "token file", str(tmp_path))


def test_scripted_server_errors_and_json(tmp_path):
    """Exact texts the CLI prints for the status codes the server uses, and --json output that parses."""
    def get_job(request, context):
        if request.job_id == "nope":
            abort_with(grpc.StatusCode.NOT_FOUND, "job_id: no job 'nope'", kind="job")(request, context)
        if context.invocation_metadata() and dict(context.invocation_metadata()).get("authorization") != "Bearer ok":
            abort_with(grpc.StatusCode.UNAUTHENTICATED, "wrong token", kind="token")(request, context)
        return job_pb(request.job_id, state=pb.SUCCEEDED, step=780, total=780)

    submit = abort_with(grpc.StatusCode.INVALID_ARGUMENT, "train.batch_size: must be at least 1",
                        field="train.batch_size")

    spec = tmp_path / "job.toml"
    spec.write_text("[train]\nbatch_size = 0\n")
    with ScriptedServer({"GetJob": get_job, "SubmitJob": submit}) as srv:
        ok = run_cli("--address", srv.address, "--token", "ok", "status", "j9", "--json")
        missing = run_cli("--address", srv.address, "--token", "ok", "status", "nope")
        wrong = run_cli("--address", srv.address, "--token", "bad", "status", "j9")
        bad_spec = run_cli("--address", srv.address, "--token", "ok", "submit", str(spec))
    assert ok.returncode == 0, ok.stderr
    data = json.loads(ok.stdout)
    assert data["id"] == "j9" and data["state"] == "SUCCEEDED" and data["step"] == 780
    _assert_one_line_error(missing, "no job 'nope'")
    _assert_one_line_error(wrong, "not authorized", "wrong token")
    _assert_one_line_error(bad_spec, "invalid job spec", "train.batch_size", "must be at least 1")


def test_watch_exit_code_follows_the_final_state():
    def watch(request, context):
        state = pb.SUCCEEDED if request.job_id == "good" else pb.FAILED
        yield pb.WatchJobEvent(snapshot=job_pb(request.job_id, state=pb.RUNNING, step=10))
        yield pb.WatchJobEvent(metric=pb.MetricPoint(step=50, train_loss=0.3, val_loss=0.4, val_accuracy=0.9,
                                                     samples_per_second=1000))
        yield pb.WatchJobEvent(state=pb.StateChange(state=state, time_unix=3.0,
                                                    message="rank 1 exited with code 1"))

    def get_job(request, context):
        state = pb.SUCCEEDED if request.job_id == "good" else pb.FAILED
        job = job_pb(request.job_id, state=state, step=100, total=100)
        job.message = "" if state == pb.SUCCEEDED else "rank 1 on host x exited with code 1: boom"
        return job

    with ScriptedServer({"WatchJob": watch, "GetJob": get_job}) as srv:
        good = run_cli("--address", srv.address, "watch", "good")
        bad = run_cli("--address", srv.address, "watch", "bad")
        as_json = run_cli("--address", srv.address, "watch", "good", "--json")
    assert good.returncode == 0, good.stderr
    assert "50/100" in good.stdout and "val acc 90.00%" in good.stdout and "SUCCEEDED" in good.stdout
    _assert_one_line_error(bad, "job bad FAILED", "exited with code 1: boom")
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [next(iter(e)) for e in events] == ["snapshot", "metric", "state"]
    assert events[1]["metric"]["step"] == 50 and events[2]["state"]["state"] == "SUCCEEDED"


def test_token_starting_with_a_dash():
    args = build_parser().parse_args(["--token=-abc", "status", "J"])
    assert args.token == "-abc"


def test_plain_progress_lines_are_rate_limited_but_the_last_is_kept():
    out = io.StringIO()
    view = render.ProgressView(out, tty=False, plain_interval=3600)
    view.on_snapshot(_job(step=0, latest=None, best=None))
    for step in range(10, 781, 10):
        view.on_metric(MetricPoint(step=step, epoch=1, train_loss=0.5, val_loss=None, val_accuracy=None,
                                   samples_per_second=1000, lr=1e-3, time_unix=1.0, attempt=1))
    view.on_state(StateChange(JobState.SUCCEEDED, "finished", 4.0, 1))
    lines = out.getvalue().splitlines()
    assert len(lines) == 4, lines  # snapshot, first point, the last point (kept), the state
    assert "10/780" in lines[1] and "780/780" in lines[2] and lines[3] == "SUCCEEDED: finished"


# ---------------------------------------------------------------- what the coordinator decides, the CLI shows

def _point(step: int, val_loss: float | None = None, val_accuracy: float | None = None, epoch: int = 1):
    return MetricPoint(step=step, epoch=epoch, train_loss=0.5, val_loss=val_loss, val_accuracy=val_accuracy,
                       samples_per_second=1000, lr=1e-3, time_unix=1.0, attempt=1)


def test_progress_shows_the_coordinators_eta_as_it_is_refreshed():
    out = io.StringIO()
    view = render.ProgressView(out, tty=False, plain_interval=0)
    view.on_snapshot(_job(step=0, latest=None, best=None, eta_seconds=None))
    view.on_metric(_point(100))
    view.on_job(_job(eta_seconds=125.0))  # a GetJob while watching
    view.on_metric(_point(200))
    view.on_state(StateChange(JobState.SUCCEEDED, "done", 4.0, 1))
    lines = out.getvalue().splitlines()
    assert "ETA ?" in lines[1] and "ETA 2:05" in lines[2]
    assert "ETA" not in render.progress_line(state=JobState.SUCCEEDED, step=780, total=780, loss=0.1,
                                             val_accuracy=0.9, eta=3.0)


def test_no_validation_set_is_said_instead_of_empty_figures():
    """val_fraction = 0: the progress lines, the status and the final line say "no validation set" instead of
    val_loss/val_acc figures."""
    job = _job(spec_json='{"data": {"val_fraction": 0.0}, "train": {"batch_size": 64}}', latest=None, best=None,
               step=0)
    out = io.StringIO()
    view = render.ProgressView(out, tty=False, plain_interval=0)
    view.on_snapshot(job)
    view.on_metric(_point(390))
    view.on_state(StateChange(JobState.SUCCEEDED, "done", 4.0, 1))
    progress = out.getvalue().splitlines()[1]
    assert "no validation set" in progress and "val acc" not in progress, progress
    ended = _job(spec_json=job.spec_json, state=JobState.SUCCEEDED, latest=_point(780), best=None, step=780)
    assert render.summary_line(ended).endswith(", no validation set")
    status = render.describe_job(ended)
    assert "no validation set" in status and "val_acc" not in status and "val_loss" not in status
    with_val = _job(state=JobState.SUCCEEDED, best=_point(700, val_loss=0.2, val_accuracy=0.95))
    assert "no validation set" not in render.summary_line(with_val) + render.describe_job(with_val)


def test_best_is_named_by_validation_loss():
    """The final line shows the coordinator's best point, which is chosen by validation loss: it says so."""
    job = _job(state=JobState.SUCCEEDED, step=225, total_steps=225, started_unix=10.0, ended_unix=40.0,
               best=_point(200, val_loss=0.2345, val_accuracy=0.8468))
    line = render.summary_line(job)
    assert line == "j1 SUCCEEDED at step 225/225 in 0:30, best val loss 0.2345 (acc 84.68%) at step 200"
    assert "best val acc" not in render.describe_job(job)


def test_epoch_is_shown_as_the_worker_reports_it():
    job = _job(epoch=22, latest=_point(780, val_loss=0.1, val_accuracy=0.9, epoch=22))
    text = render.describe_job(job)
    assert "epoch 22" in text and "epoch 23" not in text


def test_watch_on_a_tty_prints_the_final_progress_line_then_the_outcome():
    out = io.StringIO()
    view = render.ProgressView(out, tty=True, min_interval=0)
    view.on_snapshot(_job(step=0, latest=None, best=None))
    view.on_metric(_point(780, val_loss=0.1, val_accuracy=0.97))
    view.on_state(StateChange(JobState.SUCCEEDED, "finished at step 780", 4.0, 1))
    view.finish()
    lines = [line.rsplit("\r\x1b[K", 1)[-1] for line in out.getvalue().split("\n") if line]
    assert lines[-1] == "SUCCEEDED: finished at step 780"
    assert "780/780" in lines[-2] and "val acc 97.00%" in lines[-2]


def test_metrics_command_shows_the_reported_epoch():
    def get_metrics(request, context):
        return pb.GetMetricsResponse(points=[pb.MetricPoint(step=780, epoch=22, train_loss=0.1, val_loss=0.2,
                                                            val_accuracy=0.9)])
    with ScriptedServer({"GetMetrics": get_metrics}) as srv:
        proc = run_cli("--address", srv.address, "metrics", "j")
    assert proc.returncode == 0, proc.stderr
    header, row = proc.stdout.splitlines()
    assert header.split()[:2] == ["STEP", "EPOCH"] and row.split()[:2] == ["780", "22"]


def test_serve_bad_host_list_is_one_usage_line(tmp_path):
    proc = run_cli("serve", "--data-dir", str(tmp_path), "--hosts", "a:two")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "gradmesh: serve: --hosts 'a:two': slots must be a whole number, got 'two'"
