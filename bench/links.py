"""gradmesh's step across two hosts on shaped links, against the lower bound and PyTorch DDP (gloo).

    sudo .venv/bin/python bench/links.py               # unshaped, 10gbit, 1gbit; 2 rounds of 300 timed steps per run
    sudo .venv/bin/python bench/links.py --quick       # a smoke run: 1gbit only, 30 steps
    sudo .venv/bin/python bench/links.py --rates 1gbit --steps 500 --rounds 2

Two hosts made of network namespaces (bench/netns_topology.py, as the multi-host tests use), one rank each,
MPI over TCP on their veths. Each host's egress is shaped with `tc qdisc replace dev gm0 root tbf rate R`
(so both directions are), and the rate TCP reaches is measured with a plain socket stream each way. This
kernel has no `netem`: no delay is added, so the links are a 10 or 1 Gbit/s pipe with veth latency.

Runs per rate (a few hundred steps each; the step time is the median of windows of --window steps):
  gradmesh exact8       2 hosts x 1 rank, 784-1024-1024-10, global batch 256, the exact step (8 parts), overlapped
                        (GRADMESH_OVERLAP=1: each layer combined while the backward pass computes the ones below)
  exact8 no overlap     the same as shipped by default: the combine after the whole backward pass
  bf16 wire             gradmesh exact8 with `[train] wire = "bf16"`: the combine between hosts sends bfloat16, half
                        the bytes (not exact across rank counts); and `bf16 no overlap`, its combine after backward
  exact8 auto           `[train] overlap = "auto"`: the job times both ways for 5 steps each (in the warm-up and the
                        first timed steps) and keeps the faster; its note says which
  gradmesh sums         micro_batches = 0 (per-rank sums and one Allreduce: not exact across rank counts)
  PyTorch DDP           gloo over the same veths, one rank per namespace, the same MLP, batch and SGD
  compute exact8 / sums the compute alone: one process, a rank's half of the batch (and of the parts), no
                        combine; interleaved with the others, so each rate's bound uses compute measured beside it

The lower bound of a 2-host step is max(compute, 2 (N-1)/N * 4P / W) with N = 2 hosts, 4P the gradient's
bytes and W the measured stream rate (docs/cost-model.md). Printed: step time, samples/s, step / bound and
samples/s over DDP's, with the CPU model, date and load average, as a table to paste in docs/benchmarks.md.
Needs root (ip netns, tc) and the `bench` extra (PyTorch). The machine's load disturbs every row alike only
as far as they interleave: --rounds > 1 repeats the runs in alternating order and takes the median.
"""
from __future__ import annotations

import argparse
import datetime
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from machine import cpu_model
from netns_topology import namespace_hosts, parse_rate, shape
from scaling_setup import REPO, SIZES, THREAD_VARS

WORKERS = Path(__file__).resolve().parent / "links_workers.py"
GRADIENT_BYTES = 4 * sum(i * o + o for i, o in zip(SIZES[:-1], SIZES[1:]))
BATCH = 256
RUNS = {  # name: (kind, parts, extra environment)
    "gradmesh exact8": ("gradmesh", 8, {"GRADMESH_OVERLAP": "1"}),
    "exact8 no overlap": ("gradmesh", 8, {}),
    "bf16 wire": ("gradmesh", 8, {"GRADMESH_OVERLAP": "1"}),
    "bf16 no overlap": ("gradmesh", 8, {}),
    "exact8 auto": ("gradmesh", 8, {}),
    "gradmesh sums": ("gradmesh", 0, {}),
    "PyTorch DDP": ("torch", 0, {}),
    "compute exact8": ("compute", 8, {}),
    "compute sums": ("compute", 0, {}),
}
WIRE = {"bf16 wire": "bf16", "bf16 no overlap": "bf16"}   # the spec's train.wire of a run; the others: fp32
AUTO = {"exact8 auto"}   # runs with the spec's train.overlap = "auto": the job times both ways, keeps the faster


def base_env() -> dict[str, str]:
    from worker import blas
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]))
    # the kernel a job on this host gets (worker/blas.py: measured once per host, cached)
    blas.choose_kernel("auto", SIZES, BATCH // 2, 1, hostname=socket.gethostname(), environ=env)
    return env


def read(out: str, what: str) -> str:
    line = next((ln for ln in out.splitlines() if ln.startswith(what + " ")), None)
    if line is None:
        raise RuntimeError(f"no {what} line in:\n{out[-4000:]}")
    return line[len(what) + 1:]


def in_ns(ns: str, argv: list[str], env, timeout: float, **kw) -> subprocess.Popen:
    return subprocess.Popen(["ip", "netns", "exec", ns, *argv], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **kw)


def finish(proc: subprocess.Popen, timeout: float, what: str) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, _ = proc.communicate(timeout=10)
        raise RuntimeError(f"{what} did not finish in {timeout:.0f} s:\n{out[-3000:]}")
    if proc.returncode != 0:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{out[-3000:]}")
    return out


def stream_rate(topo, env, src: str, dst: str, seconds: float) -> float:
    """Bits/s of payload one TCP stream carries from host `src` to host `dst` (socket, no MPI)."""
    port = 29400
    sink = in_ns(topo.namespaces[dst], [sys.executable, str(WORKERS), "sink", "--bind", f"{dst}:{port}"], env, 30)
    assert sink.stdout.readline().strip() == "READY"
    source = in_ns(topo.namespaces[src], [sys.executable, str(WORKERS), "source", "--to", f"{dst}:{port}",
                                          "--seconds", str(seconds)], env, 30)
    finish(source, seconds + 30, "stream source")
    total, took = read(finish(sink, 30, "stream sink"), "STREAM").split()[:2]
    return 8 * int(total) / float(took)


def run(topo, env, kind: str, parts: int, steps: int, extra: dict, wire: str = "fp32",
        auto: bool = False) -> tuple[list[float], str]:
    env = {**env, **extra}
    a, b = topo.hosts
    timeout = 120 + steps * 2.0
    common = ["--parts", str(parts), "--steps", str(steps)]
    if kind == "gradmesh":
        common += ["--wire", wire, "--overlap", "auto" if auto else "env"]
        mpirun = str(Path(sys.executable).parent / "mpirun")
        genv = [x for k, v in extra.items() for x in ("-genv", k, v)]
        proc = in_ns(topo.switch, [mpirun, *topo.mpirun_args, *genv, "-hosts", f"{a}:1,{b}:1", "-n", "2",
                                   sys.executable, str(WORKERS), "gradmesh", *common], env, timeout)
        out = finish(proc, timeout, f"gradmesh (parts {parts})")
    elif kind == "compute":
        out = finish(in_ns(topo.namespaces[a], [sys.executable, str(WORKERS), "compute", *common], env, timeout),
                     timeout, "compute alone")
    else:
        torch_env = {**env, "GLOO_SOCKET_IFNAME": "gm0"}
        procs = [in_ns(topo.namespaces[h], [sys.executable, str(WORKERS), "torch", "--master", f"{a}:29500",
                                            "--rank", str(r), "--size", "2", *common], torch_env, timeout)
                 for r, h in enumerate(topo.hosts)]
        outs = [finish(p, timeout, f"DDP rank {r}") for r, p in enumerate(procs)]
        out = outs[0]
    note = next((ln[5:] for ln in out.splitlines() if ln.startswith("NOTE ")), "")
    return [float(t) for t in read(out, "STEPS").split()], note


def layers_ready(sizes=SIZES, width: int = 4) -> list[tuple[float, int]]:
    """(when its gradient is final, as a fraction of the compute; its gradient bytes at `width` bytes a value)
    of each layer, last first, counting multiply-adds: every forward GEMM, then per layer from the last its
    weight gradient and (but for the first layer) the delta below it."""
    macs = [i * o for i, o in zip(sizes[:-1], sizes[1:])]
    total = 2 * sum(macs) + sum(macs[1:])
    done, out = sum(macs), []
    for i in range(len(macs) - 1, -1, -1):
        done += macs[i]
        out.append((done / total, width * (macs[i] + sizes[i + 1])))
        done += macs[i] if i else 0
    return out


def model_step(compute: float, bw: float, overlap: bool, hosts: int = 2, width: int = 4) -> float:
    """docs/cost-model.md's step: T_compute + T_combine, less what the layer-by-layer combine hides: layer i
    starts on the link when it is final and the layer before it has left (a combine of 2 (N-1)/N of its bytes).
    `width`: bytes a value takes on the wire (4 for fp32, 2 for the bf16 wire; its conversions are not counted)."""
    share = 2 * (hosts - 1) / hosts * 8 / bw
    if not overlap:
        return compute + share * GRADIENT_BYTES * width / 4
    free = 0.0
    for ready, nbytes in layers_ready(width=width):
        free = max(free, ready * compute) + share * nbytes
    return max(free, compute)


def step_time(times: list[float], window: int) -> float:
    """The median over windows of `window` consecutive steps of their mean: a descheduled step or two (the
    machine is shared) moves one window, not the figure."""
    window = max(1, min(window, len(times)))
    means = [float(np.mean(times[i:i + window])) for i in range(0, len(times) - window + 1, window)]
    return float(np.median(means))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="none,10gbit,1gbit", help="tc tbf rates, comma-separated; none = unshaped")
    parser.add_argument("--steps", type=int, default=300, help="timed steps per run")
    parser.add_argument("--window", type=int, default=25, help="steps per window (median of windows)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of every configuration, alternating order")
    parser.add_argument("--stream-seconds", type=float, default=2.0, help="socket stream per direction")
    parser.add_argument("--only", default="", help="comma-separated run names to keep (default: all)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1gbit, 30 steps, short stream")
    args = parser.parse_args()
    if args.quick:
        args.rates, args.steps, args.window, args.stream_seconds, args.rounds = "1gbit", 30, 10, 0.5, 1
    # a SIGTERM unwinds like Ctrl-C, so the finally of namespace_hosts deletes the namespaces (and their processes)
    def stop(*_):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)   # a second SIGTERM (e.g. from `timeout`) must not cut the cleanup
        sys.exit(143)
    signal.signal(signal.SIGTERM, stop)
    if os.geteuid() != 0:
        raise SystemExit("bench/links.py needs root: it makes network namespaces and shapes links with tc")
    rates = [None if r == "none" else r for r in args.rates.split(",")]
    for rate in rates:
        if rate is not None:
            parse_rate(rate)
    runs = {n: v for n, v in RUNS.items() if not args.only or n in args.only.split(",") or v[0] == "compute"}
    env = base_env()
    load = os.getloadavg()
    header = (f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {cpu_model()}, "
              f"{os.cpu_count()} cores, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    print(f"bench/links.py: MLP {'-'.join(map(str, SIZES))}, global batch {BATCH}, 2 hosts x 1 rank x 1 thread, "
          f"SGD; {args.steps} steps per run, median of {args.window}-step windows, {args.rounds} round(s)\n"
          f"  {header}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="gm-links-") as tmp, \
            namespace_hosts(Path(tmp), 2, subnet=100 + os.getpid() % 100, net=78, prefix=f"gl{os.getpid() % 100000}") as topo:
        for rate in rates:
            shown = [shape(topo.namespaces[h], rate) for h in topo.hosts]
            a, b = topo.hosts
            bw = min(stream_rate(topo, env, a, b, args.stream_seconds), stream_rate(topo, env, b, a, args.stream_seconds))
            times: dict[str, list[float]] = {n: [] for n in runs}
            notes: dict[str, str] = {}
            for r in range(args.rounds):
                for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
                    kind, parts, extra = runs[name]
                    got, notes[name] = run(topo, env, kind, parts, args.steps, extra, WIRE.get(name, "fp32"),
                                           name in AUTO)
                    times[name].append(step_time(got, args.window))
            rows.append((rate or "unshaped", bw, shown[0].splitlines()[0], {n: float(np.median(t)) for n, t in times.items()}, notes))
            print(f"  {rate or 'unshaped'}: done (stream {bw / 1e9:.2f} Gbit/s)", flush=True)
    load_after = os.getloadavg()
    print("\n  link        stream Gbit/s  bound ms   run                  step ms  samples/s  x bound  x DDP sps  model ms")
    table = []
    for rate, bw, tc_line, steps, _notes in rows:
        comm = 2 * (2 - 1) / 2 * GRADIENT_BYTES * 8 / bw
        ddp = steps.get("PyTorch DDP")
        compute = {8: steps["compute exact8"], 0: steps["compute sums"]}
        for name, t in steps.items():
            bound = max(compute[RUNS[name][1]], comm)
            kind, parts, extra = RUNS[name]
            vs_ddp = f"{ddp / t:9.2f}" if ddp and kind != "compute" else f"{'-':>9}"
            overlap, width = extra.get("GRADMESH_OVERLAP") == "1", 2 if WIRE.get(name) == "bf16" else 4
            predicted = model_step(compute[parts], bw, parts > 0 and overlap, width=width)
            if name in AUTO:   # the faster of the two ways
                predicted = min(predicted, model_step(compute[parts], bw, True, width=width))
            model = f"{1e3 * predicted:8.1f}" if kind == "gradmesh" else f"{'-':>8}"
            print(f"  {rate:<11} {bw / 1e9:13.2f}  {1e3 * bound:8.1f}   {name:<20} {1e3 * t:7.1f}  {BATCH / t:9.0f}"
                  f"  {(f'{t / bound:7.2f}' if kind != 'compute' else '      -')}  {vs_ddp}  {model}")
            table.append((rate, bw / 1e9, 1e3 * bound, name, 1e3 * t, BATCH / t, "-" if kind == "compute" else
                          f"{t / bound:.2f}", vs_ddp.strip(), model.strip()))
    print(f"\n  bound = max(compute alone, 2 (N-1)/N x {GRADIENT_BYTES / 1e6:.2f} MB / stream rate), N = 2, for every "
          f"row (the bf16 rows too: they move half those bytes, and leave the exact path); the DDP row's bound uses "
          f"the one-GEMM compute; load average after {load_after[0]:.2f}")
    for rate, _bw, tc_line, _steps, notes in rows:
        print(f"  {rate}: tc: {tc_line}")
    for name, note in rows[-1][4].items():
        if note:
            print(f"  {name}: {note}")
    print("\n| link (stream) | run | step ms | samples/s | × bound | × DDP samples/s | model ms |\n|---|---|---|---|---|---|---|")
    for line in table:   # the same rows, for docs/benchmarks.md
        print("| {} ({:.2f} Gbit/s; bound {:.1f} ms) | {} | {:.1f} | {:.0f} | {} | {} | {} |".format(*line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
