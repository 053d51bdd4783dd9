"""The team's settings, built once from `gradmesh serve`'s flags and handed down as one frozen object.

    policy = TeamPolicy(shares={"ana": 2.0}, reserve_after_s=300, preempt=True, private_jobs=False)
    policy.share("bob")        # 1.0: users not named share equally
    parse_shares(["ana=2", "bob=0.5"])   # the --share flags; ValueError naming the bad one
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Mapping

DEFAULT_RESERVE_AFTER_S = 300.0


@dataclass(frozen=True)
class TeamPolicy:
    shares: Mapping[str, float] = field(default_factory=dict)  # weight of a user's share of the slots; default 1
    reserve_after_s: float = DEFAULT_RESERVE_AFTER_S   # a job that has waited this long holds a reservation
    preempt: bool = False          # a higher-priority job may stop lower-priority ones (with a checkpoint)
    private_jobs: bool = False     # members and viewers read only their own jobs
    usage_half_life_s: float = 3600.0   # a user's recent slot-seconds (the tie-break of fair share) halve this often

    def __post_init__(self) -> None:
        for name, weight in self.shares.items():
            if not (weight > 0 and math.isfinite(weight)):
                raise ValueError(f"--share {name}={weight}: a share must be a positive number")
        if not self.reserve_after_s >= 0:
            raise ValueError("--reserve-after must not be negative")
        if not self.usage_half_life_s > 0:
            raise ValueError("the usage half-life must be positive")

    def share(self, user: str) -> float:
        return self.shares.get(user, 1.0)


def parse_shares(items: Iterable[str]) -> dict[str, float]:
    """{"ana": 2.0} from ["ana=2"]; ValueError naming the item that is not NAME=WEIGHT."""
    shares: dict[str, float] = {}
    for item in items:
        name, sep, weight = item.partition("=")
        try:
            value = float(weight)
        except ValueError:
            value = math.nan
        if not sep or not name.strip() or not (value > 0 and math.isfinite(value)):
            raise ValueError(f"--share {item!r}: expected NAME=WEIGHT with a positive weight, e.g. ana=2")
        shares[name.strip()] = value
    return shares
