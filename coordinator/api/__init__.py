"""The coordinator on the wire: gRPC servicers as thin adapters over the core, and the server's start-up.

`servicer` (JobService and WorkerService: each method converts, calls the core, converts back; typed errors
become status codes with trailers), `convert` (core records <-> gradmesh.v1 messages), `server` (the data
directory, the token, TLS, the interceptor, health and reflection, the dashboard, the scheduler, bound).

May import: everything below it: core, jobs, the scheduler, supervision, fleet, files, access, store, the
dashboard, the generated rpc package and the shared vocabulary. Only cli imports it.
"""
