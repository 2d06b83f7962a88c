"""S3 upload events (SQS) -> `sightings.uploaded` on Kafka, at least once and without duplicates.

The bridge works in batches of up to 10 SQS messages (one receive): it parses their records, claims every new
upload in one Redis pipeline (`dedupe.py`), reads the uploaders' metadata (`sighting:<id>`) in a second one,
produces a SightingUploaded keyed by sighting id per new upload (malformed or refused events become DeadLetter
records, stage=bridge, `reason` = short code, `detail` = text), flushes the producer once (acks=all), marks the
claims done and deletes the handled messages with one `delete_message_batch`. Nothing is deleted before the
flush succeeded, so a crash or a Kafka outage leaves the messages in the queue to be delivered again; the
(key, etag) claims make that redelivery, and the two events of a multipart upload, produce one record; a claim
left by a bridge that died (its `bridge:alive:<owner>` key expired, `liveness.py`) is taken over at once.

`UploadBridge.process` is those decisions alone, for any source of parsed events: the SQS loop here, and the
SeaweedFS filer events read from Kafka (`seaweedfs_source.py`, `bridge_source = "seaweedfs"`).
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from dataclasses import dataclass, field

from services.chain.bridge.dedupe import Claim, Deduplicator
from services.chain.bridge.events import Ignored, Malformed, ObjectCreated, ParsedRecord, parse_message
from services.chain.bridge.liveness import Liveness
from services.chain.failures import Backoff, TransientFailure
from services.chain.markers import record_failure
from services.chain.sighting_records import decode_hash, open_sighting, sighting_metadata
from services.core import topics
from services.core.keys import BadUploadKey, parse_upload_key, sighting_key
from services.core.metrics import DEAD_LETTERS, EVENTS, STEP_LATENCY, timed
from services.core.settings import Settings

log = logging.getLogger(__name__)

STAGE = "bridge"
MAX_MESSAGES = 10  # per SQS receive (the SQS maximum, also the most one delete_message_batch takes)
FLUSH_TIMEOUT_S = 10.0  # a flush takes milliseconds; longer is a stuck producer (replaced)
PROGRESS_EVERY_S = 15.0


@dataclass
class _Upload:
    """An upload event that passed the checks that need no server, waiting for its claim."""

    message: int  # index of its message (SQS message, Kafka record) in the batch
    sighting_id: str
    event: ObjectCreated

    @property
    def claim_key(self) -> tuple[str, str]:
        return self.event.key, self.event.dedupe_token


@dataclass
class _Batch:
    """What one receive turns into; applied only after Kafka acknowledged every record."""

    records: list[tuple[str, str, bytes]] = field(default_factory=list)  # (topic, sighting id or "", JSON)
    pending: list[_Upload] = field(default_factory=list)
    claimed: list[_Upload] = field(default_factory=list)
    uploaded: list[tuple[str, ObjectCreated]] = field(default_factory=list)  # (sighting id, event)
    failures: list[tuple[str, str, str]] = field(default_factory=list)  # (sighting id, reason, detail)
    dead_reasons: list[str] = field(default_factory=list)
    outcomes: collections.Counter = field(default_factory=collections.Counter)
    kept: set[int] = field(default_factory=set)  # messages with an event claimed elsewhere: look again later


class UploadBridge:
    def __init__(self, settings: Settings, sqs, queue_url: str, redis, producer):
        self.settings = settings
        self.sqs = sqs
        self.queue_url = queue_url
        self.redis = redis
        self.producer = producer
        self.dedupe = Deduplicator(redis, settings.bridge_claim_ttl_s, settings.bridge_dedupe_ttl_s)
        self.liveness = Liveness(redis, self.dedupe.owner, settings.bridge_liveness_ttl_s)  # started by run_bridge
        self.totals: collections.Counter = collections.Counter()
        self._last_progress = time.monotonic()
        self._logged_totals: dict = {}

    # --- one batch of messages
    def handle_messages(self, messages: list[dict]) -> int:
        """Process up to 10 SQS messages together; the number deleted from the queue (fully handled)."""
        if not messages:
            return 0
        with timed(STEP_LATENCY, stage=STAGE, step="batch"):
            records = [(index, record) for index, message in enumerate(messages)
                       for record in parse_message(message.get("Body", ""))]
            kept = self.process(records, len(messages))
            return self._delete([m for i, m in enumerate(messages) if i not in kept])

    def process(self, records: list[tuple[int, ParsedRecord]], messages: int) -> set[int]:
        """The decisions every event source shares (SQS here, SeaweedFS's Kafka events in `seaweedfs_source.py`):
        route, claim, read the metadata, produce, flush, commit the claims. `records` are (message index, parsed
        event). Returns the indexes of the messages to deliver again later (an event claimed elsewhere); the
        caller acknowledges the others (delete, commit) only after this returned: it raises, the claims released,
        when Kafka or Redis failed."""
        batch = _Batch()
        try:
            for index, record in records:
                self._route(index, record, batch)
            self._claim(batch)
            self._attach_metadata(batch)
            self._produce(batch.records)
            self._commit(batch)
        except Exception:
            self._release_quietly(batch.claimed)
            raise
        for outcome, count in batch.outcomes.items():
            EVENTS.labels(stage=STAGE, outcome=outcome).inc(count)
        for reason in batch.dead_reasons:
            DEAD_LETTERS.labels(stage=STAGE, reason=reason).inc()
        self.totals.update(batch.outcomes)
        self.totals["messages"] += messages
        return batch.kept

    def handle_message(self, message: dict) -> bool:
        """Process one SQS message; True when it was deleted from the queue."""
        return self.handle_messages([message]) == 1

    def _route(self, index: int, record, batch: _Batch) -> None:
        """The checks that need no server; uploads that pass wait in `batch.pending` for their claims."""
        if isinstance(record, Ignored):
            batch.outcomes[record.kind] += 1
            return
        if isinstance(record, Malformed):
            self._dead_letter(batch, record.reason, record.detail, record.original)
            return
        try:
            sighting_id, _ext = parse_upload_key(record.key)
        except BadUploadKey as exc:
            self._dead_letter(batch, "bad_key", str(exc), record.original)
            return
        if record.bucket != self.settings.sightings_bucket:
            detail = f"event for bucket {record.bucket!r}, expected {self.settings.sightings_bucket!r}"
            self._dead_letter(batch, "unexpected_bucket", detail, record.original, sighting_id)
            return
        batch.pending.append(_Upload(index, sighting_id, record))

    def _claim(self, batch: _Batch) -> None:
        """Claim every distinct (key, etag) of the batch at once; a repeat inside the batch (the second event of
        a multipart upload, a redelivery) shares the fate of its first occurrence. A claim taken over from a bridge
        that is no longer alive (outcome `taken_over`, logged) is produced as a new one."""
        first: dict[tuple[str, str], Claim] = {}
        distinct = list(dict.fromkeys(upload.claim_key for upload in batch.pending))
        with timed(STEP_LATENCY, stage=STAGE, step="claim"):
            first.update(zip(distinct, self.dedupe.claim_many(distinct), strict=True))
        seen: set[tuple[str, str]] = set()
        for upload in batch.pending:
            claim, repeat = first[upload.claim_key], upload.claim_key in seen
            seen.add(upload.claim_key)
            if claim is Claim.IN_FLIGHT:
                batch.outcomes["in_flight"] += 1
                batch.kept.add(upload.message)
            elif claim is Claim.TAKEN_OVER and not repeat:
                batch.outcomes["taken_over"] += 1
                batch.claimed.append(upload)
            elif claim is Claim.DUPLICATE or repeat:
                batch.outcomes["duplicate"] += 1
            else:
                batch.claimed.append(upload)
        if batch.outcomes["taken_over"]:
            log.info("bridge: took over %d claim(s) of bridges no longer alive", batch.outcomes["taken_over"])

    def _attach_metadata(self, batch: _Batch) -> None:
        """Read the sightings of the claimed uploads in one pipeline and turn each into its record."""
        pipe = self.redis.pipeline(transaction=False)
        for upload in batch.claimed:
            pipe.hgetall(sighting_key(upload.sighting_id))
        with timed(STEP_LATENCY, stage=STAGE, step="metadata"):
            hashes = pipe.execute() if batch.claimed else []
        for upload, raw in zip(batch.claimed, hashes, strict=True):
            self._upload(upload.sighting_id, upload.event, decode_hash(raw), batch)

    def _upload(self, sighting_id: str, event: ObjectCreated, sighting: dict, batch: _Batch) -> None:
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
            self._dead_letter(batch, "bad_metadata", f"{sighting_key(sighting_id)} metadata is not JSON: {exc}",
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
        letter = topics.DeadLetter(stage=STAGE, reason=reason, detail=detail, original=original,
                                   sighting_id=sighting_id, failed_at=time.time())
        batch.records.append((topics.DEAD_LETTER, sighting_id, letter.to_json()))
        batch.dead_reasons.append(reason)
        batch.outcomes["dead_letter"] += 1

    # --- Kafka, Redis and SQS, after the decisions
    def _produce(self, records: list[tuple[str, str, bytes]]) -> None:
        """Send every record of the batch, then one flush; raises unless Kafka acknowledged all of them."""
        if not records:
            return
        with timed(STEP_LATENCY, stage=STAGE, step="produce"):
            futures = [self.producer.send(topic, key=key.encode() if key else None, value=value)
                       for topic, key, value in records]
            try:
                self.producer.flush(timeout=FLUSH_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - kafka-python's KafkaTimeoutError: judged by the futures below
                pass
        for future in futures:
            if not future.is_done:
                self._replace_producer()
                raise TransientFailure(f"Kafka did not acknowledge a record within {FLUSH_TIMEOUT_S:g} s")
            if future.failed():
                raise TransientFailure(f"Kafka refused a record: {future.exception}")

    def _replace_producer(self) -> None:
        """A flush that never completes is a producer stuck for good: after a restart of a broker that kept nothing
        (the embedded Tansu), kafka-python's idempotent producer retries UnknownProducerId forever, its records
        neither acknowledged nor failed. It is replaced (services.chain.kafka_producers.RecreatingProducer); the batch is
        retried by the caller (nothing was acknowledged upstream)."""
        recreate = getattr(self.producer, "recreate", None)
        if recreate is not None:
            recreate()

    def _commit(self, batch: _Batch) -> None:
        """Mark the claims done, the sightings uploaded and the refused ones failed, in one pipeline."""
        now = time.time()
        pipe = self.redis.pipeline(transaction=False)
        for upload in batch.claimed:
            self.dedupe.done(*upload.claim_key, client=pipe)
        for sighting_id, event in batch.uploaded:
            pipe.hset(sighting_key(sighting_id), mapping={"uploaded_at": now, "size": event.size, "etag": event.etag})
            open_sighting(pipe, sighting_id, now, only_new=True)  # the reconciler's index (the gateway's entry kept)
        for sighting_id, reason, detail in batch.failures:
            record_failure(pipe, sighting_id, STAGE, reason, detail, now)
        with timed(STEP_LATENCY, stage=STAGE, step="commit"):
            pipe.execute()

    def _delete(self, messages: list[dict]) -> int:
        """Delete handled messages in one call; one that fails to delete comes back and is a duplicate then."""
        if not messages:
            return 0
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(messages)]
        with timed(STEP_LATENCY, stage=STAGE, step="delete"):
            response = self.sqs.delete_message_batch(QueueUrl=self.queue_url, Entries=entries)
        failed = response.get("Failed", [])
        for failure in failed:
            log.warning("could not delete message %s (it is redelivered and skipped as a duplicate): %s",
                        failure.get("Id"), failure.get("Message") or failure.get("Code"))
        return len(messages) - len(failed)

    def _release_quietly(self, uploads: list[_Upload]) -> None:
        try:
            self.dedupe.release_many([upload.claim_key for upload in uploads])
        except Exception as exc:  # noqa: BLE001 - the claims then expire after bridge_claim_ttl_s
            log.warning("could not release %d claim(s) (they expire by themselves): %s", len(uploads), exc)

    # --- the loop
    def poll_once(self) -> int:
        """Receive up to 10 messages (long poll) and handle them together; the number received."""
        with timed(STEP_LATENCY, stage=STAGE, step="receive"):
            response = self.sqs.receive_message(QueueUrl=self.queue_url, MaxNumberOfMessages=MAX_MESSAGES,
                                                WaitTimeSeconds=self.settings.bridge_poll_wait_s)
        messages = response.get("Messages", [])
        self.handle_messages(messages)
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
            except Exception as exc:  # noqa: BLE001 - the messages stay in the queue; retry after a pause
                delay = backoff.next_delay()
                EVENTS.labels(stage=STAGE, outcome="retry").inc()
                self.totals["retries"] += 1
                log.warning("bridge: %s: %s; retrying in %.1f s", type(exc).__name__, exc, delay)
                stop.wait(delay)
            self.log_progress()
        self.log_progress(force=True)

    def log_progress(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._last_progress < PROGRESS_EVERY_S:
            return
        self._last_progress = time.monotonic()
        if force or dict(self.totals) != self._logged_totals:
            self._logged_totals = dict(self.totals)
            summary = ", ".join(f"{name} {count}" for name, count in sorted(self.totals.items())) or "no messages"
            log.info("bridge progress: %s", summary)
