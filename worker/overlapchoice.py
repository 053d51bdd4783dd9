"""Which way the exact step combines between hosts, chosen on the job itself (`[train] overlap = "auto"`).

    choice = OverlapChoice()
    layered = choice.layered(index)          # step `index` combines layer by layer (True) or in one piece after
    choice.record(index - 1, seconds)        # the previous step's time, as every rank received it
    choice.news()                            # once, when it decided: which way, and the times it saw

The two ways give the same bits (worker/comm_overlap.py adds what worker/comm_exact.py adds, in the same
order), so trying both costs only time. Which wins depends on the link and on the cores: layer by layer
hides part of a slow link behind the backward pass, and its thread takes CPU the compute may need
(docs/benchmarks.md measured both outcomes). After WARMUP steps in one piece, TRIALS steps alternate (one
piece, layered, one piece, ...); the way with the lower median step time is kept for the rest of the run.
A step's time is the slowest rank's, from its backward pass's start to its combine's end, sent beside the
next step's gradient (worker/stepexact.py's tail), so every rank decides the same from the same figures.
No MPI, no numpy: a decision on numbers.
"""
from __future__ import annotations

import statistics

WARMUP = 5     # steps in one piece before timing: the first steps fill caches, probe kernels, settle the link
TRIALS = 10    # then 5 steps each way, alternating, so a change in the machine's load falls on both alike


class OverlapChoice:
    """The trial's schedule, its figures and the decision. See the module docstring."""

    def __init__(self, warmup: int = WARMUP, trials: int = TRIALS):
        if warmup < 0 or trials < 2 or trials % 2:
            raise ValueError(f"need warmup >= 0 and an even trials >= 2, got {warmup}, {trials}")
        self.warmup, self.trials = warmup, trials
        self.chosen: bool | None = None
        self._times: dict[bool, list[float]] = {False: [], True: []}
        self._news = ""

    def layered(self, index: int) -> bool:
        """The way step `index` (0-based, counted by this process) combines: a function of the index and the
        figures every rank shares, so the same on every rank."""
        if self.chosen is not None:
            return self.chosen
        k = index - self.warmup
        return 0 <= k < self.trials and k % 2 == 1    # until the last trial's time arrives: one piece

    def record(self, index: int, seconds: float) -> None:
        """Step `index`'s time (the slowest rank's, in seconds); decides once the last trial's is in."""
        k = index - self.warmup
        if self.chosen is not None or not 0 <= k < self.trials:
            return
        self._times[k % 2 == 1].append(seconds)
        if k == self.trials - 1:
            piece, layers = (statistics.median(self._times[w]) for w in (False, True))
            self.chosen = layers < piece
            way, other = (("layer by layer during the backward pass", "in one piece") if self.chosen else
                          ("in one piece after the backward pass", "layer by layer"))
            self._news = (f"overlap auto: {way} (median step {1e3 * min(piece, layers):.1f} ms, against "
                          f"{1e3 * max(piece, layers):.1f} ms {other}; {self.trials // 2} steps each)")

    @property
    def note(self) -> str:
        """How the combine is chosen, for the start-up note."""
        return (f"overlap auto: the combine runs in one piece and layer by layer for {self.trials // 2} steps each "
                f"after {self.warmup}, then the faster way")

    def news(self) -> str:
        """The decision, the first time it is asked for after it was taken; else ""."""
        news, self._news = self._news, ""
        return news
