"""`gradmesh serve`'s monitoring flags (coordinator.telemetry): /metrics, webhooks, MLflow.

    gradmesh serve --metrics-token "$(cat prom-token)" --notify-url https://hooks.example/gm \
                   --mlflow-uri http://127.0.0.1:5000

The flags become one frozen MonitoringOptions; a malformed URL is a usage error (one line, exit 2).
Environment variables stand in for secrets so they stay out of `ps`: GRADMESH_METRICS_TOKEN and
GRADMESH_NOTIFY_SECRET.
"""
from __future__ import annotations

import os

from coordinator.cli.commands import EXIT_USAGE, CliError


def add_monitoring_flags(parser) -> None:
    parser.add_argument("--metrics-token", default=None, metavar="TOKEN",
                        help="bearer token Prometheus sends to GET /metrics on the dashboard's port "
                             "(GRADMESH_METRICS_TOKEN; an administrator's token is always accepted too)")
    parser.add_argument("--notify-url", action="append", default=[], metavar="URL",
                        help="POST signed JSON here when a job ends, fails or restarts, or a host is quarantined "
                             "(repeatable; see docs/monitoring.md)")
    parser.add_argument("--notify-secret", default=None, metavar="SECRET",
                        help="HMAC key of the notifications' X-Gradmesh-Signature (GRADMESH_NOTIFY_SECRET; default: "
                             "DATA_DIR/notify-secret, made on first use)")
    parser.add_argument("--mlflow-uri", default="", metavar="URL",
                        help="log every job as a run on this MLflow tracking server (http://HOST:PORT); a job's "
                             "spec may name its own with [tracking] mlflow_uri")


def monitoring_options(args):
    from coordinator.telemetry.wiring import MonitoringOptions
    try:
        return MonitoringOptions(
            metrics_token=getattr(args, "metrics_token", None) or os.environ.get("GRADMESH_METRICS_TOKEN", ""),
            notify_urls=tuple(getattr(args, "notify_url", ()) or ()),
            notify_secret=getattr(args, "notify_secret", None) or os.environ.get("GRADMESH_NOTIFY_SECRET", ""),
            mlflow_uri=getattr(args, "mlflow_uri", "") or "")
    except ValueError as err:
        raise CliError(f"serve: {err}", EXIT_USAGE) from None
