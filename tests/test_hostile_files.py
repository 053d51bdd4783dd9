"""Data files and checkpoints from strangers: each is one clear line and exit 2, in bounded memory.

Every case runs the real command in a child process whose peak resident memory is read from the kernel
(os.wait4's rusage of that child), and compared with the same command on a good file of the same kind run
just before (the baseline): a hostile file may cost what its own bytes on disk cost, plus a fixed slack,
never what it claims to hold.

    a gzipped IDX labels file of 3 MB that inflates to 3.1 GB: refused from its header (another count than the
        images), or after the count its header gives (the rest is never inflated)
    an IDX header whose size overflows int64 (2^31 × 2^31 × 4 wraps to 0): truncated, not allocated; a gzipped
        one claiming more than the disk holds: refused before decompressing
    a CSV file with one 400 MB line (the header, or a row): refused after reading a bounded part of it
    an .npz claiming 4 TiB, as data and as a checkpoint (evaluate, predict, export)
    a 2 MB checkpoint whose weights inflate to 2 GiB: refused as a compression bomb before inflating
"""
from __future__ import annotations

import gzip
import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from helpers import ROOT, cli_env

SLACK = 16 << 20  # what the same command may vary by between two runs (allocator, imports, page cache)


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    peak: int       # bytes of resident memory at the child's peak
    seconds: float

    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


# The command runs under a small wrapper that waits for it: a child's ru_maxrss starts from the RSS of the
# process that forked it (Linux keeps the old memory's high-water mark across exec), and pytest's own process
# grows to hundreds of MiB over the suite; the wrapper's stays a few MiB, the same for every run compared.
WRAPPER = """
import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(argv: list[str], tmp_path: Path, timeout: float) -> Run:
    """Run `argv` (a python module's argv) and read its peak memory from the kernel when it ends."""
    out, err, peak = (tmp_path / f"run-{time.monotonic_ns()}.{s}" for s in ("out", "err", "peak"))
    started = time.monotonic()
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen([sys.executable, "-c", WRAPPER, str(peak), sys.executable, *argv], stdout=o,
                                stderr=e, env=cli_env(), cwd=ROOT, start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"{argv} took more than {timeout:.0f} s") from None
    return Run(proc.returncode, out.read_text(), err.read_text(), int(peak.read_text()) * 1024,
               time.monotonic() - started)


def assert_one_line_exit_2(run: Run, expected: str) -> None:
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and len(run.lines()) == 1, run.stderr[-2000:]
    assert expected in run.lines()[0], run.lines()[0]


def assert_bounded(run: Run, baseline: Run, input_bytes: int, what: str) -> None:
    bound = baseline.peak + 4 * input_bytes + SLACK
    print(f"\nMEMORY {what}: peak {run.peak / 2**20:.0f} MiB; the same command on a good file "
          f"{baseline.peak / 2**20:.0f} MiB; the file {input_bytes / 2**20:.1f} MiB on disk; bound {bound / 2**20:.0f} MiB")
    assert run.peak <= bound, (what, run.peak, bound)


# ---------------------------------------------------------------- files

def idx3(images: np.ndarray) -> bytes:
    return b"\0\0\x08\x03" + np.array(images.shape, ">u4").tobytes() + images.astype(np.uint8).tobytes()


def idx1_header(n: int) -> bytes:
    return b"\0\0\x08\x01" + np.array([n], ">u4").tobytes()


def zeros_gzip_member(mib: int = 16) -> bytes:
    """One gzip member of `mib` MiB of zero bytes (about 16 KB): concatenated, they make a gzip stream that
    inflates to any size at the cost of writing its small compressed bytes."""
    return gzip.compress(bytes(mib << 20), compresslevel=9)


def write_gzip_bomb(path: Path, head: bytes, inflated: int) -> int:
    member = zeros_gzip_member()
    with open(path, "wb") as f:
        f.write(gzip.compress(head))
        for _ in range(-(-inflated // (16 << 20))):
            f.write(member)
    return path.stat().st_size


def checkpoint(path: Path, layers: list[int]) -> Path:
    from worker.checkpoint import checkpoint_arrays, save_checkpoint
    from worker.mlp import MLP
    from worker.spec import parse_spec
    spec = parse_spec({"model": {"layers": layers}, "data": {"source": "synthetic", "synthetic": {
        "features": layers[0], "classes": layers[-1], "samples": 100}}, "train": {"steps": 1}})
    return save_checkpoint(path, checkpoint_arrays(MLP(layers)), {"spec": spec.to_dict(), "step": 0})


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, array, allow_pickle=False)
    return buf.getvalue()


def write_zip(path: Path, entries: list[tuple[str, int, int, int, list[bytes]]]) -> int:
    """A zip written field by field: (name, method 0 stored / 8 deflated, crc32, inflated size, data chunks),
    so a member may be a raw deflate stream made of repeated blocks, or declare sizes its data does not have."""
    central = []
    with open(path, "wb") as f:
        for name, method, crc, size, chunks in entries:
            offset, raw = f.tell(), name.encode()
            packed = sum(map(len, chunks))
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, method, 0, 0x21, crc, packed, size, len(raw), 0))
            f.write(raw)
            for chunk in chunks:
                f.write(chunk)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, method, 0, 0x21, crc, packed,
                                       size, len(raw), 0, 0, 0, 0, 0, offset) + raw)
        start = f.tell()
        for record in central:
            f.write(record)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(central), len(central), f.tell() - start, start, 0))
    return path.stat().st_size


def stored(name: str, data: bytes) -> tuple:
    return (f"{name}.npy", 0, zlib.crc32(data), len(data), [data])


def deflated(name: str, data: bytes) -> tuple:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (f"{name}.npy", 8, zlib.crc32(data), len(data), [c.compress(data) + c.flush()])


def npy_header(shape: tuple[int, ...], descr: str = "<f4") -> bytes:
    """An .npy header (format 1.0) for an array of `shape`, as numpy writes it, without the data."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def claims_4_tib(name: str) -> tuple:
    """An .npy member whose header claims 2^40 float32 values (4 TiB) and holds none of them."""
    return stored(name, npy_header((1 << 40,)))


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Good files of each kind, and a checkpoint that fits them: the baselines."""
    d = tmp_path_factory.mktemp("good")
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (200, 4, 4)), rng.integers(0, 10, 200)
    idx = d / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte").write_bytes(idx3(images))
    (idx / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx1_header(200) + labels.astype(np.uint8).tobytes()))
    csv = d / "good.csv"
    csv.write_text("label,a,b\n" + "".join(f"{i % 3},{i * 0.5},{i % 7}\n" for i in range(200)))
    npz = d / "good.npz"
    np.savez(npz, x=rng.standard_normal((200, 16)).astype(np.float32), y=labels)
    return {"idx": idx, "csv": csv, "npz": npz, "ckpt16": checkpoint(d / "c16.npz", [16, 8, 10]),
            "ckpt2": checkpoint(d / "c2.npz", [2, 8, 3])}


def evaluate(ckpt: Path, data: Path, tmp_path: Path, timeout: float = 300) -> Run:
    return run_measured(["-m", "coordinator.cli", "evaluate", str(ckpt), "--data", str(data)], tmp_path, timeout)


def train(source: Path, layers: list[int], tmp_path: Path, timeout: float = 300) -> Run:
    spec = tmp_path / f"spec-{time.monotonic_ns()}.toml"
    spec.write_text(f'[model]\nlayers = {layers}\n[data]\nsource = "{source}"\n[train]\nsteps = 2\nbatch_size = 16\n'
                    "[checkpoint]\nevery_steps = 0\n")
    return run_measured(["-m", "worker", "--spec", str(spec), "--out", str(tmp_path / "out"), "--no-resume"],
                        tmp_path, timeout)


def limit(baseline: Run) -> float:
    """A timeout from the machine's speed now: many times what the good file took."""
    return 30 * baseline.seconds + 60


# ---------------------------------------------------------------- IDX

@pytest.mark.timeout(900)
def test_a_gzipped_idx_labels_bomb_is_refused_from_its_header_in_bounded_memory(good, tmp_path):
    base_eval = evaluate(good["ckpt16"], good["idx"], tmp_path)
    base_train = train(good["idx"], [16, 8, 10], tmp_path)
    assert base_eval.returncode == 0 and base_train.returncode == 0, (base_eval.stderr, base_train.stderr)
    for name, count, expected in (
            ("other-count", 3_100_000_000, "has 200 images but {labels} has 3100000000 labels"),
            ("same-count", 200, "{labels}: at least 65536 bytes more than its header (200 labels) says")):
        d = tmp_path / name
        d.mkdir()
        (d / "train-images-idx3-ubyte").write_bytes((good["idx"] / "train-images-idx3-ubyte").read_bytes())
        labels = d / "train-labels-idx1-ubyte.gz"
        size = write_gzip_bomb(labels, idx1_header(count) + bytes(min(count, 200)), 3_100_000_000)
        for run, base, what in ((evaluate(good["ckpt16"], d, tmp_path, limit(base_eval)), base_eval, "evaluate"),
                                (train(d, [16, 8, 10], tmp_path, limit(base_train)), base_train, "python -m worker")):
            assert_one_line_exit_2(run, expected.format(labels=labels))
            assert_bounded(run, base, size, f"{what}, a {size / 2**20:.1f} MB gzipped labels file inflating to "
                                            f"3.1 GB ({name})")


def test_an_idx_header_whose_size_overflows_int64_is_truncated_not_allocated(good, tmp_path):
    d = tmp_path / "overflow"
    d.mkdir()
    # 2^31 × 2^31 × 4 = 2^64 wraps to 0 in int64: an empty file passed the size check, then numpy allocated
    (d / "train-images-idx3-ubyte").write_bytes(b"\0\0\x08\x03" + np.array([1 << 31, 1 << 31, 4], ">u4").tobytes())
    (d / "train-labels-idx1-ubyte").write_bytes(idx1_header(0))
    base = evaluate(good["ckpt16"], good["idx"], tmp_path)
    run = evaluate(good["ckpt16"], d, tmp_path, limit(base))
    assert_one_line_exit_2(run, f"{d / 'train-images-idx3-ubyte'}: truncated: the header promises "
                                f"{1 << 64} bytes of data")
    assert_bounded(run, base, 16, "evaluate, an IDX header of 2^64 bytes")


def test_a_gzipped_idx_images_header_larger_than_the_disk_is_refused_before_decompressing(good, tmp_path):
    d = tmp_path / "huge"
    d.mkdir()
    dims = [(1 << 32) - 1] * 3
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\0\0\x08\x03" + np.array(dims, ">u4").tobytes()))
    (d / "train-labels-idx1-ubyte").write_bytes(idx1_header(0))
    run = evaluate(good["ckpt16"], d, tmp_path)
    assert_one_line_exit_2(run, f"{d / 'train-images-idx3-ubyte.gz'}: its header promises {dims[0] ** 3} bytes of "
                                "images, more than the")
    assert sorted(p.name for p in d.iterdir()) == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte"]  # no cache


# ---------------------------------------------------------------- CSV

@pytest.mark.timeout(900)
def test_a_csv_line_of_400_mb_is_refused_after_a_bounded_part_of_it(good, tmp_path):
    from worker.csvsource import MAX_HEADER_CHARS, row_limit
    base_eval = evaluate(good["ckpt2"], good["csv"], tmp_path)
    base_train = train(good["csv"], [2, 8, 3], tmp_path)
    assert base_eval.returncode == 0 and base_train.returncode == 0, (base_eval.stderr, base_train.stderr)
    line = 400 << 20
    for name, head, expected in (
            ("header", b"label,", f"line 1 is longer than {MAX_HEADER_CHARS} characters"),
            ("row", b"label,a,b\n1,0.5,", f"line 2 is longer than {row_limit(3)} characters")):
        path = tmp_path / f"{name}.csv"
        with open(path, "wb") as f:
            f.write(head)
            block = b"9" * (4 << 20)
            for _ in range(line // len(block)):
                f.write(block)
            f.write(b"\n")
        size = path.stat().st_size
        for run, base, what in ((evaluate(good["ckpt2"], path, tmp_path, limit(base_eval)), base_eval, "evaluate"),
                                (train(path, [2, 8, 3], tmp_path, limit(base_train)), base_train, "python -m worker")):
            assert_one_line_exit_2(run, f"{path}: {expected}")
            # what may be held: the header's or the row's bounded part (4 bytes a character at most), not the line
            held = 4 * (MAX_HEADER_CHARS if name == "header" else row_limit(3))
            assert run.peak <= base.peak + held + SLACK < size, (what, name, run.peak, base.peak)
            print(f"\nMEMORY {what}, a CSV {name} line of {size >> 20} MiB: peak {run.peak >> 20} MiB, "
                  f"good file {base.peak >> 20} MiB")
        path.unlink()


def test_a_csv_line_that_is_not_csv_is_one_line(good, tmp_path):
    path = tmp_path / "quote.csv"
    path.write_text('label,"' + "x" * 200_000 + '"\n1,2\n')  # one field over csv.field_size_limit()
    run = evaluate(good["ckpt2"], path, tmp_path)
    assert_one_line_exit_2(run, f"{path}: line 1 is not CSV (field larger than field limit")


# ---------------------------------------------------------------- .npz: 4 TiB claimed

def test_an_npz_claiming_4_tib_is_one_line_as_data_and_as_a_checkpoint(good, tmp_path):
    data = tmp_path / "data.npz"
    size = write_zip(data, [claims_4_tib("x"), stored("y", npy_bytes(np.zeros(200, np.int64)))])
    base = evaluate(good["ckpt16"], good["npz"], tmp_path)
    assert base.returncode == 0, base.stderr
    run = evaluate(good["ckpt16"], data, tmp_path, limit(base))
    assert_one_line_exit_2(run, f"{data}: member 'x': its header promises 4.0 TiB")
    assert_bounded(run, base, size, "evaluate, an .npz source claiming 4 TiB")

    with np.load(good["ckpt16"]) as z:
        members = {k: z[k] for k in z.files}
    ckpt = tmp_path / "ckpt.npz"
    write_zip(ckpt, [stored(k, npy_bytes(v)) for k, v in members.items() if k != "optim.m"] + [claims_4_tib("optim.m")])
    for command in (["evaluate", "{ckpt}", "--data", str(good["npz"])],
                    ["predict", "{ckpt}", "--data", str(good["npz"]), "-o", str(tmp_path / "p.npy")],
                    ["export", "{ckpt}", "-o", str(tmp_path / "m.onnx")]):
        if command[0] == "export":
            pytest.importorskip("onnx", reason="the onnx extra is not installed: export stops before reading")
        argv = ["-m", "coordinator.cli", *command]
        base = run_measured([a.format(ckpt=good["ckpt16"]) for a in argv], tmp_path, 300)
        assert base.returncode == 0, base.stderr
        run = run_measured([a.format(ckpt=ckpt) for a in argv], tmp_path, limit(base))
        assert_one_line_exit_2(run, f"{ckpt}: unreadable checkpoint (NpzError: member 'optim.m': its header "
                                    "promises 4.0 TiB")
        assert_bounded(run, base, ckpt.stat().st_size, f"{command[0]}, a checkpoint claiming 4 TiB")


# ---------------------------------------------------------------- a checkpoint inflating to 2 GiB

def deflated_zeros(n: int, crc: int) -> tuple[list[bytes], int]:
    """A raw deflate stream of `n` zero bytes (n a multiple of 16 MiB) made of one repeated block, and the CRC-32
    of what precedes them (`crc`) and them: 2 GiB cost 2 MB and a few seconds to make, where compressing them
    would take half a minute."""
    block = 16 << 20
    assert n % block == 0
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    unit = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)  # self-contained: no reference before it
    end = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)  # an empty final block
    zeros = bytes(block)
    for _ in range(n // block):
        crc = zlib.crc32(zeros, crc)
    return [unit] * (n // block) + [end], crc


@pytest.mark.timeout(600)
def test_a_2_mb_checkpoint_inflating_to_2_gib_is_refused_before_inflating(good, tmp_path):
    from worker.checkpoint import MAX_INFLATION
    layers = [16384, 32768, 10]  # W0 is 16384 × 32768 float32: exactly 2 GiB
    from worker.spec import parse_spec
    spec = {"model": {"layers": layers}, "data": {"source": "synthetic", "synthetic": {
        "features": layers[0], "classes": 10, "samples": 100}}, "train": {"steps": 1}}
    meta = {"format_version": 2, "spec": parse_spec(spec).to_dict(), "step": 0}
    header = npy_header((layers[0], layers[1]))
    weights = layers[0] * layers[1] * 4
    head = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros, w_crc = deflated_zeros(weights, zlib.crc32(header))
    w_chunks = [head.compress(header) + head.flush(zlib.Z_FULL_FLUSH)] + zeros
    path = tmp_path / "bomb.npz"
    size = write_zip(path, [
        stored("meta", npy_bytes(np.array(json.dumps(meta)))),
        ("layers.0.W.npy", 8, w_crc, len(header) + weights, w_chunks),
        deflated("layers.0.b", npy_bytes(np.zeros(layers[1], np.float32))),
        deflated("layers.1.W", npy_bytes(np.zeros((layers[1], 10), np.float32))),
        stored("layers.1.b", npy_bytes(np.zeros(10, np.float32)))])
    assert size < 2.5 * 2**20
    base = evaluate(good["ckpt16"], good["npz"], tmp_path)
    assert base.returncode == 0, base.stderr
    run = evaluate(path, good["npz"], tmp_path, limit(base))
    assert_one_line_exit_2(run, f"{path}: its arrays inflate to 2.0 GiB from {size / 2**20:.1f} MiB on disk "
                                f"(over {MAX_INFLATION} times): a compression bomb")
    assert_bounded(run, base, size, f"evaluate, a {size / 2**20:.1f} MB checkpoint inflating to 2 GiB")
