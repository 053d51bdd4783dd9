"""GET /metrics: the coordinator's numbers for Prometheus (coordinator.telemetry), on the dashboard's port.

No session cookie: a scraper sends `Authorization: Bearer <token>`, the `--metrics-token` or an
administrator's token (Monitoring.allows_scrape), as a Prometheus `authorization` block does:

    scrape_configs:
      - job_name: gradmesh
        authorization: {type: Bearer, credentials_file: /etc/prometheus/gradmesh-token}
        static_configs: [{targets: ["coordinator:50052"]}]

A missing or wrong token is 401 with `WWW-Authenticate: Bearer`; a dashboard started without monitoring
answers 404.
"""
from __future__ import annotations

from typing import Any

from coordinator.telemetry.collector import CONTENT_TYPE


def serve(handler: Any) -> None:
    monitoring = handler.server.app.monitoring
    if monitoring is None:
        handler._error(404, "no page /metrics: this coordinator serves no metrics")
        return
    if not monitoring.allows_scrape(handler.headers.get("Authorization", "")):
        handler._send(401, b"send Authorization: Bearer <the --metrics-token or an administrator's token>\n",
                      "text/plain; charset=utf-8", [("WWW-Authenticate", 'Bearer realm="gradmesh metrics"'),
                                                    ("Cache-Control", "no-store")])
        return
    handler._send(200, monitoring.telemetry.exposition(), CONTENT_TYPE, [("Cache-Control", "no-store")])


def count_download(handler: Any, size: int) -> None:
    """A checkpoint the dashboard served (its bytes go to gradmesh_download_bytes_total{via="dashboard"})."""
    monitoring = handler.server.app.monitoring
    if monitoring is not None:
        monitoring.telemetry.download_bytes.labels(via="dashboard").inc(size)
