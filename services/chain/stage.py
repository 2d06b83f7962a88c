"""What the worker and the matcher share: retry of transient failures, produce-and-wait, dead-lettering."""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Awaitable, Callable, TypeVar

from services.chain import markers
from services.chain.failures import Backoff, PermanentFailure, TransientFailure
from services.chain.faust_app import dead_letter_record, send_and_wait
from services.metrics import DEAD_LETTERS, EVENTS, STEP_LATENCY
from services.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")


class ChainStage:
    """Base of a stage's handler: `stage` names it in metrics and dead letters."""

    stage = ""

    def __init__(self, settings: Settings, redis_client, dead_topic):
        self.settings = settings
        self.redis = redis_client
        self.dead_topic = dead_topic

    def backoff(self) -> Backoff:
        return Backoff(self.settings.retry_backoff_initial_s, self.settings.retry_backoff_max_s)

    @contextmanager
    def timed_step(self, step: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            STEP_LATENCY.labels(stage=self.stage, step=step).observe(time.perf_counter() - start)

    async def retry(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
        """Run `action` until it does not raise TransientFailure (PermanentFailure propagates)."""
        backoff = self.backoff()
        while True:
            try:
                return await action()
            except TransientFailure as exc:
                delay = backoff.next_delay()
                log.warning("%s %s: transient failure, retrying in %.1fs: %s", self.stage, what, delay, exc)
                EVENTS.labels(stage=self.stage, outcome="retry").inc()
                await asyncio.sleep(delay)

    async def in_thread(self, what: str, fn: Callable[..., T], *args) -> T:
        """A blocking call (Redis, S3, Triton) off the event loop, retried while it fails transiently."""
        return await self.retry(what, lambda: asyncio.to_thread(fn, *args))

    async def send(self, topic, key: str, record) -> None:
        """Produce and wait for the broker's acknowledgement, retrying while Kafka is unavailable."""

        async def attempt():
            try:
                await send_and_wait(topic, key, record.to_json())
            except Exception as exc:  # noqa: BLE001 - the broker is unavailable: retry
                raise TransientFailure(f"Kafka produce to {topic.get_topic_name()} failed: {exc}") from None

        await self.retry(f"produce {key}", attempt)

    async def dead_letter(self, failure: PermanentFailure, original, sighting_id: str) -> None:
        """sightings.dead-letter (reason + original event) and Redis `failure:<id>`."""
        record = dead_letter_record(self.stage, failure.reason, original, sighting_id, failure.detail)
        log.warning("%s: sighting %s dead-lettered: %s", self.stage, sighting_id or "?", failure)
        await self.send(self.dead_topic, sighting_id or "unknown", record)
        if sighting_id:
            await self.in_thread(
                "record failure", markers.record_failure,
                self.redis, sighting_id, self.stage, failure.reason, failure.detail, record.failed_at,
                self.settings.redis_marker_ttl_s,
            )
        DEAD_LETTERS.labels(stage=self.stage, reason=failure.reason).inc()
        EVENTS.labels(stage=self.stage, outcome="dead_letter").inc()
