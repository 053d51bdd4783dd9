"""Fault injection for tests of the failure paths, driven by one environment variable.

    GRADMESH_FAULT="raise:rank=1:step=20"            rank 1 raises RuntimeError before step 20
    GRADMESH_FAULT="exit:rank=1:step=20:code=7"      rank 1 exits abruptly (os._exit) with code 7
    GRADMESH_FAULT="kill:rank=1:step=20"             rank 1 sends itself SIGKILL
    GRADMESH_FAULT="hang:rank=1:step=20"             rank 1 sleeps forever (a stuck rank)
    GRADMESH_FAULT="nan:step=5"                      the reduced loss of step 5 reads as NaN on every rank
    ...:attempt=1                                    only in that attempt (GRADMESH_ATTEMPT, set by the worker)

Several faults are separated by commas. Unset (the normal case), every method is a no-op.
The failures are real (a real exception, exit, signal or stall); only their timing is chosen.
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

ACTIONS = ("raise", "exit", "kill", "hang", "nan")


@dataclass(frozen=True)
class Fault:
    action: str
    step: int
    rank: int | None = None
    code: int = 1
    attempt: int | None = None


def parse(text: str) -> list[Fault]:
    faults = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        action, *fields = item.split(":")
        if action not in ACTIONS:
            raise ValueError(f"GRADMESH_FAULT: unknown action {action!r} (known: {', '.join(ACTIONS)})")
        values = dict(f.split("=", 1) for f in fields)
        unknown = set(values) - {"rank", "step", "code", "attempt"}
        if unknown or "step" not in values:
            raise ValueError(f"GRADMESH_FAULT: {item!r} needs step=S and only rank/code/attempt besides")
        faults.append(Fault(action, int(values["step"]),
                            int(values["rank"]) if "rank" in values else None,
                            int(values.get("code", 1)),
                            int(values["attempt"]) if "attempt" in values else None))
    return faults


class Injector:
    def __init__(self, faults: list[Fault], rank: int):
        attempt = int(os.environ.get("GRADMESH_ATTEMPT", "1"))
        self.faults = [f for f in faults if f.rank in (None, rank) and f.attempt in (None, attempt)]

    def before_step(self, step: int) -> None:
        for f in self.faults:
            if f.step != step or f.action == "nan":
                continue
            if f.action == "raise":
                raise RuntimeError(f"injected fault at step {step}")
            if f.action == "exit":
                os._exit(f.code)
            if f.action == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if f.action == "hang":
                while True:
                    time.sleep(3600)

    def corrupt_loss(self, step: int, loss: float) -> float:
        return float("nan") if any(f.action == "nan" and f.step == step for f in self.faults) else loss


def from_environment(rank: int) -> Injector:
    return Injector(parse(os.environ.get("GRADMESH_FAULT", "")), rank)
