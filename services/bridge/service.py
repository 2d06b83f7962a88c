"""`run_bridge(settings)`: the bridge as a long-running process (stops cleanly on SIGTERM / SIGINT)."""

from __future__ import annotations

import logging
import signal
import threading

from services.bridge.bridge import UploadBridge
from services.bridge.clients import kafka_producer, seaweedfs_events_consumer, sqs_client, upload_queue_url
from services.bridge.seaweedfs_source import SeaweedFSEventSource
from services.errors import ConfigError
from services.metrics import serve_metrics
from services.service_ports import default_port
from services.settings import Settings
from services.worker.markers import redis_client

log = logging.getLogger(__name__)

BRIDGE_SOURCES = ("sqs", "seaweedfs")  # setting bridge_source: S3 event JSON from SQS | SeaweedFS filer events on Kafka


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only; the caller sets `stop` itself
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def run_bridge(settings: Settings, stop: threading.Event | None = None, metrics_port: int | None = None) -> int:
    """Consume the upload events (`bridge_source`: the SQS queue, or SeaweedFS's filer events on Kafka) until
    SIGTERM/SIGINT (or `stop`); returns the exit code."""
    stop = stop or threading.Event()
    if settings.bridge_source not in BRIDGE_SOURCES:
        raise ConfigError(f"bridge_source {settings.bridge_source!r}: expected one of {', '.join(BRIDGE_SOURCES)}")
    redis = redis_client(settings.redis_url)
    if settings.bridge_source == "seaweedfs":
        sqs = queue_url = None
        consumer = seaweedfs_events_consumer(settings)
    else:
        sqs = sqs_client(settings)
        queue_url = upload_queue_url(sqs, settings)
        consumer = None
    producer = kafka_producer(settings)
    metrics_port = default_port(settings.metrics_port_base, "bridge", 0) if metrics_port is None else metrics_port
    if metrics_port:
        serve_metrics(metrics_port, settings.metrics_host)
        log.info("bridge metrics on %s:%s/metrics", settings.metrics_host, metrics_port)
    _stop_on_signals(stop)
    try:
        bridge = UploadBridge(settings, sqs, queue_url, redis, producer)
        if consumer is not None:
            SeaweedFSEventSource(bridge, consumer, settings.upload_events_topic).run(stop)
        else:
            bridge.run(stop)
    finally:
        if consumer is not None:
            consumer.close()
        producer.close(timeout=10)
        redis.close()
        log.info("bridge stopped")
    return 0
