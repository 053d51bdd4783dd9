"""Step time of gradmesh's numpy MLP against PyTorch CPU on the same MLPs, measured side by side.

    pip install -e '.[bench]'            # PyTorch 2.13 CPU, the reference
    python bench/step.py                 # all shapes, 1 and 2 BLAS threads
    python bench/step.py --quick         # fewer repetitions

For each MLP and thread count it times, interleaving the two frameworks round by round and taking the
median round:
  fwd+bwd   forward, loss, backward (gradients of every weight)
  step      fwd+bwd plus an Adam update
and prints gradmesh's time over PyTorch's (below 1.0 means gradmesh is faster), gradmesh's achieved
GFLOP/s, and that over raw numpy GEMM GFLOP/s for exactly the matrix products a step performs; and
`exact`: the fwd+bwd of the exact step (worker/stepexact.py, one process, EXACT_PARTS micro-batches computed
alone and added along the tree) over the plain fwd+bwd on the whole batch (target <= 1.05), and `unfused`, the
same without the GEMM adding a right leaf into its sibling (worker/sgemm.py). At 2 threads the
exact step keeps 2 for BLAS only where a micro-batch's bits at 2 threads equal 1 thread's; else it pins 1 and
runs its parts side by side on the 2 threads, each part's GEMM at one (worker/stepexact.py).
"""
from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker import blas  # noqa: E402  (no numpy: the kernel is chosen before numpy loads, as in a rank)

# gradmesh runs with the kernel a job on this host would get (worker/blas.py: measured once per host on
# the 784-1024-1024-10 step at one thread, then cached); GRADMESH_BLAS_KERNEL=default|NAME to compare.
KERNEL_CHOICE = blas.choose_kernel("auto", [784, 1024, 1024, 10], 256, 1, hostname=socket.gethostname())

import numpy as np  # noqa: E402
from threadpoolctl import ThreadpoolController, threadpool_limits  # noqa: E402

from worker.mlp import MLP  # noqa: E402
from worker.optim import make_optimizer  # noqa: E402
from worker.comm import SerialComm  # noqa: E402
from worker.spec import OptimSpec  # noqa: E402
from worker import stepexact  # noqa: E402
from worker.stepexact import ExactStep  # noqa: E402

SHAPES = [([784, 256, 256, 10], 128), ([784, 1024, 1024, 10], 256), ([3072, 2048, 2048, 2048, 10], 512)]
EXACT_PARTS = 8   # the spec's default train.micro_batches


BLAS = ThreadpoolController()


def step_flops(sizes, batch):
    """Multiply-adds ×2 of forward (x@W), weight gradients (a^T@delta) and input gradients (delta@W^T, not for layer 0)."""
    flops = 0
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        flops += 2 * batch * fan_in * fan_out * (3 if i > 0 else 2)
    return flops


def timed_median(fn, rounds, inner):
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        samples.append((time.perf_counter() - start) / inner)
    return statistics.median(samples)


class Gradmesh:
    def __init__(self, sizes, batch):
        rng = np.random.default_rng(0)
        self.model = MLP(sizes, seed=0)
        self.opt = make_optimizer(OptimSpec(name="adam", lr=1e-4), self.model.num_params, 10**9)
        self.x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
        self.y = rng.integers(0, sizes[-1], batch)

        self.exact_model = MLP(sizes, seed=0)
        self.exact = ExactStep(self.exact_model, SerialComm(), EXACT_PARTS)
        self.unfused_model = MLP(sizes, seed=0)   # the same, each weight gradient written and then added
        self.unfused = ExactStep(self.unfused_model, SerialComm(), EXACT_PARTS, fuse=False)
        self.index = np.arange(batch)

    def fwd_bwd(self):
        self.model.loss_and_grad(self.x, self.y)

    def exact_fwd_bwd(self):
        rows = self.exact.rows(self.index)
        self.exact.reduce(self.exact.backward(self.x[rows], self.y[rows]))

    def unfused_fwd_bwd(self):
        rows = self.unfused.rows(self.index)
        self.unfused.reduce(self.unfused.backward(self.x[rows], self.y[rows]))

    def step(self):
        _, grad = self.model.loss_and_grad(self.x, self.y)
        self.opt.step(self.model.params, grad)


class RawGemm:
    """Exactly the GEMMs of one step, into preallocated outputs: the ceiling numpy can reach."""

    def __init__(self, sizes, batch):
        rng = np.random.default_rng(0)
        self.ops = []
        a = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = rng.standard_normal((fan_in, fan_out), dtype=np.float32)
            z = np.empty((batch, fan_out), np.float32)
            gw = np.empty_like(w)
            self.ops.append((np.matmul, a, w, z))
            self.ops.append((np.matmul, a.T, z, gw))
            if i > 0:
                self.ops.append((np.matmul, z, w.T, np.empty((batch, fan_in), np.float32)))
            a = z

    def run(self):
        for op, left, right, out in self.ops:
            op(left, right, out=out)


class Torch:
    def __init__(self, torch, sizes, batch):
        self.torch = torch
        torch.manual_seed(0)
        layers = []
        for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(torch.nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(torch.nn.ReLU())
        self.model = torch.nn.Sequential(*layers)
        self.loss = torch.nn.CrossEntropyLoss()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=1e-4)
        self.x = torch.randn(batch, sizes[0])
        self.y = torch.randint(0, sizes[-1], (batch,))

    def fwd_bwd(self):
        for p in self.model.parameters():
            p.grad = None
        self.loss(self.model(self.x), self.y).backward()

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        self.loss(self.model(self.x), self.y).backward()
        self.opt.step()


def measure(sizes, batch, threads, rounds, torch):
    flops = step_flops(sizes, batch)
    inner = max(1, int(2e9 / flops))  # about 2 GFLOP of work per timed round
    # each row stands for a process of its own: forget an earlier row's one-thread pin and the threads it keeps
    # for parts side by side (worker/stepexact.py), or a 1-thread row would run the exact step on 2
    stepexact._pinned, stepexact._threads_before_pin = None, 1
    ours, raw = Gradmesh(sizes, batch), RawGemm(sizes, batch)
    theirs = Torch(torch, sizes, batch) if torch else None
    with threadpool_limits(limits=threads, user_api="blas"):
        if torch:
            torch.set_num_threads(threads)
        for fn in (ours.fwd_bwd, ours.step, raw.run, ours.exact_fwd_bwd, ours.unfused_fwd_bwd) + ((theirs.fwd_bwd, theirs.step) if torch else ()):
            fn()  # warm-up: buffers, caches, lazy init
        result = {"ours_fb": [], "ours_step": [], "raw": [], "torch_fb": [], "torch_step": [], "exact_fb": [],
                  "unfused_fb": []}
        plan = [("ours_fb", ours.fwd_bwd), ("raw", raw.run), ("ours_step", ours.step), ("exact_fb", ours.exact_fwd_bwd),
                ("unfused_fb", ours.unfused_fwd_bwd)]
        if torch:
            plan += [("torch_fb", theirs.fwd_bwd), ("torch_step", theirs.step)]
        # The exact step pins BLAS to 1 thread process-wide where 2 threads change a micro-batch's bits (its
        # warm-up above did): every measurement sets the thread count it stands for, so the plain and PyTorch
        # columns run at `threads` and the exact ones at what the exact step itself runs at.
        pinned = bool(ours.exact.pinned_note)
        blas_threads = {key: 1 if pinned and key in ("exact_fb", "unfused_fb") else threads for key, _ in plan}
        for _ in range(rounds):  # interleaved, so drift and noise hit both sides alike
            for key, fn in plan:
                # BLAS and OpenMP worker threads spin for a while after their last task; a pause keeps one
                # framework's spinning threads from stealing the core the other is being timed on
                time.sleep(0.05 if threads > 1 else 0.0)
                BLAS.limit(limits=blas_threads[key], user_api="blas")
                result[key].append(timed_median(fn, 1, inner))
    med = {k: statistics.median(v) if v else float("nan") for k, v in result.items()}
    return flops, med


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 15")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    opts = parser.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
        print("PyTorch is not installed (pip install -e '.[bench]'): only the GEMM ratio is measured")
    rounds = 5 if opts.quick else 15
    from machine import machine_line
    print(machine_line())
    print(f"numpy {np.__version__}" + (f", torch {torch.__version__}" if torch else "") + f", {rounds} rounds, median; "
          f"1-min load average {os.getloadavg()[0]:.2f}")
    print(f"gradmesh: {blas.describe_running(KERNEL_CHOICE) or 'BLAS is not OpenBLAS: no kernel choice'}")
    header = (f"{'MLP':<26} {'batch':>5} {'thr':>3} | {'fwd+bwd ms':>10} {'torch ms':>9} {'ratio':>6} | "
              f"{'step ms':>8} {'torch ms':>9} {'ratio':>6} | {'GFLOP/s':>7} {'of GEMM':>7} | {'exact':>6} {'unfused':>7}")
    print(header)
    print("-" * len(header))
    for sizes, batch in SHAPES:
        for threads in opts.threads:
            flops, m = measure(sizes, batch, threads, rounds, torch)
            name = "-".join(map(str, sizes))
            gflops = flops / m["ours_fb"] / 1e9
            print(f"{name:<26} {batch:>5} {threads:>3} | {m['ours_fb'] * 1e3:>10.3f} {m['torch_fb'] * 1e3:>9.3f} "
                  f"{m['ours_fb'] / m['torch_fb']:>6.2f} | {m['ours_step'] * 1e3:>8.3f} {m['torch_step'] * 1e3:>9.3f} "
                  f"{m['ours_step'] / m['torch_step']:>6.2f} | {gflops:>7.1f} {m['raw'] / m['ours_fb']:>6.0%} | "
                  f"{m['exact_fb'] / m['ours_fb']:>6.2f} {m['unfused_fb'] / m['ours_fb']:>7.2f}", flush=True)
    print("ratio = gradmesh time / PyTorch time (target <= 0.90); of GEMM = raw GEMM time / gradmesh fwd+bwd time (target >= 90%)")
    print(f"exact = the exact step's fwd+bwd ({EXACT_PARTS} micro-batches) / the plain fwd+bwd (target <= 1.05); "
          "unfused = the same with each weight gradient written, then added (GRADMESH_EXACT_FUSE=0)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
