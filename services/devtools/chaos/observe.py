"""What `whaleid chaos` sees of the chain's output, as a consumer app would:

- `TopicObserver`: a background kafka-python consumer of `identifications`, `new-individuals` and
  `sightings.dead-letter`, from the earliest offset, so after a broker restart that lost the topics it reads what
  was produced again. Per topic and key it keeps every distinct record content and how often it came. It joins
  no consumer group: it assigns itself every partition of the three topics (again whenever the broker lists other
  partitions, e.g. after a restart; a topic created again, known by its new id, is read from its start). In a
  group it paid Tansu's join, which completes after half the session timeout (kafka-python's default 45 s: 23 s)
  at the start and again after the restart: `restart_kafka`'s `recover_s` was that join (23.6-24.3 s in five
  runs, 10 s without it), not the chain (docs/chaos.md).
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
        self._positions: dict = {}  # partition -> the offset after the last record read
        self._marks: dict = {}  # partition -> the highest high-water mark seen
        self._topic_ids: dict = {}  # topic -> its id when last seen

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

        return KafkaConsumer(bootstrap_servers=self.bootstrap, group_id=None, auto_offset_reset="earliest",
                             enable_auto_commit=False, allow_auto_create_topics=False, metadata_max_age_ms=2000,
                             request_timeout_ms=10000, reconnect_backoff_max_ms=1000)

    @staticmethod
    def _listed_partitions(consumer) -> set:
        """Every partition the broker lists for the observed topics (a topic not created yet has none)."""
        from kafka import TopicPartition

        return {TopicPartition(topic, partition) for topic in OBSERVED_TOPICS
                for partition in consumer.partitions_for_topic(topic) or ()}

    def _recreated_topics(self, consumer) -> list[str]:
        """Observed topics whose id changed since last seen (the broker restarted without them, and they were
        created again): their old positions mean nothing in the new log. kafka-python 3 keeps the ids of the
        topics in its metadata (MetadataResponse v10+); without them only the high-water marks tell."""
        cluster = getattr(consumer, "_cluster", None)
        recreated = []
        for topic in OBSERVED_TOPICS:
            topic_id = cluster.topic_id(topic) if cluster is not None else None
            if topic_id is None:
                continue
            if self._topic_ids.get(topic, topic_id) != topic_id:
                recreated.append(topic)
            self._topic_ids[topic] = topic_id
        return recreated

    def _forget(self, tp) -> None:
        self._positions.pop(tp, None)
        self._marks.pop(tp, None)

    def _follow_listing(self, consumer) -> None:
        """Assign every listed partition. A partition new to this consumer resumes at the position read so far
        (a consumer made again after an error), else starts at the earliest offset; a partition no longer listed,
        or of a topic created again, is read from its start when it is back."""
        listed = self._listed_partitions(consumer)
        assigned = consumer.assignment()
        for tp in assigned - listed:
            self._forget(tp)
        if listed != assigned:
            consumer.assign(sorted(listed))
            for tp in listed - assigned:
                if tp in self._positions:
                    consumer.seek(tp, self._positions[tp])
        for topic in self._recreated_topics(consumer):
            log.info("topic observer: %s was created again: reading it from its start", topic)
            for tp in listed:
                if tp.topic == topic:
                    self._forget(tp)
                    consumer.seek_to_beginning(tp)
                    self.resets += 1

    def _rewind_reset_partitions(self, consumer) -> None:
        """The chain's reset policy (docs/interfaces.md, "Delivery"), for this consumer: a partition whose
        high-water mark fell (the broker restarted without its data, the topic was created again) is read again
        from its start, so records written to the new log below the old position are not skipped."""
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            if high is None:
                continue
            if high < self._marks.get(tp, 0):
                log.info("topic observer: %s [%d] was reset (high-water mark %d < %d): reading it from its start",
                         tp.topic, tp.partition, high, self._marks[tp])
                consumer.seek_to_beginning(tp)
                self._positions.pop(tp, None)
                self.resets += 1
            self._marks[tp] = high

    def _run(self) -> None:
        consumer = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    consumer = self._consumer()
                self._follow_listing(consumer)
                if not consumer.assignment():  # none of the topics exists yet
                    self._stop.wait(0.5)
                    continue
                batches = consumer.poll(timeout_ms=500)
                for partition, messages in batches.items():
                    for message in messages:
                        self._add(partition.topic, message.key, message.value)
                        self._positions[partition] = message.offset + 1
                self._rewind_reset_partitions(consumer)
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
