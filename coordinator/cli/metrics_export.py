"""`gradmesh metrics ID [ID ...] --tensorboard DIR`: jobs' metric histories as TensorBoard runs.

    gradmesh metrics digits-1 digits-2 --tensorboard tb/     # tb/digits-1/events.out.tfevents..., tb/digits-2/...
    gradmesh metrics lr-sweep --tensorboard tb/              # a sweep's id: every trial (jobs labelled sweep=ID)
    tensorboard --logdir tb/

One run per job (a directory named after it), with the values of `gradmesh metrics ID --csv`
(coordinator.telemetry.tensorboard). An ID that is no job is taken as a sweep's id; one that is neither is an
error naming it, before anything is written.
"""
from __future__ import annotations

from pathlib import Path

from coordinator.cli.commands import EXIT_OK, CliError, cmd_metrics, make_client
from coordinator.errors import NotFound
from coordinator.telemetry.tensorboard import write_run


def resolve_jobs(client, ids: list[str]) -> list[str]:
    """The job ids that `ids` name: each a job, or a sweep's id standing for its trials (label sweep=ID)."""
    jobs: list[str] = []
    for name in ids:
        try:
            jobs.append(client.get(name).id)
            continue
        except NotFound:
            pass
        trials = sorted(j.id for j in client.list() if j.labels.get("sweep") == name)
        if not trials:
            raise CliError(f"metrics: {name} is neither a job nor a sweep with trials")
        jobs += trials
    return list(dict.fromkeys(jobs))


def cmd_metrics_or_export(args) -> int:
    """`gradmesh metrics`: the table, --json or --csv of one job (coordinator.cli.commands), or --tensorboard."""
    return export_tensorboard(args) if getattr(args, "tensorboard", None) else cmd_metrics(args)


def export_tensorboard(args) -> int:
    out = Path(args.tensorboard)
    with make_client(args) as client:
        jobs = resolve_jobs(client, args.job_ids)
        for job_id in jobs:
            points = client.metrics(job_id, from_step=args.from_step)
            path = write_run(out / job_id, points)
            print(f"{job_id}: {len(points)} point(s) → {path}")
    print(f"tensorboard --logdir {out}")
    return EXIT_OK
