"""The reconciler's Kafka clients (kafka-python): an acks=all producer that waits for every record, and a
consumer without a group that reads topics by partition and asks the chain's groups where they are.

Tansu (the embedded broker) answers ListOffsets LATEST with the base offset of the last batch + 1, so end
offsets are short on topics written by a batching producer (every producer of the chain batches, Tansu included:
`faust_producer_max_batch_size`, docs/chain.md). The reconciler therefore (a) sizes its batches by that setting
as the stages do, (b) reads every partition up to at
least the end offset it was given (a fetch returns whole batches), and (c) recognises a reset topic by the record
before its stored position, not by comparing offsets alone. (d) After a restart Tansu can also list an end
offset beyond the last one a fetch ever returns (an offset taken by a produce that failed): a read stops at the
high-water mark the fetch reports. (e) A group's lag is that mark minus its committed offset, on every partition:
a group that committed inside a partition's last batch is behind although the listed end says it is not.

The producer is idempotent where the bridge's is (same kafka-python client, same setting
`bridge_producer_idempotence`, off in the local profile); every record it writes is keyed by its sighting id.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from services.chain.failures import TransientFailure
from services.chain.kafka_producers import RecreatingProducer, kafka_options
from services.core.settings import Settings

log = logging.getLogger(__name__)

FLUSH_TIMEOUT_S = 30.0
POLL_MS = 200
COMMITTED_TIMEOUT_MS = 10_000
VERIFY_TIMEOUT_S = 3.0


def kafka_producer(settings: Settings):
    from kafka import KafkaProducer


    return RecreatingProducer(lambda: KafkaProducer(
        **kafka_options(settings), acks="all", retries=5, linger_ms=0, client_id="whaleid-reconciler",
        enable_idempotence=settings.bridge_producer_idempotence,
        batch_size=max(1, settings.faust_producer_max_batch_size),
    ))


def kafka_consumer(settings: Settings, group_id: str | None = None):
    """A consumer that never joins a group: reads assigned partitions, or (with `group_id`) reads that group's
    committed offsets."""
    from kafka import KafkaConsumer

    return KafkaConsumer(
        **kafka_options(settings), group_id=group_id, enable_auto_commit=False, auto_offset_reset="earliest",
        allow_auto_create_topics=False, fetch_max_wait_ms=100, client_id="whaleid-reconciler",
    )


def produce_all(producer, records: list[tuple[str, str, bytes]]) -> list:
    """Send (topic, key, value) records and flush; the RecordMetadata of each; TransientFailure unless the broker
    acknowledged every one of them."""
    if not records:
        return []
    futures = [producer.send(topic, key=key.encode(), value=value) for topic, key, value in records]
    try:
        producer.flush(timeout=FLUSH_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - kafka-python raises its own timeouts
        raise TransientFailure(f"Kafka flush failed: {exc}") from None
    metadata = []
    for future in futures:
        if not future.is_done:
            raise TransientFailure(f"Kafka did not acknowledge a record within {FLUSH_TIMEOUT_S:g} s")
        if future.failed():
            raise TransientFailure(f"Kafka refused a record: {future.exception}")
        metadata.append(future.value)
    return metadata


@dataclass
class Record:
    partition: int
    offset: int
    key: str
    ts: int  # record timestamp, ms


def _records(batch: dict) -> list[Record]:
    return [Record(tp.partition, m.offset, (m.key or b"").decode(errors="replace"), int(m.timestamp))
            for tp, messages in batch.items() for m in messages]


def _assign(consumer, tps: list) -> None:
    """Assign `tps` with fresh partition state: kafka-python keeps a partition's state (its last high-water mark
    among it) across `assign` calls that keep the partition, and `_read_to` must see this read's marks only."""
    consumer.unsubscribe()
    consumer.assign(tps)


def _read_to(consumer, tp, end: int) -> bool:
    """The consumer's position on `tp` reached `end`, or the last readable offset: the high-water mark of its
    last fetch. Tansu can answer ListOffsets with an end beyond what a fetch ever returns (an offset taken by a
    produce that failed while the broker restarted): waiting for it would never end, and the pass would never
    check the topic."""
    position = consumer.position(tp)
    if position >= end:
        return True
    high = consumer.highwater(tp)
    return high is not None and position >= high


def readable_ends(consumer, offsets: dict, timeout_s: float) -> dict:
    """{tp: the high-water mark a fetch from `offsets[tp]` reports} (what can actually be read; see `_read_to`),
    for the partitions that answered within `timeout_s`. Reassigns the consumer."""
    _assign(consumer, list(offsets))
    for tp, offset in offsets.items():
        consumer.seek(tp, offset)
    found: dict = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < len(offsets) and time.monotonic() < deadline:
        consumer.poll(timeout_ms=POLL_MS, max_records=1)
        for tp in offsets:
            high = consumer.highwater(tp)
            if high is not None:
                found[tp] = high
    return found


class PartitionReader:
    """Reading partitions of one topic by offset with a group-less consumer."""

    def __init__(self, consumer, topic: str):
        from kafka import TopicPartition

        self.consumer = consumer
        self.topic = topic
        self._tp = lambda p: TopicPartition(topic, p)

    def partitions(self) -> list[int]:
        """The topic's partitions now ([] when it does not exist); metadata refreshed first (a topic can be
        deleted and created again)."""
        self.consumer.topics()  # refreshes the metadata of every topic
        return sorted(self.consumer.partitions_for_topic(self.topic) or ())

    def end_offsets(self, partitions: list[int]) -> dict[int, int]:
        ends = self.consumer.end_offsets([self._tp(p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}

    def first_records(self, offsets: dict[int, int], timeout_s: float) -> dict[int, Record]:
        """The first record at or after each {partition: offset} (none for a partition with nothing there).

        Never pauses a partition: kafka-python 3.0.12 parks the records a paused partition still had buffered,
        gives them back after `resume` only while no other partition's records sit in its single in-line slot
        (a drained one stays there), and never fetches a partition with parked records again, not even after
        `unsubscribe` / `assign` / `seek`. A partition whose record here was found inside a larger batch (the
        reconciler's own re-produced batches after a broker restart) was then never read again by that
        consumer: "not read to its end ... high-water mark None" on every later read (docs/chaos.md,
        restart_kafka)."""
        if not offsets:
            return {}
        tps = [self._tp(p) for p in offsets]
        _assign(self.consumer, tps)
        for tp in tps:
            self.consumer.seek(tp, offsets[tp.partition])
        found: dict[int, Record] = {}
        deadline = time.monotonic() + timeout_s
        while len(found) < len(offsets) and time.monotonic() < deadline:
            for record in _records(self.consumer.poll(timeout_ms=POLL_MS)):
                found.setdefault(record.partition, record)
        return found

    def fetched_ends(self, partitions: list[int]) -> dict[int, int]:
        """{partition: the high-water mark the last fetch reported} for the partitions of the last `first_records`
        that a fetch answered (none for the others). Unlike ListOffsets on Tansu, this is the log's true end."""
        highs = {p: self.consumer.highwater(self._tp(p)) for p in partitions}
        return {p: high for p, high in highs.items() if high is not None}

    def read(self, starts: dict[int, int], ends: dict[int, int], timeout_s: float):
        """Read each partition from `starts` until its position reaches `ends` (a fetch returns whole batches, so
        records beyond are read too). Returns (records, {partition: next offset}, complete)."""
        tps = [self._tp(p) for p in starts]
        _assign(self.consumer, tps)
        for tp in tps:
            self.consumer.seek(tp, starts[tp.partition])
        todo = {p for p in starts if starts[p] < ends.get(p, 0)}
        records: list[Record] = []
        deadline = time.monotonic() + timeout_s
        while todo and time.monotonic() < deadline:
            records += _records(self.consumer.poll(timeout_ms=POLL_MS, max_records=2000))
            todo = {p for p in todo if not _read_to(self.consumer, self._tp(p), ends[p])}
        positions = {tp.partition: self.consumer.position(tp) for tp in tps}
        if todo:  # what a slow recovery after a broker restart needs to be told apart (docs/chaos.md)
            log.warning("reconciler: %s not read to its end within %g s: %s", self.topic, timeout_s, ", ".join(
                f"[{p}] position {positions[p]}, end {ends[p]}, high-water mark {self.consumer.highwater(self._tp(p))}"
                for p in sorted(todo)))
        return records, positions, not todo


class GroupLag:
    """How far the chain's consumer groups are behind: (group, topic) pairs, e.g. whaleid-worker on
    sightings.uploaded. A group that never committed on a partition is behind by everything on it."""

    def __init__(self, settings: Settings, reader_consumer, groups: list[tuple[str, str]]):
        self.settings = settings
        self.reader = reader_consumer
        self.groups = groups
        self._consumers: dict[str, object] = {}

    def behind(self) -> str | None:
        """A description of the first group with a backlog, or None when every group has caught up."""
        from kafka import TopicPartition

        for group, topic in self.groups:
            self.reader.topics()
            partitions = sorted(self.reader.partitions_for_topic(topic) or ())
            if not partitions:
                continue
            tps = [TopicPartition(topic, p) for p in partitions]
            ends = self.reader.end_offsets(tps)
            starts = self.reader.beginning_offsets(tps)
            consumer = self._consumers.get(group)
            if consumer is None:
                consumer = self._consumers[group] = kafka_consumer(self.settings, group_id=group)
            positions = {}
            for tp in tps:
                committed = consumer.committed(tp, timeout_ms=COMMITTED_TIMEOUT_MS)
                positions[tp] = starts[tp] if committed is None else committed
            # the end is the high-water mark a fetch from the group's position reports, exact both where ListOffsets
            # is short (a batching producer's last batch) and where it is beyond what can be read (see `_read_to`);
            # the listed end only for a partition whose fetch did not answer in time
            readable = readable_ends(self.reader, positions, VERIFY_TIMEOUT_S)
            lag = sum(max(0, readable.get(tp, ends[tp]) - position) for tp, position in positions.items())
            if lag:
                return f"{group} is {lag} record(s) behind on {topic}"
        return None

    def close(self) -> None:
        for consumer in self._consumers.values():
            try:
                consumer.close()
            except Exception:  # noqa: BLE001, S110 - closing a client of a broker that went away
                pass
        self._consumers.clear()
