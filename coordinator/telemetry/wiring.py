"""The exporters put together for one coordinator: `gradmesh serve`'s monitoring flags as one frozen object.

    monitoring = start_monitoring(core, MonitoringOptions(metrics_token="s3cret", notify_urls=("http://...",)),
                                  admin_token=client_token, data_dir=data_dir)
    monitoring.telemetry.interceptor()      # for the gRPC server
    monitoring.allows_scrape("Bearer s3cret")   # the dashboard's GET /metrics asks this
    monitoring.stop()

`core` is the coordinator (coordinator.core.Coordinator, this package's sibling, so taken untyped): its store,
change signal, scheduler and fleet are all that is read.
"""
from __future__ import annotations

import hmac
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from coordinator.telemetry.collector import Telemetry
from coordinator.telemetry.mlflow_runs import MlflowLogger
from coordinator.telemetry.webhooks import Notifier, check_url

log = logging.getLogger("gradmesh.telemetry")

NOTIFY_SECRET_FILE = "notify-secret"


@dataclass(frozen=True)
class MonitoringOptions:
    """`gradmesh serve --metrics-token T --notify-url U [--notify-url U2] --notify-secret S --mlflow-uri URI`."""
    metrics_token: str = ""                # also accepted at GET /metrics besides an administrator's token
    notify_urls: tuple[str, ...] = ()
    notify_secret: str = ""                # "" = DATA_DIR/notify-secret, made on first use (mode 0600)
    mlflow_uri: str = ""                   # every job is logged there ("" = only jobs whose spec names one)
    mlflow_experiment: str = "gradmesh"

    def __post_init__(self) -> None:
        for url in self.notify_urls:
            check_url(url)
        if self.mlflow_uri and not self.mlflow_uri.startswith(("http://", "https://")):
            raise ValueError(f"--mlflow-uri {self.mlflow_uri[:200]!r}: give the tracking server's http(s):// URL")


def notify_secret(data_dir: Path, given: str) -> bytes:
    """The webhook signing secret: `given`, else DATA_DIR/notify-secret, created 0600 when missing."""
    if given:
        return given.encode()
    path = Path(data_dir) / NOTIFY_SECRET_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        text = path.read_text().strip()
        if text:
            return text.encode()
        path.unlink()
        return notify_secret(data_dir, given)
    with os.fdopen(fd, "w") as f:
        value = secrets.token_hex(32)
        f.write(value + "\n")
    return value.encode()


@dataclass
class Monitoring:
    telemetry: Telemetry
    metrics_token: str
    admin_token: str
    notifier: Notifier | None = None
    mlflow: Any = None
    # Who else may scrape: per-user tokens plug in here (a token → whether it is an administrator's).
    is_admin: Callable[[str], bool] = field(default=lambda token: False)

    def allows_scrape(self, authorization: str) -> bool:
        """Whether an `Authorization` header may read /metrics: "Bearer <--metrics-token>", or an administrator's
        token (the bootstrap client token in DATA_DIR/token, or any the `is_admin` hook accepts)."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return False
        for known in (self.metrics_token, self.admin_token):
            if known and hmac.compare_digest(token.encode(), known.encode()):
                return True
        return bool(self.is_admin(token))

    def stop(self) -> None:
        self.telemetry.stop()
        if self.notifier is not None:
            self.notifier.stop()
        if self.mlflow is not None:
            self.mlflow.stop()


def start_monitoring(core: Any, options: MonitoringOptions, *, admin_token: str, data_dir: Path) -> Monitoring:
    telemetry = Telemetry(core.store, core.signal, usage=core.scheduler.usage, host_status=core.fleet.health.status)
    monitoring = Monitoring(telemetry, options.metrics_token, admin_token)
    if options.notify_urls:
        monitoring.notifier = Notifier(options.notify_urls, notify_secret(data_dir, options.notify_secret),
                                       on_outcome=lambda outcome: telemetry.notifications.labels(outcome).inc())
        telemetry.tail.listen(monitoring.notifier.on_event)
    # always on: a job's spec may name its own tracking server ([tracking] mlflow_uri) without --mlflow-uri
    monitoring.mlflow = MlflowLogger(core.store, core.checkpoints, default_uri=options.mlflow_uri,
                                     experiment=options.mlflow_experiment)
    telemetry.tail.listen(monitoring.mlflow.on_event)
    telemetry.tail.every_poll(monitoring.mlflow.wake)
    monitoring.mlflow.start()
    telemetry.start()
    return monitoring
