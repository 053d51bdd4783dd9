"""The processes bench/links.py starts inside its namespace hosts; each prints one line the parent reads.

    python bench/links_workers.py gradmesh --parts 8 --steps 300      # under mpirun, one rank per host
    python bench/links_workers.py gradmesh --parts 8 --wire bf16      # ... the combine's sums as bfloat16
    python bench/links_workers.py compute --parts 8 --steps 300       # one process: a rank's half, no combine
    python bench/links_workers.py torch --master ADDR:PORT --rank R --size 2 --steps 300   # DDP over gloo
    python bench/links_workers.py sink --bind ADDR:PORT               # a plain TCP stream, measured here
    python bench/links_workers.py source --to ADDR:PORT --seconds 2

Every training worker runs one BLAS (or torch) thread, warms up for WARMUP steps, then prints
"STEPS t1 t2 ..." (seconds per step, rank 0 only). gradmesh's step is bench/scaling_setup.py's Trainer:
train.py's own step (worker/stepexact.py with `--parts`, else worker/stepsync.py), then SGD. The parts do
not move between ranks (balance off): the split is the even one the bound assumes.
"""
from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from scaling_setup import SIZES, Trainer  # puts the repository on sys.path

BATCH, LR, WARMUP = 256, 0.01, 10


def timed(step, steps: int) -> list[float]:
    for _ in range(WARMUP):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def report(times: list[float], note: str = "") -> None:
    if note:
        print(f"NOTE {note}", flush=True)
    print("STEPS " + " ".join(f"{t:.6f}" for t in times), flush=True)


def gradmesh(args) -> int:
    """2 ranks (one per namespace host): the exact step (--parts M) or per-rank sums (--parts 0)."""
    from threadpoolctl import threadpool_limits

    from worker.comm import init_comm
    comm = init_comm(hang_timeout_s=300.0)
    with threadpool_limits(limits=1):
        trainer = Trainer(comm, BATCH // comm.size, seed=comm.rank, overlap=False, parts=args.parts,
                          balance=False, wire=args.wire, choose_overlap=args.overlap == "auto")
        times = timed(trainer.step, args.steps)
    if comm.rank == 0:
        news = trainer.sync.news() if hasattr(trainer.sync, "news") else ""   # overlap auto: what it chose
        report(times, (getattr(trainer.sync, "note", "") or comm.reduction_note) + (f"; {news}" if news else ""))
    return 0


def compute(args) -> int:
    """One rank's share of a 2-rank step with no combine: half the batch (and half the parts) alone."""
    from threadpoolctl import threadpool_limits

    from worker.comm import SerialComm
    with threadpool_limits(limits=1):
        trainer = Trainer(SerialComm(), BATCH // 2, seed=0, overlap=False, parts=args.parts // 2, balance=False)
        report(timed(trainer.step, args.steps))
    return 0


def torch_ddp(args) -> int:
    """PyTorch DDP over gloo on the namespaces' devices: the same MLP, per-rank batch, data shape and SGD."""
    import torch
    import torch.distributed as dist

    from torch_ddp import ddp_step

    torch.set_num_threads(1)
    host, port = args.master.rsplit(":", 1)
    dist.init_process_group("gloo", init_method=f"tcp://{host}:{port}", rank=args.rank, world_size=args.size)
    step = ddp_step(SIZES, rows=BATCH // args.size, lr=LR, rank=args.rank)
    times = timed(step, args.steps)
    if args.rank == 0:
        report(times, f"torch {torch.__version__}, gloo, DDP bucket_cap_mb 25 (default)")
    dist.destroy_process_group()
    return 0


def sink(args) -> int:
    """Accept one stream, read it to its end; print the bytes and the seconds from first byte to last."""
    host, port = args.bind.rsplit(":", 1)
    with socket.create_server((host, int(port))) as server:
        print("READY", flush=True)
        conn, _ = server.accept()
        with conn:
            buf = bytearray(1 << 20)
            got = conn.recv_into(buf)
            start = time.perf_counter()
            total = 0
            while True:
                n = conn.recv_into(buf)
                if not n:
                    break
                total += n
            took = time.perf_counter() - start
    print(f"STREAM {total} {took:.6f} (first {got} bytes not counted)", flush=True)
    return 0


def source(args) -> int:
    host, port = args.to.rsplit(":", 1)
    chunk = bytes(1 << 20)
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            conn.sendall(chunk)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["gradmesh", "compute", "torch", "sink", "source"])
    parser.add_argument("--parts", type=int, default=8, help="micro-batches of the global batch (0: per-rank sums)")
    parser.add_argument("--steps", type=int, default=300, help="timed steps after the warm-up")
    parser.add_argument("--wire", choices=["fp32", "bf16"], default="fp32", help="gradmesh: the spec's train.wire")
    parser.add_argument("--overlap", choices=["env", "auto"], default="env",
                        help='gradmesh: "auto" is the spec\'s train.overlap = "auto" (env: GRADMESH_OVERLAP decides)')
    parser.add_argument("--master", default="", help="torch: ADDR:PORT of rank 0's rendezvous")
    parser.add_argument("--rank", type=int, default=0)
    parser.add_argument("--size", type=int, default=2)
    parser.add_argument("--bind", default="", help="sink: ADDR:PORT to listen on")
    parser.add_argument("--to", default="", help="source: ADDR:PORT to stream to")
    parser.add_argument("--seconds", type=float, default=2.0, help="source: how long to stream")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    return {"gradmesh": gradmesh, "compute": compute, "torch": torch_ddp, "sink": sink, "source": source}[args.what](args)


if __name__ == "__main__":
    sys.exit(main())
