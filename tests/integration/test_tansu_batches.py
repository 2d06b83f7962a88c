"""The local profile's Faust producers batch on Tansu (`faust_producer_max_batch_size`, as in production): Tansu's
ListOffsets quirk (LATEST = base offset of the last batch + 1, short when a producer batches) must not reach the
chain's consumers. They rely on the fetch's high-water mark (services.chain.topic_resets: a mark below the read
offset means a reset partition), which these tests check against the real broker with batched produces."""

from __future__ import annotations

import asyncio
import uuid


async def _produce_batched(bootstrap: str, topic: str, batch_bytes: int, rounds: list[int]) -> list[int]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_batch_size=batch_bytes, linger_ms=0, acks="all")
    await producer.start()
    offsets = []
    try:
        for count in rounds:  # queued at once, then awaited: one batch per round (as ChainStage.send_many does)
            futures = [await producer.send(topic, key=f"k{i}".encode(), value=b"v" * 200, partition=0)
                       for i in range(count)]
            offsets += [meta.offset for meta in await asyncio.gather(*futures)]
    finally:
        await producer.stop()
    return offsets


async def _read_all(bootstrap: str, topic: str, expected: int):
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False,
                                fetch_max_wait_ms=100)
    await consumer.start()
    tp = TopicPartition(topic, 0)
    try:
        consumer.assign([tp])
        listed = (await consumer.end_offsets([tp]))[tp]
        read: list[int] = []
        for _ in range(40):
            batch = await consumer.getmany(tp, timeout_ms=250)
            read += [message.offset for message in batch.get(tp, [])]
            if len(read) >= expected:
                break
        return consumer, tp, listed, read, consumer.highwater(tp)
    finally:
        await consumer.stop()


class _Stage:
    """What topic_resets reads of a Faust consumer: the assignment, the read offsets and the fetch's mark."""

    def __init__(self, tp, read_offset: int, high: int):
        self._read_offset = {tp: read_offset}
        self._tp, self._high = tp, high

    def assignment(self):
        return {self._tp}

    def highwater(self, tp):
        return self._high


def test_batched_produces_keep_the_fetch_high_water_mark_exact(stack):
    from services.chain.topic_resets import reset_partitions

    settings = stack.settings
    assert settings.faust_producer_max_batch_size > 1  # the local profile batches
    topic = f"batches-{uuid.uuid4().hex[:8]}"
    rounds = [10, 5, 7]
    offsets = asyncio.run(_produce_batched(settings.kafka_bootstrap, topic, settings.faust_producer_max_batch_size,
                                           rounds))
    total = sum(rounds)
    assert offsets == list(range(total))
    _, tp, listed, read, high = asyncio.run(_read_all(settings.kafka_bootstrap, topic, total))
    assert read == list(range(total))  # every record once, in order
    assert high == total  # the fetch's mark: the next offset, exact whatever the batches
    assert listed <= total  # ListOffsets may be short (Tansu: base of the last batch + 1); the chain never uses it
    # a stage that read everything is not taken for a reset partition (rule 2 of topic_resets)
    assert reset_partitions(_Stage(tp, read[-1], high)) == []
    # while a mark below what was read still is one (the rule is live, not vacuous)
    assert reset_partitions(_Stage(tp, read[-1], offsets[0]))
