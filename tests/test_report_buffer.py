"""Rank 0's report buffer is bounded, and a report refused for its size is split or dropped, never retried
as it was: against a real gRPC WorkerService that caps the points per report, as the coordinator does."""
from __future__ import annotations

import threading
from concurrent import futures

import grpc
import pytest

from coordinator import wire
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from worker.report import MAX_POINTS_PER_REPORT, CoordinatorHooks

pytestmark = pytest.mark.timeout(60)


class CappingService(rpc.WorkerServiceServicer):
    """Refuses a ReportProgress with more than `cap` points (RESOURCE_EXHAUSTED, kind "points"), and any report
    holding a point at a `poisoned` step; records the size of every call and the points it accepted."""

    def __init__(self, cap: int, poisoned: int = -1):
        self.cap, self.poisoned = cap, poisoned
        self.sizes: list[int] = []
        self.accepted: list[int] = []
        self.refused: list[int] = []  # the size of every refused call
        self.lock = threading.Lock()

    def ReportProgress(self, request, context):
        with self.lock:
            self.sizes.append(len(request.points))
        if len(request.points) > self.cap or any(p.step == self.poisoned for p in request.points):
            with self.lock:
                self.refused.append(len(request.points))
            context.set_trailing_metadata(((wire.KIND_TRAILER, "points"),))
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"points: at most {self.cap} per report")
        with self.lock:
            self.accepted += [p.step for p in request.points]
        return pb.ReportProgressResponse()


@pytest.fixture
def service():
    servers = []

    def start(**kwargs):
        servicer = CappingService(**kwargs)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=wire.SERVER_OPTIONS)
        rpc.add_WorkerServiceServicer_to_server(servicer, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return servicer, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace=None)


def fill(hooks: CoordinatorHooks, steps) -> None:
    for step in steps:
        hooks.on_metrics({"step": step, "train_loss": 1.0})


def test_reports_carry_at_most_the_cap_and_a_refused_one_is_split(service, tmp_path, capsys):
    servicer, address = service(cap=300)
    hooks = CoordinatorHooks(address, "job", "t", 1, tmp_path, heartbeat_s=0.05)
    fill(hooks, range(1, 2501))
    hooks.on_start(step=0, total_steps=2500, epoch=0, info={})
    assert hooks.close(timeout=30)
    assert max(servicer.sizes) <= MAX_POINTS_PER_REPORT == 1000
    assert sorted(servicer.accepted) == list(range(1, 2501))  # nothing lost, nothing twice
    assert servicer.refused == [1000, 500], servicer.sizes  # each size refused once, then halved: never retried as is
    assert capsys.readouterr().err.count("sending at most") == 2


def test_a_single_point_refused_for_its_content_is_dropped_with_one_line(service, tmp_path, capsys):
    servicer, address = service(cap=1000, poisoned=7)
    hooks = CoordinatorHooks(address, "job", "t", 1, tmp_path, heartbeat_s=0.05)
    fill(hooks, range(1, 21))
    hooks.on_start(step=0, total_steps=20, epoch=0, info={})
    assert hooks.close(timeout=30)
    assert sorted(servicer.accepted) == [s for s in range(1, 21) if s != 7]
    assert servicer.refused == [20, 10, 5, 2, 1], servicer.sizes  # split down to the bad point, then dropped
    assert capsys.readouterr().err.count("dropping 1 point(s)") == 1


def test_the_buffer_is_bounded_while_nothing_is_delivered(service, tmp_path, capsys):
    from worker.report import MAX_BUFFERED_POINTS
    servicer, address = service(cap=1000)
    hooks = CoordinatorHooks(address, "job", "t", 1, tmp_path, heartbeat_s=0.05)
    fill(hooks, range(1, MAX_BUFFERED_POINTS + 501))  # the sending thread starts with on_start, not before
    assert capsys.readouterr().err.count("dropping the oldest") == 1
    hooks.on_start(step=0, total_steps=0, epoch=0, info={})
    assert hooks.close(timeout=30)
    assert sorted(servicer.accepted) == list(range(501, MAX_BUFFERED_POINTS + 501))  # the oldest went first
