"""The two client-side pieces that let the chain recover from a broker that restarted without its data (the
embedded Tansu): producers that replace themselves after a failed record, and Faust stages that notice an emptied
partition and read it again from its start. End to end, `whaleid chaos --scenario restart_kafka` exercises both
with the real broker; these tests pin the decisions."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from faust.types import TP

from services.chain.kafka_producers import RecreatingProducer
from services.chain.topic_resets import forget_and_rewind, guarded, reset_partitions


class _Future:
    def __init__(self, error: BaseException | None):
        self.error = error

    def add_errback(self, fn):
        if self.error is not None:
            fn(self.error)
        return self


class _Producer:

    def __init__(self, fail: bool):
        self.fail, self.closed, self.sent = fail, False, []

    def send(self, topic, key=None, value=None):
        self.sent.append((topic, key, value))
        return _Future(RuntimeError("InitProducerId failed") if self.fail else None)

    def close(self, timeout=None):
        self.closed = True


def test_a_producer_whose_record_failed_is_replaced_before_the_next_send():
    made = []

    def make():
        made.append(_Producer(fail=not made))  # the first producer's records fail, the next one's succeed
        return made[-1]

    producer = RecreatingProducer(make)
    producer.send("t", b"k", b"1")
    assert len(made) == 1 and producer.recreated == 0
    producer.send("t", b"k", b"2")  # the retry goes through a new producer
    assert len(made) == 2 and made[0].closed and made[1].sent == [("t", b"k", b"2")]
    producer.send("t", b"k", b"3")
    assert len(made) == 2 and producer.recreated == 1  # healthy: kept


class _Consumer:
    """Faust's per-partition state, as faust.transport.consumer.Consumer keeps it."""

    def __init__(self, read: dict, high: dict):
        self._read_offset = defaultdict(lambda: None, read)
        self._committed_offset = defaultdict(lambda: None, {tp: o + 1 for tp, o in read.items()})
        self._acked = defaultdict(list, {tp: [o] for tp, o in read.items()})
        self._acked_index = defaultdict(set)
        self._gap = defaultdict(dict)
        self.high = high
        self.seeks = []

    def assignment(self):
        return set(self._read_offset) | set(self.high)

    def highwater(self, tp):
        return self.high.get(tp)

    async def seek(self, tp, offset):
        self.seeks.append((tp, offset))
        self._read_offset[tp] = offset or None


def test_a_partition_whose_high_water_mark_fell_below_the_read_offset_is_read_again_from_its_start():
    kept, emptied, refilled, unread = (TP("sightings.uploaded", p) for p in range(4))
    consumer = _Consumer(read={kept: 120, emptied: 120, refilled: 120},
                         high={kept: 121, emptied: 0, refilled: 7, unread: 0})
    found = reset_partitions(consumer)
    assert sorted((tp.partition, read, high) for tp, read, high, _ in found) == [(1, 120, 0), (2, 120, 7)]
    for tp, _, _, _ in found:
        asyncio.run(forget_and_rewind(consumer, tp))
    assert consumer.seeks == [(tp, 0) for tp, _, _, _ in found]
    for tp, _, _, _ in found:  # Faust's own state for the partition is gone, as after a rebalance
        assert tp not in consumer._committed_offset and tp not in consumer._acked
        assert consumer._read_offset[tp] is None
    assert consumer._read_offset[kept] == 120 and consumer._committed_offset[kept] == 121


def test_a_partition_sought_to_its_end_is_not_taken_for_a_reset():
    """After a rebalance Faust seeks to the committed offset and records it as read: a caught-up partition then
    has its high-water mark equal to the read offset, which is no reset."""
    tp = TP("sightings.uploaded", 0)
    consumer = _Consumer(read={tp: 120}, high={tp: 120})
    assert reset_partitions(consumer) == []


def test_a_log_that_refilled_past_the_read_position_is_recognised_by_its_falling_high_water_mark():
    """A stage behind its log (read 100 of 300) whose partition restarted from 0 and refilled to 150: its
    position (101) is in range, so no fetch fails; without the marks it would skip offsets 0..100 of the new
    log."""
    grown, refilled = TP("sightings.embedded", 0), TP("sightings.embedded", 1)
    consumer = _Consumer(read={grown: 100, refilled: 100}, high={grown: 300, refilled: 300})
    assert reset_partitions(consumer) == []  # the marks are remembered
    consumer.high = {grown: 340, refilled: 150}
    found = reset_partitions(consumer)
    assert [(tp, why) for tp, _, _, why in found] == [(refilled, "high-water mark fell from 300 to 150")]
    asyncio.run(forget_and_rewind(consumer, refilled))
    assert consumer.seeks == [(refilled, 0)]
    assert reset_partitions(consumer) == []  # after the rewind the new log's marks are the reference
    consumer.high[refilled] = 151
    assert reset_partitions(consumer) == []


class _Message:
    def __init__(self, offset):
        self.offset = offset


async def _messages(pairs):
    for tp, offset in pairs:
        yield tp, _Message(offset)


def test_a_message_below_the_read_offset_is_handled_and_the_partition_state_dropped():
    """Faust drops a message below the read offset as already seen; after an offset-out-of-range reset every
    message of the new log is such a message. The guard on the fetch path drops the partition's state first, so
    Faust's loop handles the message (it handles any message of a partition without a read offset)."""
    reset, kept = TP("sightings.uploaded", 0), TP("sightings.uploaded", 1)
    consumer = _Consumer(read={reset: 500, kept: 40}, high={})

    async def run():
        handled = []
        async for tp, message in guarded(consumer, _messages([(kept, 41), (reset, 0), (reset, 1), (kept, 42)])):
            read = consumer._read_offset[tp]
            if read is None or message.offset >= read:  # Faust's own test in Consumer._drain_messages
                handled.append((tp.partition, message.offset))
                consumer._read_offset[tp] = message.offset
        return handled

    assert asyncio.run(run()) == [(1, 41), (0, 0), (0, 1), (1, 42)]
    assert reset not in consumer._committed_offset and reset not in consumer._acked
    assert consumer._committed_offset[kept] == 41


def test_every_faust_consumer_fetches_through_the_guard():
    from faust.transport import consumer as faust_consumer
    from faust.transport.drivers import aiokafka as driver

    from services.chain.topic_resets import guard_getmany

    guard_getmany()
    guard_getmany()  # once, however many apps
    assert driver.Consumer.getmany is faust_consumer.Consumer.getmany
    assert faust_consumer.Consumer.getmany.__whaleid_guard__
    assert not getattr(faust_consumer.Consumer.getmany.__wrapped__, "__whaleid_guard__", False)


def test_a_lost_input_topic_is_created_again_and_a_recreated_one_is_noticed_by_its_new_id(stack):
    """Rules 3 and 4 against the real broker: a topic the broker does not list is created (else Faust's
    rebalance retries its commit until a producer creates it); a topic created again has a new topic id, which
    is reported so its partitions are read from the start however far the new log has grown."""
    import time
    import uuid

    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    from services.chain.kafka_producers import kafka_options
    from services.chain.topic_resets import TopicKeeper

    name = f"keeper-{uuid.uuid4().hex[:8]}"
    keeper = TopicKeeper(kafka_options(stack.settings), 4, 1)
    admin = KafkaAdminClient(**kafka_options(stack.settings))
    try:
        assert keeper.check([name]) == ([name], [])  # missing: created
        assert name in admin.list_topics()
        assert keeper.check([name]) == ([], [])  # its id is remembered
        first = keeper.ids[name]
        assert keeper.check([name]) == ([], [])
        admin.delete_topics([name])
        time.sleep(0.5)
        admin.create_topics([NewTopic(name, 4, 1)])
        time.sleep(0.5)
        assert keeper.check([name]) == ([], [name])  # created again behind the stage's back
        assert keeper.ids[name] != first
        assert keeper.check([name]) == ([], [])
    finally:
        admin.delete_topics([name])
        admin.close()
        keeper.close()


class _KafkaPythonConsumer:
    """Position and last fetched high-water mark per partition, as kafka-python's KafkaConsumer reports them."""

    def __init__(self, positions: dict, highs: dict):
        self.positions, self.highs = positions, highs

    def position(self, tp):
        return self.positions[tp]

    def highwater(self, tp):
        return self.highs.get(tp)


def test_the_reconciler_reads_a_partition_to_what_a_fetch_can_return_not_to_a_listed_end_beyond_it():
    """After a broker restart Tansu answered ListOffsets with end 3 while fetches return offsets 0-1 and a
    high-water mark of 2 (an offset taken by a produce that failed): the reconciler waited for offset 3 in every
    pass, never checked the topic, and two identifications missing from it were never produced again."""
    from services.chain.reconciler.kafka_io import _read_to

    hole, behind, done, unfetched = "p0", "p1", "p2", "p3"
    consumer = _KafkaPythonConsumer(positions={hole: 2, behind: 1, done: 3, unfetched: 0},
                                    highs={hole: 2, behind: 2, done: 3})
    assert _read_to(consumer, hole, 3)
    assert not _read_to(consumer, behind, 3)
    assert _read_to(consumer, done, 3)
    assert not _read_to(consumer, unfetched, 3)  # no fetch answered yet: keep reading
