"""bench/sweep_overheads.py: where an asha trial's wall time goes, attempt by attempt.

    python bench/sweep_overheads.py --quick          # bench/sweep.py's small synthetic problem (~20 s)
    python bench/sweep_overheads.py                  # the full synthetic problem (24 trials, rungs 60/180/540)

Runs bench/sweep.py's synthetic asha sweep on a real `gradmesh serve` (2 slots), then reads the coordinator's
own records (attempts, metric points, checkpoints, sweep results) and prints, per attempt:

    launch -> pause   the attempt's start (the coordinator's launch) to its last metric point: start-up + training
    start-up          that, less the steps it trained at the step time measured here in-process
    ckpt              the last point to the checkpoint's arrival at the coordinator: write + upload
    exit              the checkpoint's arrival to the attempt's end as the coordinator saw it (exit, reap)

then the slots' idle time (2 x wall - the attempts' time), and the cold costs of the start-up's parts measured
one by one (hydra, interpreter and imports, data, model, checkpoint write and read, first step).
"""
from __future__ import annotations

import argparse
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from coordinator.client import Client  # noqa: E402
from serve_process import ServeProcess  # noqa: E402
from sweep import problems, sweep_toml  # noqa: E402


def run_sweep(problem: dict, data_dir: Path, method: str = "asha") -> float:
    server = ServeProcess(data_dir, "--max-queued-jobs", "500", slots=2)
    try:
        with Client(server.address, token=server.token, timeout=60) as client:
            start = time.monotonic()
            sweep = client.submit_sweep(sweep_toml(problem, method), sweep_id=f"overheads-{method}")
            while not client.sweep(sweep.id).is_terminal():
                time.sleep(0.1)
            return time.monotonic() - start
    finally:
        server.stop()


def attempts_of(db: Path) -> list[dict]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    rows = []
    for a in conn.execute("SELECT job_id, attempt, started, ended, exit_code FROM attempts ORDER BY started"):
        point = conn.execute("SELECT step, time FROM metrics WHERE job_id = ? AND attempt = ? ORDER BY step DESC "
                             "LIMIT 1", (a["job_id"], a["attempt"])).fetchone()
        ckpt = conn.execute("SELECT step, created FROM checkpoints WHERE job_id = ? AND attempt = ? ORDER BY step "
                            "DESC LIMIT 1", (a["job_id"], a["attempt"])).fetchone()
        rows.append({**dict(a), "point_step": point["step"] if point else None,
                     "point_time": point["time"] if point else None,
                     "ckpt_time": ckpt["created"] if ckpt else None})
    first = conn.execute("SELECT MIN(created) FROM sweeps").fetchone()[0]
    conn.close()
    steps_before = {}
    for r in rows:  # an attempt trains from where the job's last one paused
        r["from_step"] = steps_before.get(r["job_id"], 0)
        r["steps"] = (r["point_step"] or 0) - r["from_step"]
        steps_before[r["job_id"]] = r["point_step"] or r["from_step"]
        r["t0"] = first
    return rows


def _timed(argv: list[str], repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        times.append(time.perf_counter() - start)
    return min(times)


def cold_costs(problem: dict) -> dict[str, float]:
    """Seconds of each part of an attempt's start, measured apart (best of 3 for processes)."""
    py, mpirun = sys.executable, str(Path(sys.executable).parent / "mpirun")
    imports = ("import numpy, grpc, worker.train, worker.report, worker.comm, worker.checkpoint, worker.failure, "
               "worker.threads")
    costs = {
        "python -c pass": _timed([py, "-c", "pass"]),
        "mpirun -n 1 true (hydra)": _timed([mpirun, "-n", "1", "true"]),
        "worker imports": _timed([py, "-c", imports]) - _timed([py, "-c", "pass"]),
        "MPI init": _timed([mpirun, "-n", "1", py, "-c", "from worker.comm import init_comm; init_comm()"])
        - _timed([mpirun, "-n", "1", py, "-c", "import worker.comm"]),
    }
    from threadpoolctl import threadpool_limits

    from coordinator.sweeps.spec import trial_spec
    from worker.checkpoint import load_checkpoint
    from worker.comm import SerialComm
    from worker.hooks import Hooks, StopRequest
    from worker.spec import parse_spec
    from worker.train import train

    pause = problem["min_steps"]

    class Clocked(Hooks):
        def __init__(self):
            self.t = {"entry": time.perf_counter()}
            self.steps: list[float] = []

        def on_start(self, **_):
            self.t["start"] = time.perf_counter()

        def on_step(self, step):
            self.steps.append(time.perf_counter())

        def poll_stop(self):
            return StopRequest(checkpoint=True, reason="pause") if len(self.steps) == pause else None

        def on_metrics(self, point):
            self.t["metrics"] = time.perf_counter()

        def on_checkpoint(self, path, **_):
            self.t["checkpoint"], self.path = time.perf_counter(), path

    spec = parse_spec(trial_spec(problem["base"], {}))
    with tempfile.TemporaryDirectory(prefix="overheads-train-") as out, threadpool_limits(1):
        fresh = Clocked()
        train(spec, SerialComm(), hooks=fresh, out_dir=Path(out) / "a")
        steady = statistics.median(b - a for a, b in zip(fresh.steps[1:], fresh.steps[2:]))
        start = time.perf_counter()
        load_checkpoint(fresh.path)
        load_s = time.perf_counter() - start
        resumed = Clocked()
        train(spec, SerialComm(), hooks=resumed, out_dir=Path(out) / "b", resume=fresh.path)
    costs.update({
        "data + model + normaliser (train() to on_start)": fresh.t["start"] - fresh.t["entry"],
        "the same, resumed from a checkpoint": resumed.t["start"] - resumed.t["entry"],
        "  of which the checkpoint's load": load_s,
        "first step, above a steady one": (fresh.steps[1] - fresh.steps[0]) - steady,
        "steady step": steady,
        "pause: evaluation": fresh.t["metrics"] - fresh.steps[-1] - steady,
        "pause: checkpoint write": fresh.t["checkpoint"] - fresh.t["metrics"],
    })
    return costs


def breakdown(rows: list[dict], wall: float, step_s: float, slots: int = 2) -> dict[str, float]:
    print(f"{'attempt':<28} {'steps':>5} {'launch->pause':>13} {'start-up':>8} {'ckpt':>6} {'exit':>6}")
    parts: dict[str, list[float]] = {"start-up": [], "ckpt": [], "exit": [], "train": []}
    for r in rows:
        if r["point_time"] is None:
            continue
        to_pause = r["point_time"] - r["started"]
        startup = to_pause - r["steps"] * step_s
        ckpt = (r["ckpt_time"] - r["point_time"]) if r["ckpt_time"] else float("nan")
        exit_s = r["ended"] - (r["ckpt_time"] or r["point_time"]) if r["ended"] else float("nan")
        parts["start-up"].append(startup)
        parts["ckpt"].append(ckpt)
        parts["exit"].append(exit_s)
        parts["train"].append(r["steps"] * step_s)
        print(f"{r['job_id'][-14:] + ' #' + str(r['attempt']):<28} {r['steps']:>5} {to_pause:>13.2f} {startup:>8.2f} "
              f"{ckpt:>6.2f} {exit_s:>6.2f}")
    busy = sum(r["ended"] - r["started"] for r in rows if r["ended"])
    first_launch = min(r["started"] for r in rows)
    summary = {"attempts": len(rows), "wall_s": wall, "slot_s": slots * wall, "busy_slot_s": busy,
               "idle_slot_s": slots * wall - busy, "before_first_launch_s": first_launch - rows[0]["t0"],
               **{f"{k}_total_s": sum(v) for k, v in parts.items()},
               **{f"{k}_median_s": statistics.median(v) for k, v in parts.items() if v}}
    # a slot freed by an attempt's end waits this long for the next launch (any job), at the scheduler's pace
    gaps = []
    for r in rows:
        later = [o["started"] - r["ended"] for o in rows if r["ended"] and o["started"] >= r["ended"]]
        if later:
            gaps.append(min(later))
    summary["end_to_next_launch_median_s"] = statistics.median(gaps) if gaps else float("nan")
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="bench/sweep.py's small synthetic problem")
    parser.add_argument("--method", default="asha", choices=["asha", "grid"])
    parser.add_argument("--keep", type=Path, help="run the coordinator in this (new) directory and keep it")
    args = parser.parse_args()
    problem = problems(args.quick)["synthetic"]
    with tempfile.TemporaryDirectory(prefix="sweep-overheads-") as tmp:
        data_dir = args.keep or Path(tmp) / "coordinator"
        wall = run_sweep(problem, data_dir, args.method)
        rows = attempts_of(data_dir / "gradmesh.db")
    costs = cold_costs(problem)
    summary = breakdown(rows, wall, costs["steady step"])
    print("\nthe sweep, slot-seconds (2 slots):")
    for k, v in summary.items():
        print(f"  {k:<34} {v:8.2f}")
    print("\nparts of an attempt, measured apart (s):")
    for k, v in costs.items():
        print(f"  {k:<48} {v:8.3f}")
    from machine import machine_line
    print("\n" + machine_line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
