"""The reconciler's partition reader on a real embedded broker (Tansu): verifying a position inside a large batch
must not keep the partition from being read afterwards.

In full `whaleid chaos` runs, after restart_kafka, the topic audit could not read `identifications` to its end
for minutes: "[2] position 20, end 1188, high-water mark None", pass after pass, each pass on a new consumer
(docs/chaos.md). Its kafka-python trace (reconciler-kafka.log) showed the stuck partitions never fetched again
after `first_records` had paused them: kafka-python 3.0.12 parks a paused partition's buffered records and does
not give them back while its in-line slot holds another partition's (drained) records, and never fetches a
partition with parked records. It needs records of a partition left over after the poll that found the first
one: here one batch of more records than a poll returns (500) on each partition.
"""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaProducer

from services.chain.reconciler import kafka_io

PARTITIONS = 4
BIG_BATCH = 600  # records in each partition's first batch: more than one poll returns
VERIFIED = 20  # the offset verified, inside the first batch


@pytest.fixture(scope="module")
def kafka_settings(kafka_only):
    return kafka_only


def _topic_of_big_batches(settings) -> str:
    topic = f"test-reader-{uuid.uuid4().hex[:8]}"
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=1000,
                             batch_size=4_000_000, max_request_size=8_000_000)
    for partition in range(PARTITIONS):
        for n in range(BIG_BATCH):  # one batch (one flush, long linger)
            producer.send(topic, key=f"{partition}-{n}".encode(), value=b"x" * 300, partition=partition)
        producer.flush()
        for n in range(BIG_BATCH, BIG_BATCH + 10):  # and a small one after it
            producer.send(topic, key=f"{partition}-{n}".encode(), value=b"x" * 300, partition=partition)
        producer.flush()
    producer.close()
    return topic


def test_a_partition_verified_inside_a_large_batch_is_read_to_its_end_afterwards(kafka_settings):
    topic = _topic_of_big_batches(kafka_settings)
    consumer = kafka_io.kafka_consumer(kafka_settings)
    try:
        reader = kafka_io.PartitionReader(consumer, topic)
        partitions = reader.partitions()
        assert len(partitions) == PARTITIONS
        found = reader.first_records({p: VERIFIED for p in partitions}, 10.0)
        assert {p: (r.offset, r.key) for p, r in found.items()} == {
            p: (VERIFIED, f"{p}-{VERIFIED}") for p in partitions}
        ends = reader.end_offsets(partitions)
        records, positions, complete = reader.read({p: VERIFIED + 1 for p in partitions}, ends, 15.0)
        assert complete, f"positions {positions}, ends {ends}"
        assert positions == {p: BIG_BATCH + 10 for p in partitions}
        keys = {r.key for r in records}
        assert keys >= {f"{p}-{n}" for p in partitions for n in range(VERIFIED + 1, BIG_BATCH + 10)}
        # and the same consumer verifies and reads again (the reconciler's next pass)
        again = reader.first_records({p: BIG_BATCH + 9 for p in partitions}, 10.0)
        assert sorted(again) == partitions
        assert reader.read({p: VERIFIED + 1 for p in partitions}, ends, 15.0)[2]
    finally:
        consumer.close()
