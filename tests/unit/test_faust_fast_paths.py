"""The fetch loop's hand-over of each message (services.chain.faust_app.hand_messages_on_directly), against mode's
own Service and Event (no Kafka needed)."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from faust.transport.consumer import Consumer
from mode import Service

from services.chain import faust_app


class _Flow(Service):
    """What the patched wait_first needs of Faust's consumer: a Service with a `suspend_flow` asyncio.Event."""

    def __init__(self):
        super().__init__()
        self.suspend_flow = asyncio.Event()


def _wait_first():
    faust_app.hand_messages_on_directly()
    return Consumer.wait_first


def test_a_callback_that_does_not_wait_runs_at_once_without_tasks():
    wait_first = _wait_first()
    ran = []

    async def callback(n):
        ran.append(n)
        return n * 2

    async def main():
        flow = _Flow()
        tasks_before = len(asyncio.all_tasks())
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the flow's wait() coroutine is closed, not left un-awaited
            result = await wait_first(flow, callback(3), flow.suspend_flow.wait())
        assert len(asyncio.all_tasks()) == tasks_before
        return result

    result = asyncio.run(main())
    assert ran == [3] and result.results == [6] and not result.stopped


def test_fausts_own_consumer_hands_a_message_on_at_once():
    """The fetch loop's call as Faust's aiokafka consumer makes it (its own `suspend_flow`; no broker needed)."""
    import faust

    wait_first = _wait_first()
    ran = []

    async def callback():
        ran.append(1)
        return "handed"

    async def main():
        consumer = faust.App("fast-paths", broker="kafka://127.0.0.1:1", autodiscover=False).consumer
        assert isinstance(consumer, Consumer)
        tasks_before = len(asyncio.all_tasks())
        result = await consumer.wait_first(callback(), consumer.suspend_flow.wait())
        assert consumer.wait_first.__func__ is wait_first and len(asyncio.all_tasks()) == tasks_before
        return result

    assert asyncio.run(main()).results == ["handed"] and ran == [1]


def test_a_callback_that_waits_goes_on_where_it_stopped():
    wait_first = _wait_first()
    steps = []

    async def callback(gate):
        steps.append("before")
        value = await gate
        steps.append(("after", value))
        return value

    async def main():
        flow = _Flow()
        gate = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, gate.set_result, 7)
        return await wait_first(flow, callback(gate), flow.suspend_flow.wait())

    result = asyncio.run(main())
    assert steps == ["before", ("after", 7)] and result.results == [7]


def test_a_waiting_callback_is_cancelled_when_the_flow_is_suspended():
    wait_first = _wait_first()
    seen = []

    async def callback(gate):
        try:
            await gate
        except asyncio.CancelledError:
            seen.append("cancelled")
            raise
        seen.append("finished")

    async def main():
        flow = _Flow()
        gate = asyncio.get_running_loop().create_future()
        asyncio.get_running_loop().call_later(0.01, flow.suspend_flow.set)
        await wait_first(flow, callback(gate), flow.suspend_flow.wait())
        await asyncio.sleep(0.01)  # the cancellation reaches the callback

    asyncio.run(main())
    assert seen == ["cancelled"]


@pytest.mark.parametrize("waits", [False, True])
def test_an_exception_of_the_callback_propagates(waits):
    wait_first = _wait_first()

    async def callback():
        if waits:
            await asyncio.sleep(0.001)
        raise KeyError("boom")

    async def main():
        flow = _Flow()
        await wait_first(flow, callback(), flow.suspend_flow.wait())

    with pytest.raises(KeyError, match="boom"):
        asyncio.run(main())


def test_a_suspended_flow_takes_fausts_own_path():
    wait_first = _wait_first()
    ran = []

    async def callback():
        ran.append(1)

    async def main():
        flow = _Flow()
        flow.suspend_flow.set()
        return await wait_first(flow, callback(), flow.suspend_flow.wait())

    result = asyncio.run(main())
    assert ran == [1] and len(result.results) >= 1  # Faust's wait_first: both finished at once
