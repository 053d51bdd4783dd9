"""bench/scaling.py --neighbour: training throughput with a neighbour process burning half a core.

Both sides of it: `neighbour_bench` (the parent: one mpirun launch per wait policy and round, the policies in
a random order each round, and the table) and `run_small_worker` (a rank of one launch, started as
`bench/scaling.py --small-worker`: quiet and neighbour windows in alternating pairs). bench/scaling.py's
docstring is the manual; README's "With a neighbour on the cores" has the results.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scaling_setup import REPO, THREAD_VARS, Trainer  # scaling_setup puts the repository on sys.path

from worker.comm import init_comm

SCALING = Path(__file__).resolve().with_name("scaling.py")   # what each launch runs, with --small-worker


def parse_model(text: str) -> tuple[list[int], int]:
    """"784-128-10@128" -> ([784, 128, 10], 128): the --neighbour-model option."""
    sizes, _, batch = text.partition("@")
    return [int(n) for n in sizes.split("-")], int(batch)


def pin(cores: set[int]) -> None:
    """This process on `cores` only (--pin): where the neighbour and the ranks run stops being the kernel's choice."""
    os.sched_setaffinity(0, cores)

# GRADMESH_MPI_WAIT: MPICH's default spinning; gradmesh's policy; gradmesh's policy with the exact step's
# 16 micro-batches, handed to the ranks by their measured speed (worker/stepexact.py)
WAIT_VARIANTS = ("spin", "auto", "auto+exact16")
CHECK_STEPS = 60   # the exact variant's bit-identity check: this many steps quiet, then as many with the neighbour


def run_small_worker(args) -> int:
    """One launch of --neighbour: train.py's step on the small MLP, in windows of --window-steps steps, the
    neighbour stopped (SIGSTOP) in the quiet ones and running in the others, in pairs ordered quiet-busy,
    busy-quiet, ...; rank 0 owns the neighbour and prints each window's samples/s."""
    import signal
    comm = init_comm(hang_timeout_s=60.0)
    from threadpoolctl import threadpool_limits
    sizes, batch = parse_model(args.neighbour_model)
    cores = sorted(os.sched_getaffinity(0))
    if args.pin:
        pin({cores[comm.rank % len(cores)]})
    neighbour = None
    if comm.rank == 0:
        last = {cores[-1]}
        neighbour = subprocess.Popen([sys.executable, "-c", NEIGHBOUR_CODE],
                                     preexec_fn=(lambda: pin(last)) if args.pin else None)
        os.kill(neighbour.pid, signal.SIGSTOP)
    parts = args.parts
    try:
        with threadpool_limits(limits=1):
            trainer = Trainer(comm, batch // comm.size, seed=comm.rank, overlap=False, sizes=sizes, parts=parts)
            for _ in range(50):
                trainer.step()
            for pair in range(args.pairs):
                for busy in ((False, True) if pair % 2 == 0 else (True, False)):
                    if neighbour is not None:
                        os.kill(neighbour.pid, signal.SIGCONT if busy else signal.SIGSTOP)
                    for _ in range(SETTLE_STEPS):  # the scheduler sees the change before the clock starts
                        trainer.step()
                    start = time.perf_counter()
                    for _ in range(args.window_steps):
                        trainer.step()
                    elapsed = time.perf_counter() - start
                    if comm.rank == 0:  # a neighbour's cost is in every step it hits: all steps' time, not a median
                        print(f"WINDOW {pair} {'busy' if busy else 'quiet'} "
                              f"{batch * args.window_steps / elapsed:.1f}"
                              f"{' parts ' + str(trainer.sync.ranges) if parts else ''}", flush=True)
            if parts:   # the same training from scratch, quiet and then beside the neighbour: the same bits?
                finals = []
                for busy in (False, True):
                    if neighbour is not None:
                        os.kill(neighbour.pid, signal.SIGCONT if busy else signal.SIGSTOP)
                    fresh = Trainer(comm, batch // comm.size, seed=comm.rank, overlap=False, sizes=sizes, parts=parts)
                    for _ in range(CHECK_STEPS):
                        fresh.step()
                    finals.append((fresh.model.params.copy(), fresh.sync.ranges))
                if comm.rank == 0:
                    print(f"IDENTITY {int(np.array_equal(finals[0][0], finals[1][0]))} quiet {finals[0][1]} "
                          f"neighbour {finals[1][1]}", flush=True)
    finally:
        if neighbour is not None:
            neighbour.kill()
            neighbour.wait()
    if comm.rank == 0:
        print(f"POLICY {getattr(comm, 'wait_policy', '')}", flush=True)
    return 0


NEIGHBOUR_CODE = """
import time
while True:
    end = time.perf_counter() + 0.005
    while time.perf_counter() < end:
        pass
    time.sleep(0.005)
"""
SETTLE_STEPS = 10


def neighbour_bench(args) -> int:
    """Launches of each wait policy interleaved in a random order; within a launch, quiet and neighbour
    windows alternate, so each neighbour/quiet ratio compares two adjacent windows of one launch (this VM's
    speed drifts by ±30% from one minute to the next, and launch to launch)."""
    mpirun = Path(sys.executable).parent / "mpirun"
    base = {k: v for k, v in os.environ.items() if k not in THREAD_VARS and not k.startswith("MPIR_CVAR_")}
    base.update(PYTHONPATH=str(REPO), OPENBLAS_NUM_THREADS="1")
    waits = WAIT_VARIANTS + tuple(args.wait_variants)
    quiet: dict[str, list[float]] = {w: [] for w in waits}
    busy: dict[str, list[float]] = {w: [] for w in waits}
    ratios: dict[str, list[float]] = {w: [] for w in waits}
    why: dict[str, str] = {}
    identity: list[str] = []
    rng = np.random.default_rng(1)
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for index in rng.permutation(len(waits)):
            wait = waits[index]
            policy, _, exact = wait.partition("+exact")
            cmd = [str(mpirun if mpirun.exists() else "mpirun"), "-n", "2", sys.executable, str(SCALING),
                   "--small-worker", "--pairs", str(args.pairs), "--window-steps", str(args.window_steps),
                   "--parts", exact or "0", "--neighbour-model", args.neighbour_model] + (["--pin"] if args.pin else [])
            out = subprocess.run(cmd, env={**base, "GRADMESH_MPI_WAIT": policy}, capture_output=True,
                                 text=True, timeout=300)
            windows: dict[int, dict[str, float]] = {}
            for line in out.stdout.splitlines():
                if line.startswith("WINDOW "):
                    _, pair, kind, value = line.split()[:4]
                    windows.setdefault(int(pair), {})[kind] = float(value)
                elif line.startswith("IDENTITY "):
                    identity.append(line[len("IDENTITY "):])
                elif line.startswith("POLICY "):
                    why[wait] = line[len("POLICY "):]
            if len(windows) != args.pairs:
                raise SystemExit(f"worker failed: {out.stderr[-2000:]}")
            for w in windows.values():
                quiet[wait].append(w["quiet"])
                busy[wait].append(w["busy"])
                ratios[wait].append(w["busy"] / w["quiet"])
    sizes, batch = parse_model(args.neighbour_model)
    print(f"throughput under a neighbour: MLP {'-'.join(map(str, sizes))}, global batch {batch}, "
          f"2 ranks x 1 thread on {os.cpu_count()} cores{', neighbour and ranks pinned' if args.pin else ''}; {args.rounds} launches per policy, interleaved, each "
          f"{args.pairs} pairs of quiet/neighbour windows of {args.window_steps} steps "
          f"(1-min load average {load_before:.2f} before, {os.getloadavg()[0]:.2f} after)")
    print(f"  {'waiting':<60} {'quiet samples/s':>16} {'with neighbour':>16} {'neighbour/quiet':>16}  quartiles")
    for wait in waits:
        label = {"spin": "MPICH default (spin)", "auto": "gradmesh policy",
                 "auto+exact16": "exact step, 16 parts by speed"}.get(wait, wait) + f" [{why.get(wait, '')}]"
        q1, _, q3 = np.percentile(ratios[wait], [25, 50, 75])
        print(f"  {label:<60} {np.median(quiet[wait]):16,.0f} {np.median(busy[wait]):16,.0f} "
              f"{np.median(ratios[wait]):16.3f}  {q1:.2f}..{q3:.2f}")
    print(f"  quiet windows, gradmesh policy / MPICH default = {np.median(quiet['auto']) / np.median(quiet['spin']):.3f} "
          f"(target >= 0.97; different launches); with neighbour = "
          f"{np.median(busy['auto']) / np.median(busy['spin']):.3f}")
    print("  (the ratio is the median over adjacent quiet/neighbour window pairs of all launches; target >= 0.70 "
          "with gradmesh's policy, >= 0.72 with the exact step's parts by speed: ideal 0.75)")
    for line in identity:   # "1 quiet [ranges] neighbour [ranges]" per exact launch
        same, rest = line.split(" ", 1)
        print(f"  exact step, {CHECK_STEPS} steps quiet vs beside the neighbour: "
              f"{'bit-identical' if same == '1' else 'DIFFERENT'} final parameters ({rest})")
    if any(not line.startswith("1 ") for line in identity):
        return 1
    return 0
