"""Admission of calls: capacity per class of caller, a timeout for calls idle on their client, and refusals
that read nothing. The server's interceptor (coordinator.access.auth) decides who the caller is; this decides
whether the call gets in, and keeps it from holding a thread for ever.

    admission = Admission(CallLimits(worker_rpcs=64, client_rpcs=64, open_rpcs=16, idle_timeout_s=60))
    grpc.server(futures.ThreadPoolExecutor(admission.pool_size()), ...)   # more threads than all caps together
    handler = admission.admit(WORKER, "/gradmesh.v1.WorkerService/ReportProgress", handler)
    handler = refusing(handler, grpc.StatusCode.UNAUTHENTICATED, "...", kind="token")

Why classes: a flood of one kind of caller must never delay another. Each class has its own non-blocking
count; a call over its class's cap is answered RESOURCE_EXHAUSTED at once, and the thread pool has room for
every class at its cap plus `SPARE_THREADS` for the instant answers (refusals, health checks), so an
admitted call never queues behind another class. The ranks' calls (WORKER) thus always find capacity of
their own, whatever the clients do.

Why reshaped handlers: gRPC reads a unary request before it runs the handler, and a client may send the
headers and then nothing; such a call would hold a pool thread for ever. Every handler returned here is
request-streaming (a unary client cannot tell), so nothing is read before the caller was admitted, and every
read, like every response the client does not take, is watched: a call that waits on its client longer
than `idle_timeout_s` is cancelled (one INFO line). The count a call holds is given back when the call has
ended *and* its handler no longer runs, so the caps also bound the busy threads.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import grpc

from coordinator.wire import KIND_TRAILER

log = logging.getLogger("gradmesh.admission")

WORKER = "worker"   # gradmesh.v1.WorkerService: the ranks of running attempts
CLIENT = "client"   # gradmesh.v1.JobService and server reflection: holders of the client token
OPEN = "open"       # the health service: no token, so its own small share
KIND_CAPACITY = "capacity"
SPARE_THREADS = 16  # threads beyond the caps: refusals and unknown methods are answered in an instant


@dataclass(frozen=True)
class CallLimits:
    """The front door's caps (`gradmesh serve --max-worker-rpcs ...`)."""
    worker_rpcs: int = 64        # WorkerService calls in flight (reports, uploads, fetches of every job)
    client_rpcs: int = 64        # JobService + reflection calls in flight, open watch/log streams included
    open_rpcs: int = 16          # health checks and health watch streams in flight
    idle_timeout_s: float = 60.0  # a call waiting this long on its client (to send, or to take) is cancelled

    def __post_init__(self) -> None:
        for name in ("worker_rpcs", "client_rpcs", "open_rpcs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not self.idle_timeout_s > 0:
            raise ValueError("idle_timeout_s must be positive")

    def cap(self, klass: str) -> int:
        return {WORKER: self.worker_rpcs, CLIENT: self.client_rpcs, OPEN: self.open_rpcs}[klass]


# ---------------------------------------------------------------- handlers of another shape

_SHAPES: dict[bool, Callable[..., grpc.RpcMethodHandler]] = {
    False: grpc.stream_unary_rpc_method_handler,   # response unary
    True: grpc.stream_stream_rpc_method_handler,   # response streaming
}


def _reshaped(handler: grpc.RpcMethodHandler, behavior: Callable) -> grpc.RpcMethodHandler:
    """A request-streaming handler that answers like `handler` (its serializers), running `behavior`."""
    return _SHAPES[handler.response_streaming](behavior, request_deserializer=handler.request_deserializer,
                                               response_serializer=handler.response_serializer)


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str, kind: str) -> grpc.RpcMethodHandler:
    """A handler that answers `code` at once, without reading a single message."""
    def refuse(request_iterator, context):
        context.set_trailing_metadata(((KIND_TRAILER, kind),))
        context.abort(code, message)

    def refuse_stream(request_iterator, context):
        refuse(request_iterator, context)
        yield  # pragma: no cover - makes this a generator for streaming responses

    return _reshaped(handler, refuse_stream if handler.response_streaming else refuse)


# ---------------------------------------------------------------- one admitted call

class _Call:
    """An admitted call: the unit of its class's count it holds, and what it waits on, if on its client."""

    def __init__(self, method: str, release: Callable[[], None]):
        self.method = method
        self.context: grpc.ServicerContext | None = None
        self.waiting_since = 0.0     # monotonic time since which it waits on the client; 0 when not
        self.waiting_for = ""
        self._release = release
        self._lock = threading.Lock()
        self._open = True            # the RPC has not ended
        self._running = True         # its handler runs on a pool thread (admitted calls start queued for one)
        self._released = False

    def wait_on_client(self, what: str) -> None:
        self.waiting_for = what
        self.waiting_since = time.monotonic()

    def client_answered(self) -> None:
        self.waiting_since = 0.0

    def ended(self) -> None:
        """gRPC's callback when the RPC is over (finished, cancelled, timed out)."""
        with self._lock:
            self._open = False
            free = not self._running
        if free:
            self._give_back()

    def running(self, running: bool) -> None:
        with self._lock:
            self._running = running
            free = not running and not self._open
        if free:
            self._give_back()

    def _give_back(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
        self._release()


class _IdleWatch:
    """One thread that cancels the calls waiting on their client longer than the idle timeout."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._calls: set[_Call] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, call: _Call) -> None:
        with self._lock:
            self._calls.add(call)
            if self._thread is None and not self._stop.is_set():
                self._thread = threading.Thread(target=self._run, name="gradmesh-idle-watch", daemon=True)
                self._thread.start()

    def remove(self, call: _Call) -> None:
        with self._lock:
            self._calls.discard(call)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        tick = min(1.0, self.timeout_s / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                overdue = [c for c in self._calls if c.waiting_since and now - c.waiting_since > self.timeout_s]
                for call in overdue:
                    self._calls.discard(call)
            for call in overdue:
                log.info("%s: cancelled after %.0f s waiting for the client to %s", call.method, self.timeout_s,
                         call.waiting_for)
                if call.context is not None:
                    call.context.cancel()


# ---------------------------------------------------------------- admission

class Admission:
    def __init__(self, limits: CallLimits = CallLimits()):
        self.limits = limits
        self._counts = {klass: threading.BoundedSemaphore(limits.cap(klass)) for klass in (WORKER, CLIENT, OPEN)}
        self._watch = _IdleWatch(limits.idle_timeout_s)

    def pool_size(self) -> int:
        """Threads for the server's pool: every class at its cap, and the spare ones for instant answers."""
        return self.limits.worker_rpcs + self.limits.client_rpcs + self.limits.open_rpcs + SPARE_THREADS

    def close(self) -> None:
        self._watch.close()

    def admit(self, klass: str, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        """`handler` reshaped to run as an admitted call of `klass`, or a RESOURCE_EXHAUSTED refusal when the
        class is at its cap (decided now, on gRPC's dispatch thread: it never blocks)."""
        count = self._counts[klass]
        if not count.acquire(blocking=False):
            cap = self.limits.cap(klass)
            return refusing(handler, grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the coordinator is serving {cap} {klass} calls, its limit; retry shortly",
                            KIND_CAPACITY)
        call = _Call(method, count.release)
        return _reshaped(handler, self._behavior(call, handler))

    def _behavior(self, call: _Call, handler: grpc.RpcMethodHandler) -> Callable:
        unary_in = not handler.request_streaming
        inner = _inner(handler)
        watch = self._watch

        def ended() -> None:
            watch.remove(call)
            call.ended()

        def start(context: grpc.ServicerContext) -> None:
            call.context = context
            watch.add(call)
            if not context.add_callback(ended):
                ended()  # it ended before a thread took it up

        def requests(request_iterator: Iterator[Any]) -> Iterator[Any]:
            while True:
                call.wait_on_client("send a message")
                try:
                    message = next(request_iterator)
                except StopIteration:
                    return
                finally:
                    call.client_answered()
                yield message

        def argument(request_iterator: Iterator[Any], context: grpc.ServicerContext) -> Any:
            if not unary_in:
                return requests(request_iterator)
            for message in requests(request_iterator):
                return message
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the request message is missing")

        def finish() -> None:
            watch.remove(call)
            call.running(False)

        if not handler.response_streaming:
            def unary_out(request_iterator, context):
                try:
                    start(context)
                    return inner(argument(request_iterator, context), context)
                finally:
                    finish()
            return unary_out

        def stream_out(request_iterator, context):
            try:
                start(context)
                for response in inner(argument(request_iterator, context), context):
                    call.running(False)  # suspended at the yield: gRPC's thread only sends
                    call.wait_on_client("take a response")
                    yield response
                    call.client_answered()
                    call.running(True)
            finally:
                finish()
        return stream_out


def _inner(handler: grpc.RpcMethodHandler) -> Callable:
    return {(False, False): handler.unary_unary, (False, True): handler.unary_stream,
            (True, False): handler.stream_unary, (True, True): handler.stream_stream}[
        (handler.request_streaming, handler.response_streaming)]
