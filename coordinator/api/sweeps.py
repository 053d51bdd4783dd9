"""The JobService's sweep and fork methods (SubmitSweep, GetSweep, ListSweeps, CancelSweep,
DeleteSweep, ForkJob): thin
adapters over coordinator.sweeps.service and coordinator.jobs.fork, mixed into `servicer.JobServicer`, with the
conversion of a sweep's view to its gradmesh.v1 message. Each acts for the call's user (`self.caller(context)`):
the core asks coordinator.access.roles whether that user may, as for jobs."""
from __future__ import annotations

import json
import math

from coordinator.api.convert import job_to_pb
from coordinator.jobs import fork
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.sweeps.views import SweepView


def sweep_to_pb(v: SweepView) -> pb.Sweep:
    s, spec = v.sweep, v.spec
    trials = [pb.SweepTrial(trial=t.trial, job_id=t.job_id, params={k: json.dumps(x) for k, x in t.params.items()},
                            status=t.status, rung=t.rung, job_state=int(t.job_state) if t.job_state else 0,
                            step=t.step, values=[pb.RungValue(rung=r, step=step, value=value)
                                                 for r, step, value in t.values])
              for t in v.trials]
    return pb.Sweep(id=s.id, name=s.name, state=int(s.state), message=s.message, method=spec.method,
                    metric=spec.metric, goal=spec.goal, trials_total=spec.trials, max_concurrent=v.max_concurrent,
                    rungs=list(v.rungs), trials=trials,
                    promotions=[pb.Promotions(trials=list(p)) for p in v.promotions],
                    best_trial=-1 if v.best_trial is None else v.best_trial, best_job_id=v.best_job_id,
                    best_value=v.best_value if not math.isnan(v.best_value) else math.nan,
                    created_unix=s.created, ended_unix=s.ended, text=s.text, owner=s.owner)


class SweepMethods:
    """Needs `self.sweeps` (coordinator.sweeps.service.Sweeps), `self.jobs` (coordinator.jobs.operations.Jobs) and
    `self.caller(context)`; the servicer's `rpc` decorator wraps each method (applied in servicer.py)."""

    def SubmitSweep(self, request, context):
        view, created = self.sweeps.submit(request.text, request.sweep_id, caller=self.caller(context))
        return pb.SubmitSweepResponse(sweep=sweep_to_pb(view), created=created)

    def GetSweep(self, request, context):
        return sweep_to_pb(self.sweeps.get(request.sweep_id, caller=self.caller(context)))

    def ListSweeps(self, request, context):
        views, token = self.sweeps.list(request.page_size, request.page_token, owner=request.owner,
                                        caller=self.caller(context))
        return pb.ListSweepsResponse(sweeps=[sweep_to_pb(v) for v in views], next_page_token=token)

    def CancelSweep(self, request, context):
        return sweep_to_pb(self.sweeps.cancel(request.sweep_id, caller=self.caller(context)))

    def DeleteSweep(self, request, context):
        gone = self.sweeps.delete(request.sweep_id, caller=self.caller(context))
        return pb.DeleteSweepResponse(sweep_id=gone.sweep_id, trials=gone.trials, files=gone.files,
                                      bytes_freed=gone.bytes_freed)

    def ForkJob(self, request, context):
        settings = fork.settings_from_json(dict(request.settings))
        return job_to_pb(fork.fork(self.jobs, request.job_id, request.from_step, settings,
                                   new_id=request.new_job_id, workers=request.workers, caller=self.caller(context)))
