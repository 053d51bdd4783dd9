"""What clients and ranks do to jobs, free of gRPC: the core the servicers and the dashboard adapt.

`operations.Jobs` (submit, register, get, list, cancel, resume, delete, metrics, checkpoints; each asks
coordinator.access.roles whether its caller may, and writes the audit trail), `submission`
(the checks a new job passes before it is stored), `views` (what clients see of a job), `streams` (a job's
events and an attempt's log, followed), `worker_api` (what the ranks of a running attempt may ask and tell).

May import: supervision, files, fleet, team, access, the store and the shared vocabulary. Not core, api,
dashboard or cli.
"""
