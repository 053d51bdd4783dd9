"""Load test of a coordinator shared by a team: many queued jobs of several users, many watchers and pollers,
on a real `gradmesh serve`.

    PYTHONPATH=. python bench/load.py --quick            # smoke test, ~30 s: 10 jobs, 5 watchers, 10 s of polling
    PYTHONPATH=. python bench/load.py                    # 200 jobs, 50 watchers, pollers for 60 s (quiet machine!)
    PYTHONPATH=. python bench/load.py --json             # the figures as JSON

A 2-slot coordinator (`python -m coordinator.cli serve`, its own process group, 127.0.0.1, a temporary data
directory) gets --users members (`AddUser`, each with a token of their own) and --jobs real small digits jobs
(1 rank, --steps steps, a metric point every 2 steps) at once, so most of them wait QUEUED: the first user
queues 40% of them first (someone who queued a hundred jobs), then the others queue the rest in turns. Every
call below is made with one of the users' tokens. Meanwhile, for --seconds:
  - --watchers threads stream WatchJob: watcher w follows jobs w, w + W, w + 2W, ... each from step 0 to
    its end (a stream that breaks is resumed after the last step seen, and the break counted by code);
  - --getjob-pollers threads call GetJob on the jobs in turn, --list-pollers threads call ListJobs (first
    page of 50), timing every call.
After that the watchers finish the jobs they follow, and the run waits (up to --drain-timeout) for every job
to end. Targets: errors by code 0, GetJob p99 < 50 ms, every job terminal, no metric point lost or duplicated
for any watcher (each watcher's steps are compared with GetMetrics, and GetMetrics with the points the spec
implies), coordinator RSS growth < 100 MiB (VmRSS from /proc, after start vs. at the end). Exit status 0
when every target is met, 1 otherwise. Reported beside them, the shares: the fraction of slot-seconds each
user's jobs got over the run, and while every user still had jobs queued (from the first submission to the
first start of any user's last job), and how long each user waited for their first job to start (under a
FIFO, the others would wait for the first user's 40% to finish; under fair share, a job or two).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from coordinator.rpc import gradmesh_pb2 as pb  # noqa: E402
from coordinator.rpc import gradmesh_pb2_grpc as pb_grpc  # noqa: E402
from serve_process import ServeProcess  # noqa: E402

TERMINAL = {pb.SUCCEEDED, pb.FAILED, pb.CANCELLED}
EVAL_EVERY = 2
TARGETS = {"errors": 0, "getjob_p99_ms": 50.0, "rss_growth_mib": 100.0}


def job_spec(steps: int) -> str:
    return json.dumps({"name": "load", "workers": 1, "model": {"layers": [64, 32, 10]}, "data": {"source": "digits"},
                       "train": {"steps": steps, "batch_size": 32, "eval_every": EVAL_EVERY},
                       "optim": {"name": "adam", "lr": 0.003}, "checkpoint": {"every_steps": 0}})


def expected_steps(steps: int) -> list[int]:
    """The steps a job of job_spec(steps) reports a point at (worker.train: every eval_every, and the last)."""
    return [s for s in range(1, steps + 1) if s % EVAL_EVERY == 0 or s == steps]


class Server(ServeProcess):
    """The load test's `gradmesh serve`: `slots` slots, a queue that takes every job at once."""

    def __init__(self, data_dir: Path, slots: int, queued: int):
        super().__init__(data_dir, "--max-queued-jobs", str(queued), slots=slots)


class Tally:
    """Errors by status code and call latencies, shared by the load threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.errors: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = {"GetJob": [], "ListJobs": []}

    def error(self, call: str, err: grpc.RpcError) -> None:
        with self.lock:
            self.errors[f"{call} {err.code().name}"] += 1

    def timed(self, call: str, seconds: float) -> None:
        with self.lock:
            self.latency[call].append(seconds)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def watch_job(stub, metadata, job_id: str, tally: Tally, deadline: float) -> list[int]:
    """Every metric step the job's WatchJob streams deliver, from step 0 to the job's end (resuming a broken
    stream after its last step, as the SDK does)."""
    steps: list[int] = []
    next_step = 0
    while time.monotonic() < deadline:
        try:
            call = stub.WatchJob(pb.WatchJobRequest(job_id=job_id, from_step=next_step), metadata=metadata,
                                 timeout=max(1.0, deadline - time.monotonic()))
            for event in call:
                kind = event.WhichOneof("event")
                if kind == "metric":
                    steps.append(event.metric.step)
                    next_step = event.metric.step + 1
                elif kind == "state" and event.state.state in TERMINAL:
                    return steps
                elif kind == "snapshot" and event.snapshot.state in TERMINAL:
                    pass  # an ended job: its points follow, then its terminal state
        except grpc.RpcError as err:
            tally.error("WatchJob", err)
            time.sleep(0.2)
    return steps


def all_metrics(stub, metadata, job_id: str) -> list[int]:
    steps, token = [], ""
    while True:
        reply = stub.GetMetrics(pb.GetMetricsRequest(job_id=job_id, page_token=token), metadata=metadata, timeout=30)
        steps += [p.step for p in reply.points]
        token = reply.next_page_token
        if not token:
            return steps


def owners(users: list[str], jobs: int) -> list[str]:
    """Who submits each job, in submission order: the first user 40% of them at once, then the rest in turns."""
    first = (jobs * 2) // 5 if len(users) > 1 else jobs
    rest = [users[1 + i % (len(users) - 1)] for i in range(jobs - first)] if len(users) > 1 else []
    return [users[0]] * first + rest


def shares(jobs: list, now: float) -> dict:
    """Each user's fraction of the slot-seconds their jobs' attempts held: over the run, and in the contended
    window (from the first submission until the first start of any user's last attempt); and the seconds from
    the first submission to each user's first start."""
    held = [(j.owner, a.started_unix, a.ended_unix or now, a.ranks) for j in jobs for a in j.attempt_history]
    if not held:
        return {"run": {}, "contended": {}, "contended_s": 0.0, "first_start_s": {}}
    start = min(j.created_unix for j in jobs)
    first_start: dict[str, float] = {}
    last_start: dict[str, float] = {}
    for user, s, _, _ in held:
        last_start[user] = max(last_start.get(user, 0.0), s)
        first_start[user] = min(first_start.get(user, s), s)
    end = min(last_start.values())

    def fractions(lo: float, hi: float) -> dict[str, float]:
        got: dict[str, float] = {}
        for user, s, e, ranks in held:
            got[user] = got.get(user, 0.0) + max(0.0, min(e, hi) - max(s, lo)) * ranks
        total = sum(got.values())
        return {u: round(v / total, 3) if total else 0.0 for u, v in sorted(got.items())}

    return {"run": fractions(start, now), "contended": fractions(start, end), "contended_s": round(end - start, 1),
            "first_start_s": {u: round(t - start, 1) for u, t in sorted(first_start.items())}}


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="gradmesh-load-"))
    server = Server(tmp, slots=2, queued=max(1000, args.jobs))
    try:
        return load(server, args)
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)


def load(server: Server, args) -> dict:
    tally = Tally()
    admin = (("authorization", f"Bearer {server.token}"),)
    channel = grpc.insecure_channel(server.address)
    stub = pb_grpc.JobServiceStub(channel)
    users = [f"user{u}" for u in range(args.users)]
    as_user = {}
    for name in users:
        token = stub.AddUser(pb.AddUserRequest(name=name, role=pb.ROLE_MEMBER), metadata=admin, timeout=30).token
        as_user[name] = (("authorization", f"Bearer {token}"),)
    metadata = admin
    rss_start = server.rss_bytes()
    started = time.monotonic()
    spec = job_spec(args.steps)
    job_ids = []
    for n, owner in enumerate(owners(users, args.jobs)):
        try:
            job_ids.append(stub.SubmitJob(pb.SubmitJobRequest(spec=spec, job_id=f"load-{n:04d}"),
                                          metadata=as_user[owner], timeout=30).job.id)
        except grpc.RpcError as err:
            tally.error("SubmitJob", err)
    submitted_s = time.monotonic() - started
    load_until = time.monotonic() + args.seconds
    drain_until = load_until + args.drain_timeout
    seen: dict[str, list[int]] = {}
    rss_peak = [rss_start]

    def watcher(w: int) -> None:
        mine = as_user[users[w % len(users)]]   # reading is everyone's
        for job_id in job_ids[w::args.watchers]:
            seen[job_id] = watch_job(stub, mine, job_id, tally, drain_until)

    def getjob_poller(p: int) -> None:
        i = p
        mine = as_user[users[p % len(users)]]
        while time.monotonic() < load_until and job_ids:
            t0 = time.perf_counter()
            try:
                stub.GetJob(pb.GetJobRequest(job_id=job_ids[i % len(job_ids)]), metadata=mine, timeout=10)
                tally.timed("GetJob", time.perf_counter() - t0)
            except grpc.RpcError as err:
                tally.error("GetJob", err)
            i += 7

    def list_poller() -> None:
        while time.monotonic() < load_until:
            t0 = time.perf_counter()
            try:
                stub.ListJobs(pb.ListJobsRequest(page_size=50), metadata=metadata, timeout=10)
                tally.timed("ListJobs", time.perf_counter() - t0)
            except grpc.RpcError as err:
                tally.error("ListJobs", err)

    threads = [threading.Thread(target=watcher, args=(w,), daemon=True) for w in range(args.watchers)]
    threads += [threading.Thread(target=getjob_poller, args=(p,), daemon=True) for p in range(args.getjob_pollers)]
    threads += [threading.Thread(target=list_poller, daemon=True) for _ in range(args.list_pollers)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads) and time.monotonic() < drain_until + 5:
        rss_peak[0] = max(rss_peak[0], server.rss_bytes())
        time.sleep(1.0)
    states = Counter()
    lost = duplicated = short = 0
    finals = []
    for job_id in job_ids:
        job = stub.GetJob(pb.GetJobRequest(job_id=job_id), metadata=metadata, timeout=30)
        finals.append(job)
        states[pb.JobState.Name(job.state)] += 1
        stored = all_metrics(stub, metadata, job_id)
        got = seen.get(job_id, [])
        duplicated += len(got) - len(set(got))
        lost += len(set(stored) - set(got))
        if job.state == pb.SUCCEEDED and stored != expected_steps(args.steps):
            short += 1
    rss_end = server.rss_bytes()
    getjob = tally.latency["GetJob"]
    listjobs = tally.latency["ListJobs"]
    return {
        "jobs": len(job_ids), "watchers": args.watchers, "seconds": args.seconds, "submit_s": round(submitted_s, 2),
        "all_done_s": round(time.monotonic() - started, 1),
        "states": dict(states), "not_terminal": sum(n for s, n in states.items() if pb.JobState.Value(s) not in TERMINAL),
        "errors": dict(tally.errors), "error_count": sum(tally.errors.values()),
        "getjob_calls": len(getjob), "getjob_p50_ms": round(percentile(getjob, 0.5) * 1e3, 2),
        "getjob_p99_ms": round(percentile(getjob, 0.99) * 1e3, 2),
        "listjobs_calls": len(listjobs), "listjobs_p99_ms": round(percentile(listjobs, 0.99) * 1e3, 2),
        "points_lost": lost, "points_duplicated": duplicated, "jobs_missing_points_in_store": short,
        "rss_start_mib": round(rss_start / 2**20, 1), "rss_peak_mib": round(rss_peak[0] / 2**20, 1),
        "rss_end_mib": round(rss_end / 2**20, 1), "rss_growth_mib": round((rss_end - rss_start) / 2**20, 1),
        "users": len(users), "jobs_per_user": dict(Counter(j.owner for j in finals)),
        "shares": shares(finals, time.time()),
    }


def verdict(r: dict) -> list[str]:
    """The targets missed (empty: all met)."""
    missed = []
    if r["error_count"] > TARGETS["errors"]:
        missed.append(f"errors by code: {r['errors']}")
    if not r["getjob_p99_ms"] < TARGETS["getjob_p99_ms"]:
        missed.append(f"GetJob p99 {r['getjob_p99_ms']} ms >= {TARGETS['getjob_p99_ms']} ms")
    if r["not_terminal"]:
        missed.append(f"{r['not_terminal']} job(s) not terminal: {r['states']}")
    if r["points_lost"] or r["points_duplicated"] or r["jobs_missing_points_in_store"]:
        missed.append(f"points lost {r['points_lost']}, duplicated {r['points_duplicated']}, jobs whose stored "
                      f"points differ from the spec's {r['jobs_missing_points_in_store']}")
    if not r["rss_growth_mib"] < TARGETS["rss_growth_mib"]:
        missed.append(f"coordinator RSS grew {r['rss_growth_mib']} MiB")
    return missed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 10 jobs, 5 watchers, 10 s")
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--users", type=int, default=5, help="members submitting the jobs (default 5)")
    parser.add_argument("--watchers", type=int, default=50)
    parser.add_argument("--getjob-pollers", type=int, default=4)
    parser.add_argument("--list-pollers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the pollers run")
    parser.add_argument("--steps", type=int, default=20, help="steps of each job")
    parser.add_argument("--drain-timeout", type=float, default=900.0,
                        help="seconds after the load to wait for every job to end")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.watchers, args.seconds, args.drain_timeout = 10, 5, 10.0, 120.0
    result = run(args)
    missed = verdict(result)
    if args.json:
        print(json.dumps({**result, "targets": TARGETS, "missed": missed}, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:>30}  {value}")
        print("all targets met" if not missed else "MISSED: " + "; ".join(missed))
    return 0 if not missed else 1


if __name__ == "__main__":
    sys.exit(main())
