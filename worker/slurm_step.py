"""The batch step of an attempt under Slurm (`gradmesh serve --executor slurm`): runs srun, and sends what it
prints (every rank's output and srun's own) to the coordinator, which appends it to the attempt's log, so
`gradmesh logs` and the dashboard show it although this node need not see the coordinator's disk.

    python -m worker.slurm_step --coordinator HOST:PORT --job ID --attempt K --scratch DIR -- srun ... python -m worker ...

(coordinator.supervision.slurm writes this line into the batch script; not meant to be typed.) The token is
the attempt's, from GRADMESH_JOB_TOKEN, as for the ranks. What it reads it also writes to its own stdout, the
node-local file of sbatch's --output, so nothing is lost while the coordinator is away: the calls are retried
with a backoff (each carries its offset in the output, so a retry appends nothing twice) and up to
BUFFER_BYTES wait for it; the oldest are dropped beyond that, and the log says how many bytes are missing.

A rank that dies ends the step through srun's --kill-on-bad-exit, which asks Slurm's controller: while
slurmctld is away, the other ranks would wait in their next collective for the hang watchdog. So when srun
says a task died ("srun: error: NODE: task 1: Killed") and is still running KILL_AFTER_S later, this process
sends srun two SIGINTs (srun's "sending Ctrl-C to StepId"), which reach every task through the nodes' slurmd
without the controller; the ranks die of SIGINT under Slurm (worker/__main__.py).

When srun ends, what is left is sent with srun's exit code (for at most FLUSH_S: the coordinator may end the
attempt on that word while Slurm's controller, which records a job's end, is away), DIR (the ranks' node-local scratch, their
--out) is removed, and this process exits with srun's code. Exit code 4 (the ranks stopped on request, with a
checkpoint: a cancel, or an outside `scancel --signal=TERM`) is ended with `scancel` of this Slurm job, so
Slurm's own view (squeue, sacct) says CANCELLED, not FAILED.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc

from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.wire import JOB_TOKEN_ENV, JOB_TOKEN_HEADER, TLS_CA_ENV

CHUNK_BYTES = 256 << 10     # one AppendLog at most (the coordinator's limit)
BUFFER_BYTES = 16 << 20     # output held for a coordinator that does not answer
FLUSH_S = 30.0              # after srun ended: how long the rest may take to reach the coordinator
STOPPED_ON_REQUEST = 4      # the worker's exit code for "stopped on request, after a checkpoint"
KILL_AFTER_S = 5.0          # a task died and srun still runs: end the step from here
TASK_DIED = re.compile(rb"^srun: error: \S+: tasks? [0-9,-]+: (?!Exited with exit code 4$)(.+)$", re.M)
GIVE_UP = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.INVALID_ARGUMENT,
           grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.PERMISSION_DENIED}


class LogShipper:
    """Output bytes in, AppendLog calls out, from a thread of its own; `close()` sends the rest."""

    def __init__(self, address: str, job_id: str, attempt: int, token: str, tls_ca: Path | None = None):
        from worker.coordinator_link import open_channel
        self._channel = open_channel(address, tls_ca)
        self._stub = rpc.WorkerServiceStub(self._channel)
        self._metadata = ((JOB_TOKEN_HEADER, token),)
        self.job_id, self.attempt = job_id, attempt
        self._buffer = bytearray()
        self._start = 0            # the offset in the output of _buffer[0]
        self._cond = threading.Condition()
        self._closing = False
        self._exit_code: int | None = None   # srun's, told in the last call
        self.told = False                    # the last call (all output, and the end) was taken
        self.refused = ""          # why the coordinator will take no more (then lines only stay local)
        self._thread = threading.Thread(target=self._run, name="gradmesh-log", daemon=True)
        self._thread.start()

    def add(self, data: bytes) -> None:
        with self._cond:
            if self.refused:
                return
            self._buffer += data
            if len(self._buffer) > BUFFER_BYTES:  # the coordinator is away too long: drop the oldest
                dropped = len(self._buffer) - BUFFER_BYTES
                del self._buffer[:dropped]
                self._start += dropped
            self._cond.notify()

    def close(self, exit_code: int, timeout_s: float = FLUSH_S) -> bool:
        """Send what is left and srun's exit code, for at most `timeout_s`; True when all of it reached the
        coordinator."""
        with self._cond:
            self._closing = True
            self._exit_code = exit_code
            self._cond.notify()
        self._thread.join(timeout_s)
        with self._cond:
            done = self.told and not self.refused
            self._closing = True
            self.refused = self.refused or ("" if done else "closed")
            self._cond.notify()
        self._channel.close()
        return done

    def _run(self) -> None:
        delay = 0.5
        while True:
            with self._cond:
                while not self._buffer and not self._closing:
                    self._cond.wait()
                if self.refused:
                    return
                offset, data = self._start, bytes(self._buffer[:CHUNK_BYTES])
                last = self._closing and len(data) == len(self._buffer)
                code = self._exit_code if last else None
            try:
                held = self._stub.AppendLog(pb.AppendLogRequest(job_id=self.job_id, attempt=self.attempt,
                                                                offset=offset, data=data, ended=code is not None,
                                                                exit_code=code or 0),
                                            timeout=10, metadata=self._metadata).offset
            except grpc.RpcError as err:
                if err.code() in GIVE_UP:
                    with self._cond:
                        self.refused = f"{err.code().name}: {err.details()}"
                    print(f"gradmesh: the coordinator takes no more of this attempt's output ({self.refused}); "
                          "it stays in this node's file only", file=sys.stderr, flush=True)
                    return
                time.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            delay = 0.5
            with self._cond:
                sent = max(0, min(held, self._start + len(self._buffer)) - self._start)
                del self._buffer[:sent]
                self._start += sent
                if code is not None and not self._buffer:
                    self.told = True
                    return
            if not self._closing:
                time.sleep(0.2)  # lines come in bursts: send them together


class StepGuard:
    """Ends srun's step when a task died and srun did not end it (see the module's docstring)."""

    def __init__(self, child: subprocess.Popen, say):
        self.child = child
        self._say = say  # a line for the node's file and the coordinator's log
        self._tail = b""
        self._timer: threading.Timer | None = None

    def saw(self, data: bytes) -> None:
        text = self._tail + data
        cut = text.rfind(b"\n") + 1
        self._tail = text[cut:][-4096:]
        if self._timer is None and TASK_DIED.search(text[:cut]):
            self._timer = threading.Timer(KILL_AFTER_S, self._end_step)
            self._timer.daemon = True
            self._timer.start()

    def _end_step(self) -> None:
        if self.child.poll() is not None:
            return
        self._say(f"gradmesh: a task died and srun has not ended the step {KILL_AFTER_S:g} s later (is Slurm's "
                  "controller away?): ending it from here with srun's Ctrl-C")
        for _ in range(2):  # two within a second: srun sends the step's tasks SIGINT through their slurmd
            if self.child.poll() is None:
                self.child.send_signal(signal.SIGINT)
            time.sleep(0.3)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()


def self_cancel() -> None:
    """`scancel` this Slurm job, so that Slurm calls the stop on request CANCELLED."""
    job = os.environ.get("SLURM_JOB_ID", "")
    if job.isdigit() and shutil.which("scancel"):
        try:
            subprocess.run(["scancel", job], capture_output=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worker.slurm_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--job", required=True)
    parser.add_argument("--attempt", type=int, required=True)
    parser.add_argument("--scratch", type=Path, default=None, help="the ranks' node-local directory: removed at the end")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- srun ...")
    opts = parser.parse_args(argv)
    command = opts.command[1:] if opts.command[:1] == ["--"] else opts.command
    if not command:
        parser.error("give the command to run after --")
    tls_ca = Path(os.environ[TLS_CA_ENV]) if os.environ.get(TLS_CA_ENV) else None
    shipper = LogShipper(opts.coordinator, opts.job, opts.attempt, os.environ.get(JOB_TOKEN_ENV, ""), tls_ca)
    child = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    # scancel (without --signal) and the time limit signal this batch step too: srun takes a SIGTERM as "end
    # the step", which is what was asked; the output that follows is still read and sent
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda number, _frame: child.send_signal(number))
    out = sys.stdout.buffer
    lock = threading.Lock()

    def emit(data: bytes) -> None:
        with lock:
            out.write(data)
            out.flush()
            shipper.add(data)

    guard = StepGuard(child, lambda line: emit(line.encode() + b"\n"))
    while True:
        data = os.read(child.stdout.fileno(), 65536)
        if not data:
            break
        emit(data)
        guard.saw(data)
    code = child.wait()
    guard.close()
    if not shipper.close(code):
        print(f"gradmesh: part of this attempt's output did not reach the coordinator ({shipper.refused}); "
              "this file holds all of it", flush=True)
    if opts.scratch is not None:
        shutil.rmtree(opts.scratch, ignore_errors=True)
    if code == STOPPED_ON_REQUEST:
        self_cancel()
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
