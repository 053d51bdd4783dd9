"""What the coordinator tells the tools people already watch: Prometheus, MLflow, webhooks, TensorBoard files.

    collector.py    Telemetry: the counters and histograms (a prometheus_client registry per server) and the
                    gauges read from the store at each scrape; `exposition()` is the text `GET /metrics` serves
    rpc_metrics.py  the gRPC server interceptor that times every call (method, code) and counts checkpoint bytes
    tail.py         EventTail: a thread that follows the store's transitions (and the fleet's quarantines) and
                    hands each job or host event to the counters, the notifier and the MLflow logger
    webhooks.py     Notifier: signed JSON POSTs (HMAC-SHA256), retried with backoff on a thread per URL
    mlflow_runs.py  MlflowLogger: each job a run over MLflow's REST API (params, metric history, state, best
                    checkpoint), caught up after the tracking server was away
    tensorboard.py  an event-file writer (TFRecord framing, hand-encoded protobuf) for `gradmesh metrics --tensorboard`

Nothing here is on a training step's path: the ranks report to the coordinator as before, and every exporter
reads the store from threads of its own, so a slow or dead receiver delays no job and no RPC.

May import: the store, fleet, scheduler, jobs and everything below them (never core, which is its sibling:
api/server.py wires the two together). Imported by the dashboard (GET /metrics), api and cli.
"""
