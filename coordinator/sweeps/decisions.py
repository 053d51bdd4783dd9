"""A sweep's decisions: a pure function of the sweep file and the metric values, unit-tested without processes.

    plan = decide(trials=27, rungs=3, reduction_factor=3, minimize=True, results={(0, 0): 0.41, (1, 0): 0.38, ...})
    plan.status[5]        # Status("run", 1): trial 5 should train on to rung 1 (promoted)
    plan.promoted[0]      # the trials promoted from rung 0 to rung 1, in the order they were promoted
    plan.best             # the best trial at the highest rung reached so far; the winner once plan.finished

`results` maps (trial, rung) to the trial's metric at that rung; NaN means it has none (it diverged, failed or
was cancelled): such a trial is never promoted. Grid and random sweeps are the case rungs = 1: every trial runs
to the end.

The rule (asha): asynchronous successive halving, with arrival order replaced by trial-number order.

    Rung 0's sequence is the trials 0, 1, 2, ... . Read a rung's sequence in order; after its first m values, the
    best floor(m / η) of those m are promoted (those not promoted already are appended, best first, to the next
    rung's sequence). A value that has not arrived stops the reading there: the entries after it wait for it.

ASHA reads the same way, but in the order results arrive, so its promotions (and so its winner) change with
timing, with the number of workers, with a slow host. Here they cannot: the sequences, and so every promotion,
follow from the values alone. A trial that reached a rung and was not promoted is "waiting" until one of:
    - it is promoted (a later prefix puts it in the top floor(m / η));
    - the rung's sequence is complete (every trial that will ever reach the rung has its value there): stopped;
    - it ranks below max(1, floor(N / η)) already, N being the most trials the rung can ever hold: stopped,
      since a trial's rank among a growing prefix can only fall.
When a rung's sequence is complete and promoted nobody (fewer than η trials reached it), its best is promoted,
so every sweep runs at least one trial to the end and its winner has a final checkpoint.
The price against ASHA: a trial that is ahead of the trials before it waits for them (paused, its slot given to
another trial), and every trial pauses at every rung it reaches (a checkpoint, and a relaunch if promoted).
"""
from __future__ import annotations

import bisect
import math
from dataclasses import dataclass
from typing import Mapping

RUN, WAITING, STOPPED, DONE = "run", "waiting", "stopped", "done"


@dataclass(frozen=True)
class Status:
    state: str       # run (toward `rung`), waiting (at `rung`, undecided), stopped (at `rung`), done (top rung)
    rung: int


@dataclass(frozen=True)
class Plan:
    status: tuple[Status, ...]                 # per trial number
    sequences: tuple[tuple[int, ...], ...]     # per rung: the trials that reached (or will run to) it, in order
    complete: tuple[bool, ...]                 # per rung: its sequence is final and every value is in
    best: int | None                           # the best trial at the highest rung with a value; None before any
    finished: bool                             # every decision is taken and every trial has its last value

    @property
    def promoted(self) -> tuple[tuple[int, ...], ...]:
        """Per rung k, the trials promoted from rung k to k + 1, in promotion order."""
        return self.sequences[1:]


def key(value: float, minimize: bool) -> float:
    """Lower is better; NaN is worst."""
    if math.isnan(value):
        return math.inf
    return value if minimize else -value


def decide(*, trials: int, rungs: int, reduction_factor: int, minimize: bool,
           results: Mapping[tuple[int, int], float]) -> Plan:
    eta = reduction_factor
    sequences: list[tuple[int, ...]] = [tuple(range(trials))]
    complete: list[bool] = []
    length_final = True          # the current rung's sequence can grow no more
    bound = trials               # the most trials the current rung can ever hold
    status: dict[int, Status] = {}
    for k in range(rungs):
        seq = sequences[k]
        known = 0
        for t in seq:
            if (t, k) not in results:
                break
            known += 1
        top = k == rungs - 1
        done_here = length_final and known == len(seq)
        complete.append(done_here)
        if top:
            for t in seq:
                status[t] = Status(DONE if (t, k) in results else RUN, k)
            break
        promoted: list[int] = []
        chosen: set[int] = set()
        finite: list[tuple[float, int]] = []   # the measured values of the prefix read so far, best first
        for m in range(1, known + 1):
            t = seq[m - 1]
            if not math.isnan(results[(t, k)]):
                bisect.insort(finite, (key(results[(t, k)], minimize), t))
            for _, t in finite[:m // eta]:
                if t not in chosen:
                    chosen.add(t)
                    promoted.append(t)
        ranked = sorted(seq[:known], key=lambda t: (key(results[(t, k)], minimize), t))
        if done_here and not promoted and ranked and not math.isnan(results[(ranked[0], k)]):
            promoted.append(ranked[0])   # fewer than η trials reached the rung: its best still goes on
            chosen.add(ranked[0])
        rank = {t: i + 1 for i, t in enumerate(ranked)}
        for i, t in enumerate(seq):
            if t in chosen:
                continue  # its status is set at a higher rung
            if (t, k) not in results:
                status[t] = Status(RUN, k)
            elif math.isnan(results[(t, k)]) or done_here or (i < known and rank[t] > max(1, bound // eta)):
                status[t] = Status(STOPPED, k)
            else:
                status[t] = Status(WAITING, k)
        sequences.append(tuple(promoted))
        length_final = done_here
        bound = len(promoted) if done_here else bound
    while len(complete) < rungs:
        complete.append(False)
    best = _best(sequences, results, minimize)
    finished = complete[-1] and len(sequences) == rungs
    return Plan(tuple(status[t] for t in range(trials)), tuple(sequences), tuple(complete), best, finished)


def _best(sequences: list[tuple[int, ...]], results: Mapping[tuple[int, int], float], minimize: bool) -> int | None:
    for k in range(len(sequences) - 1, -1, -1):
        measured = [t for t in sequences[k] if not math.isnan(results.get((t, k), math.nan))]
        if measured:
            return min(measured, key=lambda t: (key(results[(t, k)], minimize), t))
    return None


__all__ = ["decide", "Plan", "Status", "key", "RUN", "WAITING", "STOPPED", "DONE"]
