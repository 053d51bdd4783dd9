"""PyTorch's side of the distributed benchmarks: gradmesh's MLP in PyTorch, wrapped in DDP over gloo.

    dist.init_process_group("gloo", ...)                        # the caller's rendezvous
    step = ddp_step(SIZES, rows=BATCH // size, lr=0.01, rank=rank)
    step()      # one SGD step on this rank's fixed batch: forward, backward (DDP's bucketed allreduce), update

One torch thread per rank, as gradmesh's ranks get one BLAS thread; the same seed for every rank's weights
(DDP broadcasts rank 0's anyway) and a batch of its own per rank. Used by bench/scaling.py --torch and
bench/links.py, so both measure the same DDP step.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def ddp_step(sizes: Sequence[int], *, rows: int, lr: float, rank: int) -> Callable[[], None]:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [nn.Linear(a, b)] + ([nn.ReLU()] if i < len(sizes) - 2 else [])
    model = nn.parallel.DistributedDataParallel(nn.Sequential(*layers))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    rng = np.random.default_rng(rank)
    x = torch.from_numpy(rng.standard_normal((rows, sizes[0])).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, sizes[-1], rows))
    loss_fn = nn.CrossEntropyLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()

    return step
