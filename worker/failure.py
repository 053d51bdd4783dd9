"""Why a worker is failing, as one typed value (the proto's `WorkerFailure`), and the exit code that goes with it.

    failure = failure_from_exception(exc, comm, step=progress.step)
    hooks.report_failure(failure)     # the structured last word; a no-op without a coordinator
    return exit_code(failure.cause)

The cause is the proto enum `FailureCause` (proto/gradmesh/v1/gradmesh.proto), the one list of causes
shared with the coordinator, which decides from it whether to restart. Exit codes are the other half of
that contract (the coordinator falls back on them, and on the log, when a report never arrived):

    cause            raised as                          exit code
    NAN              train.Divergence                   3  (never retried)
    BAD_SPEC         spec.SpecError                     2  (never retried)
    BAD_DATA         data.DataError                     2  (never retried)
    BAD_CHECKPOINT   checkpoint.CheckpointError         2  (never retried)
    OUT_OF_MEMORY    MemoryError                        1  (an uncaught exception: the abort hook ends the job)
    RANK_ERROR       any other exception                1
    HANG             the hang watchdog's verdict        1
"""
from __future__ import annotations

from coordinator.rpc import gradmesh_pb2 as pb
from worker.checkpoint import CheckpointError
from worker.data import DataError
from worker.spec import SpecError
from worker.train import Divergence

EXIT_OK, EXIT_ERROR, EXIT_CONFIG, EXIT_NAN, EXIT_STOPPED = 0, 1, 2, 3, 4

# The exceptions the worker expects, with their cause and the words that lead their message; anything
# else is a RANK_ERROR.
_CAUSES: tuple[tuple[type[BaseException], int, str], ...] = (
    (Divergence, pb.FAILURE_CAUSE_NAN, ""),
    (SpecError, pb.FAILURE_CAUSE_BAD_SPEC, "bad spec: "),
    (DataError, pb.FAILURE_CAUSE_BAD_DATA, ""),
    (CheckpointError, pb.FAILURE_CAUSE_BAD_CHECKPOINT, "checkpoint: "),
    (MemoryError, pb.FAILURE_CAUSE_OUT_OF_MEMORY, "out of memory: "),
)
_EXIT_CODES = {pb.FAILURE_CAUSE_NAN: EXIT_NAN, pb.FAILURE_CAUSE_BAD_SPEC: EXIT_CONFIG,
               pb.FAILURE_CAUSE_BAD_DATA: EXIT_CONFIG, pb.FAILURE_CAUSE_BAD_CHECKPOINT: EXIT_CONFIG}
MAX_MESSAGE_CHARS = 4000


def exit_code(cause: int) -> int:
    """The worker's exit code for a failure with this cause."""
    return _EXIT_CODES.get(cause, EXIT_ERROR)


def failure(cause: int, comm, message: str, *, step: int = 0, exception_type: str = "") -> pb.WorkerFailure:
    """A failure of this rank (its number and host from `comm`)."""
    return pb.WorkerFailure(cause=cause, rank=comm.rank, host=comm.hostname, exception_type=exception_type,
                            message=message[:MAX_MESSAGE_CHARS], step=step)


def failure_from_exception(exc: BaseException, comm, *, step: int = 0) -> pb.WorkerFailure:
    """What `exc`, raised on this rank at `step`, says about the run (its message is what a person reads)."""
    cause, lead = next(((cause, lead) for kind, cause, lead in _CAUSES if isinstance(exc, kind)),
                       (pb.FAILURE_CAUSE_RANK_ERROR, ""))
    # gradmesh's own typed errors are fully said by their cause; only a foreign exception's type helps a reader
    foreign = cause in (pb.FAILURE_CAUSE_RANK_ERROR, pb.FAILURE_CAUSE_OUT_OF_MEMORY)
    return failure(cause, comm, lead + (str(exc) or type(exc).__name__), step=step,
                   exception_type=type(exc).__name__ if foreign else "")
