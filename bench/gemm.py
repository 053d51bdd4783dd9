"""The step's matrix products alone: numpy's BLAS (OpenBLAS, the kernel gradmesh runs) against PyTorch's (MKL).

    pip install -e '.[bench]'
    python bench/gemm.py                     # 784-1024-1024-10 at batch 256, one thread
    python bench/gemm.py --layers 3072 2048 2048 2048 10 --batch 512

At one thread both frameworks spend 90%+ of a forward+backward step in these products (bench/step.py), so
their ratio bounds what gradmesh can reach against PyTorch without doing less arithmetic. For each product
of the step (forward x@W, weight gradient a^T@delta, input gradient delta@W^T except for the first layer),
in the memory layout the step uses, it times numpy.matmul and torch.mm into preallocated outputs,
interleaved round by round, and prints the median of each and their ratio.
"""
from __future__ import annotations

import argparse
import socket
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from worker import blas  # noqa: E402  (no numpy yet: the kernel is chosen before numpy loads, as in a rank)


def products(sizes, batch):
    """(name, (m, k), (k, n), layout) of one step, layout NN / TN (a^T@delta) / NT (delta@W^T)."""
    out = []
    for i, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        out.append((f"fwd {i}", (batch, fan_in), (fan_in, fan_out), "NN"))
        out.append((f"dW {i}", (fan_in, batch), (batch, fan_out), "TN"))
        if i > 0:
            out.append((f"dX {i}", (batch, fan_out), (fan_out, fan_in), "NT"))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[784, 1024, 1024, 10])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    choice = blas.choose_kernel("auto", args.layers, args.batch, 1, hostname=socket.gethostname())

    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)

    def operands(shape_a, shape_b, layout):
        # the step's layouts: a^T is a transposed view of the activations, W^T a transposed view of W
        a = rng.standard_normal(shape_a[::-1] if layout == "TN" else shape_a, dtype=np.float32)
        b = rng.standard_normal(shape_b[::-1] if layout == "NT" else shape_b, dtype=np.float32)
        a = a.T if layout == "TN" else a
        b = b.T if layout == "NT" else b
        return a, b

    from machine import machine_line
    print(machine_line())
    print(f"GEMMs of one step, MLP {'-'.join(map(str, args.layers))}, batch {args.batch}, 1 thread, median of "
          f"{args.rounds} rounds; numpy {np.__version__} ({blas.describe_running(choice) or 'not OpenBLAS'}), "
          f"torch {torch.__version__}")
    print(f"  {'product':<8} {'shape':<28} {'numpy ms':>9} {'torch ms':>9} {'ratio':>6}")
    totals = [0.0, 0.0]
    with threadpool_limits(1):
        for name, shape_a, shape_b, layout in products(args.layers, args.batch):
            a, b = operands(shape_a, shape_b, layout)
            c = np.empty((shape_a[0], shape_b[1]), np.float32)
            ta, tb = torch.from_numpy(a.base if layout == "TN" else a), torch.from_numpy(b.base if layout == "NT" else b)
            ta, tb = (ta.t() if layout == "TN" else ta), (tb.t() if layout == "NT" else tb)
            tc = torch.empty(shape_a[0], shape_b[1])
            estimate_s = 2 * shape_a[0] * shape_a[1] * shape_b[1] / 50e9   # at ~50 GFLOP/s
            inner = max(1, min(200, int(0.02 / estimate_s)))              # ~20 ms per timed sample
            samples = {"numpy": [], "torch": []}
            for _ in range(args.rounds):
                for side, fn in (("numpy", lambda: np.matmul(a, b, out=c)), ("torch", lambda: torch.mm(ta, tb, out=tc))):
                    start = time.perf_counter()
                    for _ in range(inner):
                        fn()
                    samples[side].append((time.perf_counter() - start) / inner)
            t_np, t_torch = statistics.median(samples["numpy"]), statistics.median(samples["torch"])
            totals[0] += t_np
            totals[1] += t_torch
            shape = f"{shape_a[0]}x{shape_a[1]} @ {shape_b[0]}x{shape_b[1]} {layout}"
            print(f"  {name:<8} {shape:<28} {1e3 * t_np:9.3f} {1e3 * t_torch:9.3f} {t_np / t_torch:6.2f}")
    print(f"  {'all':<8} {'':<28} {1e3 * totals[0]:9.3f} {1e3 * totals[1]:9.3f} {totals[0] / totals[1]:6.2f}"
          "   (numpy / torch: above 1.0, PyTorch's BLAS is faster at these products)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
