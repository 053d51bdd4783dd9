"""The gradmesh coordinator: a gRPC service that queues training jobs, runs them with `mpirun` (or Slurm),
tracks their metrics, and stores and serves their checkpoints.

The folders are the architecture, lowest first; each imports only from the rows above it:

    errors states events     the shared vocabulary (modules here at the top): error classes, job states,
    wire reports hosts       the change signal, the wire contract, what ranks report, host lists
    store/                   SQLite: the durable record
    access/                  tokens, limits, validation, admission, the auth interceptor, roles (who may what)
    fleet/  files/  team/    hosts' health and placement; checkpoint files and job directories on disk;
                             users, their tokens and the audit trail, and fair share of the slots
    supervision/             attempts: launch, watch, settle, re-adopt; local mpirun and Slurm executors
    scheduler  jobs/         slots and the queue; what clients and ranks do to jobs (free of gRPC)
    sweeps/                  many trials of one spec, paused at rungs, decided in trial-number order
    core  telemetry/         the parts wired together; what Prometheus, MLflow, webhooks and TensorBoard get
    dashboard/               the web dashboard over the core
    api/                     gRPC servicers over the core, and the server's start-up
    cli/                     the `gradmesh` command

`client/` (the Python SDK) stands apart: it imports only the vocabulary and the generated `rpc/` package,
so a client-only installation needs none of the server. tests/test_architecture.py holds these rules.
"""
