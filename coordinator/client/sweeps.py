"""The client's sweep and fork calls (mixed into `Client`), and what they return.

    with Client(...) as gm:
        sweep = gm.submit_sweep("sweep.toml")             # every trial checked; InvalidSpec names key and trial
        sweep = gm.sweep(sweep.id)                         # SweepInfo: trials, values per rung, promotions, best
        gm.download_best(sweep.id, "best.npz")             # the winner's best checkpoint, sha256-verified
        gm.cancel_sweep(sweep.id)
        gm.delete_sweep(sweep.id)                          # once ended: every trial job and its files, then the sweep
        job = gm.fork("digits-1", 200, {"optim.lr": 0.01}) # a new job from digits-1's checkpoint at step 200
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from coordinator.client.errors import InvalidSpec
from coordinator.client.types import Download, JobInfo, JobState, state_from_pb
from coordinator.errors import FailedPrecondition
from coordinator.rpc import gradmesh_pb2 as pb


@dataclass(frozen=True)
class DeletedSweep:
    """What DeleteSweep removed: the trial jobs, their files, and the bytes that freed."""
    sweep_id: str
    trials: int
    files: int
    bytes_freed: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class TrialInfo:
    trial: int
    job_id: str                                   # "" before it started
    params: dict[str, Any]
    status: str                                   # pending | run | waiting | stopped | done | failed | cancelled
    rung: int
    values: tuple[tuple[int, int, float | None], ...]  # (rung, step, value) at each rung reached; None = no value
    job_state: JobState | None
    step: int

    @classmethod
    def from_pb(cls, t: pb.SweepTrial) -> "TrialInfo":
        return cls(t.trial, t.job_id, {k: json.loads(v) for k, v in t.params.items()}, t.status, t.rung,
                   tuple((v.rung, v.step, None if math.isnan(v.value) else v.value) for v in t.values),
                   state_from_pb(t.job_state) if t.job_state else None, t.step)

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["values"] = [{"rung": r, "step": s, "value": v} for r, s, v in self.values]
        out["job_state"] = self.job_state.name if self.job_state else None
        return out


@dataclass(frozen=True)
class SweepInfo:
    id: str
    name: str
    state: JobState
    message: str
    method: str
    metric: str
    goal: str
    trials_total: int
    max_concurrent: int
    rungs: tuple[int, ...]
    trials: tuple[TrialInfo, ...]
    promotions: tuple[tuple[int, ...], ...]       # per rung k: the trials promoted from k to k + 1, in order
    best_trial: int | None
    best_job_id: str
    best_value: float | None
    created_unix: float
    ended_unix: float
    text: str
    owner: str = ""                               # the user who submitted it (its trials are that user's jobs)

    @classmethod
    def from_pb(cls, s: pb.Sweep) -> "SweepInfo":
        return cls(s.id, s.name, state_from_pb(s.state), s.message, s.method, s.metric, s.goal, s.trials_total,
                   s.max_concurrent, tuple(s.rungs), tuple(TrialInfo.from_pb(t) for t in s.trials),
                   tuple(tuple(p.trials) for p in s.promotions), None if s.best_trial < 0 else s.best_trial,
                   s.best_job_id, None if math.isnan(s.best_value) else s.best_value, s.created_unix, s.ended_unix,
                   s.text, s.owner)

    def is_terminal(self) -> bool:
        return self.state.is_terminal()

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["state"] = self.state.name
        out["trials"] = [t.to_dict() for t in self.trials]
        out["promotions"] = [list(p) for p in self.promotions]
        return out


def _text_of(sweep: "str | Path") -> str:
    if isinstance(sweep, Path) or ("\n" not in sweep and sweep.endswith((".toml", ".json"))):
        try:
            return Path(sweep).expanduser().read_text()
        except OSError as exc:
            raise InvalidSpec("file", f"cannot read {sweep}: {exc.strerror or exc}") from None
    return sweep


class SweepCalls:
    """Needs the Client's `_unary` and `download`."""

    def submit_sweep(self, sweep: "str | Path", sweep_id: str | None = None) -> SweepInfo:
        """Submit a sweep file (a Path, a str naming a file, or its text); idempotent on `sweep_id` with the same
        text. InvalidSpec names the key, and its message the trial, when a trial's spec is refused."""
        request = pb.SubmitSweepRequest(text=_text_of(sweep), sweep_id=sweep_id or "")
        return SweepInfo.from_pb(self._unary("SubmitSweep", request, "submit").sweep)

    def sweep(self, sweep_id: str) -> SweepInfo:
        return SweepInfo.from_pb(self._unary("GetSweep", pb.GetSweepRequest(sweep_id=sweep_id), "sweep"))

    def sweeps(self, page_size: int = 20, owner: str = "") -> Iterator[SweepInfo]:
        """Every sweep the caller may read (or only `owner`'s), newest first, page after page."""
        token = ""
        while True:
            page = self._unary("ListSweeps", pb.ListSweepsRequest(page_size=page_size, page_token=token, owner=owner),
                               "sweeps")
            yield from (SweepInfo.from_pb(s) for s in page.sweeps)
            token = page.next_page_token
            if not token:
                return

    def cancel_sweep(self, sweep_id: str) -> SweepInfo:
        """The sweep CANCELLED, and every trial job that has not ended cancelled."""
        return SweepInfo.from_pb(self._unary("CancelSweep", pb.CancelSweepRequest(sweep_id=sweep_id), "cancel"))

    def delete_sweep(self, sweep_id: str) -> DeletedSweep:
        """An ended sweep removed with every trial job and its files (FailedPrecondition while it runs)."""
        d = self._unary("DeleteSweep", pb.DeleteSweepRequest(sweep_id=sweep_id), "delete")
        return DeletedSweep(sweep_id=d.sweep_id, trials=d.trials, files=d.files, bytes_freed=d.bytes_freed)

    def download_best(self, sweep_id: str, path: str | Path) -> Download:
        """The best checkpoint (lowest validation loss) of the sweep's best trial so far (its winner once ended)."""
        sweep = self.sweep(sweep_id)
        if not sweep.best_job_id:
            raise FailedPrecondition(f"sweep_id: sweep {sweep_id} has no trial with a value yet", kind="sweep")
        return self.download(sweep.best_job_id, path, best=True)

    def fork(self, job_id: str, from_step: int, settings: Mapping[str, Any] | None = None,
             new_job_id: str | None = None, workers: int | None = None) -> JobInfo:
        """A new job from `job_id`'s checkpoint at `from_step` with `settings` changed ({"optim.lr": 0.01});
        settings that change the parameters' shapes are refused (InvalidArgument naming the key)."""
        request = pb.ForkJobRequest(job_id=job_id, from_step=int(from_step), new_job_id=new_job_id or "",
                                    workers=int(workers or 0),
                                    settings={k: json.dumps(v) for k, v in (settings or {}).items()})
        return JobInfo.from_pb(self._unary("ForkJob", request, "fork"))
