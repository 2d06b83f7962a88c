"""kafka-python plumbing shared by the bridge and the reconciler: the connection options, and a producer that
replaces itself after a failed record.

A kafka-python producer whose idempotent session failed (a broker that restarted without its data answers
InitProducerId with an error) aborts every later batch for good: "Aborting producer batches due to fatal error".
`RecreatingProducer(make)` wraps the producer `make()` returns; when a record it sent failed, the next `send`
first closes it and makes a new one, so the caller's retry (the bridge and the reconciler retry what was not
acknowledged) goes through a healthy producer. A new producer costs a few milliseconds and happens only after a
failure.
"""

from __future__ import annotations

import logging
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


class RecreatingProducer:
    def __init__(self, make: Callable[[], Any]):
        self._make = make
        self._producer = make()
        self._failed = False
        self.recreated = 0

    def send(self, topic: str, key: bytes | None = None, value: bytes | None = None):
        if self._failed:
            self.recreate()
        future = self._producer.send(topic, key=key, value=value)
        future.add_errback(self._record_failed)
        return future

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)

    def close(self, timeout: float | None = None) -> None:
        self._producer.close(timeout=timeout)

    def recreate(self) -> None:
        old, self._failed = self._producer, False
        try:
            old.close(timeout=0)
        except Exception as exc:  # noqa: BLE001 - the old producer is dropped either way
            log.debug("closing the failed producer: %s", exc)
        self._producer = self._make()
        self.recreated += 1
        log.warning("Kafka producer replaced after a failed record (%d so far)", self.recreated)

    def _record_failed(self, exc: BaseException) -> None:
        self._failed = True

    def __getattr__(self, name: str):
        """Everything else (config, metrics, partitions_for, ...) is the current producer's."""
        if name.startswith("__") or name in ("_make", "_producer", "_failed"):
            raise AttributeError(name)
        return getattr(self._producer, name)


def acks_all_producer(settings, client_id: str, idempotent: bool | None = None) -> RecreatingProducer:
    """The chain's kafka-python producer: acks=all, 5 retries, idempotent (setting `bridge_producer_idempotence`:
    the broker drops duplicates of the producer's own retries), replaced after a failed record. Raises
    kafka.errors.KafkaError when Kafka cannot be reached."""
    from kafka import KafkaProducer

    options = {**kafka_options(settings), "acks": "all", "retries": 5, "client_id": client_id,
               "enable_idempotence": settings.bridge_producer_idempotence if idempotent is None else idempotent}
    return RecreatingProducer(lambda: KafkaProducer(**options))
