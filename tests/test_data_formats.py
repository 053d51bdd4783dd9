"""Published data formats (IDX, CSV) trained under real mpirun, their defects, and the model taken away.

- IDX files (gzipped and plain, in MNIST's layout and names) and a CSV file with a header train under
  `mpirun -n 2` to exactly the parameters the same arrays reach from an .npz (same float32 features, same
  labels, same sampler): bit for bit, since the arithmetic is the same.
- Every listed defect (a truncated file, a truncated gzip stream, a wrong magic number, a non-numeric CSV cell
  at row R, images and labels of different lengths, a label out of range for the model) ends the worker with
  one line naming the file and exit code 2, never a traceback.
- A memory-mapped IDX source of 2 GiB (a sparse file: no disk used, deleted afterwards) trains a few steps
  with each rank's peak resident memory within a small margin of the same job on a 1,000-example file
  (measured from /proc while the ranks run; the figure is printed for docs/benchmarks.md).
- `gradmesh evaluate` and `gradmesh predict` on the digits demo's checkpoint agree with a float64 numpy
  forward pass written here; `gradmesh export` writes an ONNX graph whose outputs onnxruntime computes
  within 1e-5 of gradmesh's on the held-out set.
"""
from __future__ import annotations

import gzip
import json
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import cli_env, run_cli
from mpi_programs.launch import REPO, processes_with_marker, run_mpi

ROWS, COLS, CLASSES, N, N_TEST = 6, 5, 4, 240, 60


def idx3(images: np.ndarray) -> bytes:
    return b"\0\0\x08\x03" + np.array(images.shape, ">u4").tobytes() + images.astype(np.uint8).tobytes()


def idx1(labels: np.ndarray) -> bytes:
    return b"\0\0\x08\x01" + np.array(labels.shape, ">u4").tobytes() + labels.astype(np.uint8).tobytes()


def arrays(seed: int = 0, n: int = N):
    """Images with class-dependent brightness (learnable), their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, n).astype(np.uint8)
    base = rng.integers(0, 120, (n, ROWS, COLS))
    images = np.clip(base + 40 * labels[:, None, None] * (np.arange(COLS) % 2)[None, None, :], 0, 255).astype(np.uint8)
    return images, labels


def write_idx_dir(directory, gz: bool, with_test: bool = True):
    directory.mkdir(parents=True, exist_ok=True)
    wrap = gzip.compress if gz else (lambda b: b)
    suffix = ".gz" if gz else ""
    images, labels = arrays(0)
    (directory / f"train-images-idx3-ubyte{suffix}").write_bytes(wrap(idx3(images)))
    (directory / f"train-labels-idx1-ubyte{suffix}").write_bytes(wrap(idx1(labels)))
    if with_test:
        t_images, t_labels = arrays(1, N_TEST)
        (directory / f"t10k-images-idx3-ubyte{suffix}").write_bytes(wrap(idx3(t_images)))
        (directory / f"t10k-labels-idx1-ubyte{suffix}").write_bytes(wrap(idx1(t_labels)))
    return directory


def scaled(images: np.ndarray) -> np.ndarray:
    """The features a reader must produce: rows of pixels, as float32 in [0, 1] (byte / 255)."""
    return images.reshape(len(images), -1).astype(np.float32) / np.float32(255)


def spec_text(source: str, extra: str = "", steps: int = 30, layers=(ROWS * COLS, 16, CLASSES)) -> str:
    return (f'name = "fmt"\n[model]\nlayers = {list(layers)}\n[data]\nsource = "{source}"\nval_fraction = 0.2\n{extra}'
            f"[train]\nsteps = {steps}\nbatch_size = 32\neval_every = 10\n[optim]\nlr = 0.01\n"
            f"[checkpoint]\nevery_steps = 0\n")


def train_mpi(tmp_path, name: str, text: str, nprocs: int = 2, env=None):
    spec = tmp_path / f"{name}.toml"
    spec.write_text(text)
    out = tmp_path / f"run-{name}"
    result = run_mpi(nprocs, ["python", "-m", "worker", "--spec", str(spec), "--out", str(out), "--no-resume"],
                     timeout=90, env=env)
    return result, out


def params(path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files if re.fullmatch(r"layers\.\d+\.(W|b)", k)}


@pytest.mark.timeout(300)
def test_idx_gz_idx_plain_and_csv_train_exactly_like_the_same_arrays_from_npz(tmp_path):
    images, labels = arrays(0)
    t_images, t_labels = arrays(1, N_TEST)
    # the .npz references: the IDX directories carry a t10k validation set, the CSV gets val_fraction's split
    np.savez(tmp_path / "idx.npz", x=scaled(images), y=labels.astype(np.int64), x_val=scaled(t_images),
             y_val=t_labels.astype(np.int64))
    np.savez(tmp_path / "csv.npz", x=scaled(images), y=labels.astype(np.int64))
    csv = tmp_path / "train.csv"
    # the label column in the middle; features written as the shortest text that reads back as the same float32
    features = scaled(images)
    names = [f"pixel{i}" for i in range(features.shape[1])]
    lines = [",".join(names[:3] + ["digit"] + names[3:])]
    for row, label in zip(features, labels):
        cells = [repr(float(v)) for v in row]
        lines.append(",".join(cells[:3] + [str(int(label))] + cells[3:]))
    csv.write_text("\n".join(lines) + "\n\n")  # a trailing blank line, as editors leave

    runs = {
        "idx-gz": spec_text(str(write_idx_dir(tmp_path / "gz", gz=True))),
        "idx-plain": spec_text(str(write_idx_dir(tmp_path / "plain", gz=False))),
        "idx-npz": spec_text(str(tmp_path / "idx.npz")),
        # the images file named directly, its labels as a second path
        "idx-two-paths": spec_text(str(tmp_path / "plain" / "train-images-idx3-ubyte"),
                                   f'labels = "{tmp_path / "plain" / "train-labels-idx1-ubyte"}"\n'),
        "csv": spec_text(str(csv), 'label_column = "digit"\n'),
        "csv-again": spec_text(str(csv), 'label_column = "digit"\n'),   # from the cache this time
        "csv-npz": spec_text(str(tmp_path / "csv.npz")),
    }
    finals = {}
    for name, text in runs.items():
        result, out = train_mpi(tmp_path, name, text)
        assert result.returncode == 0 and not result.timed_out, result.output
        assert "done at step 30" in result.output and result.leftovers == [], result.output
        finals[name] = params(out / "final.npz")
    for name, reference in (("idx-gz", "idx-npz"), ("idx-plain", "idx-npz"), ("csv", "csv-npz"),
                            ("csv-again", "csv-npz")):
        for key, value in finals[reference].items():
            assert np.array_equal(finals[name][key], value), f"{name} differs from {reference} in {key}"
    # two paths without the t10k validation set: a different split, but it trained on the same images
    assert finals["idx-two-paths"]["layers.0.W"].shape == finals["idx-npz"]["layers.0.W"].shape
    caches = sorted(p.name for p in tmp_path.glob(".train.csv.gradmesh-*"))
    assert len(caches) == 2 and caches[0].endswith(".x.npy") and caches[1].endswith(".y.npy"), caches
    assert len(list((tmp_path / "gz").glob(".*-images-idx3-ubyte.gz.gradmesh-*.x.npy"))) == 2  # train, t10k


def test_a_changed_csv_gets_a_new_cache_and_the_stale_one_is_deleted(tmp_path):
    from worker import csvsource
    csv = tmp_path / "d.csv"
    csv.write_text("label,a,b\n0,1,2\n1,3,4\n")
    x, y, *_ = csvsource.load(csv, "label")
    assert x.tolist() == [[1, 2], [3, 4]] and y.tolist() == [0, 1] and y.dtype == np.int64
    first = sorted(tmp_path.glob(".d.csv.gradmesh-*"))
    csvsource.load(csv, "label")
    assert sorted(tmp_path.glob(".d.csv.gradmesh-*")) == first and all(p.stat().st_size for p in first)
    csv.write_text("label,a,b\n0.5,1,2\n1,3,4\n")  # a float target: an mse column, stored as float32
    x, y, *_ = csvsource.load(csv, "label")
    assert y.dtype == np.float32 and y.tolist() == [0.5, 1.0]
    now = sorted(tmp_path.glob(".d.csv.gradmesh-*"))
    assert len(now) == 2 and not set(now) & set(first)


# ---------------------------------------------------------------- defects: one line, exit 2

def _bad_cases(tmp_path):
    images, labels = arrays(0)
    good3, good1 = idx3(images), idx1(labels)
    cases = {}

    def idx_case(name, image_bytes, label_bytes, gz=False):
        d = tmp_path / name
        d.mkdir()
        sfx = ".gz" if gz else ""
        (d / f"train-images-idx3-ubyte{sfx}").write_bytes(image_bytes)
        (d / f"train-labels-idx1-ubyte{sfx}").write_bytes(label_bytes)
        return d, spec_text(str(d))

    d, s = idx_case("truncated", good3[:-100], good1)
    cases["truncated"] = (s, f"{d / 'train-images-idx3-ubyte'}: truncated")
    d, s = idx_case("truncated-gz", gzip.compress(good3)[:-40], gzip.compress(good1), gz=True)
    cases["truncated-gzip"] = (s, f"{d / 'train-images-idx3-ubyte.gz'}: truncated")
    d, s = idx_case("magic", b"\0\0\x08\x01" + good3[4:], good1)
    cases["wrong-magic"] = (s, f"{d / 'train-images-idx3-ubyte'}: wrong magic number 00000801")
    d, s = idx_case("lengths", good3, idx1(labels[:-7]))
    cases["different-lengths"] = (s, f"has {N} images but {d / 'train-labels-idx1-ubyte'} has {N - 7} labels")
    bad_labels = labels.copy()
    bad_labels[5] = 9
    d, s = idx_case("range", good3, idx1(bad_labels))
    cases["label-out-of-range"] = (s, f"{d / 'train-labels-idx1-ubyte'}: labels span 0..9 but the model has 4 outputs")
    csv = tmp_path / "cells.csv"
    csv.write_text("label,a,b\n1,0.5,2\n2,0.25,3\n0,n/a,4\n")
    cases["non-numeric-cell"] = (spec_text(str(csv), layers=(2, 4, 3)),
                                 f"{csv}: non-numeric cell 'n/a' at row 3 (line 4), column 'a'")
    return cases


@pytest.mark.timeout(120)
def test_every_bad_file_is_one_line_naming_the_file_and_exit_2(tmp_path):
    for name, (text, expected) in _bad_cases(tmp_path).items():
        spec = tmp_path / f"{name}.toml"
        spec.write_text(text)
        proc = subprocess.run([sys.executable, "-m", "worker", "--spec", str(spec), "--out", str(tmp_path / name / "o")],
                              capture_output=True, text=True, timeout=60, cwd=REPO, env=cli_env())
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2, (name, proc.stderr)
        assert "Traceback" not in proc.stderr and len(lines) == 1, (name, proc.stderr)
        assert expected in lines[0], (name, lines[0])


@pytest.mark.timeout(120)
def test_a_bad_file_under_mpirun_is_reported_and_exits_2(tmp_path):
    text, expected = _bad_cases(tmp_path)["truncated-gzip"]
    result, _ = train_mpi(tmp_path, "bad", text)
    assert result.returncode == 2 and not result.timed_out, result.output
    assert expected in result.output and "Traceback" not in result.output and result.leftovers == []


# ---------------------------------------------------------------- memory: a 2 GiB memory-mapped source

def _sparse_idx(directory, n: int, pixels: int = 784) -> int:
    """An IDX pair of n 28×28 images that costs no disk: the images file is a sparse file (all-zero pixels)."""
    directory.mkdir()
    images = directory / "train-images-idx3-ubyte"
    with open(images, "wb") as f:
        f.write(b"\0\0\x08\x03" + np.array([n, 28, 28], ">u4").tobytes())
        f.truncate(16 + n * pixels)
    (directory / "train-labels-idx1-ubyte").write_bytes(idx1(np.arange(n) % 10))
    return images.stat().st_size


def _is_rank(pid: int) -> bool:
    """An MPI rank (hydra gives it PMI_RANK), not mpirun or its proxy, nor a BLAS kernel probe a rank started
    (worker/blas.py runs one per new GEMM size; it inherits the rank's environment)."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            rank = any(v.startswith(b"PMI_RANK=") for v in f.read().split(b"\0"))
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return rank and b"--probe" not in f.read().split(b"\0")
    except OSError:
        return False


def _peak_memory(tmp_path, name: str, source: str) -> list[dict[str, int]]:
    """Train 5 steps under mpirun -n 2 and sample each rank's memory (kB) from /proc until it ends."""
    text = (f'name = "mem"\n[model]\nlayers = [784, 32, 10]\n[data]\nsource = "{source}"\nval_fraction = 0.0\n'
            f"[train]\nsteps = 5\nbatch_size = 64\neval_every = 100\n[checkpoint]\nevery_steps = 0\n")
    peaks: dict[int, dict[str, int]] = {}

    def sample(marker):
        while True:
            ranks = [pid for pid, _ in processes_with_marker(marker) if _is_rank(pid)]
            for pid in ranks:
                try:
                    fields = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status"))
                except OSError:
                    continue
                seen = peaks.setdefault(pid, {})
                for key in ("VmHWM", "VmRSS", "RssFile", "RssAnon"):
                    if key in fields:
                        seen[key] = max(seen.get(key, 0), int(fields[key].split()[0]))
            if peaks and not ranks:
                return
            time.sleep(0.02)

    spec = tmp_path / f"{name}.toml"
    spec.write_text(text)
    result = run_mpi(2, ["python", "-m", "worker", "--spec", str(spec), "--out", str(tmp_path / name), "--no-resume"],
                     timeout=120, during=sample)
    assert result.returncode == 0 and "done at step 5" in result.output, result.output
    time.sleep(0.1)
    return list(peaks.values())


@pytest.mark.timeout(300)
def test_a_2_gib_memory_mapped_source_trains_in_a_small_fraction_of_its_size(tmp_path):
    n = (2 << 30) // 784 + 1
    size = _sparse_idx(tmp_path / "big", n)
    _sparse_idx(tmp_path / "small", 1000)
    try:
        small = _peak_memory(tmp_path, "small-run", str(tmp_path / "small"))
        big = _peak_memory(tmp_path, "big-run", str(tmp_path / "big"))
    finally:
        (tmp_path / "big" / "train-images-idx3-ubyte").unlink()
    assert len(small) == len(big) == 2, (small, big)
    growth_kib = max(b["VmHWM"] for b in big) - max(s["VmHWM"] for s in small)
    print(f"\nMEMORY: a {size / (1 << 30):.2f} GiB memory-mapped IDX source ({n} examples × 784) trained 5 steps on "
          f"2 ranks; peak resident memory per rank {[b['VmHWM'] // 1024 for b in big]} MiB against "
          f"{[s['VmHWM'] // 1024 for s in small]} MiB on 1,000 examples: growth {growth_kib / 1024:.0f} MiB "
          f"= {100 * growth_kib * 1024 / size:.1f}% of the dataset (file-backed at peak: "
          f"{[b['RssFile'] // 1024 for b in big]} MiB)")
    # what does grow with the number of examples: the labels (int64) and the epoch's permutation and split
    # indices (8 bytes each per example, a few of them): ~1% of 784-byte rows, nothing like the rows themselves
    assert growth_kib * 1024 < 0.1 * size


# ---------------------------------------------------------------- evaluate, predict, export

def _forward64(path, x):
    """An independent forward pass: numpy.load of the checkpoint and float64 products."""
    with np.load(path) as z:
        meta = json.loads(str(z["meta"]))
        n = sum(1 for k in z.files if k.endswith(".W"))
        layers = [(z[f"layers.{i}.W"].astype(np.float64), z[f"layers.{i}.b"].astype(np.float64)) for i in range(n)]
        if "normalize.mean" in z.files:
            x = (x - z["normalize.mean"]) / z["normalize.std"]
    act = {"relu": lambda v: np.maximum(v, 0), "tanh": np.tanh}[meta["spec"]["model"]["activation"]]
    a = x.astype(np.float64)
    for i, (W, b) in enumerate(layers):
        a = a @ W + b
        if i < n - 1:
            a = act(a)
    return a


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory):
    """The digits demo's job (its spec, 3 epochs) trained under mpirun -n 2."""
    from coordinator.cli.demo import demo_spec
    tmp = tmp_path_factory.mktemp("demo")
    spec = tmp / "demo.json"
    spec.write_text(json.dumps(demo_spec(workers=2, epochs=3)))
    result = run_mpi(2, ["python", "-m", "worker", "--spec", str(spec), "--out", str(tmp / "run")], timeout=120)
    assert result.returncode == 0, result.output
    return tmp / "run" / "final.npz"


def _digits_val():
    from worker.data import load_dataset
    from worker.spec import parse_spec
    from coordinator.cli.demo import demo_spec
    spec = parse_spec(demo_spec(workers=2, epochs=3))
    data = load_dataset(spec.data, spec.model.layers, spec.model.loss, spec.train.seed)
    return data.val.rows(np.arange(len(data.val)))


def test_evaluate_on_the_demo_checkpoint_agrees_with_numpy(demo_checkpoint):
    x, y = _digits_val()
    logits = _forward64(demo_checkpoint, x)
    log_norm = np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)) + logits.max(1)
    loss = float(np.mean(log_norm - logits[np.arange(len(y)), y]))
    confusion = np.zeros((10, 10), int)
    np.add.at(confusion, (y, logits.argmax(1)), 1)
    proc = run_cli("evaluate", str(demo_checkpoint), "--data", "digits", "--split", "val", "--json")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["examples"] == len(y) and got["split"] == "val"
    assert got["loss"] == pytest.approx(loss, rel=1e-5)
    assert got["accuracy"] == pytest.approx(np.trace(confusion) / len(y))
    assert np.array_equal(np.array(got["confusion"]), confusion)
    text = run_cli("evaluate", str(demo_checkpoint), "--data", "digits", "--split", "val")
    assert text.returncode == 0 and "confusion matrix" in text.stdout and f"{100 * got['accuracy']:.2f}%" in text.stdout


def test_predict_on_the_demo_checkpoint_writes_numpy_probabilities(demo_checkpoint, tmp_path):
    from worker.data import digits_arrays
    pixels, _ = digits_arrays()
    x = (pixels / 16.0).astype(np.float32)
    logits = _forward64(demo_checkpoint, x)
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    out = tmp_path / "predictions.npy"
    proc = run_cli("predict", str(demo_checkpoint), "--data", "digits", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    got = np.load(out)
    assert got.shape == (1797, 10) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5


def test_evaluate_a_bad_source_is_one_line_and_exit_2(demo_checkpoint, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("label," + ",".join(f"p{i}" for i in range(64)) + "\n3," + ",".join(["0"] * 63 + ["x"]) + "\n")
    proc = run_cli("evaluate", str(demo_checkpoint), "--data", str(bad))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert "non-numeric cell 'x' at row 1 (line 2), column 'p63'" in proc.stderr


@pytest.mark.timeout(120)
@pytest.mark.parametrize("activation,normalize", [("relu", "standard"), ("gelu", "none"), ("sigmoid", "standard")])
def test_onnx_export_matches_gradmesh_on_the_held_out_set(tmp_path, activation, normalize):
    pytest.importorskip("onnx", reason="the onnx extra is not installed (pip install -e '.[onnx]')")
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime (test extra) is not installed")
    from worker.checkpoint import load_model
    spec = tmp_path / "s.toml"
    spec.write_text(f'name = "onnx"\n[model]\nlayers = [64, 32, 16, 10]\nactivation = "{activation}"\n[data]\n'
                    f'source = "digits"\nnormalize = "{normalize}"\n[train]\nsteps = 40\nbatch_size = 64\n'
                    f"eval_every = 40\n[checkpoint]\nevery_steps = 0\n")
    proc = subprocess.run([sys.executable, "-m", "worker", "--spec", str(spec), "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, timeout=60, cwd=REPO, env=cli_env())
    assert proc.returncode == 0, proc.stderr
    ckpt = tmp_path / "run" / "final.npz"
    out = run_cli("export", str(ckpt), "-o", str(tmp_path / "model.onnx"))
    assert out.returncode == 0, out.stderr
    x, _ = _digits_val()
    model, normalizer = load_model(ckpt)
    expected = model.forward(normalizer.apply(x) if normalizer else x)
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    logits, probabilities = session.run(["logits", "probabilities"], {"x": x})
    assert np.abs(logits - expected).max() < 1e-5
    from worker.inference import softmax
    assert np.abs(probabilities - softmax(expected)).max() < 1e-5
    ops = {node.op_type for node in __import__("onnx").load(str(tmp_path / "model.onnx")).graph.node}
    assert "Gemm" in ops and ("Sub" in ops) == (normalize == "standard")


def test_spec_refuses_format_settings_the_source_does_not_use():
    from worker.spec import SpecError, parse_spec
    base = {"model": {"layers": [64, 10]}, "train": {"steps": 1}}
    with pytest.raises(SpecError, match="data.label_column: not used: only a .csv source"):
        parse_spec({**base, "data": {"source": "digits", "label_column": "y"}})
    with pytest.raises(SpecError, match="data.labels: not used: only an IDX images file"):
        parse_spec({**base, "data": {"source": "d.csv", "labels": "l"}})
    spec = parse_spec({**base, "data": {"source": "t.csv", "label_column": "y"}})
    assert spec.to_dict()["data"]["label_column"] == "y" and "labels" not in spec.to_dict()["data"]
    assert parse_spec({**base, "data": {"source": "/m/train-images-idx3-ubyte.gz", "labels": "/m/l"}}).data.labels
