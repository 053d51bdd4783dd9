"""A seeded fuzzer against a real coordinator: every RPC of both services, garbage in, no INTERNAL out.

Requests are built from the proto descriptors (so a new field is fuzzed the day it is added): strings
that are empty, huge, unicode, NUL-laden or almost-valid ids; integers at the edges of int32/int64;
NaN, infinities and huge doubles; unknown enum values; repeated fields and maps with many entries;
nested messages. A share of the calls sends random bytes as the serialized message; a share of the
worker calls is well-formed for the live job (so extreme points and uploads reach the store). The
metadata is one of: the client token (the first administrator's), a member's and a viewer's token, the live
job's token, a second running job's token ("other job"), the token of an attempt that ended, a made-up one, a
wrong bearer, both tokens, none.

A second test submits structurally valid specs with extreme values (huge layers and classes, int64 edges
and beyond, deep nesting, unknown keys, NaN/inf): they probe the caps the coordinator sets on what it runs.

What must hold: no call ends INTERNAL or UNKNOWN; no call runs into its deadline; a token never works for
a job it does not belong to (nor the client token on the worker service, nor a job token on the client
one); a member or viewer never succeeds at what their role forbids (ROLE_FORBIDS: users, drains, another's
token or audit rows, the administrator's jobs; a viewer's submissions); every error's message and trailers are bounded printable ASCII; the server still answers health
checks; SQLite's integrity check passes; and a normal job submitted afterwards SUCCEEDS. The seed is
printed so a failure can be replayed (GRADMESH_FUZZ_SEED=...); GRADMESH_FUZZ_REQUESTS sets the count.
"""
from __future__ import annotations

import hashlib
import json
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
from coordinator.states import JobState
from tests.helpers import small_digits_spec, wait_for

pytestmark = pytest.mark.timeout(240)

REQUESTS = int(os.environ.get("GRADMESH_FUZZ_REQUESTS", "2400"))
SPEC_REQUESTS = int(os.environ.get("GRADMESH_FUZZ_SPECS", "400"))
MAX_DETAILS = 1000           # what the servicer promises for an error's message (coordinator.api.servicer)
MAX_TRAILER = 200
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


# What a member's or a viewer's token must never do (the jobs the fuzzer names are the administrator's).
ROLE_FORBIDS = {
    "member": {"AddUser", "UpdateUser", "RemoveUser", "RotateToken", "DrainHost", "UndrainHost"},
    "viewer": {"AddUser", "UpdateUser", "RemoveUser", "RotateToken", "DrainHost", "UndrainHost", "SubmitJob",
               "RegisterRun", "CancelJob", "ResumeJob", "DeleteJob"},
}
USER_OF_KEY = {"member": "fuzzmember", "viewer": "fuzzviewer"}


def _role_problem(key: str, name: str, request, admins_jobs: set[str]) -> str | None:
    """What is wrong with an OK answer to the member's or the viewer's token, if anything."""
    if key not in ROLE_FORBIDS:
        return None
    if name in ROLE_FORBIDS[key]:
        return f"{name} with the {key} token answered OK"
    if isinstance(request, (bytes, list)):
        return None
    if name in ("CancelJob", "ResumeJob", "DeleteJob") and request.job_id in admins_jobs:
        return f"{name} of the administrator's job {request.job_id} with the {key} token answered OK"
    if name == "ListAudit" and request.user not in ("", USER_OF_KEY[key]):
        return f"ListAudit of {request.user!r}'s rows with the {key} token answered OK"
    return None


def client_service_methods():
    return list(pb.DESCRIPTOR.services_by_name["JobService"].methods)


def _methods():
    for service_name in ("JobService", "WorkerService"):
        service = pb.DESCRIPTOR.services_by_name[service_name]
        for method in service.methods:
            yield service, method


def _call(channel, service, method, request, metadata, as_bytes: bool):
    """Send one request; return ((status code, details, trailers), seconds taken); OK included."""
    path = f"/{service.full_name}/{method.name}"
    serialize = None if as_bytes else (lambda m: m.SerializeToString())
    started = time.monotonic()

    def failed(err: grpc.RpcError, code=None):
        return (code or err.code(), err.details() or "", tuple(err.trailing_metadata() or ())), \
            time.monotonic() - started

    if method.client_streaming:
        call = channel.stream_unary(path, request_serializer=serialize, response_deserializer=None)
        messages = request if isinstance(request, list) else [request]
        try:
            call(iter(messages), timeout=UNARY_DEADLINE_S, metadata=metadata)
            return (grpc.StatusCode.OK, "", ()), time.monotonic() - started
        except grpc.RpcError as err:
            return failed(err)
    if method.server_streaming:
        call = channel.unary_stream(path, request_serializer=serialize, response_deserializer=None)
        responses = call(request, timeout=UNARY_DEADLINE_S, metadata=metadata)
        timer = threading.Timer(STREAM_LISTEN_S, responses.cancel)
        timer.start()
        try:
            for _ in responses:
                pass
            return (grpc.StatusCode.OK, "", ()), time.monotonic() - started
        except grpc.RpcError as err:
            # Our own cancel after STREAM_LISTEN_S is how a live stream ends here (counted as CANCELLED): not a
            # server failure, and not an OK either (a slow refusal may be what we cut short).
            return failed(err)
        finally:
            timer.cancel()
    call = channel.unary_unary(path, request_serializer=serialize, response_deserializer=None)
    try:
        call(request, timeout=UNARY_DEADLINE_S, metadata=metadata)
        return (grpc.StatusCode.OK, "", ()), time.monotonic() - started
    except grpc.RpcError as err:
        return failed(err)


def _problems(name: str, code, details: str, trailers, took: float) -> list[str]:
    """What is wrong with one outcome, whatever was asked."""
    bad = []
    if code in FORBIDDEN:
        bad.append(f"{name} → {code.name}: {details[:300]}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED or took > UNARY_DEADLINE_S + 2:
        bad.append(f"{name} took {took:.1f} s ({code.name})")
    if len(details) > MAX_DETAILS or not (details.isascii() and details.isprintable()):
        bad.append(f"{name}: details not bounded printable ASCII: {details[:100]!r} ({len(details)} chars)")
    for key, value in trailers:
        text = value if isinstance(value, str) else value.decode("ascii", "replace")
        if key.startswith("gradmesh-") and (len(text) > MAX_TRAILER or not text.isascii()):
            bad.append(f"{name}: trailer {key} not bounded ASCII: {text[:100]!r}")
    return bad


class Jobs:
    """The jobs a fuzz run works on: two running ones whose tokens it holds, and one that ended."""

    def __init__(self, srv, client: Client):
        self.live = client.submit(small_digits_spec(steps=10**6, workers=1, eval_every=50), job_id="fuzz-live").id
        self.ended = client.submit(small_digits_spec(steps=400, workers=1), job_id="fuzz-ended").id
        self.live_token = _running_token(srv, client, self.live)
        self.ended_token = _running_token(srv, client, self.ended)
        wait_for(lambda: _terminal(client, self.ended), 120, "the short job to end")
        self.other = client.submit(small_digits_spec(steps=10**6, workers=1, eval_every=50), job_id="fuzz-other").id
        self.other_token = _running_token(srv, client, self.other)

    def owner(self, token_key: str) -> str | None:
        """The job a worker token may act on (None: no job)."""
        return {"job": self.live, "both": self.live, "other-job": self.other}.get(token_key)


def _running_token(srv, client: Client, job_id: str) -> str:
    wait_for(lambda: client.get(job_id).state.name in ("RUNNING", "SUCCEEDED"), 60, f"{job_id} to run")
    return wait_for(lambda: _token_or_none(srv, job_id), 30, f"the token of {job_id}")


def _well_formed_for(request, method, jobs: Jobs, rng: random.Random) -> None:
    """Point a fuzzed worker request at the live job, valid enough to get past the checks to the store."""
    if method.name == "UploadCheckpoint":
        first = request[0] if request else None
        if first is not None:
            first.job_id, first.attempt = jobs.live, 0
            payload = b"".join(m.data for m in request)
            first.info.sha256 = hashlib.sha256(payload).hexdigest()
            first.info.size_bytes = len(payload) if rng.random() < 0.8 else first.info.size_bytes
        return
    request.job_id = jobs.live
    if "attempt" in request.DESCRIPTOR.fields_by_name:
        request.attempt = 0
    if method.name == "ReportProgress":  # extreme but legal: int64 steps, NaN losses, thousands of points
        request.rank = 0
        request.ClearField("failure")
        request.worker_event = 0
        request.step, request.total_steps, request.epoch = (max(0, v) for v in (request.step, request.total_steps,
                                                                                 request.epoch))
        for p in request.points:
            p.step, p.epoch = max(0, p.step), max(0, p.epoch)


def test_fuzz_every_rpc_then_a_normal_job_succeeds(start_coordinator, tmp_path):
    seed = int(os.environ.get("GRADMESH_FUZZ_SEED", str(random.randrange(1 << 30))))
    print(f"fuzz seed {seed} (replay with GRADMESH_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    srv = start_coordinator(slots=2)
    client = Client(srv.address, token=srv.token)
    jobs = Jobs(srv, client)
    _, member_token = client.add_user("fuzzmember", role="member")
    _, viewer_token = client.add_user("fuzzviewer", role="viewer")
    client.add_user("fuzzy", role="member")   # whose token the administrator's RotateToken calls may rotate

    fuzzer = Fuzzer(rng, [jobs.live, jobs.other, jobs.ended, "no-such-job"])
    # Cancelling a running job would end the tokens under test: CancelJob aims at the others.
    cancel_fuzzer = Fuzzer(rng, [jobs.ended, "no-such-job", "fuzz-decoy"])
    tokens = {
        "client": (("authorization", f"Bearer {srv.token}"),),
        "member": (("authorization", f"Bearer {member_token}"),),
        "viewer": (("authorization", f"Bearer {viewer_token}"),),
        "job": (("x-gradmesh-job-token", jobs.live_token),),
        "other-job": (("x-gradmesh-job-token", jobs.other_token),),
        "ended-job": (("x-gradmesh-job-token", jobs.ended_token),),
        "wrong-job": (("x-gradmesh-job-token", "f" * 64),),
        "bearer-wrong": (("authorization", "Bearer nope"),),
        "both": (("authorization", f"Bearer {srv.token}"), ("x-gradmesh-job-token", jobs.live_token)),
        "none": (),
    }
    methods = list(_methods())
    plan = []
    for i in range(REQUESTS):
        service, method = methods[i % len(methods)]
        request_cls = getattr(pb, method.input_type.name)
        source = cancel_fuzzer if method.name == "CancelJob" else fuzzer
        preferred = "client" if service.name == "JobService" else "job"
        key = preferred if rng.random() < 0.6 else rng.choice(list(tokens))
        as_bytes = rng.random() < 0.15
        if as_bytes:
            request = rng.randbytes(rng.choice([1, 7, 100, 5000]))
        elif method.client_streaming:
            request = [source.fill(request_cls()) for _ in range(rng.choice([0, 1, 2, 4]))]
        else:
            request = source.fill(request_cls())
        if not as_bytes and service.name == "WorkerService" and rng.random() < 0.25:
            _well_formed_for(request, method, jobs, rng)
        if not as_bytes and method.name == "RotateToken" and request.name in ("", "admin", *USER_OF_KEY.values()):
            request.name = "fuzzy"   # never the tokens the run itself uses (a member's attempt is refused anyway)
        job_id = None  # the job the request names, when known (random bytes name none)
        if not as_bytes:
            messages = request if isinstance(request, list) else [request]
            job_id = messages[0].job_id if messages and hasattr(messages[0], "job_id") else None
        if not as_bytes and rng.random() < 0.1 and not method.client_streaming:
            request = request.SerializeToString()  # well-formed bytes through the raw path
            as_bytes = True
        if as_bytes and method.client_streaming and not isinstance(request, list):
            request = [request]
        elif method.client_streaming and as_bytes:
            request = [m.SerializeToString() for m in request]
        plan.append((service, method, request, key, as_bytes, job_id))
    for key in ("member", "viewer"):   # every role x operation at least once, well formed
        for method in client_service_methods():
            request = getattr(pb, method.input_type.name)()
            if "job_id" in request.DESCRIPTOR.fields_by_name:
                request.job_id = jobs.ended if method.name in ("ResumeJob", "DeleteJob") else jobs.live
            for field, value in (("name", "fuzzy"), ("host", "localhost"), ("user", "admin")):
                if field in request.DESCRIPTOR.fields_by_name:
                    setattr(request, field, value)
            plan.append((pb.DESCRIPTOR.services_by_name["JobService"], method,
                         request if not method.client_streaming else [request], key, False, getattr(request, "job_id", None)))
    # A few plain valid calls, so the OK-reached check below never depends on what the seed happened to draw.
    worker, client_service = pb.DESCRIPTOR.services_by_name["WorkerService"], pb.DESCRIPTOR.services_by_name["JobService"]
    for _ in range(3):
        plan.append((worker, worker.methods_by_name["FetchJob"], pb.FetchJobRequest(job_id=jobs.live), "job", False,
                     jobs.live))
        plan.append((worker, worker.methods_by_name["ReportProgress"], pb.ReportProgressRequest(job_id=jobs.live),
                     "job", False, jobs.live))
        plan.append((client_service, client_service.methods_by_name["GetJob"], pb.GetJobRequest(job_id=jobs.live),
                     "client", False, jobs.live))
    rng.shuffle(plan)

    def run(entry):
        service, method, request, key, as_bytes, job_id = entry
        return entry, _call(channel, service, method, request, tokens[key], as_bytes)

    admins_jobs = {jobs.live, jobs.other, jobs.ended}

    outcomes: Counter = Counter()
    bad: list[str] = []
    started = time.monotonic()
    with grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 64 << 20),
                                                     ("grpc.max_receive_message_length", 64 << 20)]) as channel:
        with futures.ThreadPoolExecutor(8) as pool:
            for entry, ((code, details, trailers), took) in pool.map(run, plan):
                service, method, request, key, _, job_id = entry
                name = method.name
                outcomes[(name, code.name)] += 1
                bad += _problems(name, code, details, trailers, took)
                if code == grpc.StatusCode.OK and service.name == "JobService" and key not in (
                        "client", "both", "member", "viewer"):
                    bad.append(f"{name} with the {key} token answered OK")
                if code == grpc.StatusCode.OK and (problem := _role_problem(key, name, request, admins_jobs)):
                    bad.append(problem)
                if key in ROLE_FORBIDS and name in ROLE_FORBIDS[key] and not isinstance(request, (bytes, list)):
                    outcomes[("role refusals", code.name)] += 1
                if code == grpc.StatusCode.OK and service.name == "WorkerService" and (
                        jobs.owner(key) is None or (job_id is not None and job_id != jobs.owner(key))):
                    bad.append(f"{name} for job {job_id!r} with the {key} token answered OK")
        elapsed = time.monotonic() - started
        print(f"{len(plan)} requests in {elapsed:.1f} s:", dict(sorted(outcomes.items())))
        assert not bad, f"seed {seed}: {len(bad)} bad outcomes, e.g. {bad[:10]}"
        assert sum(n for (_, c), n in outcomes.items() if c != "OK") > 0  # the fuzzer did reach refusals
        assert {name for name, c in outcomes if c == "OK"} >= {"FetchJob", "ReportProgress", "GetJob"}, outcomes
        assert outcomes[("role refusals", "PERMISSION_DENIED")] >= 2 * 5, outcomes   # the well-formed ones at least
        _assert_healthy(channel)

    _drain_queue(srv)
    for job_id in (jobs.live, jobs.other):
        client.cancel(job_id)
    _assert_sound_afterwards(srv, client)
    client.close()


# ---------------------------------------------------------------- valid specs, extreme values

def _nested(depth: int) -> str:
    return '{"x":' * depth + "1" + "}" * depth


SPEC_EXTREMES = [
    ("model.layers", lambda s, r: s["model"].update(layers=[64, 1048576, 1048576, 10])),
    ("model.layers", lambda s, r: s["model"].update(layers=[64] + [4096] * r.choice([50, 300, 5000]) + [10])),
    ("model.layers", lambda s, r: s["model"].update(layers=[64, r.choice([0, -1, 2**31, 2**63, 2**70]), 10])),
    ("model.activation", lambda s, r: s["model"].update(activation=r.choice(["", "x" * 10**5, "relu\x00"]))),
    ("data", lambda s, r: s.update(data={"source": "synthetic", "synthetic": {
        "samples": r.choice([1, 10**6, 2**62]), "features": r.choice([1, 10**5, 2**62]),
        "classes": r.choice([0, 1, 10**9, 2**63])}})),
    ("data.source", lambda s, r: s["data"].update(source=r.choice(["/etc/passwd", "../../x", "\u30b8" * 100, ""]))),
    ("train.steps", lambda s, r: s["train"].update(steps=r.choice([-1, 0, 2**31, 2**63 - 1, 2**63, 2**64, 10**30]))),
    ("train.epochs", lambda s, r: (s["train"].pop("steps", None), s["train"].update(epochs=r.choice([-1, 2**63, 10**20])))),
    ("train.batch_size", lambda s, r: s["train"].update(batch_size=r.choice([0, -5, 2**31, 2**62, 2**64]))),
    ("train.eval_every", lambda s, r: s["train"].update(steps=10**9, eval_every=r.choice([1, 0, -1, 2**63]))),
    ("train.seed", lambda s, r: s["train"].update(seed=r.choice([-1, 2**32, 2**63, 2**64]))),
    ("train.threads_per_rank", lambda s, r: s["train"].update(threads_per_rank=r.choice([-1, 10**6, 2**63]))),
    ("checkpoint", lambda s, r: s["checkpoint"].update(keep_last=r.choice([0, -1, 10**9, 2**63]),
                                                        every_steps=r.choice([0, 1, -1, 2**63]))),
    ("optim", lambda s, r: s["optim"].update(lr=r.choice([1e308, -1.0, 0.0, 5e-324]),
                                             momentum=r.choice([0.9, 1e308, -1.0]),
                                             name=r.choice(["sgd", "adam", "momentum", "x"]))),
    ("optim.warmup_steps", lambda s, r: s["optim"].update(warmup_steps=r.choice([-1, 2**63]), schedule="cosine")),
    ("fault", lambda s, r: s.update(fault={"max_restarts": r.choice([0, 10**6, 2**63]),
                                           "backoff_s": r.choice([0.0, 1e308, -1.0]),
                                           "hang_timeout_s": r.choice([1e-300, 1e308, 0.001])})),
    ("workers", lambda s, r: s.update(workers=r.choice([0, -1, 3, 2**31, 2**63]))),
    ("priority", lambda s, r: s.update(priority=r.choice([-(2**63), 2**63 - 1, 2**63, 10**30]))),
    ("name", lambda s, r: s.update(name=r.choice(["", "a\x00b", "\u30b8" * 64, "n" * 10**5]))),
    ("unknown keys", lambda s, r: s.update({f"k{i}": i for i in range(r.choice([1, 100, 10_000]))})),
    ("unknown nested", lambda s, r: s["train"].update(extra={"deep": [1, {"x": None}]})),
]


def _extreme_spec(rng: random.Random) -> str:
    """A spec that parses: the small digits job with one to three settings pushed to an extreme."""
    if rng.random() < 0.1:  # deep nesting, written by hand (json.dumps would recurse as deep)
        depth = rng.choice([100, 1000, 5000, 100_000])
        spec = json.dumps(small_digits_spec(steps=50, workers=1))
        return spec[:-1] + f', "model_extra": {_nested(depth)}}}'
    spec = small_digits_spec(steps=50, workers=1)
    for _, mutate in rng.sample(SPEC_EXTREMES, rng.choice([1, 1, 2, 3])):
        mutate(spec, rng)
    return json.dumps(spec)


def test_fuzz_valid_specs_with_extreme_values_then_a_normal_job_succeeds(start_coordinator):
    seed = int(os.environ.get("GRADMESH_FUZZ_SEED", str(random.randrange(1 << 30))))
    print(f"spec fuzz seed {seed} (replay with GRADMESH_FUZZ_SEED={seed})")
    rng = random.Random(seed)
    srv = start_coordinator(slots=2)
    # Nothing the fuzzer submits may start: accepted memory bombs wait in the queue and are cancelled.
    held = [("localhost", 2)]
    srv.core.scheduler.reserve(held)
    client = Client(srv.address, token=srv.token)
    service = pb.DESCRIPTOR.services_by_name["JobService"]
    submit = service.methods_by_name["SubmitJob"]
    metadata = (("authorization", f"Bearer {srv.token}"),)
    plan = []
    for i in range(SPEC_REQUESTS):
        labels = {} if rng.random() < 0.8 else {f"l{j}": "v" * rng.choice([1, 100, 10_000])
                                                  for j in range(rng.choice([1, 64, 1000]))}
        plan.append(pb.SubmitJobRequest(spec=_extreme_spec(rng), labels=labels,
                                        workers=rng.choice([0, 0, 0, 1, 2, -1, 2**31 - 1])))
    outcomes: Counter = Counter()
    bad: list[str] = []
    with grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        with futures.ThreadPoolExecutor(8) as pool:
            for (code, details, trailers), took in pool.map(
                    lambda r: _call(channel, service, submit, r, metadata, False), plan):
                outcomes[code.name] += 1
                bad += _problems("SubmitJob", code, details, trailers, took)
        print(f"{len(plan)} extreme specs:", dict(sorted(outcomes.items())))
        assert not bad, f"seed {seed}: {len(bad)} bad outcomes, e.g. {bad[:10]}"
        _assert_healthy(channel)
    _drain_queue(srv)
    srv.core.scheduler.pool.release(held)
    srv.core.scheduler.wake()
    _assert_sound_afterwards(srv, client)
    client.close()


# ---------------------------------------------------------------- afterwards

def _assert_healthy(channel) -> None:
    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def _drain_queue(srv) -> None:
    """Cancel whatever the fuzzer left queued (a spec it got accepted, a resumed job), so none of it runs.
    Through the core: this is hygiene, and must work whatever the fuzzer stored."""
    for job in srv.store.jobs_in(JobState.QUEUED, JobState.RESTARTING):
        srv.core.jobs.cancel(job.id)


def _assert_sound_afterwards(srv, client: Client) -> None:
    db = sqlite3.connect(f"file:{srv.data_dir / 'gradmesh.db'}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        db.close()
    after = client.submit(small_digits_spec(steps=40, workers=1), job_id="after-fuzz")
    ended = wait_for(lambda: _terminal(client, after.id), 120, "the job after the fuzzing to end")
    assert ended.state.name == "SUCCEEDED", ended.message


def _token_or_none(srv, job_id: str) -> str | None:
    try:
        return srv.job_token(job_id)
    except KeyError:
        return None


def _terminal(client, job_id):
    job = client.get(job_id)
    return job if job.is_terminal() else None


# ---------------------------------------------------------------- what the fuzzer once found, kept as cases

def test_what_the_fuzzer_found_stays_fixed(start_coordinator):
    """ListJobs with 250,001 states (once "too many SQL variables"), specs with a 5,001-digit integer (once
    Python's int-string limit), a registered run's hosts that int() reads but int32 cannot hold: each is an
    answer, never INTERNAL."""
    srv = start_coordinator(slots=1)
    srv.core.scheduler.stop()
    metadata = (("authorization", f"Bearer {srv.token}"),)
    with grpc.insecure_channel(srv.address, options=[("grpc.max_send_message_length", 64 << 20)]) as channel:
        from coordinator.rpc import gradmesh_pb2_grpc as rpc
        jobs = rpc.JobServiceStub(channel)
        spec = small_digits_spec(steps=50, workers=1)
        jobs.SubmitJob(pb.SubmitJobRequest(spec=json.dumps(spec), job_id="listed"), timeout=30, metadata=metadata)
        reply = jobs.ListJobs(pb.ListJobsRequest(states=[int(JobState.QUEUED)] * 250_001), timeout=60,
                              metadata=metadata)
        assert [j.id for j in reply.jobs] == ["listed"]
        huge = "9" * 5001
        for text in (json.dumps(spec).replace('"steps": 50', f'"steps": {huge}'),
                     json.dumps(spec)[:-1] + f', "extra": -{huge}}}',
                     f'name = "t"\n[train]\nsteps = {huge}\n'):
            with pytest.raises(grpc.RpcError) as refused:
                jobs.SubmitJob(pb.SubmitJobRequest(spec=text), timeout=30, metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
            assert "5001 digits" in refused.value.details()
            assert ("gradmesh-field", "file") in tuple(refused.value.trailing_metadata())
        for hosts in ("h:3000000000", "h:\u00b2"):
            with pytest.raises(grpc.RpcError) as refused:
                jobs.RegisterRun(pb.RegisterRunRequest(spec=json.dumps(spec), hosts=hosts), timeout=30,
                                 metadata=metadata)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
        assert len(jobs.ListJobs(pb.ListJobsRequest(), timeout=30, metadata=metadata).jobs) == 1
