"""The two client-side pieces that let the chain recover from a broker that restarted without its data (the
embedded Tansu): producers that replace themselves after a failed record, and Faust stages that notice an emptied
partition and read it again from its start. End to end, `whaleid chaos --scenario restart_kafka` exercises both
with the real broker; these tests pin the decisions."""

from __future__ import annotations

import asyncio
from collections import defaultdict

from faust.types import TP

from services.chain.kafka_producers import RecreatingProducer
from services.chain.topic_resets import forget_and_rewind, reset_partitions


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
    assert sorted((tp.partition, read, high) for tp, read, high in found) == [(1, 120, 0), (2, 120, 7)]
    for tp, _, _ in found:
        asyncio.run(forget_and_rewind(consumer, tp))
    assert consumer.seeks == [(tp, 0) for tp, _, _ in found]
    for tp, _, _ in found:  # Faust's own state for the partition is gone, as after a rebalance
        assert tp not in consumer._committed_offset and tp not in consumer._acked
        assert consumer._read_offset[tp] is None
    assert consumer._read_offset[kept] == 120 and consumer._committed_offset[kept] == 121
