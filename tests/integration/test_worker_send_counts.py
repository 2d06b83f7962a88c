"""ChainStage.send_many (the worker's and the matcher's produce) queues records on the app's producer itself, past
Faust's topic layer; Faust's sensors (its Monitor: `messages_sent`, `messages_sent_by_topic`, `send_latency`,
what its stats page shows where it is served, `web_stats_enabled`) still count each record as the topic layer
does. Against the session stack's broker."""

from __future__ import annotations

import asyncio
import uuid

from services.chain.faust_app import make_app, raw_topic, send_and_wait
from services.chain.stage import ChainStage
from services.devtools.stack.ports import free_port


def test_send_many_is_counted_by_the_sensors_as_a_topic_send_is(stack):
    settings = stack.settings
    name = f"counts-{uuid.uuid4().hex[:8]}"

    async def produce():
        app = make_app(settings, f"counts-{uuid.uuid4().hex[:6]}", free_port())  # on this loop (mode binds one)
        app.sensors.add(app.monitor)  # what the app's start does (App.on_init_dependencies)
        topic = raw_topic(app, name)
        try:
            await asyncio.wait_for(send_and_wait(topic, "by-the-topic-layer", b"1"), 60)
            monitor = app.monitor
            counted_once = (monitor.messages_sent, monitor.messages_sent_by_topic[name], len(monitor.send_latency))
            await asyncio.wait_for(ChainStage(settings, None, None).send_many(
                topic, [(f"k{i}", b"v" * 100) for i in range(7)]), 60)
            return counted_once, monitor
        finally:
            await app.producer.stop()

    counted_once, monitor = asyncio.run(produce())
    assert counted_once == (1, 1, 1)  # Faust's own count of one record
    assert monitor.messages_sent == 8 and monitor.messages_sent_by_topic[name] == 8
    assert len(monitor.send_latency) == 8 and monitor.send_errors == 0
