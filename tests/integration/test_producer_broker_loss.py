"""The chain's kafka-python producer (`RecreatingProducer`) against a real broker (Tansu): a flush that runs out of
time (one deadline over all its batches) leaves the producer to be replaced, and a topic whose id changed under the
producer (the broker lost its data) marks it lost at once, so the next send goes through a new producer instead of
waiting out kafka-python's retries (docs/chaos.md, restart_kafka)."""

from __future__ import annotations

import time
import uuid

import pytest

from services.chain.kafka_producers import RecreatingProducer, acks_all_producer, kafka_options

PARTITIONS = 8


def _create(settings, name: str, partitions: int = PARTITIONS) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**kafka_options(settings))
    try:
        admin.create_topics([NewTopic(name, partitions, 1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        admin.close()


def _send_everywhere(producer, topic: str, tag: bytes) -> list:
    """One record per partition (keys chosen until every partition has one)."""
    from kafka.partitioner.default import murmur2

    futures, covered, n = [], set(), 0
    while len(covered) < PARTITIONS:
        key = b"%s-%d" % (tag, n)
        n += 1
        partition = (murmur2(key) & 0x7FFFFFFF) % PARTITIONS
        if partition not in covered:
            covered.add(partition)
            futures.append(producer.send(topic, key=key, value=b"v"))
    return futures


@pytest.fixture()
def own_broker(tmp_path):
    """A Tansu of this test's own: the test stops it."""
    from services.core.settings import load_settings
    from services.devtools.stack import Stack

    def settings():
        return load_settings(profile="local", environ={}, run_dir=tmp_path / "run", model_repository=tmp_path)

    stack = Stack(settings(), servers=("kafka",))
    stack.up(timeout=120)
    try:
        yield stack, settings()
    finally:
        stack.down()


def test_a_flush_that_runs_out_of_time_gets_the_producer_replaced_before_the_next_send(own_broker):
    from kafka.errors import KafkaTimeoutError

    stack, settings = own_broker
    topic = f"flush-{uuid.uuid4().hex[:8]}"
    _create(settings, topic)
    producer = acks_all_producer(settings, "test-flush")
    try:
        for future in _send_everywhere(producer, topic, b"before"):
            future.get(timeout=30)
        stack.stop_server("kafka")
        stuck = _send_everywhere(producer, topic, b"during")  # eight batches, none can be delivered
        started = time.monotonic()
        with pytest.raises(KafkaTimeoutError):
            producer.flush(timeout=1.0)
        waited = time.monotonic() - started
        assert waited < 4.0  # one deadline, not one per batch, f"flush(timeout=1) took {waited:.1f} s over {PARTITIONS} stuck batches"
        assert not any(f.is_done and f.succeeded() for f in stuck)

        stack.start_server("kafka", 90)
        _create(settings, topic)
        future = producer.send(topic, key=b"after", value=b"v")  # through a new producer
        assert producer.recreated == 1
        future.get(timeout=30)
        producer.flush(timeout=10)
    finally:
        producer.close(timeout=2)


def test_a_topic_recreated_under_the_producer_marks_it_failed_and_the_next_send_uses_a_new_one(kafka_only):
    from kafka import KafkaAdminClient, KafkaProducer

    settings = kafka_only
    topic = f"recreated-{uuid.uuid4().hex[:8]}"
    _create(settings, topic, 2)
    options = {**kafka_options(settings), "acks": "all", "enable_idempotence": True, "metadata_max_age_ms": 300}
    producer = RecreatingProducer(lambda: KafkaProducer(**options))
    admin = KafkaAdminClient(**kafka_options(settings))
    try:
        producer.send(topic, key=b"k", value=b"1").get(timeout=30)
        time.sleep(1.0)  # a metadata refresh or more with the first topic id
        assert producer.broker_lost == 0 and producer.recreated == 0  # unchanged ids are no loss

        admin.delete_topics([topic])
        time.sleep(0.5)
        _create(settings, topic, 2)
        deadline = time.monotonic() + 20
        while producer.broker_lost == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert producer.broker_lost == 1, "the producer's metadata never showed the topic's new id"

        producer.send(topic, key=b"k", value=b"2").get(timeout=30)
        assert producer.recreated == 1
        time.sleep(1.0)  # the new producer's refreshes see the new id only: no second loss
        assert producer.broker_lost == 1
    finally:
        admin.delete_topics([topic])
        admin.close()
        producer.close(timeout=2)
