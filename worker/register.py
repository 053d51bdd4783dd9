"""A run its user launches, registered with a coordinator so that it is tracked like any job there:

    mpirun -n 2 python -m worker --spec job.toml --coordinator HOST:PORT --register [--out DIR]
    srun --mpi=pmi2 -n 2 python -m worker --spec job.toml --coordinator HOST:PORT --register

Rank 0 sends the spec with RegisterRun (the client token: --token, else GRADMESH_TOKEN, else the token file
of --data-dir) and gets a job id, attempt 1 and a worker token; every rank then reports as under a
coordinator (metrics, checkpoints, failures), trains its own spec on its own data, and a cancel stops it at
a step boundary. At the end rank 0 sends one last report that says it exits, and with which code: only the
run itself sees its end. The coordinator never restarts it: a relaunch with --register is a new job.
"""
from __future__ import annotations

import grpc

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.wire import JOB_TOKEN_HEADER
from worker.coordinator_link import Backoff, open_channel, say

REGISTER_TIMEOUT_S = 30.0
EXIT_REPORT_TIMEOUT_S = 10.0


class RegistrationRefused(RuntimeError):
    pass


def register(address: str, spec_text: str, client_token: str, *, workers: int, hosts: str = "",
             tls_ca=None, job_id: str = "") -> tuple[str, str, int]:
    """(job id, worker token, attempt) of a new external job; RegistrationRefused saying why not."""
    channel = open_channel(address, tls_ca)
    try:
        reply = rpc.JobServiceStub(channel).RegisterRun(
            pb.RegisterRunRequest(spec=spec_text, job_id=job_id, workers=workers, hosts=hosts),
            timeout=REGISTER_TIMEOUT_S, metadata=(("authorization", f"Bearer {client_token}"),),
            wait_for_ready=True)
    except grpc.RpcError as err:
        raise RegistrationRefused(f"RegisterRun at {address}: {err.code().name}: {err.details()}") from None
    finally:
        channel.close()
    return reply.job.id, reply.worker_token, reply.attempt


def report_exit(address: str, job_id: str, token: str, attempt: int, code: int, *, tls_ca=None,
                tries: int = 3) -> bool:
    """Rank 0's last word: the run exits with `code` (after every point and checkpoint was delivered)."""
    channel = open_channel(address, tls_ca)
    backoff = Backoff(tries=tries, first_s=0.5, cap_s=2.0)
    try:
        while True:
            try:
                rpc.WorkerServiceStub(channel).ReportProgress(
                    pb.ReportProgressRequest(job_id=job_id, attempt=attempt, exiting=True, exit_code=code),
                    timeout=EXIT_REPORT_TIMEOUT_S, metadata=((JOB_TOKEN_HEADER, token),))
                return True
            except grpc.RpcError as err:
                if err.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION) \
                        or not backoff.failed():
                    say(f"could not report the exit to {address}: {err.code().name}: {err.details()}")
                    return False
                backoff.wait()
    finally:
        channel.close()
