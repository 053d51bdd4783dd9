"""Rank 0's download of the checkpoint a restarted attempt resumes from: FetchCheckpoint, verified, retried.

A part of `worker.report.CoordinatorHooks` (its `fetch()` calls `_fetch_checkpoint`), kept apart because it
runs once, before training and before the reporting thread exists, and is the one streaming download the
worker makes: into a temporary file, sha256 and size checked at the end, retried with `Backoff` (gRPC's own
retry policy cannot retry a stream broken mid-way).
"""
from __future__ import annotations

import os
from pathlib import Path

import grpc

from coordinator.errors import ChecksumMismatch
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from coordinator.wire import verified
from worker.coordinator_link import RETRYABLE, Backoff, CoordinatorRefused


class CheckpointFetch:
    """Mixed into CoordinatorHooks, whose __init__ sets what these methods read."""

    job_id: str
    workdir: Path
    rpc_timeout_s: float
    _stub: rpc.WorkerServiceStub
    _metadata: tuple[tuple[str, str], ...]

    def _fetch_checkpoint(self, info: pb.CheckpointInfo) -> Path:
        self.workdir.mkdir(parents=True, exist_ok=True)
        target = self.workdir / f"resume-step-{info.step}.npz"
        backoff = Backoff(tries=5)
        while True:
            try:
                self._download(info, target)
                return target
            except grpc.RpcError as err:
                if err.code() not in RETRYABLE or not backoff.failed():
                    raise CoordinatorRefused(f"FetchCheckpoint step {info.step}: {err.code().name}: {err.details()}",
                                             err.code()) from None
            backoff.wait()

    def _download(self, info: pb.CheckpointInfo, target: Path) -> None:
        """One FetchCheckpoint into `target`, through a temporary file; sha256 and size checked at the end."""
        tmp = target.with_suffix(".npz.part")
        stream = self._stub.FetchCheckpoint(pb.FetchCheckpointRequest(job_id=self.job_id, step=info.step),
                                            timeout=self.rpc_timeout_s + info.size_bytes / 20e6,
                                            metadata=self._metadata, wait_for_ready=True)
        try:
            with open(tmp, "wb") as out:
                for data in verified((chunk.data for chunk in stream), info.sha256, info.size_bytes,
                                     what=f"the checkpoint of step {info.step}"):
                    out.write(data)
        except (grpc.RpcError, ChecksumMismatch, OSError):
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
