"""Which OpenBLAS kernel a rank runs: chosen per host by measurement, before numpy is imported.

    choice = choose_kernel(spec.train.blas_kernel, spec.model.layers, rows_per_gemm, threads,
                           hostname=comm.hostname, recorded=kernels_in_checkpoint)   # sets OPENBLAS_CORETYPE
    import numpy                                                                  # OpenBLAS reads it now
    print(describe_running(choice))        # "BLAS kernel Haswell (OpenBLAS 0.3.31; measured on this host ...)"

OpenBLAS built with DYNAMIC_ARCH (numpy's wheels) carries a kernel per CPU family and picks one by the
family the CPU reports, not by speed; on some CPUs another kernel the CPU also runs is faster (on an AMD
Zen 4, the AVX2 `Haswell`/`Zen` kernels ran our GEMMs 12-13% faster than the AVX-512 `SkylakeX` one it
picks). The library reads `OPENBLAS_CORETYPE` once, when it loads, so the choice must be made before
the first `import numpy` of the process. Rules, first match wins:

1. The user's own `OPENBLAS_CORETYPE`: left alone (and never overwritten).
2. `GRADMESH_BLAS_KERNEL` = auto | default | NAME.
3. The spec's `[train] blas_kernel` = auto | default | NAME (default "auto").
   `default` is OpenBLAS's own pick; NAME is an OpenBLAS core name (Haswell, Zen, SkylakeX, ...).
   `auto`:
   a. a kernel recorded for this job on this host (checkpoint meta `blas_kernels`, written by the job's
      first attempt): a resumed attempt runs the same kernel, so it stays bit-identical, whatever the
      host's cache says by then;
   b. else the kernel recorded for this host and these GEMM sizes in the cache file (GRADMESH_BLAS_CACHE,
      default ~/.cache/gradmesh/blas-kernels.json), keyed by CPU model, core count, numpy's and OpenBLAS's
      versions, and the job's layer sizes and rows per GEMM (`gemm_key`): a small first job (the digits
      demo's 64-128-128-10 at 8 rows) does not decide for a large one, which is measured at its own sizes;
   c. else measure: every candidate kernel the CPU can run (by its flags, and confirmed by what OpenBLAS
      reports it loaded) runs the job's own layer GEMMs (forward, weight and input gradients at this
      rank's batch and thread count) in a subprocess of its own, ~0.1-0.3 s each; the fastest is
      recorded in the cache and used. One rank per host measures (an flock on the cache) while the
      others wait for its answer.
Where numpy's BLAS is not OpenBLAS nothing changes and nothing is printed.

Each rank then prints the kernel it runs, read back from OpenBLAS through threadpoolctl, not assumed.
This module imports no numpy at import time (it must run before numpy); run as a script it is the
probe: `python worker/blas.py --probe '{"layers": [784, 1024, 10], "batch": 128, "threads": 1}'`.
"""
from __future__ import annotations

import ast
import json
import os
import platform
import re
import subprocess
import sys
import time
import zipfile
from dataclasses import dataclass, field
from importlib import metadata, util
from pathlib import Path

CORETYPE_ENV = "OPENBLAS_CORETYPE"       # read by OpenBLAS itself when it loads
KERNEL_ENV = "GRADMESH_BLAS_KERNEL"      # auto | default | NAME: overrides the spec
CACHE_ENV = "GRADMESH_BLAS_CACHE"        # path of the per-host cache file
META_KEY = "blas_kernels"                # checkpoint meta: {host: kernel the job's first attempt ran there}
AUTO, DEFAULT = "auto", "default"
NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")

# x86-64 kernels worth measuring against each other, with the CPU flags each needs (/proc/cpuinfo names).
# Older ones (Sandybridge, Nehalem, ...) never beat these on a CPU that runs these.
X86_CANDIDATES: dict[str, tuple[str, ...]] = {
    "Haswell": ("avx2", "fma"),
    "Zen": ("avx2", "fma"),
    "SkylakeX": ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl"),
    "CooperLake": ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16"),
    "SapphireRapids": ("avx512f", "avx512cd", "avx512bw", "avx512dq", "avx512vl", "avx512_bf16", "avx512_fp16",
                       "amx_bf16", "amx_tile"),
}
PROBE_SECONDS = 0.12        # timed GEMM work per candidate (plus ~0.1 s to start python and import numpy)
PROBE_MAX_STEP_S = 0.06     # a probe step longer than this (est.) runs at a smaller batch, not below 64
PROBE_TIMEOUT_S = 30.0


@dataclass
class Choice:
    """What this rank asked OpenBLAS for (`kernel` None: its own pick) and which rule decided."""
    kernel: str | None
    source: str
    openblas: bool = True
    measured: dict[str, float] = field(default_factory=dict)   # kernel -> seconds per probe step, when measured now


# ---- facts about this host, without importing numpy ------------------------------------------------------
def numpy_blas() -> tuple[str, str]:
    """(name, version) of the BLAS numpy was built against, read from numpy/__config__.py's text."""
    try:
        spec = util.find_spec("numpy")
        text = (Path(spec.origin).parent / "__config__.py").read_text() if spec and spec.origin else ""
    except (OSError, ValueError, ImportError):
        text = ""
    found = re.search(r'"blas":\s*\{\s*"name":\s*"([^"]*)".*?"version":\s*"([^"]*)"', text, re.S)
    return (found.group(1), found.group(2)) if found else ("unknown", "")


def cpu_model_and_flags(cpuinfo: str | None = None) -> tuple[str, set[str]]:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model = re.search(r"^model name\s*:\s*(.+)$", cpuinfo, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", cpuinfo, re.M)
    return (model.group(1).strip() if model else platform.processor() or platform.machine(),
            set(flags.group(1).split()) if flags else set())


def host_key(blas_version: str, cpuinfo: str | None = None) -> dict[str, str]:
    """What a measured choice depends on: the CPU, how many cores, numpy's and OpenBLAS's versions."""
    try:
        numpy_version = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        numpy_version = "?"
    model, _ = cpu_model_and_flags(cpuinfo)
    return {"cpu": model, "cores": str(os.cpu_count() or 1), "numpy": numpy_version, "openblas": blas_version,
            "machine": platform.machine()}


def gemm_key(layers, rows: int) -> str:
    """The GEMM sizes a choice was measured on: the layer sizes and the rows of one GEMM (a micro-batch's, or
    a rank's slice of the batch). The same for every rank count of the exact step (worker/stepexact.py)."""
    return f"{'-'.join(str(int(n)) for n in layers)}x{int(rows)}"


def candidates(flags: set[str], machine: str | None = None) -> list[str]:
    """Kernels this CPU can run, by its flags (x86-64 only: elsewhere OpenBLAS's pick stands)."""
    if (machine or platform.machine()) not in ("x86_64", "AMD64"):
        return []
    return [name for name, needs in X86_CANDIDATES.items() if all(f in flags for f in needs)]


def planned_threads(requested: int, ranks_on_host: int, environ=os.environ) -> int:
    """The BLAS threads this rank will run (worker/threads.py's rule, without importing numpy)."""
    for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        first = environ.get(name, "").split(",")[0].strip()
        if first.isascii() and first.isdigit() and len(first) < 7 and int(first) > 0:
            return int(first)
    if requested > 0:
        return requested
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, ranks_on_host))


def cache_path(environ=os.environ) -> Path:
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV])
    base = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "gradmesh" / "blas-kernels.json"


# ---- the probe ------------------------------------------------------------------------------------------
def probe_shapes(layers, batch: int, threads: int) -> dict:
    """The job's own GEMMs at this rank's batch; a smaller batch (>= 64) when one step would be long."""
    flops = sum(2 * a * b * (3 if i else 2) for i, (a, b) in enumerate(zip(layers[:-1], layers[1:])))
    batch = max(1, int(batch))
    while batch > 64 and flops * batch / (50e9 * max(1, threads)) > PROBE_MAX_STEP_S:
        batch //= 2
    return {"layers": [int(n) for n in layers], "batch": max(1, batch), "threads": max(1, int(threads))}


def probe_one(kernel: str | None, shapes: dict, environ=os.environ) -> dict:
    """Run the probe in a fresh python with OPENBLAS_CORETYPE=kernel; its JSON answer."""
    env = {k: v for k, v in environ.items() if k not in (CORETYPE_ENV, "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if kernel:
        env[CORETYPE_ENV] = kernel
    env["OPENBLAS_NUM_THREADS"] = str(shapes["threads"])
    shapes = {**shapes, "expect": kernel or ""}  # the probe stops at once when OpenBLAS loaded another kernel
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--probe", json.dumps(shapes)],
                         env=env, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(names: list[str], shapes: dict, environ=os.environ) -> dict[str, float]:
    """Seconds per probe step of each kernel OpenBLAS really loads when asked for it (others are dropped)."""
    results: dict[str, float] = {}
    for name in names:
        try:
            answer = probe_one(name, shapes, environ)
        except (subprocess.SubprocessError, OSError, ValueError, IndexError):
            continue
        if str(answer.get("architecture", "")).lower() == name.lower():
            results[name] = float(answer["seconds"])
    return results


def _probe_main(shapes: dict) -> None:
    import numpy as np
    from threadpoolctl import threadpool_info

    info = next((i for i in threadpool_info() if i.get("user_api") == "blas"), {})
    answer = {"architecture": info.get("architecture"), "internal_api": info.get("internal_api"),
              "version": info.get("version")}
    if shapes.get("expect") and str(answer["architecture"]).lower() != shapes["expect"].lower():
        print(json.dumps(answer))   # not the kernel asked for: this OpenBLAS or CPU does not run it
        return
    rng = np.random.default_rng(0)
    layers, b = shapes["layers"], shapes["batch"]
    work = []
    for i, (fan_in, fan_out) in enumerate(zip(layers[:-1], layers[1:])):
        a = rng.standard_normal((b, fan_in), dtype=np.float32)
        w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
        d = rng.standard_normal((b, fan_out), dtype=np.float32)
        work.append((a, w, d, np.empty((b, fan_out), np.float32), np.empty((fan_in, fan_out), np.float32),
                     np.empty((b, fan_in), np.float32) if i else None))

    def step():  # worker/mlp.py's products: z = a @ W; dW = a^T @ delta; delta_prev = delta @ W^T (not layer 0)
        for a, w, d, z, gw, dprev in work:
            np.matmul(a, w, out=z)
            np.matmul(a.T, d, out=gw)
            if dprev is not None:
                np.matmul(d, w.T, out=dprev)

    step()
    times, started = [], time.perf_counter()
    while len(times) < 3 or (time.perf_counter() - started < PROBE_SECONDS and len(times) < 200):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    times.sort()
    print(json.dumps({**answer, "seconds": times[len(times) // 4], "steps": len(times)}))


# ---- the cache ------------------------------------------------------------------------------------------
def _key_text(key: dict[str, str]) -> str:
    return json.dumps(key, sort_keys=True)


def _read_cache(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
        return data if isinstance(data, dict) and isinstance(data.get("hosts"), dict) else {"hosts": {}}
    except (OSError, ValueError):
        return {"hosts": {}}


def _write_cache(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True))
    os.replace(tmp, path)


def cached_or_measured(key: dict[str, str], names: list[str], shapes: dict, path: Path,
                       environ=os.environ, measure_fn=measure) -> tuple[str | None, dict[str, float]]:
    """(the winner for this host key, the timings if measured now): one process per host measures under an
    exclusive flock on `path`.lock while the others wait, then read what it recorded."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        data = _read_cache(path)
        entry = data["hosts"].get(_key_text(key))
        if isinstance(entry, dict) and isinstance(entry.get("kernel"), str):
            return entry["kernel"], {}
        timings = measure_fn(names, shapes, environ)
        if not timings:
            return None, {}
        winner = min(timings, key=timings.get)
        data["hosts"][_key_text(key)] = {"kernel": winner, "key": key, "seconds_per_step": timings,
                                         "probe": shapes, "measured_unix": time.time()}
        _write_cache(path, data)
        return winner, timings


# ---- the job's own record (checkpoint meta), read without numpy ----------------------------------------
def recorded_kernels(checkpoint: str | Path | None) -> dict[str, str]:
    """{host: kernel} from a checkpoint's meta (`blas_kernels`), read straight from the .npz; {} if none."""
    if checkpoint is None:
        return {}
    try:
        with zipfile.ZipFile(checkpoint) as z, z.open("meta.npy") as f:
            if z.getinfo("meta.npy").file_size > 16 << 20:  # worker.checkpoint.MAX_META_BYTES: not a checkpoint
                return {}
            raw = f.read()
        if raw[:6] != b"\x93NUMPY":
            return {}
        size_bytes = 2 if raw[6] == 1 else 4
        header_len = int.from_bytes(raw[8:8 + size_bytes], "little")
        start = 8 + size_bytes
        header = ast.literal_eval(raw[start:start + header_len].decode("latin1"))
        descr, body = header["descr"], raw[start + header_len:]
        if not (isinstance(descr, str) and descr[1:2] == "U"):
            return {}
        text = body.decode("utf-32-le" if descr[0] in "<|" else "utf-32-be").rstrip("\x00")
        kernels = json.loads(text).get(META_KEY) or {}
    except (OSError, KeyError, ValueError, SyntaxError, zipfile.BadZipFile, AttributeError, IndexError):
        return {}
    return {str(h): str(k) for h, k in kernels.items()} if isinstance(kernels, dict) else {}


# ---- the decision ---------------------------------------------------------------------------------------
def choose_kernel(spec_kernel: str, layers, batch_per_rank: int, threads: int, *, hostname: str,
                  recorded: dict[str, str] | None = None, environ=os.environ, blas: tuple[str, str] | None = None,
                  cpuinfo: str | None = None, measure_fn=measure) -> Choice:
    """Decide this rank's kernel and set OPENBLAS_CORETYPE in `environ` for it (before numpy loads)."""
    name, version = blas or numpy_blas()
    if "openblas" not in name.lower():
        return Choice(None, f"numpy's BLAS is {name}, not OpenBLAS", openblas=False)
    if environ.get(CORETYPE_ENV):
        return Choice(environ[CORETYPE_ENV], f"environment {CORETYPE_ENV}")
    if environ.get(KERNEL_ENV):
        wanted, source = environ[KERNEL_ENV].strip(), f"environment {KERNEL_ENV}"
    else:
        wanted, source = spec_kernel or AUTO, "spec train.blas_kernel"
    if wanted.lower() == DEFAULT:
        return Choice(None, f"OpenBLAS's own pick ({source} = default)")
    if wanted.lower() != AUTO:
        if not NAME_RE.match(wanted):
            raise ValueError(f"{source}: {wanted!r} is not auto, default or an OpenBLAS core name")
        environ[CORETYPE_ENV] = wanted
        return Choice(wanted, source)
    if recorded and recorded.get(hostname):
        environ[CORETYPE_ENV] = recorded[hostname]
        return Choice(recorded[hostname], f"recorded for this job on {hostname} by its first attempt")
    _, flags = cpu_model_and_flags(cpuinfo)
    names = candidates(flags)
    if len(names) < 2:
        return Choice(None, "OpenBLAS's own pick (no other kernel to measure on this CPU)")
    path = cache_path(environ)
    try:
        key = {**host_key(version, cpuinfo), "gemm": gemm_key(layers, batch_per_rank)}
        winner, timings = cached_or_measured(key, names,
                                             probe_shapes(layers, batch_per_rank, threads), path, environ,
                                             measure_fn)
    except OSError as exc:
        return Choice(None, f"OpenBLAS's own pick (kernel cache {path}: {exc.strerror or exc})")
    if winner is None:
        return Choice(None, "OpenBLAS's own pick (no candidate kernel could be measured)")
    environ[CORETYPE_ENV] = winner
    if timings:
        fastest = min(timings.values())
        summary = ", ".join(f"{k} {v / fastest:.2f}x" for k, v in sorted(timings.items(), key=lambda kv: kv[1]))
        return Choice(winner, f"measured now on this host for GEMMs {key['gemm']}: {summary}; cached in {path}",
                      measured=timings)
    return Choice(winner, f"measured earlier on this host for GEMMs {key['gemm']}, cached in {path}")


# ---- after numpy is imported ----------------------------------------------------------------------------
def running_kernel() -> tuple[str | None, str | None]:
    """(kernel, OpenBLAS version) that the loaded OpenBLAS reports, via threadpoolctl; (None, None) if no OpenBLAS."""
    import numpy  # noqa: F401  (threadpoolctl sees loaded libraries only; after the choice, loading is fine)
    from threadpoolctl import threadpool_info

    for info in threadpool_info():
        if info.get("internal_api") == "openblas":
            return info.get("architecture"), info.get("version")
    return None, None


def describe_running(choice: Choice) -> str | None:
    """The line a rank prints about its kernel (None where numpy's BLAS is not OpenBLAS: nothing to say)."""
    if not choice.openblas:
        return None
    kernel, version = running_kernel()
    if kernel is None:
        return None
    line = f"BLAS kernel {kernel} (OpenBLAS {version}; {choice.source})"
    if choice.kernel and choice.kernel.lower() != kernel.lower():
        line += f"; asked for {choice.kernel}, which this OpenBLAS does not run here"
    return line


def merged_record(recorded: dict[str, str], everyone: dict[str, str]) -> dict[str, str]:
    """The job's record after this attempt: hosts it had keep their kernel, new hosts add the one they run."""
    return {**everyone, **recorded}


_job_record: dict[str, str] = {}


def set_job_record(record: dict[str, str]) -> None:
    _job_record.clear()
    _job_record.update(record)


def meta_entry() -> dict[str, dict[str, str]]:
    """What train.py adds to a checkpoint's meta (empty without OpenBLAS)."""
    return {META_KEY: dict(_job_record)} if _job_record else {}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--probe":
        _probe_main(json.loads(sys.argv[2]))
    else:
        sys.exit(__doc__)
