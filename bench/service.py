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

The phases live beside this file: service_setup.py (the server, the job, its ranks), service_rpcs.py (2
and 3) and service_download.py (4, and the bare stream server). The job's workers are paused (SIGSTOP on
their process group) during 2-3, so the 2 measured parties (server and clients) are not competing with
training for the cores; the token is read from the rank processes' environment (/proc, Linux), exactly
what mpirun gave them. Everything runs on 127.0.0.1 in a temporary
directory that is deleted at the end; the server and every job are stopped even on failure.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from service_download import bench_download, disk_rate, sha256_rate
from service_rpcs import WINDOW_S, bench_getjob, bench_ingest
from service_setup import ROOT, Server, digits_spec, job_token, signal_all, wait_state

from coordinator.client import Client, GradmeshError  # noqa: E402
from coordinator.supervision.processes import alive  # noqa: E402

TARGETS = {"getjob_per_s": 2000.0, "p99_ms": 20.0, "download_mib_s": 500.0, "submit_to_first_step_s": 1.0,
           "getjob_vs_health": 0.9, "download_vs_bare": 0.75}


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


# ---------------------------------------------------------------- main

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput measurement")
    parser.add_argument("--runs", type=int, default=3, help="submit→first-step repetitions")
    parser.add_argument("--json", action="store_true", help="also print the raw figures as JSON")
    parser.add_argument("--skip-ingest", action="store_true",
                        help="skip phase 2, so GetJob runs on a job with a short metric history")
    opts = parser.parse_args()

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
    from machine import machine_line
    print(machine_line())
    print(f"gradmesh service benchmark — coordinator {f['address']}, {f['cpus']} CPUs shared by server, clients "
          f"and workers; load average {f['load_before']:.1f} before, {f['load_after']:.1f} after")
    for name, value, target, ok, peer in rows:
        verdict = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {name.ljust(widths[0])}  {value.rjust(widths[1])}  {target.ljust(widths[2])}  {verdict:6}  {peer}")


if __name__ == "__main__":
    sys.exit(main())
