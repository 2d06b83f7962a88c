"""S3 upload events (SQS) -> `sightings.uploaded` on Kafka, at least once and without duplicates.

For each SQS message: parse its records; for each new upload attach the uploader's metadata from Redis
(`sighting:<id>`) and produce a SightingUploaded keyed by sighting id; malformed or refused events become
DeadLetter records (stage=bridge) with the reason. The producer is flushed (acks=all) before the message is
deleted, so a crash or a Kafka outage leaves the message in the queue to be delivered again; the (key, etag)
claims of `dedupe.py` make that redelivery, and the two events of a multipart upload, produce one record.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from services import topics
from services.bridge.dedupe import Claim, Deduplicator
from services.bridge.events import Ignored, Malformed, ObjectCreated, parse_message
from services.gateway.store import (
    BadUploadKey,
    decode_hash,
    parse_upload_key,
    sighting_key,
    sighting_metadata,
)
from services.metrics import DEAD_LETTERS, EVENTS, STEP_LATENCY, timed
from services.settings import Settings
from services.worker.failures import Backoff, TransientFailure
from services.worker.markers import record_failure

log = logging.getLogger(__name__)

STAGE = "bridge"
MAX_MESSAGES = 10  # per SQS receive (the SQS maximum)
FLUSH_TIMEOUT_S = 30.0
PROGRESS_EVERY_S = 15.0


@dataclass
class _Batch:
    """What one SQS message turns into; applied only after Kafka acknowledged every record."""

    records: list[tuple[str, str, bytes]] = field(default_factory=list)  # (topic, sighting id or "", JSON)
    claimed: list[ObjectCreated] = field(default_factory=list)
    uploaded: list[tuple[str, ObjectCreated]] = field(default_factory=list)  # (sighting id, event)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (sighting id, reason, detail)
    dead_reasons: list[str] = field(default_factory=list)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    keep_message: bool = False  # an event is claimed by someone else: look at the message again later


class UploadBridge:
    def __init__(self, settings: Settings, sqs, queue_url: str, redis, producer):
        self.settings = settings
        self.sqs = sqs
        self.queue_url = queue_url
        self.redis = redis
        self.producer = producer
        self.dedupe = Deduplicator(redis, settings.bridge_claim_ttl_s, settings.bridge_dedupe_ttl_s)
        self.totals: collections.Counter = collections.Counter()
        self._last_progress = time.monotonic()
        self._logged_totals: dict = {}

    # --- one message
    def handle_message(self, message: dict) -> bool:
        """Process one SQS message; True when it was deleted from the queue (fully handled)."""
        with timed(STEP_LATENCY, stage=STAGE, step="event"):
            batch = _Batch()
            try:
                for record in parse_message(message.get("Body", "")):
                    self._route(record, batch)
                self._produce(batch.records)
                self._commit(batch)
            except Exception:
                for event in batch.claimed:
                    self._release_quietly(event)
                raise
            if not batch.keep_message:
                self.sqs.delete_message(QueueUrl=self.queue_url, ReceiptHandle=message["ReceiptHandle"])
        for outcome, count in batch.outcomes.items():
            EVENTS.labels(stage=STAGE, outcome=outcome).inc(count)
        for reason in batch.dead_reasons:
            DEAD_LETTERS.labels(stage=STAGE, reason=reason).inc()
        self.totals.update(batch.outcomes)
        self.totals["messages"] += 1
        return not batch.keep_message

    def _route(self, record, batch: _Batch) -> None:
        if isinstance(record, Ignored):
            batch.outcomes[record.kind] += 1
        elif isinstance(record, Malformed):
            self._dead_letter(batch, record.reason, record.detail, record.original)
        else:
            self._upload(record, batch)

    def _upload(self, event: ObjectCreated, batch: _Batch) -> None:
        try:
            sighting_id, _ext = parse_upload_key(event.key)
        except BadUploadKey as exc:
            self._dead_letter(batch, "bad_key", str(exc), event.original)
            return
        if event.bucket != self.settings.sightings_bucket:
            detail = f"event for bucket {event.bucket!r}, expected {self.settings.sightings_bucket!r}"
            self._dead_letter(batch, "unexpected_bucket", detail, event.original, sighting_id)
            return
        claim = self.dedupe.claim(event.key, event.dedupe_token)
        if claim is Claim.DUPLICATE:
            batch.outcomes["duplicate"] += 1
            return
        if claim is Claim.IN_FLIGHT:
            batch.outcomes["in_flight"] += 1
            batch.keep_message = True
            return
        batch.claimed.append(event)
        sighting = decode_hash(self.redis.hgetall(sighting_key(sighting_id)))
        if not sighting:
            detail = f"no sighting {sighting_id!r} was created through the gateway for {event.key!r}"
            self._dead_letter(batch, "unknown_sighting", detail, event.original, sighting_id)
            return
        if event.size > self.settings.max_upload_bytes:
            detail = f"{event.size} bytes > limit {self.settings.max_upload_bytes}"
            self._dead_letter(batch, "too_large", detail, event.original, sighting_id)
            batch.failures.append((sighting_id, "too_large", detail))
            return
        try:
            metadata = sighting_metadata(sighting)
        except ValueError as exc:
            self._dead_letter(batch, "bad_metadata", f"sighting:{sighting_id} metadata is not JSON: {exc}",
                              event.original, sighting_id)
            return
        uploaded = topics.SightingUploaded(
            sighting_id=sighting_id, bucket=event.bucket, key=event.key, size=event.size,
            event_name=event.event_name, event_time=event.event_time, metadata=metadata, uploaded_at=time.time(),
        )
        batch.records.append((topics.SIGHTINGS_UPLOADED, sighting_id, uploaded.to_json()))
        batch.uploaded.append((sighting_id, event))
        batch.outcomes["produced"] += 1

    def _dead_letter(self, batch: _Batch, reason: str, detail: str, original, sighting_id: str = "") -> None:
        log.warning("dead-letter (%s) %s: %s", reason, sighting_id or "-", detail)
        letter = topics.DeadLetter(stage=STAGE, reason=f"{reason}: {detail}", original=original,
                                   sighting_id=sighting_id, failed_at=time.time())
        batch.records.append((topics.DEAD_LETTER, sighting_id, letter.to_json()))
        batch.dead_reasons.append(reason)
        batch.outcomes["dead_letter"] += 1

    # --- Kafka and Redis, after the decisions
    def _produce(self, records: list[tuple[str, str, bytes]]) -> None:
        if not records:
            return
        with timed(STEP_LATENCY, stage=STAGE, step="produce"):
            futures = [self.producer.send(topic, key=key.encode() if key else None, value=value)
                       for topic, key, value in records]
            self.producer.flush(timeout=FLUSH_TIMEOUT_S)
        for future in futures:
            if not future.is_done:
                raise TransientFailure(f"Kafka did not acknowledge a record within {FLUSH_TIMEOUT_S:g} s")
            if future.failed():
                raise TransientFailure(f"Kafka refused a record: {future.exception}")

    def _commit(self, batch: _Batch) -> None:
        for event in batch.claimed:
            self.dedupe.done(event.key, event.dedupe_token)
        for sighting_id, event in batch.uploaded:
            self.redis.hset(sighting_key(sighting_id), mapping={
                "uploaded_at": time.time(), "size": event.size, "etag": event.etag})
        for sighting_id, reason, detail in batch.failures:
            record_failure(self.redis, sighting_id, STAGE, reason, detail, time.time())

    def _release_quietly(self, event: ObjectCreated) -> None:
        try:
            self.dedupe.release(event.key, event.dedupe_token)
        except Exception as exc:  # noqa: BLE001 - the claim then expires after bridge_claim_ttl_s
            log.warning("could not release the claim on %s (it expires by itself): %s", event.key, exc)

    # --- the loop
    def poll_once(self) -> int:
        """Receive up to 10 messages (long poll) and handle them; the number received."""
        response = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=MAX_MESSAGES,
                                            WaitTimeSeconds=self.settings.bridge_poll_wait_s)
        messages = response.get("Messages", [])
        for message in messages:
            self.handle_message(message)
        return len(messages)

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; transient failures (SQS, Redis, Kafka down) are retried with backoff."""
        backoff = Backoff(self.settings.retry_backoff_initial_s, self.settings.retry_backoff_max_s)
        log.info("bridge: %s -> %s (Kafka %s)", self.queue_url, topics.SIGHTINGS_UPLOADED,
                 self.settings.kafka_bootstrap)
        while not stop.is_set():
            try:
                self.poll_once()
                backoff.reset()
            except Exception as exc:  # noqa: BLE001 - the message stays in the queue; retry after a pause
                delay = backoff.next_delay()
                EVENTS.labels(stage=STAGE, outcome="retry").inc()
                self.totals["retries"] += 1
                log.warning("bridge: %s: %s; retrying in %.1f s", type(exc).__name__, exc, delay)
                stop.wait(delay)
            self._log_progress()
        self._log_progress(force=True)

    def _log_progress(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = time.monotonic()
        if force or dict(self.totals) != self._logged_totals:
            self._logged_totals = dict(self.totals)
            summary = ", ".join(f"{name} {count}" for name, count in sorted(self.totals.items())) or "no messages"
            log.info("bridge progress: %s", summary)
