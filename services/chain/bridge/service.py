"""`run_bridge(settings)`: the bridge as a long-running process (stops cleanly on SIGTERM / SIGINT)."""

from __future__ import annotations

import logging
import signal
import threading

from services.chain.bridge.bridge import UploadBridge
from services.chain.bridge.clients import (
    kafka_producer,
    seaweedfs_events_consumer,
    sqs_client,
    upload_queue_url,
)
from services.chain.bridge.seaweedfs_source import SeaweedFSEventSource
from services.chain.markers import redis_client
from services.core.errors import ConfigError
from services.core.metrics import serve_metrics
from services.core.service_ports import default_port
from services.core.settings import Settings, read_stack_state

log = logging.getLogger(__name__)

BRIDGE_SOURCES = ("sqs", "seaweedfs", "auto")  # setting bridge_source: S3 event JSON from SQS | SeaweedFS filer events
# on Kafka | whichever the embedded stack's S3 server produces (load_settings fills it from the state file)


def resolve_source(settings: Settings) -> str:
    """`bridge_source`, with "auto" decided: the embedded stack's S3 server (its state file entry says
    `bridge_source`, read by load_settings; SeaweedFS -> seaweedfs, moto -> sqs), else sqs (AWS S3 -> SQS)."""
    if settings.bridge_source not in BRIDGE_SOURCES:
        raise ConfigError(f"bridge_source {settings.bridge_source!r}: expected one of {', '.join(BRIDGE_SOURCES)}")
    if settings.bridge_source != "auto":
        return settings.bridge_source
    state = read_stack_state(settings.run_dir) if settings.profile == "local" else None
    return (state or {}).get("servers", {}).get("s3", {}).get("bridge_source") or "sqs"


def _stop_on_signals(stop: threading.Event) -> None:
    if threading.current_thread() is not threading.main_thread():
        return  # signals reach the main thread only; the caller sets `stop` itself
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())


def run_bridge(settings: Settings, stop: threading.Event | None = None, metrics_port: int | None = None) -> int:
    """Consume the upload events (`bridge_source`: the SQS queue, or SeaweedFS's filer events on Kafka) until
    SIGTERM/SIGINT (or `stop`); returns the exit code."""
    stop = stop or threading.Event()
    source = resolve_source(settings)
    if source != settings.bridge_source:
        log.info("bridge_source auto: reading the upload events of %s", source)
        settings = settings.with_overrides(bridge_source=source)
    redis = redis_client(settings.redis_url)
    if source == "seaweedfs":
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
        with bridge.liveness:  # bridge:alive:<owner> while this process runs, deleted on a clean stop
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
