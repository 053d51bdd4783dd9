"""A seeded fuzzer against a real coordinator: every RPC of both services, garbage in, no INTERNAL out.

Requests are built from the proto descriptors (so a new field is fuzzed the day it is added): strings
that are empty, huge, unicode, NUL-laden or almost-valid ids; integers at the edges of int32/int64;
NaN, infinities and huge doubles; unknown enum values; repeated fields and maps with many entries;
nested messages. A share of the calls sends random bytes as the serialized message, and the metadata
is one of: the client token, the job token of a running job, another job's token, a wrong one, none.

What must hold: no call ends INTERNAL or UNKNOWN; no unary call runs into its deadline; the server
still answers health checks; SQLite's integrity check passes; and a normal job submitted afterwards
SUCCEEDS. The seed is printed so a failure can be replayed (GRADMESH_FUZZ_SEED=...).
"""
from __future__ import annotations

import os
import random
import sqlite3
import threading
import time
from collections import Counter
from concurrent import futures

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from coordinator.client import Client
from coordinator.rpc import gradmesh_pb2 as pb
from tests.helpers import small_digits_spec, wait_for

pytestmark = pytest.mark.timeout(240)

REQUESTS = int(os.environ.get("GRADMESH_FUZZ_REQUESTS", "2400"))
UNARY_DEADLINE_S = 10.0
STREAM_LISTEN_S = 0.3        # a stream is read this long (it may legitimately follow a live job), then cancelled
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}
INT_EDGES = {
    FieldDescriptor.TYPE_INT32: [0, 1, -1, 2**31 - 1, -2**31],
    FieldDescriptor.TYPE_INT64: [0, 1, -1, 2**63 - 1, -2**63, 2**53 + 1],
}
FLOATS = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1e308, -1e308, 5e-324, 1.5]


class Fuzzer:
    def __init__(self, rng: random.Random, job_ids: list[str]):
        self.rng = rng
        self.job_ids = job_ids

    def string(self, name: str) -> str:
        r = self.rng
        if name in ("job_id",) and r.random() < 0.5:
            return r.choice(self.job_ids)
        if name == "sha256" and r.random() < 0.3:
            return "".join(r.choice("0123456789abcdef") for _ in range(64))
        choices = [
            lambda: "",
            lambda: "x" * r.choice([1, 64, 65, 4096, 200_000]),
            lambda: "ジョブ-" + chr(r.randrange(0x80, 0x2FFF)) * r.randrange(1, 20),
            lambda: "a\x00b" * r.randrange(1, 10),
            lambda: "".join(chr(r.randrange(1, 0x7F)) for _ in range(r.randrange(1, 40))),
            lambda: r.choice(self.job_ids) + r.choice(["", " ", "/..", "\n", "%00"]),
            lambda: "\ud800".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
            lambda: '[train]\nsteps = -1\n' if name == "spec" else "-" * r.randrange(1, 5),
            lambda: "{" * r.randrange(1, 5000) if name in ("spec", "page_token") else "0",
        ]
        return r.choice(choices)()

    def scalar(self, field: FieldDescriptor):
        r = self.rng
        t = field.type
        if t == FieldDescriptor.TYPE_STRING:
            return self.string(field.name)
        if t == FieldDescriptor.TYPE_BYTES:
            return r.randbytes(r.choice([0, 1, 1000, 1 << 20]))
        if t == FieldDescriptor.TYPE_BOOL:
            return r.random() < 0.5
        if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
            return r.choice(FLOATS) if r.random() < 0.7 else r.uniform(-1e6, 1e6)
        if t == FieldDescriptor.TYPE_ENUM:
            values = [v.number for v in field.enum_type.values]
            return r.choice(values + [99, -1, 2**31 - 1])
        if t in INT_EDGES:
            edges = INT_EDGES[t]
            return r.choice(edges) if r.random() < 0.7 else r.randrange(-1000, 100_000)
        raise AssertionError(f"unhandled field type {t} of {field.full_name}")

    def fill(self, message, depth: int = 0):
        r = self.rng
        for field in message.DESCRIPTOR.fields:
            if r.random() < 0.3:
                continue  # leave it unset
            is_message = field.type == FieldDescriptor.TYPE_MESSAGE
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                target = getattr(message, field.name)
                for _ in range(r.choice([0, 1, 5, 100, 2000])):
                    target[self.string("key")[:300]] = self.string("value")[:1000]
            elif field.is_repeated:
                target = getattr(message, field.name)
                count = r.choice([0, 1, 3, 50, 20_000 if depth == 0 else 5])
                for _ in range(count):
                    if is_message:
                        if depth < 3:
                            self.fill(target.add(), depth + 1)
                    else:
                        target.append(self.scalar(field))
            elif is_message:
                if depth < 3:
                    self.fill(getattr(message, field.name), depth + 1)
            else:
                try:
                    setattr(message, field.name, self.scalar(field))
                except ValueError:  # e.g. an unknown value for a closed enum: leave it unset
                    pass
        return message


def _methods():
    for service_name in ("JobService", "WorkerService"):
        service = pb.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            yield service, method


def _call(channel, service, method, request, metadata, as_bytes: bool):
    """Send one request; return ((status code, details), seconds taken); OK included."""
    path = f"/{service.full_name}/{method.name}"
    serialize = None if as_bytes else (lambda m: m.SerializeToString())
    started = time.monotonic()
    if method.client_streaming:
        call = channel.stream_unary(path, request_serializer=serialize, response_deserializer=None)
        messages = request if isinstance(request, list) else [request]
        try:
            call(iter(messages), timeout=UNARY_DEADLINE_S, metadata=metadata)
            return (grpc.StatusCode.OK, ""), time.monotonic() - started
        except grpc.RpcError as err:
            return (err.code(), err.details() or ""), time.monotonic() - started
    if method.server_streaming:
        call = channel.unary_stream(path, request_serializer=serialize, response_deserializer=None)
        responses = call(request, timeout=UNARY_DEADLINE_S, metadata=metadata)
        timer = threading.Timer(STREAM_LISTEN_S, responses.cancel)
        timer.start()
        try:
            for _ in responses:
                pass
            return (grpc.StatusCode.OK, ""), time.monotonic() - started
        except grpc.RpcError as err:
            code = err.code()
            # Our own cancel after STREAM_LISTEN_S is how a live stream ends here: not a server failure.
            return (grpc.StatusCode.OK if code == grpc.StatusCode.CANCELLED else code, err.details() or ""), time.monotonic() - started
        finally:
            timer.cancel()
    call = channel.unary_unary(path, request_serializer=serialize, response_deserializer=None)
    try:
        call(request, timeout=UNARY_DEADLINE_S, metadata=metadata)
        return (grpc.StatusCode.OK, ""), time.monotonic() - started
    except grpc.RpcError as err:
        return (err.code(), err.details() or ""), time.monotonic() - started


def test_fuzz_every_rpc_then_a_normal_job_succeeds(start_coordinator, tmp_path):
    seed = int(os.environ.get("GRADMESH_FUZZ_SEED", str(random.randrange(1 << 30))))
    print(f"fuzz seed {seed} (replay with GRADMESH_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    srv = start_coordinator(slots=2)
    client = Client(srv.address, token=srv.token)
    # A live job gives the worker service a real token to be fuzzed with (and a job for the streams).
    live = client.submit(small_digits_spec(steps=10**6, workers=1, eval_every=50), job_id="fuzz-live")
    wait_for(lambda: client.get(live.id).state.name == "RUNNING", 60, "the live job to run")
    job_token = wait_for(lambda: _token_or_none(srv, live.id), 30, "the live job's token")
    other = client.submit(small_digits_spec(steps=50, workers=1), job_id="fuzz-other")

    fuzzer = Fuzzer(rng, [live.id, other.id, "no-such-job"])
    tokens = {
        "client": (("authorization", f"Bearer {srv.token}"),),
        "job": (("x-gradmesh-job-token", job_token),),
        "wrong-job": (("x-gradmesh-job-token", "f" * 64),),
        "bearer-wrong": (("authorization", "Bearer nope"),),
        "both": (("authorization", f"Bearer {srv.token}"), ("x-gradmesh-job-token", job_token)),
        "none": (),
    }
    methods = list(_methods())
    plan = []
    for i in range(REQUESTS):
        service, method = methods[i % len(methods)]
        request_cls = getattr(pb, method.input_type.name)
        as_bytes = rng.random() < 0.15
        if as_bytes:
            request = rng.randbytes(rng.choice([1, 7, 100, 5000]))
        elif method.client_streaming:
            request = [fuzzer.fill(request_cls()) for _ in range(rng.choice([0, 1, 2, 4]))]
        else:
            request = fuzzer.fill(request_cls())
        if not as_bytes and rng.random() < 0.1 and not method.client_streaming:
            request = request.SerializeToString()  # well-formed bytes through the raw path
            as_bytes = True
        if as_bytes and method.client_streaming and not isinstance(request, list):
            request = [request]
        elif method.client_streaming and as_bytes:
            request = [m.SerializeToString() for m in request]
        preferred = "client" if service.name == "JobService" else "job"
        key = preferred if rng.random() < 0.6 else rng.choice(list(tokens))
        plan.append((service, method, request, tokens[key], as_bytes))

    outcomes: Counter = Counter()
    bad: list[str] = []
    started = time.monotonic()
    with grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 64 << 20),
                                                     ("grpc.max_receive_message_length", 64 << 20)]) as channel:
        with futures.ThreadPoolExecutor(8) as pool:
            results = pool.map(lambda p: (p[1].name, *_call(channel, *p)), plan)
            for name, (code, details), took in results:
                outcomes[(name, code.name)] += 1
                if code in FORBIDDEN:
                    bad.append(f"{name} → {code.name}: {details[:300]}")
                if code == grpc.StatusCode.DEADLINE_EXCEEDED or took > UNARY_DEADLINE_S + 2:
                    bad.append(f"{name} took {took:.1f} s ({code.name})")
        elapsed = time.monotonic() - started
        print(f"{len(plan)} requests in {elapsed:.1f} s:", dict(sorted(outcomes.items())))
        assert not bad, f"seed {seed}: {len(bad)} bad outcomes, e.g. {bad[:10]}"
        assert sum(n for (_, c), n in outcomes.items() if c != "OK") > 0  # the fuzzer did reach refusals
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    db = sqlite3.connect(f"file:{srv.data_dir / 'gradmesh.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()

    client.cancel(live.id)
    after = client.submit(small_digits_spec(steps=40, workers=1), job_id="after-fuzz")
    ended = wait_for(lambda: _terminal(client, after.id), 120, "the job after the fuzzing to end")
    assert ended.state.name == "SUCCEEDED", ended.message
    client.close()


def _token_or_none(srv, job_id: str) -> str | None:
    try:
        return srv.job_token(job_id)
    except KeyError:
        return None


def _terminal(client, job_id):
    job = client.get(job_id)
    return job if job.is_terminal() else None
