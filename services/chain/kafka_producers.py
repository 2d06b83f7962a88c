"""kafka-python plumbing shared by the bridge and the reconciler: the connection options, and a producer that
replaces itself after a failed record.

A kafka-python producer whose idempotent session failed (a broker that restarted without its data answers
InitProducerId with an error) aborts every later batch for good: "Aborting producer batches due to fatal error".
`RecreatingProducer(make)` wraps the producer `make()` returns; when a record it sent failed, the next `send`
first closes it and makes a new one, so the caller's retry (the bridge and the reconciler retry what was not
acknowledged) goes through a healthy producer. A new producer costs a few milliseconds and happens only after a
failure.

Two more ways a producer stays stuck after such a restart (docs/chaos.md, restart_kafka's 41.8 s):
- Its idempotent sender can take the new broker's UnknownProducerId for a retention-based one (KAFKA-5793) and
  resend the same batches every 100 ms until the delivery timeout (120 s): nothing fails, nothing is
  acknowledged. A topic whose id changed in the producer's metadata says the broker lost its data; the producer
  is then marked lost at once, so a flush in progress gives up and the next send goes through a new producer.
- kafka-python's `flush(timeout)` waits up to `timeout` for each unfinished batch in turn (a batch that finishes
  just in time starts the clock again for the next). `flush` here keeps one deadline over all of them, and a
  flush that runs out of time marks the producer failed, so the caller's retry goes through a new one.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Callable

log = logging.getLogger(__name__)


def kafka_options(settings) -> dict:
    """Bootstrap, security and SASL options of every kafka-python client (ConfigError without a bootstrap)."""
    if not settings.kafka_bootstrap:
        from services.core.errors import ConfigError

        raise ConfigError("no Kafka bootstrap: start the stack (`whaleid stack up`) or set WHALEID_KAFKA_BOOTSTRAP")
    options = {"bootstrap_servers": settings.kafka_bootstrap.split(","),
               "security_protocol": settings.kafka_security_protocol}
    if settings.kafka_sasl_mechanism:
        options.update(sasl_mechanism=settings.kafka_sasl_mechanism, sasl_plain_username=settings.kafka_username,
                       sasl_plain_password=settings.kafka_password)
    if settings.kafka_ssl_cafile:
        options["ssl_cafile"] = settings.kafka_ssl_cafile
    return options


FLUSH_SLICE_S = 0.1  # each of kafka-python's flushes waits this long at most per batch


class RecreatingProducer:
    def __init__(self, make: Callable[[], Any]):
        self._make = make
        self._failed = False  # a record failed, or a flush ran out of time: replace before the next send
        self._lost = False  # a topic's id changed under the producer: replace, and give up a flush in progress
        self.recreated = 0
        self.broker_lost = 0  # how many times a topic's id changed under the producer
        self._producer = None
        self._producer = self._made()

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None):
        if self._lost:
            self.recreate("the broker lost its data")
        elif self._failed:
            self.recreate()
        future = self._producer.send(topic, key=key, value=value)
        future.add_errback(self._record_failed)
        return future

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every record sent so far is acknowledged or failed, at most `timeout` seconds in all.
        Raises kafka.errors.KafkaTimeoutError at the deadline, or as soon as the broker is seen to have lost its
        data; the next send then goes through a new producer."""
        if timeout is None:
            self._producer.flush()
            return
        from kafka.errors import KafkaTimeoutError

        deadline = time.monotonic() + timeout
        while True:
            if self._lost:
                raise KafkaTimeoutError("Kafka lost its data (a topic was recreated): the producer is replaced")
            remaining = deadline - time.monotonic()
            try:
                self._producer.flush(timeout=max(0.0, min(FLUSH_SLICE_S, remaining)))
                return
            except KafkaTimeoutError:
                if remaining <= FLUSH_SLICE_S:
                    self._failed = True
                    raise KafkaTimeoutError(f"Kafka did not acknowledge every record within {timeout:g} s") from None

    def close(self, timeout: float | None = None) -> None:
        self._producer.close(timeout=timeout)

    def recreate(self, why: str = "a record failed or was not acknowledged in time") -> None:
        old, self._failed, self._lost = self._producer, False, False
        try:
            old.close(timeout=0)
        except Exception as exc:  # noqa: BLE001 - the old producer is dropped either way
            log.debug("closing the failed producer: %s", exc)
        self._producer = self._made()
        self.recreated += 1
        log.warning("Kafka producer replaced (%s; %d so far)", why, self.recreated)

    def _made(self):
        producer = self._make()
        metadata = getattr(producer, "_metadata", None)  # kafka-python's ClusterMetadata (absent on other producers)
        if metadata is not None and hasattr(metadata, "add_listener"):
            seen: dict[str, Any] = {}  # every topic id this producer saw, never forgotten
            metadata.add_listener(lambda cluster: self._metadata_updated(producer, seen, cluster))
        return producer

    def _metadata_updated(self, producer, seen: dict, cluster) -> None:
        """On kafka-python's network thread, after each metadata update: a topic whose id changed was recreated
        (a broker that restarted without its data): this producer's id and sequences mean nothing there."""
        changed = []
        for topic, topic_id in dict(getattr(cluster, "_topic_ids", None) or {}).items():
            if seen.setdefault(topic, topic_id) != topic_id:
                seen[topic] = topic_id
                changed.append(topic)
        if changed and producer is self._producer and not self._lost:
            self.broker_lost += 1
            self._lost = True
            log.warning("Kafka topic(s) %s recreated (the broker lost its data): the producer is replaced",
                        ", ".join(sorted(changed)))

    def _record_failed(self, exc: BaseException) -> None:
        self._failed = True

    def __getattr__(self, name: str):
        """Everything else (config, metrics, partitions_for, ...) is the current producer's."""
        if name.startswith("__") or name in ("_make", "_producer", "_failed", "_lost"):
            raise AttributeError(name)
        return getattr(self._producer, name)


def acks_all_producer(settings, client_id: str, idempotent: bool | None = None) -> RecreatingProducer:
    """The chain's kafka-python producer: acks=all, 5 retries, idempotent where `bridge_producer_idempotence` says
    so (the broker drops duplicates of the producer's own retries; off in the local profile), replaced after a
    failed record. Raises kafka.errors.KafkaError when Kafka cannot be reached."""
    from kafka import KafkaProducer

    options = {**kafka_options(settings), "acks": "all", "retries": 5, "client_id": client_id,
               "enable_idempotence": settings.bridge_producer_idempotence if idempotent is None else idempotent}
    return RecreatingProducer(lambda: KafkaProducer(**options))
