"""Micro-batches: the global batch in a fixed number of parts, summed in an order fixed by part index.

    edges = part_edges(len(batch), 16)             # rows [edges[j], edges[j+1]) of the batch are part j
    ranges = even_ranges(16, comm.size)            # rank r computes parts ranges[r] = [a, b)
    plan = LeafPlan.make(*ranges[rank], 16)        # where each part's gradient goes, which adds follow
    plan = LeafPlan.make(*ranges[rank], 16, runs=2)   # the same additions, in two runs computed side by side
    frontier(ranges, 16)                           # every rank's finished nodes, in the order they combine
    waves, cover_rows = stack_waves(plan)          # the same additions on a stack of the parts' gradients

Why: the gradient of a batch is a sum over its examples, and float addition is not associative, so the
bits of a sum depend on how it is grouped. Data parallelism over N ranks groups it by rank, so N ranks and
one process agree only up to rounding (which an optimizer like Adam amplifies). Here the grouping never
depends on the ranks: the batch is cut into `parts` micro-batches (spec `train.micro_batches`); each
part's gradient is computed the same way wherever it runs (worker/mlp.py, `sum_loss_and_grad_parts`);
and the parts are added along ONE binary tree over their indices, the same for every rank count:

    the tree over S = the next power of two >= parts leaves; node (lo, size) covers parts lo..lo+size-1,
    with lo a multiple of size; its value is value(lo, size/2) + value(lo + size/2, size/2), or just the
    left half when the right half holds no part (lo + size/2 >= parts): e.g. 3 parts sum as (p0+p1)+p2.

A rank that computes the contiguous parts [a, b) adds them up to the largest whole nodes inside its
range (its "cover", at most about 2 log2 S nodes; one when the ranges are aligned, as with 2, 4 or 8
ranks and 16 parts); the ranks' covers, in order, are the "frontier", and adding the frontier's adjacent
siblings bottom-up gives the root: the same additions of the same values, whoever did them. Whatever
the split (even, by speed, after an elastic resize), the sum has the same bits.

Pure Python (no numpy): the communicators (worker/shmexact.py, worker/comm_exact.py) and the step
(worker/stepexact.py) do the arithmetic with the plans made here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

Node = tuple[int, int]          # (lo, size): parts lo..lo+size-1 of the padded tree


def padded(parts: int) -> int:
    """Leaves of the tree: the next power of two at or above `parts`."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    return 1 << (parts - 1).bit_length()


def part_edges(n: int, parts: int) -> list[int]:
    """Row edges of the parts of a batch of `n` rows: part j is rows [e[j], e[j+1]) (sizes differ by <= 1;
    a batch shorter than `parts` leaves some parts empty, the same ones at every rank count)."""
    return [j * n // parts for j in range(parts + 1)]


def even_ranges(parts: int, ranks: int) -> list[tuple[int, int]]:
    """Rank r's contiguous parts when all ranks are alike: [r*parts//ranks, (r+1)*parts//ranks)."""
    return [(r * parts // ranks, (r + 1) * parts // ranks) for r in range(ranks)]


def _siblings(left: Node, right: Node) -> bool:
    return left[1] == right[1] and left[0] % (2 * left[1]) == 0 and right[0] == left[0] + left[1]


def merge_in_order(nodes: Sequence[Node], parts: int, add: Callable[[int, int], None],
                   closes: bool) -> list[tuple[Node, int]]:
    """Add adjacent siblings among `nodes` (given left to right, each a node of the tree), bottom-up.

    `add(i, j)` must do value[i] += value[j] (indices into `nodes`); a node keeps its left child's index.
    `closes`: these nodes run to the last part, so a node whose right sibling holds no part is promoted
    (no addition). Returns the stack left over: (node, index) pairs, left to right."""
    stack: list[tuple[Node, int]] = []

    def settle(node: Node, index: int) -> None:
        while True:
            if stack and _siblings(stack[-1][0], node):
                left, left_index = stack.pop()
                add(left_index, index)
                node, index = (left[0], 2 * left[1]), left_index
            elif closes and node[0] % (2 * node[1]) == 0 and node[0] + node[1] >= parts and \
                    node[1] < padded(parts):
                node = (node[0], 2 * node[1])       # the right half is empty: the value is the left half's
            else:
                stack.append((node, index))
                return

    for index, node in enumerate(nodes):
        settle(node, index)
    return stack


def cover(a: int, b: int, parts: int) -> list[Node]:
    """The nodes that parts [a, b) add up to on their own (empty when a == b)."""
    closes = b == parts
    return [node for node, _ in merge_in_order([(j, 1) for j in range(a, b)], parts, lambda i, j: None, closes)]


@dataclass(frozen=True)
class LeafPlan:
    """How one rank turns its parts [a, b) into its cover: part j's gradient is written to slot
    `slot_of[j - a]`, then `adds[j - a]` run in order (slot d += slot s); the cover ends in `cover_slots`
    (the first always slot 0). Slots are the rank's node vectors; `slots` is how many the plan uses.

    With `runs` > 1 the parts are cut into that many contiguous runs (`runs`, part ranges) that may be computed
    at the same time, one per thread: each run's parts and adds touch slots no other run touches, and once every
    run is done, `joins` (slot d += slot s, in order) add the runs' covers up to the rank's cover, in the same
    cover slots. Every node is still its two halves' sum, so the additions are the one-run plan's: the same bits."""
    a: int
    b: int
    parts: int
    slot_of: tuple[int, ...]
    adds: tuple[tuple[tuple[int, int], ...], ...]
    cover: tuple[Node, ...]
    cover_slots: tuple[int, ...]
    slots: int
    runs: tuple[tuple[int, int], ...] = ()
    joins: tuple[tuple[int, int], ...] = ()

    @classmethod
    def make(cls, a: int, b: int, parts: int, runs: int = 1) -> LeafPlan:
        if not 0 <= a <= b <= parts:
            raise ValueError(f"parts range [{a}, {b}) outside 0..{parts}")
        if runs < 1:
            raise ValueError(f"runs must be at least 1, got {runs}")
        whole = cls._one_run(a, b, parts)
        cuts = run_cuts(a, b, runs)
        if len(cuts) <= 2:
            return whole
        subs = [cls._one_run(lo, hi, parts) for lo, hi in zip(cuts, cuts[1:])]
        tops = [(node, (r, slot)) for r, sub in enumerate(subs) for node, slot in zip(sub.cover, sub.cover_slots)]
        joins: list[tuple[int, int]] = []
        rest = merge_in_order([node for node, _ in tops], parts, lambda d, s: joins.append((d, s)), b == parts)
        if tuple(node for node, _ in rest) != whole.cover:
            raise AssertionError(f"runs {cuts} did not add up to the cover {whole.cover}: {rest}")  # pragma: no cover
        # the rank's cover stays where the one-run plan keeps it (what `frontier` tells the other ranks); every
        # other slot of every run gets one of its own after those, since the runs are live at the same time
        where = {tops[index][1]: position for position, (_, index) in enumerate(rest)}
        for r, sub in enumerate(subs):
            for slot in range(sub.slots):
                where.setdefault((r, slot), len(where))
        return cls(a, b, parts, tuple(where[r, s] for r, sub in enumerate(subs) for s in sub.slot_of),
                   tuple(tuple((where[r, d], where[r, s]) for d, s in adds) for r, sub in enumerate(subs)
                         for adds in sub.adds),
                   whole.cover, whole.cover_slots, len(where), tuple(zip(cuts, cuts[1:])),
                   tuple((where[tops[d][1]], where[tops[s][1]]) for d, s in joins))

    @classmethod
    def _one_run(cls, a: int, b: int, parts: int) -> LeafPlan:
        stack: list[tuple[Node, int]] = []      # (node, slot)
        slot_of, adds = [], []
        used = 1 if a < b else 0
        closes = b == parts
        for j in range(a, b):
            taken = {slot for _, slot in stack}
            slot = min(s for s in range(len(taken) + 1) if s not in taken)
            used = max(used, slot + 1)
            slot_of.append(slot)
            mine: list[tuple[int, int]] = []
            nodes = [n for n, _ in stack] + [(j, 1)]
            slots = [s for _, s in stack] + [slot]
            closing = closes and j == b - 1
            stack = [(node, slots[i]) for node, i in merge_in_order(
                nodes, parts, lambda d, s: mine.append((slots[d], slots[s])), closing)]
            adds.append(tuple(mine))
        return cls(a, b, parts, tuple(slot_of), tuple(adds), tuple(n for n, _ in stack),
                   tuple(s for _, s in stack), used, ((a, b),))


def stack_waves(plan: LeafPlan) -> tuple[list[tuple[list[int], list[int]]], list[int]]:
    """The plan's additions (adds, then joins) for parts held as rows of one stack, row k = part a + k, each node
    kept in its left child's row: (waves, cover_rows). A wave is (dst rows, src rows), rows all distinct, done as
    stack[dst] += stack[src]; each addition goes in the first wave after every earlier one that touched its rows,
    so the waves in order give each element the plan's additions in the plan's order. The cover ends in
    `cover_rows` (in cover order)."""
    holder: dict[int, int] = {}             # slot -> row whose value it holds
    last: dict[int, int] = {}               # row -> the last wave that touched it
    waves: list[tuple[list[int], list[int]]] = []

    def add(d: int, s: int) -> None:
        dst, src = holder[d], holder.pop(s)
        wave = max(last.get(dst, -1), last.get(src, -1)) + 1
        if wave == len(waves):
            waves.append(([], []))
        waves[wave][0].append(dst)
        waves[wave][1].append(src)
        last[dst] = last[src] = wave
    for k, slot in enumerate(plan.slot_of):
        holder[slot] = k
        for d, s in plan.adds[k]:
            add(d, s)
    for d, s in plan.joins:
        add(d, s)
    return waves, [holder[slot] for slot in plan.cover_slots]


def run_cuts(a: int, b: int, runs: int) -> list[int]:
    """Edges of `runs` runs of parts [a, b) (fewer when there are fewer parts), none longer than ceil(n / runs);
    where an edge could fall on either of two parts, on the even one if no run gets longer, so first-level
    siblings stay in one run (where the GEMM adds a right leaf into its sibling: worker/sgemm.py)."""
    n = b - a
    runs = max(1, min(runs, n))
    cuts = [a + r * n // runs + (1 if r * n % runs and (a + r * n // runs) % 2 else 0) for r in range(runs + 1)]
    if any(not 0 < hi - lo <= -(-n // runs) for lo, hi in zip(cuts, cuts[1:])):
        cuts = [a + r * n // runs for r in range(runs + 1)]
    return cuts


def most_slots(parts: int, runs: int = 1) -> int:
    """Slots enough for any range's plan: what a communicator allocates per rank. A run's stack rises and falls
    once (sizes up to the middle, then down), so a run of m parts holds at most 2 log2 m nodes, and the part
    being added takes one more; runs computed at the same time each need their own. Slots a plan does not use
    are never touched (no memory in practice)."""
    one = 2 * (padded(parts).bit_length() - 1) + 1
    if runs <= 1:
        return one
    longest = -(-parts // runs)
    return max(one, runs * (2 * (longest.bit_length() - 1) + 1))


def frontier(ranges: Sequence[tuple[int, int]], parts: int) -> list[tuple[int, int, Node]]:
    """Every rank's cover nodes, left to right: (rank, slot, node). Ranges must tile [0, parts) in rank order."""
    expected = 0
    out: list[tuple[int, int, Node]] = []
    for rank, (a, b) in enumerate(ranges):
        if a != expected or b < a:
            raise ValueError(f"ranges must tile 0..{parts} in rank order, got {list(ranges)}")
        expected = b
        plan = LeafPlan.make(a, b, parts)
        out += [(rank, slot, node) for node, slot in zip(plan.cover, plan.cover_slots)]
    if expected != parts:
        raise ValueError(f"ranges must tile 0..{parts} in rank order, got {list(ranges)}")
    return out


def combine_frontier(nodes: Sequence[tuple[int, int, Node]], parts: int,
                     add: Callable[[int, int], None]) -> int:
    """Add the frontier up to the root; `add(i, j)`: value of nodes[i] += value of nodes[j]. Returns the
    index of the node that holds the total (always 0)."""
    rest = merge_in_order([node for _, _, node in nodes], parts, add, closes=True)
    if len(rest) != 1 or rest[0][0] != (0, padded(parts)):
        raise AssertionError(f"frontier {nodes} did not add up to the root: {rest}")  # pragma: no cover
    return rest[0][1]


def weighted_ranges(ranges: Sequence[tuple[int, int]], seconds: Sequence[float], parts: int,
                    max_move: int = 2, gain: float = 0.03) -> list[tuple[int, int]]:
    """The next split of the parts: each rank's speed is its parts over the `seconds` it computed them in,
    the target gives each rank parts in proportion to its speed (at least one each while there are enough
    parts), and no boundary moves by more than `max_move` parts. The split changes only when it would cut
    the predicted step time (the slowest rank's) by more than `gain`: noise does not shuffle parts. A
    function of its arguments alone, so every rank, given the same timings, takes the same decision."""
    ranks = len(ranges)
    counts = [b - a for a, b in ranges]
    if ranks < 2 or parts < ranks or any(c == 0 or not t > 0 for c, t in zip(counts, seconds)):
        return list(ranges)
    speed = [c / t for c, t in zip(counts, seconds)]
    total = sum(speed)
    ideal = [parts * s / total for s in speed]
    target = [max(1, int(v)) for v in ideal]
    while sum(target) > parts:                         # too many after the floors of 1: take from the largest
        target[target.index(max(target))] -= 1
    for r in sorted(range(ranks), key=lambda r: target[r] - ideal[r])[:parts - sum(target)]:
        target[r] += 1                                 # largest remainders first
    edges, cut = [0], 0
    for r in range(ranks - 1):
        cut += target[r]
        now = ranges[r][1]
        edge = min(max(cut, now - max_move, edges[-1] + 1), now + max_move, parts - (ranks - 1 - r))
        edges.append(edge)
    edges.append(parts)
    proposed = [(edges[r], edges[r + 1]) for r in range(ranks)]

    def step_time(split):
        return max((b - a) / s for (a, b), s in zip(split, speed))
    if step_time(proposed) < (1 - gain) * step_time(ranges):
        return proposed
    return list(ranges)
