"""What `whaleid chaos` sees of the chain's output, as a consumer app would:

- `TopicObserver`: a background kafka-python consumer of `identifications`, `new-individuals` and
  `sightings.dead-letter` (its own consumer group, from the earliest offset, so after a broker restart that lost
  the topics it reads what was produced again). Per topic and key it keeps every distinct record content and
  how often it came.
- `redis_outcome`: per sighting, identified / dead-lettered (with the reason) / pending, and how many entries
  the `identifications` stream holds for it.

Delivery on the topics is at least once, keyed by sighting id, and a re-delivery carries the same content
(services/chain/matcher/agent.py): a repeat of the same content is a `redelivery` (a consumer deduplicating by key
sees it once); a second, different record for one key is a `duplicate` (two answers for one sighting).
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import uuid
from collections import defaultdict

from services.core import topics
from services.core.keys import failure_key, identification_key

log = logging.getLogger(__name__)
OBSERVED_TOPICS = (topics.IDENTIFICATIONS, topics.NEW_INDIVIDUALS, topics.DEAD_LETTER)


def _content_key(topic: str, value: bytes) -> str:
    """The part of a record that must not change between deliveries (dead letters carry their time)."""
    try:
        record = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return hashlib.sha1(value or b"").hexdigest()
    if topic == topics.DEAD_LETTER and isinstance(record, dict):
        record = {"stage": record.get("stage"), "reason": record.get("reason")}
    return hashlib.sha1(json.dumps(record, sort_keys=True).encode()).hexdigest()


class TopicObserver:
    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self._records: dict[str, dict[str, dict[str, int]]] = {t: defaultdict(dict) for t in OBSERVED_TOPICS}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0
        self.resets = 0

    def start(self) -> "TopicObserver":
        self._thread = threading.Thread(target=self._run, name="chaos-topic-observer", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(15)

    def _consumer(self):
        from kafka import KafkaConsumer

        return KafkaConsumer(*OBSERVED_TOPICS, bootstrap_servers=self.bootstrap, group_id=f"whaleid-chaos-{uuid.uuid4().hex[:8]}",
                             auto_offset_reset="earliest", enable_auto_commit=True, consumer_timeout_ms=500,
                             metadata_max_age_ms=2000, request_timeout_ms=10000, reconnect_backoff_max_ms=1000)

    def _rewind_reset_partitions(self, consumer, marks: dict) -> None:
        """The chain's reset policy (docs/interfaces.md, "Delivery"), for this consumer: a partition whose
        high-water mark fell (the broker restarted without its data, the topic was created again) is read again
        from its start, so records written to the new log below the old position are not skipped."""
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            if high < marks.get(tp, 0):
                log.info("topic observer: %s [%d] was reset (high-water mark %d < %d): reading it from its start",
                         tp.topic, tp.partition, high, marks[tp])
                consumer.seek_to_beginning(tp)
                self.resets += 1
            marks[tp] = high

    def _run(self) -> None:
        consumer = None
        marks: dict = {}  # partition -> the highest high-water mark seen
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                batches = consumer.poll(timeout_ms=500)
                for partition, messages in batches.items():
                    for message in messages:
                        self._add(partition.topic, message.key, message.value)
                self._rewind_reset_partitions(consumer, marks)
            except Exception as exc:  # noqa: BLE001 - a broker restart: reconnect and read on
                self.errors += 1
                log.info("topic observer: %s: %s (reconnecting)", type(exc).__name__, exc)
                if consumer is not None:
                    try:
                        consumer.close()
                    except Exception:  # noqa: BLE001
                        pass
                consumer = None
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close()

    def _add(self, topic: str, key: bytes | None, value: bytes | None) -> None:
        sighting = (key or b"").decode(errors="replace")
        content = _content_key(topic, value or b"")
        with self._lock:
            seen = self._records[topic][sighting]
            seen[content] = seen.get(content, 0) + 1

    def deliveries(self, topic: str, sighting_ids) -> dict[str, dict[str, int]]:
        """For the given sightings: {sighting id: {content hash: times delivered}} on `topic`."""
        with self._lock:
            records = self._records[topic]
            return {s: dict(records[s]) for s in sighting_ids if s in records}


def redis_outcome(client, sighting_ids: list[str]) -> dict[str, dict]:
    """{sighting id: {"status": identified|failed|pending, "reason": str, "new_individual": bool, "top1": str}}."""
    pipe = client.pipeline(transaction=False)
    for sighting_id in sighting_ids:
        pipe.get(identification_key(sighting_id))
        pipe.get(failure_key(sighting_id))
    values = pipe.execute()
    outcome = {}
    for index, sighting_id in enumerate(sighting_ids):
        identification, failure = values[2 * index], values[2 * index + 1]
        if identification is not None:
            record = json.loads(identification)
            candidates = record.get("candidates") or [{}]
            outcome[sighting_id] = {"status": "identified", "new_individual": bool(record.get("new_individual")),
                                    "top1": candidates[0].get("individual_id", "")}
        elif failure is not None:
            try:
                reason = json.loads(failure).get("reason", "")
            except (ValueError, AttributeError):
                reason = failure.decode(errors="replace")
            outcome[sighting_id] = {"status": "failed", "reason": reason or "(none)"}
        else:
            outcome[sighting_id] = {"status": "pending"}
    return outcome


def stream_entries(client, stream: str = "identifications") -> dict[str, int]:
    """How many entries the stream holds per sighting."""
    counts: dict[str, int] = defaultdict(int)
    last = "-"
    while True:
        page = client.xrange(stream, min=last, max="+", count=5000)
        if last != "-":
            page = page[1:]
        if not page:
            return dict(counts)
        for _, fields in page:
            counts[fields[b"sighting_id"].decode()] += 1
        last = page[-1][0].decode() if isinstance(page[-1][0], bytes) else page[-1][0]
