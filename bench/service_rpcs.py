"""bench/service.py, phases 2 and 3: metric points ingested through ReportProgress, and GetJob against the
grpc.health.v1 Check in interleaved windows while watchers stream the job's events."""
from __future__ import annotations

import multiprocessing as mp
import statistics
import threading
import time

from service_setup import ROOT  # noqa: F401  (puts the repository on sys.path)

import grpc  # noqa: E402

from coordinator.client import Client, MetricReported  # noqa: E402
from coordinator.rpc import gradmesh_pb2 as pb  # noqa: E402
from coordinator.rpc import gradmesh_pb2_grpc as pb_grpc  # noqa: E402

WINDOW_S = 0.5  # GetJob and the health Check alternate in windows this long


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
