"""The exact step's pieces without MPI: the tree over micro-batch indices, each rank's plan, the frontier,
the split by speed, the spec key, and the BLAS fact the design rests on.

The tree is checked symbolically: every value is an expression (("p", j) for part j, (left, right) for a
sum), so "the same additions in the same order" is plain equality of expressions, for every part count up
to 40 and random splits over up to parts+3 ranks (some empty), against the tree's definition.
"""
from __future__ import annotations

import random

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from worker.comm import SerialComm
from worker.microbatch import (LeafPlan, combine_frontier, cover, even_ranges, frontier, most_slots, padded,
                               part_edges, stack_waves, weighted_ranges)
from worker.mlp import MLP
from worker.spec import SpecError, parse_spec
from worker.stepexact import ExactStep


def tree(lo: int, size: int, parts: int):
    """The definition: a node is its halves' sum, or its left half when the right one holds no part."""
    if lo >= parts:
        return None
    if size == 1:
        return ("p", lo)
    left, right = tree(lo, size // 2, parts), tree(lo + size // 2, size // 2, parts)
    return left if right is None else (left, right)


def run_plan(plan: LeafPlan) -> dict:
    """A rank's plan on symbols: each run alone (checking that no run touches another's slots, so they may go
    side by side), then the joins. Returns slot -> expression."""
    slots, owner = {}, {}
    for run, (lo, hi) in enumerate(plan.runs):
        for j in range(lo, hi):
            touched = [plan.slot_of[j - plan.a]] + [s for add in plan.adds[j - plan.a] for s in add]
            assert all(owner.setdefault(s, run) == run for s in touched), (plan, j)
            slots[plan.slot_of[j - plan.a]] = ("p", j)
            for dst, src in plan.adds[j - plan.a]:
                slots[dst] = (slots[dst], slots.pop(src))
    for dst, src in plan.joins:
        slots[dst] = (slots[dst], slots.pop(src))
    return slots


def symbolic_total(ranges, parts, runs=1):
    values = {}
    for rank, (a, b) in enumerate(ranges):
        plan = LeafPlan.make(a, b, parts, runs)
        slots = run_plan(plan)
        rows = [("p", j) for j in range(a, b)]        # the same additions as waves on a stack of the parts
        waves, cover_rows = stack_waves(plan)
        for dst, src in waves:
            assert len(set(dst + src)) == len(dst + src)
            for d, s in zip(dst, src):
                rows[d] = (rows[d], rows[s])
        assert [rows[r] for r in cover_rows] == [slots[slot] for slot in plan.cover_slots]
        assert sorted(slots) == sorted(plan.cover_slots)
        assert plan.cover_slots == LeafPlan.make(a, b, parts).cover_slots     # where `frontier` says they are
        assert len(plan.runs) == min(runs, b - a) or (a == b and len(plan.runs) == 1)
        assert plan.slots <= most_slots(parts, runs) and (not plan.cover_slots or plan.cover_slots[0] == 0)
        for node, slot in zip(plan.cover, plan.cover_slots):
            assert slots[slot] == tree(*node, parts)
            values[rank, slot] = slots[slot]
    nodes = frontier(ranges, parts)
    vals = [values[rank, slot] for rank, slot, _ in nodes]

    def add(i, j):
        vals[i] = (vals[i], vals[j])
    return vals[combine_frontier(nodes, parts, add)]


@pytest.mark.parametrize("parts", range(1, 41))
def test_any_split_adds_the_parts_in_the_one_tree_order(parts):
    rng = random.Random(parts)
    reference = tree(0, padded(parts), parts)
    for ranks in range(1, 9):
        assert symbolic_total(even_ranges(parts, ranks), parts) == reference
    for _ in range(40):
        cuts = sorted(rng.randint(0, parts) for _ in range(rng.randint(0, parts + 2)))
        assert symbolic_total(list(zip([0] + cuts, cuts + [parts])), parts) == reference
        # the same ranks with each rank's parts in runs computed side by side (a rank's threads)
        assert symbolic_total(list(zip([0] + cuts, cuts + [parts])), parts, rng.randint(2, 5)) == reference


def test_runs_are_even_keep_first_level_siblings_together_and_fit_the_slots():
    assert LeafPlan.make(0, 8, 8, runs=2).runs == ((0, 4), (4, 8))
    assert LeafPlan.make(3, 8, 8, runs=2).runs == ((3, 6), (6, 8))    # 3+2 either way: (4, 5) stay together
    assert LeafPlan.make(0, 8, 8, runs=3).runs == ((0, 2), (2, 5), (5, 8))   # not 2+4+2 for the siblings' sake
    assert LeafPlan.make(0, 7, 8, runs=3).runs == ((0, 2), (2, 4), (4, 7))
    assert LeafPlan.make(2, 3, 8, runs=4).runs == ((2, 3),)
    two = LeafPlan.make(0, 8, 8, runs=2)
    assert two.joins == ((0, two.slot_of[4]),)        # the one addition left: (p0..p3) + (p4..p7)
    for parts in (8, 16, 64):
        for runs in (1, 2, 3, 4):
            worst = max(LeafPlan.make(a, b, parts, runs).slots for a in range(parts) for b in range(a, parts + 1))
            assert worst <= most_slots(parts, runs)
    with pytest.raises(ValueError):
        LeafPlan.make(0, 8, 8, runs=0)


def test_covers_and_edges():
    assert tree(0, 4, 3) == ((("p", 0), ("p", 1)), ("p", 2))
    assert [len(cover(a, b, 16)) for a, b in even_ranges(16, 4)] == [1, 1, 1, 1]   # aligned: one node each
    assert [len(cover(a, b, 16)) for a, b in even_ranges(16, 3)] == [2, 3, 2]
    assert part_edges(61, 8) == [0, 7, 15, 22, 30, 38, 45, 53, 61]
    assert part_edges(3, 8) == [0, 0, 0, 1, 1, 1, 2, 2, 3]    # a short batch leaves parts empty
    with pytest.raises(ValueError):
        frontier([(0, 3), (4, 8)], 8)


def test_parts_follow_speed_a_few_at_a_time_and_noise_moves_none():
    ranges = even_ranges(16, 2)
    seen = []
    for _ in range(4):   # rank 1 is half as fast: 11/5 is the best split of 16
        ranges = weighted_ranges(ranges, [(b - a) * (1.0 if r == 0 else 2.0) for r, (a, b) in enumerate(ranges)], 16)
        seen.append(ranges)
    assert seen[0] == [(0, 10), (10, 16)] and seen[-1] == [(0, 11), (11, 16)]   # at most 2 parts per decision
    assert weighted_ranges(even_ranges(16, 2), [8.0, 8.1], 16) == even_ranges(16, 2)   # 1% is noise
    assert weighted_ranges(even_ranges(4, 3), [1.0, 9.0, 1.0], 4)[1][1] - weighted_ranges(
        even_ranges(4, 3), [1.0, 9.0, 1.0], 4)[1][0] >= 1                           # nobody drops to zero parts


def test_the_spec_key_defaults_validates_and_stays_out_of_old_json():
    base = {"train": {"steps": 5}}
    assert parse_spec(base).train.micro_batches == 8
    assert "micro_batches" not in parse_spec(base).to_dict()["train"]          # stored specs keep their JSON
    assert parse_spec({"train": {"steps": 5, "micro_batches": 0}}).to_dict()["train"]["micro_batches"] == 0
    for bad in (-1, 1025, 2.5, True):
        with pytest.raises(SpecError) as err:
            parse_spec({"train": {"steps": 5, "micro_batches": bad}})
        assert err.value.field == "train.micro_batches"


def test_one_process_exact_step_equals_the_tree_of_separately_computed_parts():
    """SerialComm's exact step against its definition: each part's gradient computed by the same function,
    then added by hand along the tree (8 parts: ((p0+p1)+(p2+p3))+((p4+p5)+(p6+p7)))."""
    sizes, parts, n = [20, 16, 5], 8, 61
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 20), dtype=np.float32)
    y = rng.integers(0, 5, n)
    model = MLP(sizes, seed=3)
    step = ExactStep(model, SerialComm(), parts)
    rows = step.rows(np.arange(n))
    total = step.reduce(step.backward(x[rows], y[rows]))
    edges = part_edges(n, parts)
    alone = []
    for j in range(parts):
        out = np.zeros(model.num_params, np.float32)
        views = model.layer_views(out)
        model.sum_loss_and_grad_parts(x[edges[j]:edges[j + 1]], y[edges[j]:edges[j + 1]], (0, edges[j + 1] - edges[j]),
                                      lambda i, _j: views[i], lambda i, _j: None)
        alone.append(out)
    while len(alone) > 1:
        alone = [alone[k] + alone[k + 1] for k in range(0, len(alone), 2)]
    assert np.array_equal(model.grad, alone[0] * np.float32(1.0 / n))
    assert total.count == n and np.isfinite(total.loss_sum)


@pytest.mark.parametrize("parts,n", [(8, 64), (6, 48), (16, 16), (4, 80)])
@pytest.mark.parametrize("tree", [True, False], ids=["stacked-tree", "part-by-part"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])     # mse: one output, bias sums of one column
def test_equal_parts_small_layers_as_one_stack_keep_the_bits_of_the_parts_alone(monkeypatch, parts, n, tree, loss):
    """Equal parts' small layers: every part's weight gradient from one matmul over the stack, added up wave by
    wave (worker/microbatch.py stack_waves), against each part computed alone and added along the tree by hand;
    and the same through the part-by-part path (GRADMESH_EXACT_TREE=0)."""
    from worker import mlp_bylayer
    sizes = [20, 16, 12, 5 if loss == "cross_entropy" else 1]
    rng = np.random.default_rng(parts)
    x = rng.standard_normal((n, 20), dtype=np.float32)
    y = rng.integers(0, 5, n) if loss == "cross_entropy" else rng.standard_normal((n, 1), dtype=np.float32)
    model = MLP(sizes, loss=loss, seed=3)
    step = ExactStep(model, SerialComm(), parts)
    step._tree = tree
    stacks, real = [], mlp_bylayer._stacked_grads
    monkeypatch.setattr(mlp_bylayer, "_stacked_grads", lambda *a: (stacks.append(1), real(*a))[1])
    for _ in range(2):
        rows = step.rows(np.arange(n))
        step.reduce(step.backward(x[rows], y[rows]))
    edges = part_edges(n, parts)
    values = []
    for j in range(parts):
        out = np.zeros(model.num_params, np.float32)
        views = model.layer_views(out)
        model.sum_loss_and_grad_parts(x[edges[j]:edges[j + 1]], y[edges[j]:edges[j + 1]], (0, edges[j + 1] - edges[j]),
                                      lambda i, _j: views[i], lambda i, _j: None)
        values.append(out)

    def total(lo, size):
        if lo >= parts:
            return None
        if size == 1:
            return values[lo]
        left, right = total(lo, size // 2), total(lo + size // 2, size // 2)
        return left if right is None else left + right
    assert np.array_equal(model.grad, total(0, padded(parts)) * np.float32(1.0 / n))
    assert len(stacks) == (6 if tree else 0)      # 3 layers, 2 steps


def test_a_part_computed_alone_has_the_same_bits_wherever_its_rows_sit_and_batched_rows_may_not():
    """What the exact step relies on (a part alone, at one thread, depends only on its rows), and why it does
    not batch the forward pass (OpenBLAS rounds a row by the GEMM's row count: noted, not required)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 784), dtype=np.float32)
    w = rng.standard_normal((784, 1024), dtype=np.float32)
    with threadpool_limits(limits=1):
        alone = a[32:64] @ w
        copied = np.ascontiguousarray(a[32:64].copy()) @ w
        batched = a @ w
    assert np.array_equal(alone, copied)
    print(f"rows 32..63 batched in 256 rows {'equal' if np.array_equal(batched[32:64], alone) else 'differ from'} "
          "the part alone on this BLAS")


@pytest.mark.parametrize("batch", [256, 250], ids=["equal-parts", "unequal-parts"])
def test_parts_run_side_by_side_on_spare_threads_keep_their_bits(monkeypatch, batch):
    """Where BLAS is pinned to one thread, the threads it had run groups of parts' forward and delta products
    (worker/mlp_bylayer.py `_side_by_side`) and runs of parts' weight gradients, each run in slots of its own,
    added up after (worker/microbatch.py, LeafPlan runs): each part keeps its own GEMM and every node of the
    tree is still its halves' sum, so the gradient keeps its bits. Equal parts go as a numpy stack, unequal
    ones (batch 250) part by part."""
    from concurrent.futures import ThreadPoolExecutor

    from worker import mlp_bylayer
    sizes = [256, 512, 512, 10]      # layers above SIDE_BY_SIDE_MIN_MACS: the threads are used
    assert 250 * 256 * 512 >= mlp_bylayer.SIDE_BY_SIDE_MIN_MACS // 2 and 250 * 512 * 512 >= mlp_bylayer.SIDE_BY_SIDE_MIN_MACS
    rng = np.random.default_rng(3)
    x = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    y = rng.integers(0, sizes[-1], batch)
    with threadpool_limits(limits=1), ThreadPoolExecutor(max_workers=2) as executor:
        models = [MLP(sizes, seed=1) for _ in range(3)]
        steps = [ExactStep(model, SerialComm(), 8) for model in models]
        steps[0]._parts_pool = lambda: None           # one thread: the reference
        for step, threads in zip(steps[1:], (1, 2)):   # 2 and 3 runs side by side
            step._pool = (executor, threads)
        used, real_side, real_runs = [], mlp_bylayer._side_by_side, mlp_bylayer._in_runs
        monkeypatch.setattr(mlp_bylayer, "_side_by_side", lambda *a: (used.append("products"), real_side(*a)))
        monkeypatch.setattr(mlp_bylayer, "_in_runs", lambda pool, runs, f: (
            used.append(len(runs) if pool is not None else 1), real_runs(pool, runs, f)))
        for _ in range(2):                              # a second step reuses every buffer and plan
            for step in steps:
                rows = step.rows(np.arange(batch))
                step.reduce(step.backward(x[rows], y[rows]))
            assert np.array_equal(models[0].grad, models[1].grad) and np.array_equal(models[0].grad, models[2].grad)
    assert 2 in used and 3 in used, f"the weight gradients did not run side by side: {used}"
    assert ("products" in used) == (batch == 256), used


def test_a_step_made_after_a_pin_still_has_room_for_a_run_per_thread(monkeypatch):
    """A resize makes a new ExactStep in a process whose BLAS an earlier step pinned: its slots are counted by
    the threads the pin took, not by the one BLAS now has, so its runs still fit."""
    from worker import stepexact
    from worker.microbatch import most_slots
    monkeypatch.setattr(stepexact, "_pinned", object())
    monkeypatch.setattr(stepexact, "_threads_before_pin", 2)
    with threadpool_limits(limits=1):
        step = ExactStep(MLP([8, 6, 3], seed=0), SerialComm(), 8)
    assert len(step.slots) == most_slots(8, 2) > most_slots(8)
