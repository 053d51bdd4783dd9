"""A checkpoint streamed to a file: each chunk hashed and written on a thread, fsynced, checked, renamed.

    download = receive_checkpoint(path, job_id, start_call=lambda: stub.DownloadCheckpoint(request, ...),
                                  rpc_error=lambda err: translate_error(err, ...))

The file is written as a temporary ".<name>.<random>.part" beside `path` and renamed into place only when
its sha256 and size match what the coordinator's first message says (wire.Sha256Tally, the one streaming
verifier); on any failure the partial file is removed and `path` is untouched. Receiving the next chunk
overlaps with hashing and writing the last one, the file's blocks are reserved up front and its pages are
written out while more arrive (writeback.py): this path is what `bench/service.py` measures in MiB/s.
`Client.download` chooses the checkpoint and opens the call; everything after that is here.
"""
from __future__ import annotations

import os
import queue
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, BinaryIO, Callable

import grpc

from coordinator import wire
from coordinator.client.types import CheckpointInfo, Download
from coordinator.client.writeback import start_writeback
from coordinator.errors import ChecksumMismatch, GradmeshError


def receive_checkpoint(path: str | Path, job_id: str, *, start_call: Callable[[], Any],
                       rpc_error: Callable[[grpc.RpcError], GradmeshError]) -> Download:
    """Stream the checkpoint that `start_call()` (a DownloadCheckpoint call: its chunks, and cancel()) answers
    with to `path`, verify its sha256 and size, then rename it into place; a mismatch raises ChecksumMismatch
    and leaves `path` untouched, a gRPC failure raises `rpc_error(err)`. The call is started once the
    temporary file exists and cancelled however this ends."""
    path = Path(path).expanduser()
    target_dir = path.parent if str(path.parent) else Path(".")
    target_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=target_dir)
    call = start_call()
    sink = _VerifyingWriter(os.fdopen(fd, "wb"))
    info = None
    try:
        for chunk in call:
            if info is None:
                if not chunk.HasField("info"):
                    raise ChecksumMismatch("the coordinator sent checkpoint data before its sha256")
                info = CheckpointInfo.from_pb(chunk.info)
                sink.reserve(info.size_bytes)
            data = chunk.data   # each read of a bytes field copies it (1 MiB): read it once
            if data:
                sink.put(data)
        tally = sink.finish()
        if info is None:
            raise ChecksumMismatch(f"the coordinator sent an empty stream for job {job_id}'s checkpoint")
        tally.check(info.sha256, info.size_bytes, what=f"checkpoint of job {job_id} at step {info.step} is corrupt")
        os.replace(tmp_name, path)
        tmp_name = None
    except grpc.RpcError as err:
        raise rpc_error(err) from None
    finally:
        call.cancel()
        sink.abort()
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return Download(path=path, info=info, seconds=time.perf_counter() - started)


WRITEBACK_BYTES = 8 << 20   # a download asks the kernel to write out each 8 MiB as it lands (writeback.py)


class _VerifyingWriter:
    """Hashes (wire.Sha256Tally, the one streaming verifier) and writes chunks on its own thread, so receiving
    the next chunk overlaps with both (sha256 and write() release the GIL) and every byte is hashed once.
    finish() flushes, fsyncs and returns the tally for `check`."""

    _DONE = object()

    def __init__(self, out: BinaryIO):
        self._out = out
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._tally = wire.Sha256Tally()
        self._error: BaseException | None = None
        self._closed = False
        self._written = self._flushed = 0
        self._thread = threading.Thread(target=self._run, name="gradmesh-download", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                data = self._queue.get()
                if data is self._DONE:
                    self._out.flush()
                    os.fsync(self._out.fileno())
                    return
                self._tally.add(data)
                self._out.write(data)
                self._written += len(data)
                if self._written - self._flushed >= WRITEBACK_BYTES:   # overlap the disk with the transfer
                    self._out.flush()
                    start_writeback(self._out.fileno(), self._flushed, self._written - self._flushed)
                    self._flushed = self._written
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread by finish()
            self._error = exc
            while self._queue.get() is not self._DONE:  # keep draining so put() never blocks forever
                pass
        finally:
            self._out.close()

    def reserve(self, size: int) -> None:
        """Allocate the file's blocks up front (called before any data is queued): writing into reserved
        blocks was 1.3-1.6x faster here than extending the file chunk by chunk. Best effort: where it is
        refused, the writes themselves allocate (and report a full disk) as before."""
        try:
            if size > 0:
                os.posix_fallocate(self._out.fileno(), 0, size)
        except (OSError, AttributeError, ValueError):
            pass

    def put(self, data: bytes) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(data)

    def finish(self) -> wire.Sha256Tally:
        self._closed = True
        self._queue.put(self._DONE)
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._tally

    def abort(self) -> None:
        if not self._closed:
            self._closed = True
            self._queue.put(self._DONE)
            self._thread.join()
