"""Benchmark of the coordinator service, measured end to end through gRPC against a real `gradmesh serve`.

    PYTHONPATH=. python bench/service.py                 # ~1-2 minutes on 2 cores
    PYTHONPATH=. python bench/service.py --seconds 5 --json

What it measures, in this order:
  1. submit → first step: time from the SubmitJob call until GetJob shows step ≥ 1 of a real 2-rank digits
     job started by the coordinator with mpirun (median of --runs). Target < 1 s. Beside it, where the time
     goes: mpirun -n 2 of a bare python, of python importing what a rank imports, and of a standalone
     1-step digits job.
  2. metric ingestion: ReportProgress calls from one client with the job's real per-job token, 100 points per
     call (what a worker's one-second buffer holds at most), and 1 point per call. Points stored per second.
  3. GetJob calls/s with p50/p99 latency, from 1 client and from 8 concurrent client processes, while 20
     watchers (another process) stream the job's events and a feeder reports 20 points/s to them. Targets:
     ≥ 2,000 calls/s, p99 < 20 ms. The watchers must each receive every point fed (checked, printed).
     Peer, same run, same server and load: the grpc.health.v1 Check RPC (a trivial handler), so the ratio
     shows what GetJob's own work (SQLite reads, building the Job message) costs over bare gRPC. The two
     alternate in half-second windows, and the ratio is the median over adjacent pairs of windows.
  4. checkpoint download MiB/s of a ~64 MiB checkpoint (a [64, 2304, 2304, 10] MLP with Adam state, trained
     for 2 steps by a real job), through Client.download: streamed in 1 MiB chunks, sha256 verified, written
     and fsynced. Target ≥ 500 MiB/s, and ≥ 0.75x a bare gRPC stream of the same bytes (a separate minimal
     server streaming them from memory in the same 1 MiB messages, read and dropped). Other peers: the
     coordinator's own stream read and dropped (no hash, no file), sha256 alone over the same amount of
     memory, and writing + fsyncing the same amount alone (the disk's ceiling for a durable download).

The job's workers are paused (SIGSTOP on their process group) during 2-3, so the 2 measured parties (server
and clients) are not competing with training for the cores; the token is read from the rank processes'
environment (/proc, Linux), exactly what mpirun gave them. Everything runs on 127.0.0.1 in a temporary
directory that is deleted at the end; the server and every job are stopped even on failure.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.client import Client, GradmeshError, JobState, MetricReported  # noqa: E402
from coordinator.processes import Process, alive, find  # noqa: E402
from coordinator.wire import JOB_TOKEN_ENV  # noqa: E402
from coordinator.rpc import gradmesh_pb2 as pb  # noqa: E402
from coordinator.rpc import gradmesh_pb2_grpc as pb_grpc  # noqa: E402

WINDOW_S = 0.5  # GetJob and the health Check alternate in windows this long

TARGETS = {"getjob_per_s": 2000.0, "p99_ms": 20.0, "download_mib_s": 500.0, "submit_to_first_step_s": 1.0,
           "getjob_vs_health": 0.9, "download_vs_bare": 0.75}
BARE_METHOD = "/bench.Bare/Stream"


def digits_spec(steps: int, workers: int = 2, layers=(64, 128, 128, 10), every: int = 0, eval_every: int = 1) -> dict:
    # eval_every = 1: a worker reports its step with its metric points, so the first step is visible at once
    return {"name": "bench", "workers": workers,
            "model": {"layers": list(layers)},
            "data": {"source": "digits"},
            "train": {"steps": steps, "batch_size": 64, "eval_every": eval_every},
            "optim": {"name": "adam", "lr": 1e-3},
            "checkpoint": {"every_steps": every, "keep_last": 1},
            "fault": {"max_restarts": 0, "hang_timeout_s": 3600.0}}


# ---------------------------------------------------------------- the server

class Server:
    """`python -m coordinator.cli serve` in its own process group, on a free port."""

    def __init__(self, data_dir: Path, slots: int = 2):
        env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        env.pop("GRADMESH_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "coordinator.cli", "serve", "--data-dir", str(data_dir), "--port", "0",
             "--slots", str(slots), "--data-root", str(data_dir),
             # the first-step job (10M steps, a point each) and the ingestion phase store far more points than a
             # production job may (coordinator.limits): lift that one cap for the measurement
             "--max-points-per-job", str(10 ** 9)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, start_new_session=True)
        self.address = None
        deadline = time.monotonic() + 60
        lines = []
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            match = re.search(r"listening on (\S+)", line)
            if match:
                self.address = match.group(1)
                break
        if self.address is None:
            self.stop()
            raise RuntimeError("gradmesh serve did not start:\n" + "".join(lines))
        threading.Thread(target=lambda: [None for _ in self.proc.stdout], daemon=True).start()  # drain output
        self.token = (data_dir / "token").read_text().strip()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def rank_processes(job_id: str) -> list[Process]:
    """This job's worker ranks (python -m worker ... --job ID)."""
    return find(argv_has=["-m", "worker", "--job", job_id])


def job_token(job_id: str) -> tuple[str, list[int]]:
    """(GRADMESH_JOB_TOKEN, pids of the ranks) of the running job, read from a rank's environment."""
    ranks = rank_processes(job_id)
    for rank in ranks:
        token = rank.environ().get(JOB_TOKEN_ENV)
        if token:
            return token, [r.pid for r in ranks]
    raise RuntimeError(f"no rank process of job {job_id} found in /proc")


def signal_all(pids: list[int], sig: int) -> None:
    # hydra gives every rank its own process group, so each rank is signalled by pid (an MPI rank left
    # running while its peer is stopped would spin in the allreduce and eat a core)
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def wait_state(client: Client, job_id: str, done, timeout: float = 120) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(job_id)
        if done(job):
            return job
        time.sleep(0.02)
    raise TimeoutError(f"job {job_id} did not get there in {timeout} s (now {job.state.name} step {job.step})")


# ---------------------------------------------------------------- 1. submit → first step

def bench_first_step(client: Client, runs: int) -> tuple[list[float], str]:
    """Returns the per-run seconds, and the id of one job left RUNNING (for the next phases)."""
    times = []
    job_id = ""
    for i in range(runs):
        t0 = time.perf_counter()
        job = client.submit(digits_spec(steps=10_000_000), labels={"bench": "first-step"})
        job_id = job.id
        while True:
            current = client.get(job.id)
            if current.step >= 1:
                break
            if current.is_terminal():
                raise RuntimeError(f"bench job {job.id} ended {current.state.name}: {current.message}")
            if time.perf_counter() - t0 > 60:
                raise RuntimeError(f"bench job {job.id} reported no step in 60 s")
            time.sleep(0.005)
        times.append(time.perf_counter() - t0)
        if i < runs - 1:
            client.cancel(job.id)
            wait_state(client, job.id, lambda j: j.is_terminal())
    return times, job_id


def bench_startup_breakdown(tmp: Path, runs: int) -> dict[str, float]:
    """Where submit → first step goes, outside the coordinator: medians of `runs` launches of
    mpirun -n 2 with (a) a bare python, (b) python importing what a rank imports, (c) a standalone 1-step
    digits job (spec, kernel choice, data, first step, final checkpoint, exit)."""
    mpirun = str(Path(sys.executable).parent / "mpirun")
    spec = tmp / "one-step.json"
    spec.write_text(json.dumps(digits_spec(steps=1)))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    imports = ("import grpc, numpy, threadpoolctl, mpi4py.MPI; import worker.train, worker.report, worker.comm, "
               "worker.blas, worker.coordinator_link")
    commands = {"mpirun -n 2 python -c pass": [mpirun, "-n", "2", sys.executable, "-c", "pass"],
                "... + a rank's imports": [mpirun, "-n", "2", sys.executable, "-c", imports],
                "... + a 1-step digits job, standalone": [mpirun, "-n", "2", sys.executable, "-m", "worker", "--spec",
                                                          str(spec), "--out", str(tmp / "one-step"), "--no-resume"]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    for _ in range(runs):
        for name, cmd in commands.items():
            t = time.perf_counter()
            subprocess.run(cmd, env=env, capture_output=True, timeout=120, check=True)
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(t) for name, t in times.items()}


# ---------------------------------------------------------------- 2. ingestion

def _worker_stub(address: str):
    channel = grpc.insecure_channel(address)
    return channel, pb_grpc.WorkerServiceStub(channel)


def report(stub, job_id: str, token: str, attempt: int, steps: range, total: int) -> None:
    points = [pb.MetricPoint(step=s, epoch=0, train_loss=1.0 / (s + 1), val_loss=float("nan"),
                             val_accuracy=float("nan"), samples_per_second=1000.0, lr=1e-3, time_unix=time.time())
              for s in steps]
    stub.ReportProgress(pb.ReportProgressRequest(job_id=job_id, attempt=attempt, points=points, step=steps[-1],
                                                 total_steps=total, epoch=0),
                        timeout=10, metadata=(("x-gradmesh-job-token", token),))


def bench_ingest(address: str, job_id: str, token: str, attempt: int, seconds: float, first_step: int,
                 per_call: int) -> tuple[float, float, int]:
    """(points/s, calls/s, next free step) for ReportProgress with `per_call` points each."""
    channel, stub = _worker_stub(address)
    step, calls, points = first_step, 0, 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        report(stub, job_id, token, attempt, range(step, step + per_call), 10_000_000)
        step += per_call
        calls += 1
        points += per_call
    elapsed = time.perf_counter() - t0
    channel.close()
    return points / elapsed, calls / elapsed, step


# ---------------------------------------------------------------- 3. GetJob under watchers

def _unary_client(schedule: list[str], address: str, token: str, job_id: str, start_at: float, window: float,
                  out) -> None:
    """One client process calling, window after window as `schedule` says, GetJob through the SDK ("getjob")
    or the server's own grpc.health.v1 Check ("health": the same server and connection, a trivial handler —
    the peer GetJob is compared with). Every client switches at the same wall-clock times."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    client = Client(address, token=token, timeout=10)
    stub = health_pb2_grpc.HealthStub(client._channel)
    request = health_pb2.HealthCheckRequest(service="")
    calls = {"getjob": lambda: client.get(job_id), "health": lambda: stub.Check(request, timeout=10)}
    for call in calls.values():
        call()  # connect before the clock starts
    windows = []
    for i, kind in enumerate(schedule):
        call, latencies = calls[kind], []
        begin, end = start_at + i * window, start_at + (i + 1) * window
        while time.time() < begin:
            time.sleep(0.0005)
        while time.time() < end:
            t = time.perf_counter()
            call()
            latencies.append(time.perf_counter() - t)
        windows.append(latencies)
    client.close()
    out.put(windows)


def _watchers(address: str, token: str, job_id: str, count: int, from_step: int, sentinel, ready, out) -> None:
    """`count` watchers in threads; each reports how many distinct fed steps (below the sentinel) it saw.
    A watcher stops when it sees the sentinel step, which the feeder reports last."""
    seen = [set() for _ in range(count)]
    clients = [Client(address, token=token, reconnect_timeout=30) for _ in range(count)]
    started = threading.Barrier(count + 1)

    def watch(i: int) -> None:
        first = True
        for event in clients[i].watch(job_id, from_step=from_step):
            if first:
                first = False
                started.wait(60)
            if isinstance(event, MetricReported) and event.point.step >= from_step:
                if sentinel.value and event.point.step >= sentinel.value:
                    return
                seen[i].add(event.point.step)

    threads = [threading.Thread(target=watch, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    started.wait(60)
    ready.set()
    for t in threads:
        t.join(120)
    out.put([len(s) for s in seen])
    for c in clients:
        c.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def bench_getjob(address: str, token: str, job_id: str, worker_token: str, attempt: int, seconds: float,
                 next_step: int, watchers: int = 20) -> dict:
    ctx = mp.get_context("spawn")
    sentinel = ctx.Value("q", 0)
    ready, watch_out = ctx.Event(), ctx.Queue()
    watcher_proc = ctx.Process(target=_watchers, args=(address, token, job_id, watchers, next_step, sentinel,
                                                       ready, watch_out), daemon=True)
    watcher_proc.start()
    if not ready.wait(60):
        watcher_proc.kill()
        raise RuntimeError("the watchers did not connect")
    stop_feed = threading.Event()
    fed = {"step": next_step}

    def feed() -> None:  # 20 points/s, one per call, as a worker evaluating every step would
        channel, stub = _worker_stub(address)
        while not stop_feed.is_set():
            report(stub, job_id, worker_token, attempt, range(fed["step"], fed["step"] + 1), 10_000_000)
            fed["step"] += 1
            stop_feed.wait(0.05)
        sentinel.value = fed["step"]
        report(stub, job_id, worker_token, attempt, range(fed["step"], fed["step"] + 1), 10_000_000)
        channel.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    results = {}
    # the two calls alternate in half-second windows (health, getjob, getjob, health, ...), `seconds` of each,
    # and the ratio is the median over adjacent pairs: this VM's speed drifts by ±30% from one minute to the
    # next, which two back-to-back measurements of several seconds each took for a difference between them
    pairs = max(2, round(seconds / WINDOW_S))
    schedule = [kind for i in range(pairs) for kind in (("health", "getjob") if i % 2 == 0 else ("getjob", "health"))]
    try:
        for clients in (1, 8):
            out = ctx.Queue()
            start_at = time.time() + (1.0 if clients == 1 else 3.0)  # spawned interpreters need time to import
            procs = [ctx.Process(target=_unary_client, args=(schedule, address, token, job_id, start_at, WINDOW_S,
                                                             out)) for _ in range(clients)]
            for p in procs:
                p.start()
            per_client = [out.get(timeout=len(schedule) * WINDOW_S + 120) for _ in procs]
            for p in procs:
                p.join(30)
            calls = [sum(len(windows[i]) for windows in per_client) for i in range(len(schedule))]
            for kind in ("health", "getjob"):
                latencies = [x for windows in per_client for i, w in enumerate(windows) if schedule[i] == kind for x in w]
                results[f"{kind}_{clients}"] = {"calls_per_s": len(latencies) / (pairs * WINDOW_S),
                                                "p50_ms": 1000 * percentile(latencies, 50),
                                                "p99_ms": 1000 * percentile(latencies, 99), "calls": len(latencies)}
            ratios = []
            for i in range(0, len(schedule), 2):
                by_kind = {schedule[i]: calls[i], schedule[i + 1]: calls[i + 1]}
                ratios.append(by_kind["getjob"] / max(1, by_kind["health"]))
            results[f"ratio_{clients}"] = {"median": statistics.median(ratios), "pairs": ratios}
    finally:
        stop_feed.set()
        feeder.join(10)
    counts = watch_out.get(timeout=120)
    watcher_proc.join(30)
    results["watchers"] = {"count": watchers, "points_fed": fed["step"] - next_step, "received": counts}
    results["next_step"] = fed["step"] + 1
    return results


# ---------------------------------------------------------------- 4. download

def bench_download(client: Client, tmp: Path, repeats: int) -> tuple[list[float], int]:
    job = client.submit(digits_spec(steps=2, workers=1, layers=(64, 2304, 2304, 10), every=0, eval_every=2),
                        labels={"bench": "download"})
    final = wait_state(client, job.id, lambda j: j.is_terminal(), timeout=300)
    if final.state is not JobState.SUCCEEDED:
        raise RuntimeError(f"download bench job {job.id} {final.state.name}: {final.message}")
    rates, raw_rates, bare_rates, size = [], [], [], 0
    path = Path(client.download(job.id, tmp / "download-peer.npz", latest=True).path)
    bare = subprocess.Popen([sys.executable, __file__, "--bare-stream-server", str(path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        port = int(bare.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)])
        stream = channel.unary_stream(BARE_METHOD)
        bare_rates = [_bare_rate(stream) for _ in range(1)]  # warm-up, discarded
        bare_rates = []
        rates = _download_runs(client, job.id, tmp, repeats, raw_rates, bare_rates, stream)
        size = path.stat().st_size
        channel.close()
    finally:
        bare.kill()
        bare.wait()
        path.unlink(missing_ok=True)
    return rates, raw_rates, bare_rates, size


def _bare_rate(stream) -> float:
    """MiB/s of a bare gRPC server-stream of the same bytes: no handler logic, no hash, no file, read and dropped."""
    t = time.perf_counter()
    received = sum(len(chunk) for chunk in stream(b"", timeout=60))
    return received / (time.perf_counter() - t) / (1 << 20)


def bare_stream_server(path: str) -> int:
    """The bare peer: the file's bytes in memory, streamed in the same 1 MiB chunks as raw messages."""
    from concurrent import futures

    from coordinator.wire import CHUNK_BYTES
    data = Path(path).read_bytes()
    pieces = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    handler = grpc.method_handlers_generic_handler("bench.Bare", {"Stream": grpc.unary_stream_rpc_method_handler(
        lambda request, context: iter(pieces))})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler],
                         options=[("grpc.max_send_message_length", 64 << 20)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()
    return 0


def _download_runs(client, job_id, tmp, repeats, raw_rates, bare_rates, stream) -> list[float]:
    rates = []
    for i in range(repeats):
        result = client.download(job_id, tmp / f"download-{i}.npz", latest=True)
        size = result.info.size_bytes
        rates.append(size / result.seconds / (1 << 20))
        (tmp / f"download-{i}.npz").unlink()
        # the peer: the same stream read and thrown away (no sha256, no file)
        t = time.perf_counter()
        received = sum(len(chunk.data) for chunk in client._stub.DownloadCheckpoint(
            pb.DownloadCheckpointRequest(job_id=job_id, latest=True), timeout=60, metadata=client._metadata))
        raw_rates.append(received / (time.perf_counter() - t) / (1 << 20))
        bare_rates.append(_bare_rate(stream))
    return rates


def disk_rate(directory: Path, size: int = 63 << 20) -> float:
    """MiB/s of writing `size` bytes in 1 MiB pieces into a reserved file and fsyncing it, as Client.download
    does, with no network and no hash: the disk's own ceiling for a durable download here."""
    piece = os.urandom(1 << 20)
    path = directory / "disk-rate.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
        for _ in range(size >> 20):
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t
    path.unlink()
    return (size >> 20) / seconds


def sha256_rate(size: int = 64 << 20) -> float:
    """MiB/s of hashlib.sha256 over 1 MiB pieces in memory: the ceiling of any verified download here."""
    piece = os.urandom(1 << 20)
    digest = hashlib.sha256()
    t = time.perf_counter()
    for _ in range(size >> 20):
        digest.update(piece)
    return (size >> 20) / (time.perf_counter() - t)


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput measurement")
    parser.add_argument("--runs", type=int, default=3, help="submit→first-step repetitions")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    parser.add_argument("--skip-ingest", action="store_true",
                        help="skip phase 2, so GetJob runs on a job with a short metric history")
    parser.add_argument("--bare-stream-server", metavar="FILE", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.bare_stream_server:
        return bare_stream_server(opts.bare_stream_server)

    tmp = Path(tempfile.mkdtemp(prefix="gradmesh-bench-"))
    server = Server(tmp / "coordinator")
    client = Client(server.address, token=server.token, timeout=30)
    figures: dict = {"address": server.address, "cpus": os.cpu_count(), "load_before": os.getloadavg()[0]}
    job_id, ranks = "", []

    def interrupted(signum, frame):  # so `timeout` or Ctrl-C still runs the clean-up below
        raise SystemExit(f"interrupted by signal {signum}")
    signal.signal(signal.SIGTERM, interrupted)
    try:
        figures["startup"] = bench_startup_breakdown(tmp, opts.runs)
        times, job_id = bench_first_step(client, opts.runs)
        figures["submit_to_first_step_s"] = {"median": statistics.median(times), "runs": times}
        token, ranks = job_token(job_id)
        attempt = client.get(job_id).attempts
        signal_all(ranks, signal.SIGSTOP)  # keep the cores for the server and the clients
        step = 1_000_000
        if opts.skip_ingest:
            figures["ingest"] = None
        else:
            pts100, calls100, step = bench_ingest(server.address, job_id, token, attempt, opts.seconds, step, 100)
            pts1, calls1, step = bench_ingest(server.address, job_id, token, attempt, opts.seconds, step, 1)
            figures["ingest"] = {"points_per_s_batch100": pts100, "calls_per_s_batch100": calls100,
                                 "points_per_s_batch1": pts1}
        try:
            figures["history_points"] = len(client.metrics(job_id))
        except GradmeshError as err:  # e.g. a server that does not cap GetMetrics replies
            figures["history_points"] = f"? (GetMetrics failed: {err})"
        figures["getjob"] = bench_getjob(server.address, server.token, job_id, token, attempt, opts.seconds, step)
        signal_all(ranks, signal.SIGCONT)
        client.cancel(job_id)
        wait_state(client, job_id, lambda j: j.is_terminal())
        job_id = ""
        rates, raw_rates, bare_rates, size = bench_download(client, tmp, repeats=5)
        figures["download"] = {"mib_per_s": max(rates), "runs": rates, "size_mib": size / (1 << 20),
                               "raw_stream_mib_per_s": max(raw_rates), "raw_runs": raw_rates,
                               "bare_stream_mib_per_s": max(bare_rates), "bare_runs": bare_rates,
                               "sha256_mib_per_s": max(sha256_rate() for _ in range(3)),
                               "disk_mib_per_s": max(disk_rate(tmp) for _ in range(3))}
    finally:
        signal_all(ranks, signal.SIGCONT)
        if job_id:
            try:
                client.cancel(job_id)
                wait_state(client, job_id, lambda j: j.is_terminal(), timeout=30)
            except Exception:  # noqa: BLE001 - best effort; the server stop below kills what is left
                pass
        client.close()
        server.stop()
        signal_all([pid for pid in ranks if alive(pid)], signal.SIGKILL)
        shutil.rmtree(tmp, ignore_errors=True)

    figures["load_after"] = os.getloadavg()[0]
    print_table(figures)
    if opts.json:
        print(json.dumps(figures, indent=2))
    return 0


def print_table(f: dict) -> None:
    g, w, d = f["getjob"], f["getjob"]["watchers"], f["download"]
    rows = []
    for clients in (1, 8):
        gj, peer = g[f"getjob_{clients}"], g[f"health_{clients}"]
        rows.append((f"GetJob calls/s, {clients} client{'s' if clients > 1 else ''}", f"{gj['calls_per_s']:,.0f}",
                     f"≥ {TARGETS['getjob_per_s']:,.0f}", gj["calls_per_s"] >= TARGETS["getjob_per_s"],
                     f"health Check {peer['calls_per_s']:,.0f}/s"))
        pairs = g[f"ratio_{clients}"]["pairs"]
        ratio = g[f"ratio_{clients}"]["median"]
        rows.append((f"  GetJob / health Check, {clients} client{'s' if clients > 1 else ''}", f"{ratio:.2f}x",
                     f"≥ {TARGETS['getjob_vs_health']:.2f}x" if clients == 1 else "",
                     ratio >= TARGETS["getjob_vs_health"] if clients == 1 else None,
                     f"calls/s, median of {len(pairs)} interleaved pairs of {WINDOW_S} s windows "
                     f"(quartiles {statistics.quantiles(pairs, n=4)[0]:.2f}..{statistics.quantiles(pairs, n=4)[2]:.2f})"))
        rows.append((f"GetJob p50 / p99 ms, {clients} client{'s' if clients > 1 else ''}",
                     f"{gj['p50_ms']:.2f} / {gj['p99_ms']:.2f}", f"p99 < {TARGETS['p99_ms']:.0f}",
                     gj["p99_ms"] < TARGETS["p99_ms"], f"health {peer['p50_ms']:.2f} / {peer['p99_ms']:.2f}"))
    rows.append((f"  while {w['count']} watchers streamed", f"{w['points_fed']} points fed",
                 "each gets all", min(w["received"]) == w["points_fed"],
                 f"each got {min(w['received'])}..{max(w['received'])}"))
    history = f["history_points"]
    rows.append(("  on a job with a metric history of",
                 f"{history:,} points" if isinstance(history, int) else "?", "", None,
                 "" if isinstance(history, int) else history[2:]))
    if f["ingest"]:
        rows.append(("metric points ingested/s (100/call)", f"{f['ingest']['points_per_s_batch100']:,.0f}", "-", None,
                     f"{f['ingest']['calls_per_s_batch100']:,.0f} ReportProgress calls/s"))
        rows.append(("metric points ingested/s (1/call)", f"{f['ingest']['points_per_s_batch1']:,.0f}", "-", None, ""))
    rows.append((f"checkpoint download MiB/s ({d['size_mib']:.0f} MiB)", f"{d['mib_per_s']:,.0f}",
                 f"≥ {TARGETS['download_mib_s']:.0f}", d["mib_per_s"] >= TARGETS["download_mib_s"],
                 f"bare gRPC stream {d['bare_stream_mib_per_s']:,.0f} MiB/s; the coordinator's stream read and "
                 f"dropped {d['raw_stream_mib_per_s']:,.0f} MiB/s; sha256 alone {d['sha256_mib_per_s']:,.0f} MiB/s; "
                 f"write+fsync alone {d['disk_mib_per_s']:,.0f} MiB/s"))
    ratio = d["mib_per_s"] / d["bare_stream_mib_per_s"]
    rows.append(("  download / bare gRPC stream", f"{ratio:.2f}x", f"≥ {TARGETS['download_vs_bare']:.2f}x",
                 ratio >= TARGETS["download_vs_bare"], "best of each; runs " +
                 ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(d["runs"], d["bare_runs"]))))
    first = f["submit_to_first_step_s"]
    rows.append(("submit → first step, s (median)", f"{first['median']:.2f}",
                 f"< {TARGETS['submit_to_first_step_s']:.0f}", first["median"] < TARGETS["submit_to_first_step_s"],
                 "runs " + ", ".join(f"{t:.2f}" for t in first["runs"])))
    for name, seconds in f.get("startup", {}).items():
        rows.append((f"  {name}, s (median)", f"{seconds:.2f}", "", None, "where the time goes, outside the coordinator"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(3)]
    print(f"gradmesh service benchmark — coordinator {f['address']}, {f['cpus']} CPUs shared by server, clients "
          f"and workers; load average {f['load_before']:.1f} before, {f['load_after']:.1f} after")
    for name, value, target, ok, peer in rows:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {name.ljust(widths[0])}  {value.rjust(widths[1])}  {target.ljust(widths[2])}  {verdict:6}  {peer}")


if __name__ == "__main__":
    sys.exit(main())
