"""Checkpoint files: plain-numpy readable, atomic, integrity-checked, rotated; load_model for inference."""
import json
import os

import numpy as np
import pytest

from worker.checkpoint import (CheckpointError, checkpoint_arrays, list_checkpoints, load_checkpoint, load_model,
                               newest_valid_checkpoint, rotate, save_checkpoint)
from worker.data import Normalizer
from worker.mlp import MLP
from worker.optim import make_optimizer
from worker.spec import OptimSpec, parse_spec

SPEC = parse_spec({"model": {"layers": [6, 5, 3], "activation": "tanh"}, "train": {"epochs": 1},
                   "data": {"source": "/data/x.npz"}})


def trained_state():
    model = MLP([6, 5, 3], activation="tanh", seed=1)
    opt = make_optimizer(OptimSpec(name="adam"), model.num_params, 10)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 6)).astype(np.float32), rng.integers(0, 3, 8)
    for _ in range(3):
        _, grad = model.loss_and_grad(x, y)
        opt.step(model.params, grad)
    norm = Normalizer(np.arange(6, dtype=np.float32), np.full(6, 2.0, np.float32))
    return model, opt, norm, x


def test_plain_numpy_reads_every_array_and_the_json_meta(tmp_path):
    model, opt, norm, _ = trained_state()
    path = save_checkpoint(tmp_path / "c.npz", checkpoint_arrays(model, opt, norm),
                           {"spec": SPEC.to_dict(), "step": 3, "epoch": 0, "position": 3})
    with np.load(path) as npz:  # allow_pickle defaults to False: nothing in it needs pickle
        assert sorted(npz.files) == ["layers.0.W", "layers.0.b", "layers.1.W", "layers.1.b", "meta",
                                     "normalize.mean", "normalize.std", "optim.m", "optim.t", "optim.v"]
        np.testing.assert_array_equal(npz["layers.1.W"], model.layers[1].W)
        meta = json.loads(str(npz["meta"]))
    assert meta["step"] == 3 and meta["format_version"] == 2 and meta["spec"]["model"]["activation"] == "tanh"
    ckpt = load_checkpoint(path)
    np.testing.assert_array_equal(ckpt.flat_params(), model.params)
    assert int(ckpt.optimizer_arrays()["optim.t"]) == 3


def test_load_model_predicts_like_the_saved_model(tmp_path):
    model, opt, norm, x = trained_state()
    path = save_checkpoint(tmp_path / "c.npz", checkpoint_arrays(model, opt, norm), {"spec": SPEC.to_dict(), "step": 3})
    loaded, normalizer = load_model(path)
    np.testing.assert_array_equal(loaded.forward(x), model.forward(x))
    np.testing.assert_array_equal(normalizer.mean, norm.mean)


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    model, opt, norm, _ = trained_state()
    target = tmp_path / "c.npz"
    save_checkpoint(target, checkpoint_arrays(model), {"spec": SPEC.to_dict(), "step": 1})
    before = target.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(target, checkpoint_arrays(model, opt), {"spec": SPEC.to_dict(), "step": 2})
    assert target.read_bytes() == before  # the old checkpoint is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_damaged_files_are_refused_with_a_reason(tmp_path, damage):
    model, opt, norm, _ = trained_state()
    path = save_checkpoint(tmp_path / "c.npz", checkpoint_arrays(model, opt), {"spec": SPEC.to_dict(), "step": 1})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        middle = len(data) // 3
        data[middle:middle + 16] = bytes(b ^ 0xFF for b in data[middle:middle + 16])
    else:
        data = bytearray(b"definitely not a zip file")
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="c.npz"):
        load_checkpoint(path)


def test_foreign_npz_and_future_format_are_refused(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(CheckpointError, match="not a gradmesh checkpoint"):
        load_checkpoint(tmp_path / "other.npz")
    model, *_ = trained_state()
    path = save_checkpoint(tmp_path / "new.npz", checkpoint_arrays(model), {"spec": SPEC.to_dict(), "step": 1,
                                                                            "format_version": 99})
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)


def test_rotation_and_newest_valid(tmp_path):
    model, *_ = trained_state()
    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path / f"ckpt-{step}.npz", checkpoint_arrays(model), {"spec": SPEC.to_dict(), "step": step})
    deleted = rotate(tmp_path, keep_last=2)
    assert [p.name for p in deleted] == ["ckpt-10.npz", "ckpt-20.npz"]
    assert [s for s, _ in list_checkpoints(tmp_path)] == [30, 40]
    (tmp_path / "ckpt-40.npz").write_bytes(b"torn")
    warnings = []
    assert newest_valid_checkpoint(tmp_path, warn=warnings.append).step == 30
    assert len(warnings) == 1 and "ckpt-40.npz" in warnings[0]
    assert newest_valid_checkpoint(tmp_path / "empty") is None
