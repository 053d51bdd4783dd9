"""bench/service.py, phase 4: checkpoint downloads through the SDK against a bare gRPC stream of the same
bytes (this file, run as `python bench/service_download.py FILE`, is that bare server), the coordinator's own
stream read and dropped, sha256 alone and the disk's write+fsync alone."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

from service_setup import digits_spec, wait_state

import grpc  # noqa: E402

from coordinator.client import Client, JobState  # noqa: E402
from coordinator.rpc import gradmesh_pb2 as pb  # noqa: E402

BARE_METHOD = "/bench.Bare/Stream"


# ---------------------------------------------------------------- 4. download

def bench_download(client: Client, tmp: Path, repeats: int) -> tuple[list[float], int]:
    job = client.submit(digits_spec(steps=2, workers=1, layers=(64, 2304, 2304, 10), every=0, eval_every=2),
                        labels={"bench": "download"})
    final = wait_state(client, job.id, lambda j: j.is_terminal(), timeout=300)
    if final.state is not JobState.SUCCEEDED:
        raise RuntimeError(f"download bench job {job.id} {final.state.name}: {final.message}")
    rates, raw_rates, bare_rates, size = [], [], [], 0
    path = Path(client.download(job.id, tmp / "download-peer.npz", latest=True).path)
    bare = subprocess.Popen([sys.executable, __file__, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        port = int(bare.stdout.readline())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 << 20)])
        stream = channel.unary_stream(BARE_METHOD)
        bare_rates = [_bare_rate(stream) for _ in range(1)]  # warm-up, discarded
        bare_rates = []
        rates = _download_runs(client, job.id, tmp, repeats, raw_rates, bare_rates, stream)
        size = path.stat().st_size
        channel.close()
    finally:
        bare.kill()
        bare.wait()
        path.unlink(missing_ok=True)
    return rates, raw_rates, bare_rates, size


def _bare_rate(stream) -> float:
    """MiB/s of a bare gRPC server-stream of the same bytes: no handler logic, no hash, no file, read and dropped."""
    t = time.perf_counter()
    received = sum(len(chunk) for chunk in stream(b"", timeout=60))
    return received / (time.perf_counter() - t) / (1 << 20)


def bare_stream_server(path: str) -> int:
    """The bare peer: the file's bytes in memory, streamed in the same 1 MiB chunks as raw messages."""
    from concurrent import futures

    from coordinator.wire import CHUNK_BYTES
    data = Path(path).read_bytes()
    pieces = [data[i:i + CHUNK_BYTES] for i in range(0, len(data), CHUNK_BYTES)]
    handler = grpc.method_handlers_generic_handler("bench.Bare", {"Stream": grpc.unary_stream_rpc_method_handler(
        lambda request, context: iter(pieces))})
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), handlers=[handler],
                         options=[("grpc.max_send_message_length", 64 << 20)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()
    return 0


def _download_runs(client, job_id, tmp, repeats, raw_rates, bare_rates, stream) -> list[float]:
    rates = []
    for i in range(repeats):
        result = client.download(job_id, tmp / f"download-{i}.npz", latest=True)
        size = result.info.size_bytes
        rates.append(size / result.seconds / (1 << 20))
        (tmp / f"download-{i}.npz").unlink()
        # the peer: the same stream read and thrown away (no sha256, no file)
        t = time.perf_counter()
        received = sum(len(chunk.data) for chunk in client._stub.DownloadCheckpoint(
            pb.DownloadCheckpointRequest(job_id=job_id, latest=True), timeout=60, metadata=client._metadata))
        raw_rates.append(received / (time.perf_counter() - t) / (1 << 20))
        bare_rates.append(_bare_rate(stream))
    return rates


def disk_rate(directory: Path, size: int = 63 << 20) -> float:
    """MiB/s of writing `size` bytes in 1 MiB pieces into a reserved file and fsyncing it, as Client.download
    does, with no network and no hash: the disk's own ceiling for a durable download here."""
    piece = os.urandom(1 << 20)
    path = directory / "disk-rate.bin"
    t = time.perf_counter()
    with open(path, "wb") as f:
        os.posix_fallocate(f.fileno(), 0, size)
        for _ in range(size >> 20):
            f.write(piece)
        f.flush()
        os.fsync(f.fileno())
    seconds = time.perf_counter() - t
    path.unlink()
    return (size >> 20) / seconds


def sha256_rate(size: int = 64 << 20) -> float:
    """MiB/s of hashlib.sha256 over 1 MiB pieces in memory: the ceiling of any verified download here."""
    piece = os.urandom(1 << 20)
    digest = hashlib.sha256()
    t = time.perf_counter()
    for _ in range(size >> 20):
        digest.update(piece)
    return (size >> 20) / (time.perf_counter() - t)


if __name__ == "__main__":
    sys.exit(bare_stream_server(sys.argv[1]))
