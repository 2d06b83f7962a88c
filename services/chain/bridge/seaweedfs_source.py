"""SeaweedFS filer events (Kafka) -> `sightings.uploaded`: the bridge's second event source (`bridge_source =
"seaweedfs"`).

SeaweedFS has no S3 bucket notifications; its filer publishes every change of its namespace to a Kafka topic
(`upload_events_topic`) as a protobuf `EventNotification` (`seaweedfs_events.py`). This source polls that topic in
a consumer group (`bridge_events_group`), parses each record and hands the batch to `UploadBridge.process`, the
same claim -> metadata -> produce -> flush -> commit as the SQS path; only then are the offsets committed. A
record whose upload another bridge holds a claim on is not committed: its partition is rewound to it and read
again after a pause (as an SQS message stays in its queue), the records after it coming back as duplicates.
Events of buckets other than `sightings_bucket` are ignored (the filer publishes its whole namespace).

After a restart of the embedded (memory-only) broker, weed's Kafka producer reconnects by itself (measured: the
first PUT after the broker is healthy again is published), and this consumer rejoins its group, finds no committed
offset and reads the new topic from its start. Events the filer drops while Kafka is down are re-driven by the
reconciler (`services/chain/reconciler`: a sighting whose photo is in S3 but has no result is re-driven).
"""

from __future__ import annotations

import logging
import threading

from services.chain.bridge.bridge import STAGE, UploadBridge
from services.chain.bridge.events import Ignored, ObjectCreated, ParsedRecord
from services.chain.bridge.seaweedfs_events import parse_event
from services.chain.failures import Backoff
from services.core import topics
from services.core.metrics import EVENTS, STEP_LATENCY, timed

log = logging.getLogger(__name__)

MAX_RECORDS = 100  # per poll: one claim pipeline, one metadata pipeline, one flush, one commit


class SeaweedFSEventSource:
    def __init__(self, bridge: UploadBridge, consumer, topic: str):
        self.bridge = bridge
        self.consumer = consumer
        self.topic = topic
        self.settings = bridge.settings

    def handle_records(self, records: list) -> int:
        """Process Kafka records (kafka-python ConsumerRecords) together and commit what was handled; returns the
        number of records left to read again (claimed elsewhere)."""
        if not records:
            return 0
        with timed(STEP_LATENCY, stage=STAGE, step="batch"):
            parsed = [(index, self._only_sightings(parse_event(record.key, record.value,
                                                               {"topic": record.topic, "partition": record.partition,
                                                                "offset": record.offset})))
                      for index, record in enumerate(records)]
            kept = self.bridge.process(parsed, len(records))
            self._commit(records, kept)
        return len(kept)

    def _only_sightings(self, parsed: ParsedRecord) -> ParsedRecord:
        """The filer publishes its whole namespace (the model store's bucket too), where S3 notifies the SQS queue
        of the sightings bucket alone: objects of other buckets are not uploads (ignored, not dead-lettered)."""
        if isinstance(parsed, ObjectCreated) and parsed.bucket != self.settings.sightings_bucket:
            return Ignored("other_bucket")
        return parsed

    def _commit(self, records: list, kept: set[int]) -> None:
        """Commit each partition up to its first record left for later (rewinding the consumer to it), else past
        its last record."""
        from kafka.structs import OffsetAndMetadata, TopicPartition

        offsets: dict = {}
        rewind: dict = {}
        for index, record in enumerate(records):
            partition = TopicPartition(record.topic, record.partition)
            if partition in rewind:
                continue
            if index in kept:
                rewind[partition] = record.offset
                offsets[partition] = record.offset
            else:
                offsets[partition] = record.offset + 1
        with timed(STEP_LATENCY, stage=STAGE, step="ack"):
            self.consumer.commit(offsets={p: OffsetAndMetadata(o, "", -1) for p, o in offsets.items()})
        for partition, offset in rewind.items():
            self.consumer.seek(partition, offset)

    def poll_once(self) -> tuple[int, int]:
        """One poll (waiting up to `bridge_poll_wait_s`) and its handling: (records read, records left for later)."""
        with timed(STEP_LATENCY, stage=STAGE, step="receive"):
            polled = self.consumer.poll(timeout_ms=int(self.settings.bridge_poll_wait_s * 1000),
                                        max_records=MAX_RECORDS)
        records = [record for partition in sorted(polled) for record in polled[partition]]
        return len(records), self.handle_records(records)

    def run(self, stop: threading.Event) -> None:
        """Poll until `stop` is set; failures (Kafka, Redis down) are retried with backoff, nothing committed."""
        s = self.settings
        backoff = Backoff(s.retry_backoff_initial_s, s.retry_backoff_max_s)
        waiting = Backoff(s.retry_backoff_initial_s, s.retry_backoff_max_s)
        log.info("bridge: SeaweedFS events %s (group %s) -> %s (Kafka %s)", self.topic, s.bridge_events_group,
                 topics.SIGHTINGS_UPLOADED, s.kafka_bootstrap)
        while not stop.is_set():
            try:
                _read, left = self.poll_once()
                backoff.reset()
                if left:
                    stop.wait(waiting.next_delay())  # another bridge holds those claims: look again later
                else:
                    waiting.reset()
            except Exception as exc:  # noqa: BLE001 - nothing was committed; the records are read again
                delay = backoff.next_delay()
                EVENTS.labels(stage=STAGE, outcome="retry").inc()
                self.bridge.totals["retries"] += 1
                log.warning("bridge: %s: %s; retrying in %.1f s", type(exc).__name__, exc, delay)
                self._rewind_quietly()
                stop.wait(delay)
            self.bridge.log_progress()
        self.bridge.log_progress(force=True)

    def _rewind_quietly(self) -> None:
        """After a failed batch, read again from the last committed offsets (the consumer's position moved on)."""
        try:
            for partition in self.consumer.assignment():
                committed = self.consumer.committed(partition)
                if committed is None:
                    self.consumer.seek_to_beginning(partition)
                else:
                    self.consumer.seek(partition, committed)
        except Exception as exc:  # noqa: BLE001 - a rebalance then restarts from the committed offsets anyway
            log.warning("bridge: could not rewind to the committed offsets: %s", exc)
