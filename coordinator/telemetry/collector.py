"""Telemetry: the coordinator's numbers in Prometheus' text format, for `GET /metrics` on the dashboard's port.

    telemetry = Telemetry(store, signal, usage=scheduler.usage, host_status=fleet.health.status)
    telemetry.start()                    # follows the store (coordinator.telemetry.tail) on a thread of its own
    server interceptors: [telemetry.interceptor(), ...]     # RPC latency by method and code, checkpoint bytes
    body = telemetry.exposition()        # bytes, CONTENT_TYPE; the scrape catches the counters up first
    telemetry.stop()

Two kinds of series:
  counters and histograms, since this coordinator started (Prometheus takes a restart as a counter reset):
    gradmesh_attempts_started_total, gradmesh_attempts_ended_total{cause}  (cause: the attempt's outcome
    word: succeeded, failed, cancelled, nan, hung, out-of-memory, lost, interrupted, resized, ...),
    gradmesh_restarts_total, gradmesh_preemptions_total (attempts the coordinator stopped to resize or make
    room), gradmesh_checkpoints_written_total, gradmesh_checkpoint_written_bytes_total,
    gradmesh_upload_bytes_total, gradmesh_download_bytes_total{via}, gradmesh_rpc_duration_seconds{method,code},
    gradmesh_submit_to_first_step_seconds, gradmesh_notifications_total{outcome}
  gauges read from the store and the scheduler at each scrape:
    gradmesh_jobs{state}, gradmesh_queue_length, gradmesh_host_slots{host}, gradmesh_host_slots_in_use{host},
    gradmesh_hosts{state}, and for each RUNNING job (labels job, user, sweep) gradmesh_job_step,
    gradmesh_job_total_steps, gradmesh_job_samples_per_second, gradmesh_job_train_loss, gradmesh_job_val_loss,
    gradmesh_job_val_accuracy (from its newest metric point; a value not measured is left out)

A registry per Telemetry, not prometheus_client's global one, so several coordinators in one process (tests)
keep their numbers apart.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Any, Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from coordinator.events import ChangeSignal
from coordinator.states import JobState
from coordinator.store.records import JobRow
from coordinator.store.store import Store
from coordinator.telemetry.tail import Event, EventTail

disable_created_metrics()  # the *_created series double every counter and no dashboard here reads them

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# attempts the coordinator itself stopped to give their slots back (an elastic resize; a sweep's pause)
PREEMPTED = frozenset({"resized", "preempted", "paused"})
RPC_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0, 600.0)
FIRST_STEP_BUCKETS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0)
HOST_STATES = ("healthy", "suspect", "quarantined", "drained")


def job_labels(job: JobRow) -> tuple[str, str, str]:
    """(job, user, sweep) of a job's series. `owner` is the job's user once jobs carry one (per-user tokens);
    until then the `user` label, if the submitter set it; a sweep's trials carry the label `sweep`."""
    user = getattr(job, "owner", "") or job.labels.get("user", "")
    return job.id, user, job.labels.get("sweep", "")


class Telemetry:
    def __init__(self, store: Store, signal: ChangeSignal, *, usage: Callable[[], Sequence[tuple[str, int, int]]],
                 host_status: Callable[[], Sequence[Any]] | None = None):
        self.store = store
        self.usage = usage
        self.host_status = host_status or (lambda: [])
        r = self.registry = CollectorRegistry(auto_describe=False)
        self.attempts_started = Counter("gradmesh_attempts_started", "Attempts that started running", registry=r)
        self.attempts_ended = Counter("gradmesh_attempts_ended", "Attempts that ended, by the outcome recorded",
                                      ["cause"], registry=r)
        self.restarts = Counter("gradmesh_restarts", "Jobs moved to RESTARTING after a failed attempt", registry=r)
        self.preemptions = Counter("gradmesh_preemptions", "Attempts the coordinator stopped to resize or make room",
                                   registry=r)
        self.checkpoints = Counter("gradmesh_checkpoints_written", "Checkpoints uploaded and stored", registry=r)
        self.checkpoint_bytes = Counter("gradmesh_checkpoint_written_bytes", "Bytes of the checkpoints stored",
                                        registry=r)
        self.upload_bytes = Counter("gradmesh_upload_bytes", "Checkpoint bytes received from ranks (every upload)",
                                    registry=r)
        self.download_bytes = Counter("gradmesh_download_bytes", "Checkpoint bytes sent (via: grpc, dashboard)",
                                      ["via"], registry=r)
        self.rpc_seconds = Histogram("gradmesh_rpc_duration_seconds", "gRPC calls from start to status, by method "
                                     "and status code (streams: until they end)", ["method", "code"],
                                     buckets=RPC_BUCKETS, registry=r)
        self.first_step = Histogram("gradmesh_submit_to_first_step_seconds", "From a job's submission to its "
                                    "first step reported", buckets=FIRST_STEP_BUCKETS, registry=r)
        self.notifications = Counter("gradmesh_notifications", "Webhook deliveries (outcome: delivered, failed, "
                                     "dropped)", ["outcome"], registry=r)
        for via in ("grpc", "dashboard"):
            self.download_bytes.labels(via=via)  # present at 0 before the first download
        for outcome in ("delivered", "failed", "dropped"):
            self.notifications.labels(outcome=outcome)
        r.register(_StoreGauges(self))
        self.tail = EventTail(store, signal, host_status=self.host_status)
        self.tail.listen(self._count)
        self.tail.every_poll(self._first_steps)
        self._lock = threading.Lock()
        self._ended: dict[str, int] = {}             # job id → last attempt counted as ended
        self._awaiting_first_step: dict[str, float] = {}  # job id → submitted (unix time)

    def start(self) -> None:
        self.tail.start()

    def stop(self) -> None:
        self.tail.stop()

    def interceptor(self):
        from coordinator.telemetry.rpc_metrics import RpcMetrics
        return RpcMetrics(self)

    def exposition(self) -> bytes:
        """The text a scrape gets (CONTENT_TYPE), the counters caught up with the store first."""
        try:
            self.tail.poll()
        except Exception:  # noqa: BLE001 - a store that is closing: serve the numbers we have
            pass
        return generate_latest(self.registry)

    # ------------------------------------------------------------------ from the tail

    def _count(self, event: Event) -> None:
        t, job, attempt = event.transition, event.job, event.attempt
        if t is None:
            return
        if t.state is JobState.RUNNING and t.attempt:
            self.attempts_started.inc()
            if t.attempt == 1 and job is not None and not job.restarts and job.step == 0:
                with self._lock:
                    if len(self._awaiting_first_step) < 100_000:
                        self._awaiting_first_step[job.id] = job.created
        if t.state is JobState.RESTARTING and not (attempt is not None and attempt.outcome in PREEMPTED):
            self.restarts.inc()
        if attempt is not None and attempt.ended and self._ended.get(t.job_id, 0) < attempt.attempt:
            self._ended[t.job_id] = attempt.attempt
            self.attempts_ended.labels(cause=attempt.outcome or "unknown").inc()
            if attempt.outcome in PREEMPTED:
                self.preemptions.inc()
        if t.state.is_terminal():
            self._ended.pop(t.job_id, None)

    def _first_steps(self) -> None:
        with self._lock:
            waiting = list(self._awaiting_first_step.items())
        now = time.time()
        for job_id, created in waiting:
            job = self.store.get_job(job_id)
            if job is None or job.state.is_terminal() or job.step > 0:
                with self._lock:
                    self._awaiting_first_step.pop(job_id, None)
                if job is not None and job.step > 0:
                    self.first_step.observe(max(0.0, now - created))

    # ------------------------------------------------------------------ from the interceptor

    def checkpoint_stored(self, size: int) -> None:
        self.checkpoints.inc()
        self.checkpoint_bytes.inc(size)


class _StoreGauges:
    """The gauges, read when scraped."""

    def __init__(self, telemetry: Telemetry):
        self.t = telemetry

    def collect(self) -> Iterable[GaugeMetricFamily]:
        store = self.t.store
        by_state = store.jobs_by_state()
        jobs = GaugeMetricFamily("gradmesh_jobs", "Jobs by state", labels=["state"])
        for state, n in by_state.items():
            jobs.add_metric([state.name], n)
        yield jobs
        yield GaugeMetricFamily("gradmesh_queue_length", "Jobs waiting for slots (QUEUED)",
                                value=by_state[JobState.QUEUED])
        slots = GaugeMetricFamily("gradmesh_host_slots", "Worker slots per host", labels=["host"])
        used = GaugeMetricFamily("gradmesh_host_slots_in_use", "Worker slots in use per host", labels=["host"])
        for host, total, free in self.t.usage():
            slots.add_metric([host], total)
            used.add_metric([host], max(0, total - free))
        yield slots
        yield used
        hosts = GaugeMetricFamily("gradmesh_hosts", "Hosts by health state", labels=["state"])
        counts = {s: 0 for s in HOST_STATES}
        for status in self.t.host_status():
            state = getattr(status.state, "value", str(status.state))
            counts[state] = counts.get(state, 0) + 1
        for state, n in counts.items():
            hosts.add_metric([state], n)
        yield hosts
        yield from self._running_jobs(store)

    @staticmethod
    def _running_jobs(store: Store) -> Iterable[GaugeMetricFamily]:
        names = ("job", "user", "sweep")
        families = {
            "step": GaugeMetricFamily("gradmesh_job_step", "A running job's newest step", labels=names),
            "total": GaugeMetricFamily("gradmesh_job_total_steps", "A running job's steps in all", labels=names),
            "sps": GaugeMetricFamily("gradmesh_job_samples_per_second", "A running job's throughput at its newest "
                                     "metric point", labels=names),
            "loss": GaugeMetricFamily("gradmesh_job_train_loss", "A running job's training loss at its newest "
                                      "metric point", labels=names),
            "val_loss": GaugeMetricFamily("gradmesh_job_val_loss", "A running job's validation loss at its newest "
                                          "metric point", labels=names),
            "acc": GaugeMetricFamily("gradmesh_job_val_accuracy", "A running job's validation accuracy (0..1) at its "
                                     "newest metric point", labels=names),
        }
        for job in store.jobs_in(JobState.RUNNING):
            labels = list(job_labels(job))
            families["step"].add_metric(labels, job.step)
            families["total"].add_metric(labels, job.total_steps)
            latest = store.latest_metric(job.id)
            if latest is None:
                continue
            for key, value in (("sps", latest.samples_per_second), ("loss", latest.train_loss),
                               ("val_loss", latest.val_loss), ("acc", latest.val_accuracy)):
                if not math.isnan(value):
                    families[key].add_metric(labels, value)
        yield from families.values()
