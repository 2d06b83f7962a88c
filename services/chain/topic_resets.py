"""Recovery of a Faust stage from a broker that came back without its data.

The embedded broker (Tansu) keeps topics in memory: after a restart every topic is empty again and its offsets
start from 0, below the offsets the stage had read. Faust drops any message whose offset is below the read offset
it keeps per partition (it treats it as already seen), so without help the stage would skip every new message
until the offsets passed the old ones, and the reconciler's re-drives would vanish the same way.

`watch_topic_resets(app, interval_s)` adds a timer: a partition whose high-water mark (the next offset the broker
will write) is at or below the last offset the stage read was reset, so Faust's own state for it is dropped (what
a rebalance does for a revoked partition) and it is read again from its start. Messages lost with the old data
are the reconciler's job (services/reconciler). On a broker that keeps its data this never triggers.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

_PARTITION_STATE = ("_read_offset", "_committed_offset", "_acked", "_acked_index", "_gap")


def reset_partitions(consumer) -> list:
    """The assigned partitions whose high-water mark is at or below their read offset."""
    reset = []
    for tp in list(consumer.assignment()):
        read = consumer._read_offset.get(tp)
        if read is None:
            continue
        try:
            high = consumer.highwater(tp)
        except Exception:  # noqa: BLE001 - not fetched yet after a reconnect: look again next time
            continue
        if high is not None and high <= read:
            reset.append((tp, read, high))
    return reset


async def forget_and_rewind(consumer, tp) -> None:
    for name in _PARTITION_STATE:
        getattr(consumer, name).pop(tp, None)
    await consumer.seek(tp, 0)


def watch_topic_resets(app, interval_s: float) -> None:
    if not interval_s:
        return

    @app.timer(interval=interval_s)
    async def rewind_reset_partitions():
        consumer = app.consumer
        for tp, read, high in reset_partitions(consumer):
            log.warning("%s [%d] was reset by the broker (high-water mark %s <= offset %s read before): "
                        "reading it again from its start", tp.topic, tp.partition, high, read)
            await forget_and_rewind(consumer, tp)
