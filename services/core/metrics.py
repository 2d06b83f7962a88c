"""Prometheus metrics of every service, defined once so dashboards and alerts use exactly these names.

Each service process calls `serve_metrics(port)` at start; Prometheus scrapes `/metrics`.
Stage labels: gateway, bridge, worker, matcher, reconciler, reindex. Worker/matcher steps: fetch, validate, crop,
embed, search, publish; reconciler steps: pass, uploads, announce, topics. `deploy/` (dashboard JSON, alert rules) is tested against the names below.
"""

from __future__ import annotations

import time
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram, start_http_server

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

STEP_LATENCY = Histogram(
    "whaleid_step_latency_seconds", "Latency of one processing step of a stage", ["stage", "step"],
    buckets=LATENCY_BUCKETS,
)
END_TO_END_LATENCY = Histogram(
    "whaleid_end_to_end_latency_seconds", "Upload event to identification written in Redis", buckets=LATENCY_BUCKETS,
)
EVENTS = Counter("whaleid_events_total", "Events handled by a stage, by outcome", ["stage", "outcome"])
DEAD_LETTERS = Counter("whaleid_dead_letters_total", "Events sent to the dead-letter topic", ["stage", "reason"])
TRITON_LATENCY = Histogram(
    "whaleid_triton_request_seconds", "Latency of one Triton ensemble call", buckets=LATENCY_BUCKETS,
)
TRITON_RETRIES = Counter("whaleid_triton_retries_total", "Triton calls retried after a transient failure")
SEARCH_LATENCY = Histogram(
    "whaleid_search_latency_seconds", "Gallery search + ranking latency per sighting", buckets=LATENCY_BUCKETS,
)
IDENTIFICATIONS = Counter("whaleid_identifications_total", "Identifications published, by top result", ["result"])
GALLERY_SIZE = Gauge("whaleid_gallery_size", "Embeddings in the gallery the matcher serves")
GALLERY_INDIVIDUALS = Gauge("whaleid_gallery_individuals", "Individuals in the gallery the matcher serves")
GALLERY_VERSION = Gauge("whaleid_gallery_version_info", "Gallery version the matcher serves (value 1)", ["version"])
GALLERY_BUILT = Gauge("whaleid_gallery_built_timestamp_seconds", "When the served gallery version was built")
CONSUMER_OFFSET = Gauge(
    "whaleid_consumer_committed_offset", "Last offset processed per topic partition", ["stage", "topic", "partition"],
)
UPLOADS = Counter("whaleid_uploads_total", "Gateway sighting requests, by outcome", ["outcome"])
CONFIRMATIONS = Counter("whaleid_confirmations_total", "Researcher confirmations, by action and outcome",
                        ["action", "outcome"])
REINDEX_LAST_SUCCESS = Gauge("whaleid_reindex_last_success_timestamp_seconds", "End of the last successful re-index")
RECONCILER_FOUND = Counter(
    "whaleid_reconciler_found_total",
    "Lost work the reconciler found and repaired: redriven, unresolved, object_missing, unannounced, "
    "missing_from_topic", ["kind"],
)
RECONCILER_LAST_PASS = Gauge("whaleid_reconciler_last_pass_timestamp_seconds", "End of the reconciler's last pass")
RECONCILER_SIGHTINGS = Gauge(
    "whaleid_reconciler_sightings",
    "Sightings without result or failure at the last pass: pending (uploaded), deferred (stale while the chain "
    "has a backlog), awaiting_upload (no photo yet)", ["state"],
)
WEBHOOK_DELIVERIES = Counter("whaleid_webhook_deliveries_total",
                             "Webhook attempts by app and outcome: delivered, retried, dead_lettered", ["app", "outcome"])
WEBHOOK_LATENCY = Histogram("whaleid_webhook_delivery_seconds", "Duration of one webhook call", ["app"],
                            buckets=LATENCY_BUCKETS)
WEBHOOK_RECORDS = Counter("whaleid_webhook_records_total", "Topic records read by the webhooks service, by outcome "
                          "(delivered, retried, dead_lettered, no_webhook, no_owner, duplicate, malformed)", ["outcome"])
WEBHOOK_RETRY_QUEUE = Gauge("whaleid_webhook_retry_queue", "Webhook deliveries waiting for their next attempt")

# Every metric name a dashboard or alert may use (histograms expose _bucket/_sum/_count, counters _total).
METRIC_NAMES = (
    "whaleid_step_latency_seconds", "whaleid_end_to_end_latency_seconds", "whaleid_events_total",
    "whaleid_dead_letters_total", "whaleid_triton_request_seconds", "whaleid_triton_retries_total",
    "whaleid_search_latency_seconds", "whaleid_identifications_total", "whaleid_gallery_size",
    "whaleid_gallery_individuals", "whaleid_gallery_version_info", "whaleid_gallery_built_timestamp_seconds",
    "whaleid_consumer_committed_offset", "whaleid_uploads_total", "whaleid_confirmations_total",
    "whaleid_reindex_last_success_timestamp_seconds", "whaleid_reconciler_found_total",
    "whaleid_reconciler_last_pass_timestamp_seconds", "whaleid_reconciler_sightings",
    "whaleid_webhook_deliveries_total", "whaleid_webhook_delivery_seconds", "whaleid_webhook_records_total",
    "whaleid_webhook_retry_queue",
)


@contextmanager
def timed(histogram, **labels):
    """`with timed(STEP_LATENCY, stage="worker", step="fetch"): ...` observes the block's duration."""
    start = time.perf_counter()
    try:
        yield
    finally:
        (histogram.labels(**labels) if labels else histogram).observe(time.perf_counter() - start)


def serve_metrics(port: int, host: str | None = None) -> None:
    """Expose /metrics of this process (port 0 = none) on `host` (default: settings.metrics_host)."""
    if port:
        if host is None:
            from services.core.settings import load_settings

            host = load_settings().metrics_host
        start_http_server(port, addr=host)
