"""The standalone trainer, run for real as `python -m worker`, and the loop's exact-resume contract."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from worker.checkpoint import load_checkpoint
from worker.comm import SerialComm
from worker.data import load_dataset
from worker.hooks import Hooks, StopRequest
from worker.spec import load_spec, parse_spec
from worker.train import train

ROOT = Path(__file__).resolve().parent.parent
DIGITS = ROOT / "examples" / "digits.toml"


def run_worker(*args, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if k != "GRADMESH_FAULT"}
    full_env.update({"PYTHONPATH": str(ROOT), **(env or {})})
    return subprocess.run([sys.executable, "-m", "worker", *map(str, args)], capture_output=True, text=True,
                          env=full_env, timeout=timeout, cwd=ROOT)


def small_spec(tmp_path, **train):
    text = f"""
name = "small"
[model]
layers = [64, 32, 10]
[data]
source = "digits"
[train]
steps = {train.get('steps', 60)}
batch_size = {train.get('batch_size', 50)}
eval_every = 10
[optim]
name = "adamw"
lr = 0.003
weight_decay = 0.01
schedule = "cosine"
warmup_steps = 5
[checkpoint]
every_steps = 20
keep_last = 2
"""
    path = tmp_path / "small.toml"
    path.write_text(text)
    return path


def numpy_accuracy(npz_path, x, y):
    """Accuracy from the checkpoint's arrays with a forward pass written here, not worker.mlp's."""
    with np.load(npz_path) as ckpt:
        n = sum(1 for k in ckpt.files if k.endswith(".W"))
        h = x.astype(np.float64)
        for i in range(n):
            h = h @ ckpt[f"layers.{i}.W"] + ckpt[f"layers.{i}.b"]
            if i < n - 1:
                h = np.maximum(h, 0)
    return float(np.mean(h.argmax(axis=1) == y))


@pytest.mark.timeout(120)
def test_digits_example_reaches_97_percent_on_held_out_data(tmp_path):
    out = tmp_path / "run"
    proc = run_worker("--spec", DIGITS, "--out", out)
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(progress) == 8  # 780 steps, eval_every 100, and the end
    assert "val_acc" in progress[-1] and "samples/s" in progress[-1]
    spec = load_spec(DIGITS)
    ds = load_dataset(spec.data, spec.model.layers, spec.model.loss, spec.train.seed)
    x, y = ds.val.rows(np.arange(len(ds.val)))
    accuracy = numpy_accuracy(out / "final.npz", x, y)
    assert accuracy >= 0.97, accuracy
    meta = load_checkpoint(out / "final.npz").meta
    assert meta["metrics"]["val_accuracy"] == pytest.approx(accuracy)
    assert sorted(p.name for p in out.iterdir()) == ["ckpt-200.npz", "ckpt-400.npz", "ckpt-600.npz", "final.npz"]


def test_interrupted_run_resumes_bit_identically(tmp_path):
    spec_path = small_spec(tmp_path)
    whole = run_worker("--spec", spec_path, "--out", tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    # a real abrupt death after the step-40 checkpoint; the rerun must pick up from ckpt-40
    died = run_worker("--spec", spec_path, "--out", tmp_path / "cut", env={"GRADMESH_FAULT": "exit:step=47:code=9"})
    assert died.returncode == 9
    assert (tmp_path / "cut" / "ckpt-40.npz").exists() and not (tmp_path / "cut" / "final.npz").exists()
    resumed = run_worker("--spec", spec_path, "--out", tmp_path / "cut")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 40" in resumed.stdout
    a, b = load_checkpoint(tmp_path / "whole" / "final.npz"), load_checkpoint(tmp_path / "cut" / "final.npz")
    np.testing.assert_array_equal(a.flat_params(), b.flat_params())
    for key, value in a.optimizer_arrays().items():
        np.testing.assert_array_equal(value, b.arrays[key])
    assert sorted(p.name for p in (tmp_path / "cut").glob("ckpt-*")) == ["ckpt-20.npz", "ckpt-40.npz"]


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    spec_path = small_spec(tmp_path)
    run_worker("--spec", spec_path, "--out", tmp_path / "run", env={"GRADMESH_FAULT": "exit:step=47:code=9"})
    newest = tmp_path / "run" / "ckpt-40.npz"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = b"\x00" * 64
    newest.write_bytes(bytes(data))
    proc = run_worker("--spec", spec_path, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    assert "skipping checkpoint" in proc.stderr and "ckpt-40.npz" in proc.stderr
    assert "resumed at step 20" in proc.stdout


class StopAt(Hooks):
    def __init__(self, step):
        self.step, self.seen = step, 0

    def poll_stop(self):
        self.seen += 1
        return StopRequest(checkpoint=True) if self.seen == self.step else None


def test_stop_request_checkpoints_and_resume_is_bit_exact_in_process(tmp_path):
    spec = load_spec(small_spec(tmp_path, steps=50, batch_size=64))
    full = train(spec, SerialComm(), out_dir=tmp_path / "full")
    first = train(spec, SerialComm(), hooks=StopAt(33), out_dir=tmp_path / "part")
    assert first.status == "stopped" and first.step == 33
    ckpt = load_checkpoint(tmp_path / "part" / "ckpt-33.npz")
    assert ckpt.meta["step"] == 33 and ckpt.meta["position"] == 33 % 26
    rest = train(spec, SerialComm(), out_dir=tmp_path / "part", resume=ckpt)
    assert rest.status == "succeeded" and rest.step == 50
    np.testing.assert_array_equal(load_checkpoint(full.final_path).flat_params(),
                                  load_checkpoint(rest.final_path).flat_params())


@pytest.mark.timeout(60)
def test_sigterm_writes_a_checkpoint_and_exits_4(tmp_path):
    spec_path = small_spec(tmp_path, steps=100000)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "worker", "--spec", str(spec_path), "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        for line in proc.stdout:  # wait until it is really training
            if line.startswith("step 20/"):
                break
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 4, err
    saved = sorted((tmp_path / "run").glob("ckpt-*.npz"), key=lambda p: int(p.stem.split("-")[1]))
    assert saved and int(saved[-1].stem.split("-")[1]) > 20
    assert "stopped at step" in out and ": SIGTERM; checkpoint written" in out, out


def test_bad_spec_exits_2_with_one_clear_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\n[model]\nlayers = [64, 10]\n[train]\nepochs = 1\nbatch_size = -3\n')
    proc = run_worker("--spec", bad, "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "train.batch_size" in proc.stderr
    assert "Traceback" not in proc.stderr
    missing = run_worker("--spec", tmp_path / "absent.toml", "--out", tmp_path / "o")
    assert missing.returncode == 2 and "cannot read" in missing.stderr and "Traceback" not in missing.stderr


def test_bad_data_file_exits_2_with_one_clear_line(tmp_path):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((10, 5), np.float32), y=np.zeros(10, np.int64))
    spec = tmp_path / "s.toml"
    spec.write_text(f'[model]\nlayers = [4, 2]\n[data]\nsource = "{data}"\n[train]\nepochs = 1\n')
    proc = run_worker("--spec", spec, "--out", tmp_path / "o")
    assert proc.returncode == 2
    assert "5 features but model.layers[0] is 4" in proc.stderr and "Traceback" not in proc.stderr


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    spec_path = small_spec(tmp_path)
    proc = run_worker("--spec", spec_path, "--out", tmp_path / "run", env={"GRADMESH_FAULT": "nan:step=25"})
    assert proc.returncode == 3
    assert "loss became NaN at step 25" in proc.stderr
    assert [p.name for p in (tmp_path / "run").glob("*.npz")] == ["ckpt-20.npz"]


# Overflow on the way to NaN is what the test provokes; numpy's warnings about it are expected noise.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning", "ignore:invalid value encountered:RuntimeWarning")
def test_real_divergence_is_detected(tmp_path):
    # regression on the digit's value with a far too large step size: the loss overflows within a few steps
    spec = parse_spec({"model": {"layers": [64, 32, 1], "activation": "tanh", "loss": "mse"},
                       "train": {"steps": 200, "batch_size": 64, "eval_every": 50},
                       "optim": {"name": "sgd", "lr": 10.0}, "checkpoint": {"every_steps": 0}})
    from worker.train import Divergence
    with pytest.raises(Divergence, match=r"loss became (NaN|infinite) at step \d+"):
        train(spec, SerialComm(), out_dir=tmp_path)


def test_completed_run_is_not_trained_again_and_says_so(tmp_path):
    """A second run into the --out of a finished one trains nothing: it says so, naming --no-resume, exits 0 and
    leaves final.npz untouched (the README once showed two commands sharing one --out, and the second looked
    like a run that did nothing)."""
    spec_path = small_spec(tmp_path, steps=20)
    final = tmp_path / "r" / "final.npz"
    assert run_worker("--spec", spec_path, "--out", tmp_path / "r").returncode == 0
    before, stat = final.read_bytes(), final.stat()
    again = run_worker("--spec", spec_path, "--out", tmp_path / "r")
    assert again.returncode == 0, again.stderr
    assert f"{tmp_path / 'r'} already finished at step 20; use --no-resume to start over" in again.stdout
    assert [line for line in again.stdout.splitlines() if line.startswith(("step ", "checkpoint"))] == []
    assert final.read_bytes() == before and final.stat().st_mtime_ns == stat.st_mtime_ns


def test_no_resume_trains_a_finished_run_again_from_step_0(tmp_path):
    spec_path = small_spec(tmp_path, steps=20)
    assert run_worker("--spec", spec_path, "--out", tmp_path / "r").returncode == 0
    before = load_checkpoint(tmp_path / "r" / "final.npz").flat_params()
    fresh = run_worker("--spec", spec_path, "--out", tmp_path / "r", "--no-resume")
    assert fresh.returncode == 0, fresh.stderr
    assert "already finished" not in fresh.stdout
    assert [line.split()[1] for line in fresh.stdout.splitlines() if line.startswith("step ")] == ["10/20", "20/20"]
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "r" / "final.npz").flat_params(), before)  # same seed


def test_a_longer_spec_continues_a_finished_run(tmp_path):
    """Finished means finished for this spec: asked for more steps, the run goes on from its final checkpoint."""
    assert run_worker("--spec", small_spec(tmp_path, steps=20), "--out", tmp_path / "r").returncode == 0
    longer = run_worker("--spec", small_spec(tmp_path, steps=30), "--out", tmp_path / "r")
    assert longer.returncode == 0, longer.stderr
    assert "already finished" not in longer.stdout and "step 30/30" in longer.stdout
    assert load_checkpoint(tmp_path / "r" / "final.npz").meta["step"] == 30


def test_standardised_inputs_are_saved_and_reused_on_resume(tmp_path):
    raw = load_spec(small_spec(tmp_path, steps=40, batch_size=64)).to_dict()
    raw["data"]["normalize"] = "standard"
    spec = parse_spec(raw)
    full = train(spec, SerialComm(), out_dir=tmp_path / "full")
    part = train(spec, SerialComm(), hooks=StopAt(15), out_dir=tmp_path / "part")
    ckpt = load_checkpoint(tmp_path / "part" / "ckpt-15.npz")
    stats = ckpt.normalizer_arrays()
    assert stats is not None and stats["normalize.std"].shape == (64,) and part.status == "stopped"
    rest = train(spec, SerialComm(), out_dir=tmp_path / "part", resume=ckpt)
    np.testing.assert_array_equal(load_checkpoint(full.final_path).flat_params(),
                                  load_checkpoint(rest.final_path).flat_params())
    assert full.metrics["val_accuracy"] > 0.3  # it learns (chance is 0.1); 40 steps are not enough for more


class Recorder(Hooks):
    """Keeps what the loop publishes: metric points, checkpoints (step, epoch) and the final epoch."""

    def __init__(self):
        self.points, self.checkpoints, self.started, self.finished = [], [], None, None

    def on_start(self, *, step, total_steps, epoch, info):
        self.started = (step, epoch)

    def on_metrics(self, point):
        self.points.append(point)

    def on_checkpoint(self, path, *, step, epoch, is_final, metrics):
        self.checkpoints.append((step, epoch, load_checkpoint(path).meta["epoch"]))

    def on_finish(self, *, step, epoch, status, message=""):
        self.finished = (step, epoch, status)


def test_one_epoch_number_everywhere_counted_from_1(tmp_path):
    """digits, batch 64: 26 steps per epoch. 3 epochs = 78 steps; checkpoints at 20 (epoch 1), 40 and 60
    (epoch 2 and 3), evaluations at 26, 52, 78: all say the epoch their last step belongs to."""
    raw = load_spec(small_spec(tmp_path, batch_size=64)).to_dict()
    raw["train"].update(steps=0, epochs=3, eval_every=26)
    spec = parse_spec(raw)
    seen = Recorder()
    result = train(spec, SerialComm(), hooks=seen, out_dir=tmp_path / "run")
    assert [(int(p["step"]), int(p["epoch"])) for p in seen.points] == [(26, 1), (52, 2), (78, 3)]
    assert seen.checkpoints == [(20, 1, 1), (40, 2, 2), (60, 3, 3), (78, 3, 3)]
    assert seen.started == (0, 0) and seen.finished == (78, 3, "succeeded") and result.epoch == 3
    # the console prints the same numbers: the last progress line of a 3-epoch run says epoch 3
    spec_path = tmp_path / "epochs.toml"
    spec_path.write_text(small_spec(tmp_path, batch_size=64).read_text().replace("steps = 60", "epochs = 3")
                         .replace("eval_every = 10", "eval_every = 26"))
    proc = run_worker("--spec", spec_path, "--out", tmp_path / "cli")
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[1] for line in progress] == ["epoch 1", "epoch 2", "epoch 3"]
    assert load_checkpoint(tmp_path / "cli" / "final.npz").meta["epoch"] == 3


def test_without_a_validation_set_the_lines_say_so(tmp_path):
    spec_path = small_spec(tmp_path, steps=20)
    spec_path.write_text(spec_path.read_text().replace('source = "digits"', 'source = "digits"\nval_fraction = 0'))
    proc = run_worker("--spec", spec_path, "--out", tmp_path / "run")
    assert proc.returncode == 0, proc.stderr
    progress = [line for line in proc.stdout.splitlines() if line.startswith("step ")]
    assert len(progress) == 2 and all("no validation set" in line for line in progress), proc.stdout
    assert "val_loss" not in proc.stdout and "val_acc" not in proc.stdout, proc.stdout
    start = next(line for line in proc.stdout.splitlines() if "train examples" in line)
    assert "no validation set" in start  # the start line: "... train examples, no validation set ..."
    done = [line for line in proc.stdout.splitlines() if line.startswith("gradmesh: done")]
    assert done and done[0].startswith("gradmesh: done at step 20: no validation set; final checkpoint"), done
    metrics = load_checkpoint(tmp_path / "run" / "final.npz").meta["metrics"]
    assert np.isnan(metrics["val_loss"]) and np.isnan(metrics["val_accuracy"])
