"""The exact step: the same bits at any rank count, from micro-batches summed in a fixed order.

    sync = ExactStep(model, comm, parts=spec.train.micro_batches)   # model.grad is now the rank's slot 0
    rows = sync.rows(batch)                      # this rank's rows of the global batch (its parts)
    s = sync.backward(x[rows], y[rows])          # each part's gradient, added up along the tree (worker/microbatch.py)
    total = sync.reduce(s, stop=False, checkpoint=False)   # model.grad is the MEAN gradient, same bits as 1 process
    optimizer.step(model.params, model.grad)

worker/stepsync.py's step sums per rank, so its bits depend on the rank count; this one computes each
micro-batch's gradient on its own (the same GEMM shapes wherever it runs) and adds them along one
binary tree over micro-batch indices (worker/microbatch.py): the rank's own parts up to its cover of
whole tree nodes, then every rank's nodes through the communicator's `exact_reducer` (host-shared memory
on one host, worker/shmexact.py; MPI between hosts, worker/comm_exact.py, or worker/comm_overlap.py, which
starts each layer's combine during the backward pass while worker/mlp_bylayer.py computes the parts layer by
layer, with the same additions in the same order). The scalars (each part's
loss, the stop flags, the seconds each rank computed) travel beside the gradient, gathered rather than
summed, so they are exact too.

Same shapes are not enough on their own: OpenBLAS's bits for a row depend on how many rows the GEMM has
and how many threads run it (measured on its Haswell kernel: a row matches only within whole 24-row
tiles, and 1 and 2 threads differ). So a part is always computed alone, at a thread count checked once
per part shape (`check_threads`): the part at this rank's threads against the part at one thread, and
one thread is pinned when they differ. Every rank therefore computes what one thread computes. The threads
a pin takes from BLAS are not lost: they run a rank's parts side by side, each part's GEMM still alone at one
thread, on the large layers (worker/mlp_bylayer.py): the forward and delta products of groups of parts, and
the weight gradients of runs of parts, each run adding its parts up to its own subtrees in slots no other run
touches, the runs' subtrees then added to the rank's cover in the tree's order (worker/microbatch.py, LeafPlan
`runs` and `joins`): the same additions of the same values, so the same bits at any thread count.

Speed: a rank's parts run layer by layer (worker/mlp_bylayer.py), as one numpy stack when they are of equal
size: one matmul call per layer for all parts' forward and delta products, each slice still its own BLAS
GEMM, so the bits are those of the parts computed one by one (GRADMESH_EXACT_STACK=0 computes them so, for
comparison: measured 2026-12-07 on an AMD EPYC VM, the stack cuts the exact fwd+bwd from 5.3x to 3.1x the
plain one on 64-128-128-10 at batch 32, and from 1.76x to 1.48x on 784-1024-1024-10 at batch 256); or as one
GEMM over all the rank's rows, for a part size where worker/sgemm.py's probe finds that gives the same bits.
A right leaf whose left sibling is this rank's previous part (the tree's first level: 4 of 8 parts) has its
weight gradient added into the sibling's slot by the GEMM itself (sgemm with beta = 1, worker/sgemm.py), where
that is checked, once per part size and layer, to give the bits of the GEMM and then the add; the add pass,
the zeroing of the right leaf's buffer and its write go (GRADMESH_EXACT_FUSE=0 writes and adds, for comparison).
On small layers (under the fused GEMM's size) of equal parts, every part's weight gradient comes from one matmul
over the stack and the plan's additions run on its rows a tree level at a time (worker/microbatch.py
`stack_waves`), the cover then copied to its slots: the same GEMMs and additions, a few numpy calls a layer
instead of a few per part (GRADMESH_EXACT_TREE=0 goes part by part, for comparison).
And every `REBALANCE_EVERY` steps the ranks' measured seconds move at most `MAX_MOVE` parts between
neighbours (worker/microbatch.py `weighted_ranges`), so a rank that shares its core with another
process gets fewer parts; the bits do not change, whoever computes which part.

Two choices of the spec's [train] table change how the combine between hosts runs. `wire = "bf16"` sends it
as bfloat16 (worker/comm_exact.py): half the bytes, but the bits then depend on where the parts meet, so on
the rank count, and the parts are not rebalanced. `overlap = "auto"` times the combine layer by layer and in
one piece on the job and keeps the faster (worker/overlapchoice.py; each rank's previous step time rides in
its tail); both ways give the same bits, on either wire.
"""
from __future__ import annotations

import os
import time

import numpy as np

from worker.microbatch import LeafPlan, even_ranges, frontier, most_slots, part_edges, stack_waves, weighted_ranges
from worker.mlp import MLP
from worker.mlp_bylayer import parts_by_layer
from worker.overlapchoice import OverlapChoice
from worker.spec import BF16_WIRE_NOTE
from worker.stepsync import Reduced

STOP, STOP_CHECKPOINT, SECONDS, STEP_SECONDS = range(4)   # each rank's tail: these, then the loss of each part
TAIL = 4   # SECONDS: this step's backward pass; STEP_SECONDS: the previous step, backward start to combine end
REBALANCE_EVERY = 5      # steps between decisions on who computes which part
MAX_MOVE = 2             # parts a boundary between two ranks moves at most per decision


class PartsResult(list):
    """The summed loss of each of this rank's parts (a list of floats), in part order."""


class ExactStep:
    """The buffers, plan and reduction of the exact step. See the module docstring."""

    def __init__(self, model: MLP, comm, parts: int, balance: bool = True, fuse: bool | None = None,
                 wire: str = "fp32", choose_overlap: bool = False):
        if parts < 1:
            raise ValueError(f"parts must be at least 1, got {parts}")
        # wire "bf16" (spec train.wire): what crosses hosts is bfloat16, rounded per frontier node, so the bits
        # depend on which ranks hold which parts. Rebalancing would make that the machine's load: the split stays
        # the even one, a function of the rank count, and a run repeats its bits at the same rank count.
        balance = balance and wire != "bf16"
        self.model, self.comm, self.parts, self.balance, self.wire = model, comm, parts, balance, wire
        from worker.threads import blas_threads_in_use
        # where BLAS gets pinned to 1 thread, the threads it had compute runs of parts side by side, each run in
        # slots of its own (worker/microbatch.py LeafPlan runs): room for as many runs as this rank has threads
        # (an earlier step of this process, before an elastic resize, may have pinned them already)
        threads = max(blas_threads_in_use() or 1, _threads_before_pin if _pinned is not None else 1)
        self.reducer = comm.exact_reducer(model.num_params, most_slots(parts, threads), TAIL + parts, wire,
                                          "auto" if choose_overlap else "env")
        self.slots = self.reducer.slots
        model.use_grad_buffer(self.slots[0])          # the total lands in slot 0 of every rank
        self._views = [model.layer_views(slot) for slot in self.slots]
        self._layer_slices = model.layer_slices()
        self.ranges = even_ranges(parts, comm.size)
        self._window = np.zeros(comm.size)         # seconds each rank computed since the last decision
        self._steps_in_window = 0
        self._set_plan()
        self._edges: list[int] = [0]
        self._count = 0
        self._busy = 0.0
        self._thread_checked: dict[int, bool] = {}
        self.pinned_note = ""
        self._overlaps = hasattr(self.reducer, "start_layer")   # layer by layer (worker/comm_overlap.py)
        # [train] overlap = "auto": that or one piece, step by step, until the faster is known (same bits)
        self.choice = OverlapChoice() if choose_overlap and self._overlaps else None
        self._index = 0                 # steps reduced by this process
        self._step_started = 0.0
        self._step_seconds = 0.0        # the last step's, sent with the next
        # equal parts run as one numpy stack, layer by layer (worker/mlp_bylayer.py): the same bits, fewer calls
        self._stacks = os.environ.get("GRADMESH_EXACT_STACK", "1") != "0"
        self._part_buffers: dict = {}
        self._fuses = os.environ.get("GRADMESH_EXACT_FUSE", "1") != "0" if fuse is None else fuse
        # small layers' weight gradients as one stack, added up wave by wave (the same bits, fewer calls)
        self._tree = os.environ.get("GRADMESH_EXACT_TREE", "1") != "0"
        self._fuse_checked: dict[int, bool] = {}   # part rows -> every layer's fused add is exact
        self._pool = None   # once BLAS is pinned to 1 thread: the threads it had, running groups of parts
        self._fusion_of: tuple = (None, None)   # ((plan, part edges, runs), what _fusion worked out for them)

    # ---- what train.py reads ------------------------------------------------------------------------
    @property
    def note(self) -> str:
        how = self.reducer.note
        wire = f"{BF16_WIRE_NOTE} (parts not rebalanced); " if self.wire == "bf16" else ""
        choice = f"; {self.choice.note}" if self.choice is not None else ""
        return (f"{wire}exact step: {self.parts} micro-batches summed in a fixed tree over their indices"
                f"{'; ' + how if how else ''}{choice}{'; ' + self.pinned_note if self.pinned_note else ''}")

    def news(self) -> str:
        """What changed since the start-up note, once ("" when nothing did): the overlap's choice."""
        return self.choice.news() if self.choice is not None else ""

    def rows(self, batch: np.ndarray) -> np.ndarray:
        """This rank's rows of the global batch `batch` (its parts, in order); remembered for backward."""
        edges = part_edges(len(batch), self.parts)
        a, b = self.plan.a, self.plan.b
        self._edges = [e - edges[a] for e in edges[a:b + 1]]
        self._count = len(batch)
        return batch[edges[a]:edges[b]]

    # ---- the two halves of the step -----------------------------------------------------------------
    def backward(self, x, y) -> PartsResult:
        """Each of this rank's parts alone (forward, backward), its gradient added up along the plan."""
        started = self._step_started = time.perf_counter()
        if self.choice is not None:
            self._overlaps = self.choice.layered(self._index)
        plan, edges, model = self.plan, self._edges, self.model
        x = np.asarray(x)
        if self._overlaps or self._stacks:
            losses = self._backward_by_layer(x, y)
        else:
            losses = PartsResult()
            for k in range(plan.b - plan.a):
                lo, hi = edges[k], edges[k + 1]
                self._check_threads(hi - lo, x[lo:hi], y[lo:hi])
                views = self._views[plan.slot_of[k]]
                losses += model.sum_loss_and_grad_parts(x[lo:hi], y[lo:hi], (0, hi - lo),
                                                        lambda i, j: views[i], lambda i, j: None)
                for d, s in plan.adds[k]:
                    self.slots[d] += self.slots[s]
        self._busy = time.perf_counter() - started
        return losses

    def _backward_by_layer(self, x, y) -> PartsResult:
        """The same parts, GEMMs and additions, layer by layer across the parts (worker/mlp_bylayer.py): each
        layer's slice of the rank's cover is final, and its combine starts, while the layers below are still
        computed. The additions of the plan run per part as before, on the layer's slice: the same bits."""
        plan, edges, slots, layer = self.plan, self._edges, self.slots, self._layer_slices
        parts = range(plan.b - plan.a)
        for k in parts:
            self._check_threads(edges[k + 1] - edges[k], x[edges[k]:edges[k + 1]], y[edges[k]:edges[k + 1]])
        if self._overlaps:
            self.reducer.begin(self._frontier, self.parts)

        pool = self._parts_pool()
        plan, fused, target, adds, waves, cover_rows = self._fusion(edges, pool[1] + 1 if pool else 1)

        def after_part(i: int, k: int) -> None:
            for d, s in adds[k]:
                slots[d][layer[i]] += slots[s][layer[i]]

        stacked: set[int] = set()           # layers whose parts' gradients came as one stack (tree below)

        def tree(i: int, stack: np.ndarray) -> None:
            """The plan's additions on the rows of the stack, wave by wave, then the cover into its slots."""
            for dst, src in waves:
                stack[dst] += stack[src]
            for slot, row in zip(plan.cover_slots, cover_rows):
                slots[slot][layer[i]] = stack[row]
            stacked.add(i)

        def on_layer(i: int) -> None:
            if i not in stacked:
                for d, s in plan.joins:         # the runs' covers, added up to the rank's cover
                    slots[d][layer[i]] += slots[s][layer[i]]
            if self._overlaps:
                self.reducer.start_layer(layer[i])
        return PartsResult(parts_by_layer(
            self.model, self._part_buffers, [x[edges[k]:edges[k + 1]] for k in parts],
            [y[edges[k]:edges[k + 1]] for k in parts], lambda i, k: self._views[target[k]][i],
            after_part, on_layer, fused.__getitem__, pool, [(lo - plan.a, hi - plan.a) for lo, hi in plan.runs],
            tree if self._tree else None))

    def _fusion(self, edges, runs: int) -> tuple:
        """The plan in `runs` runs (fewer if the slots do not hold them), and per part: is its weight gradient
        added by its GEMM, which slot it goes to, and the plan's adds left after that; and the plan's additions
        as waves over a stack of the parts' gradients (worker/microbatch.py stack_waves). A function of the
        range, the part sizes and the runs, so worked out once per (plan, sizes, runs)."""
        key = (self.plan, tuple(edges), runs)
        if self._fusion_of[0] != key:
            plan = LeafPlan.make(self.plan.a, self.plan.b, self.parts, runs)
            while plan.slots > len(self.slots):
                runs -= 1
                plan = LeafPlan.make(self.plan.a, self.plan.b, self.parts, runs)
            parts = range(plan.b - plan.a)
            fused = [self._fusable(plan, k, edges) for k in parts]
            # a fused part's gradient goes into the slot of its first add (its left sibling's): the GEMM adds it
            target = [plan.adds[k][0][0] if fused[k] else plan.slot_of[k] for k in parts]
            adds = [plan.adds[k][1:] if fused[k] else plan.adds[k] for k in parts]
            waves, cover_rows = stack_waves(plan)
            self._fusion_of = (key, (plan, fused, target, adds, [(_rows(d), _rows(s)) for d, s in waves], cover_rows))
        return self._fusion_of[1]

    def _parts_pool(self):
        """Where BLAS was pinned to 1 thread, the threads it had, as a pool that runs groups of parts' products
        and runs of parts' weight gradients side by side (each part's GEMM still alone, at one thread: the same bits)."""
        if self._pool is None and _pinned is not None and _threads_before_pin > 1:
            from concurrent.futures import ThreadPoolExecutor
            spare = _threads_before_pin - 1
            self._pool = (ThreadPoolExecutor(max_workers=spare, thread_name_prefix="gradmesh-parts"), spare)
        return self._pool

    def reduce(self, losses: PartsResult, *, stop: bool = False, checkpoint: bool = False) -> Reduced:
        """Combine every rank's nodes to the total (slot 0, every rank) and gather the scalars."""
        tail = self.reducer.tail
        tail[:] = 0.0
        tail[STOP] = 1.0 if stop else 0.0
        tail[STOP_CHECKPOINT] = 1.0 if checkpoint else 0.0
        tail[SECONDS] = self._busy
        tail[STEP_SECONDS] = self._step_seconds
        tail[TAIL + self.plan.a:TAIL + self.plan.b] = losses
        tails = self.reducer.finish() if self._overlaps else self.reducer.combine(self._frontier, self.parts)
        self._step_seconds = time.perf_counter() - self._step_started
        if self.choice is not None and self._index > 0:     # the previous step's time, the slowest rank's
            self.choice.record(self._index - 1, float(tails[:, STEP_SECONDS].max()))
        self._index += 1
        loss_sum = 0.0
        for rank, (a, b) in enumerate(self.ranges):   # part order: the same float additions on every rank
            for j in range(a, b):
                loss_sum += float(tails[rank, TAIL + j])
        count = float(self._count)
        self.model.grad *= np.float32(1.0 / count) if count else np.float32(0.0)
        self._rebalance(tails[:, SECONDS])
        return Reduced(loss_sum, count, bool(tails[:, STOP].any()), bool(tails[:, STOP_CHECKPOINT].any()))

    # ---- internals ----------------------------------------------------------------------------------
    def _set_plan(self) -> None:
        self.plan = LeafPlan.make(*self.ranges[self.comm.rank], self.parts)
        self._frontier = frontier(self.ranges, self.parts)

    def _rebalance(self, seconds: np.ndarray) -> None:
        if not self.balance or self.comm.size < 2:
            return
        self._window += seconds
        self._steps_in_window += 1
        if self._steps_in_window < REBALANCE_EVERY:
            return
        new = weighted_ranges(self.ranges, [float(s) for s in self._window], self.parts, MAX_MOVE)
        self._window[:] = 0.0
        self._steps_in_window = 0
        if new != self.ranges:
            self.ranges = new
            self._set_plan()

    def _fusable(self, plan: LeafPlan, k: int, edges) -> bool:
        """May part k's weight gradient be added by its GEMM into its left sibling's slot? When the plan's first
        add for k is exactly that (the sibling is the previous part, still a leaf, in the same run), both parts
        have rows, and for this part size the fused GEMM gives the bits of the GEMM and then the add in every layer."""
        if not self._fuses or k == 0 or plan.adds[k - 1] or not plan.adds[k] or \
                plan.adds[k][0] != (plan.slot_of[k - 1], plan.slot_of[k]):
            return False
        rows, left = edges[k + 1] - edges[k], edges[k] - edges[k - 1]
        if rows == 0 or left == 0:
            return False
        if rows not in self._fuse_checked:      # the layers whose GEMM adds (the others add after: the reference)
            from worker.sgemm import fused_add_is_exact, worth_fusing
            sizes = self.model.sizes
            self._fuse_checked[rows] = all(fused_add_is_exact(i, o, rows) for i, o in zip(sizes[:-1], sizes[1:])
                                           if worth_fusing(i, o))
        return self._fuse_checked[rows]

    def _check_threads(self, rows: int, x, y) -> None:
        """Once per part size: does this rank's BLAS thread count give a part the bits of one thread? If
        not, pin one thread for the rest of the run (threadpoolctl, process-wide)."""
        if rows in self._thread_checked or rows == 0:
            return
        from threadpoolctl import threadpool_limits

        from worker.threads import blas_threads_in_use
        threads = blas_threads_in_use() or 1
        same = True
        if threads > 1:
            mine = self._part_grad(x, y)
            with threadpool_limits(limits=1):
                one = self._part_grad(x, y)
            same = bool(np.array_equal(mine, one))
            if not same:
                global _pinned, _threads_before_pin
                _pinned = threadpool_limits(limits=1)
                _threads_before_pin = threads
                self._fuse_checked.clear()     # checked at the old thread count: check again at one
                self._fusion_of = (None, None)
                self._part_buffers.clear()     # ... as are mlp_bylayer's one-GEMM verdicts kept with them
                self.pinned_note = (f"BLAS pinned to 1 thread: a {rows}-row micro-batch's gradient at {threads} "
                                    f"threads differs from 1 thread's; the {threads} threads compute parts side by "
                                    "side, each at 1 thread")
        self._thread_checked[rows] = same

    def _part_grad(self, x, y) -> np.ndarray:
        out = np.empty(self.model.num_params, self.model.dtype)
        views = self.model.layer_views(out)
        self.model.sum_loss_and_grad_parts(x, y, (0, len(x)), lambda i, j: views[i], lambda i, j: None)
        return out


_pinned = None   # the process-wide one-thread limit, kept alive once a check pinned it
_threads_before_pin = 1


def _rows(rows: list[int]):
    """Rows of a stack as a slice where they are evenly spaced (a view: the addition runs in place), else a list."""
    step = rows[1] - rows[0] if len(rows) > 1 else 1
    if step > 0 and all(b - a == step for a, b in zip(rows, rows[1:])):
        return slice(rows[0], rows[-1] + 1, step)
    return rows
