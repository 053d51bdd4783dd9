"""The first metric point of an attempt (and with it its step) is reported at once, not at the next heartbeat
(submit -> first step); steps without a point, and later points, still ride the heartbeat."""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from coordinator import wire
from coordinator.rpc import gradmesh_pb2 as pb
from coordinator.rpc import gradmesh_pb2_grpc as rpc
from worker.report import CoordinatorHooks

pytestmark = pytest.mark.timeout(60)


class RecordingService(rpc.WorkerServiceServicer):
    def __init__(self):
        self.steps: list[int] = []
        self.lock = threading.Lock()

    def ReportProgress(self, request, context):
        with self.lock:
            self.steps.append(request.step)
        return pb.ReportProgressResponse()


@pytest.fixture
def address_and_service():
    servicer = RecordingService()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=wire.SERVER_OPTIONS)
    rpc.add_WorkerServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield f"127.0.0.1:{port}", servicer
    server.stop(grace=None)


def _reported(servicer, step: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        with servicer.lock:
            if any(s >= step for s in servicer.steps):
                return True
        time.sleep(0.01)
    return False


def test_the_first_point_is_sent_without_waiting_for_the_heartbeat(address_and_service, tmp_path):
    address, servicer = address_and_service
    hooks = CoordinatorHooks(address, "job", "t", 1, tmp_path, heartbeat_s=600)   # a heartbeat far away
    hooks.on_start(step=0, total_steps=100, epoch=0, info={})
    assert _reported(servicer, 0, within_s=20)   # the STARTED report went out; the thread now waits
    time.sleep(0.2)
    count = len(servicer.steps)
    hooks.on_step(0)                    # train.py calls on_step with the step being computed
    hooks.on_step(1)                    # a step without a point: it rides the heartbeat, as before
    time.sleep(0.3)
    assert len(servicer.steps) == count
    hooks.on_metrics({"step": 1, "train_loss": 1.0})
    assert _reported(servicer, 1, within_s=20), servicer.steps
    count = len(servicer.steps)
    hooks.on_metrics({"step": 2, "train_loss": 1.0})   # later points ride the heartbeat too
    time.sleep(0.3)
    assert len(servicer.steps) == count
    hooks.close(timeout=10)
