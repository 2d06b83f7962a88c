"""What the worker and the matcher share: retry of transient failures, produce-and-wait, dead-lettering, and the
guard that keeps an unexpected exception from skipping a batch.

No silent acknowledgement: faust-streaming's `Stream.take()` acknowledges the buffered events in its `finally`,
so an exception escaping a stage's batch handler would skip the whole batch. `ChainStage.handle_guarded` runs the
handler; an exception other than the two expected kinds (TransientFailure is retried inside, PermanentFailure is
dead-lettered inside) is retried `INTERNAL_RETRIES` times with backoff, then the batch is split and each event
handled alone (with the same retries); an event that still fails is dead-lettered `internal_error` with the
exception's type and message, and the rest of the batch goes on. The handlers are idempotent by sighting id, so
a retried batch does not duplicate what already went through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from contextlib import contextmanager
from typing import Any, Awaitable, Callable, TypeVar

from services.chain import markers
from services.chain.failures import Backoff, PermanentFailure, TransientFailure
from services.chain.faust_app import dead_letter_record, decode_original, send_and_wait
from services.core.metrics import DEAD_LETTERS, EVENTS, STEP_LATENCY
from services.core.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")
INTERNAL_RETRIES = 2  # an unexpected exception: the batch (then each event alone) is tried again this many times
INTERNAL_ERROR = "internal_error"


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

    async def send_many(self, topic, items: list[tuple[str, bytes]]) -> None:
        """Produce a batch of (key, JSON value) at once, then wait for every acknowledgement (the producer
        sends what is queued together); what was not acknowledged is produced again while Kafka is unavailable.

        The records go to the app's producer itself (`Producer.send`: aiokafka's queue, partitioned by key as
        `topic.send` would), not through Faust's topic layer, whose per-record FutureMessage, schema and sensor
        callbacks cost more than the produce (the values are raw bytes already); every acknowledgement is still
        awaited before the caller marks anything. The app's sensors (Faust's Monitor: `messages_sent`,
        `messages_sent_by_topic`, `send_latency`, `send_errors`, what Faust's stats page shows where it is served:
        `web_stats_enabled`, off by default) are told of each record as the topic layer tells them (`_count_sends`)."""
        if not items:
            return
        backoff = self.backoff()
        pending = list(items)
        name = topic.get_topic_name()
        sensors = topic.app.sensors
        while pending:
            futures, states = [], []
            producer = None
            try:
                producer = await topic.app.maybe_start_producer()
                for key, value in pending:
                    encoded = key.encode()
                    states.append(sensors.on_send_initiated(producer, name, None, len(encoded), len(value)))
                    futures.append(await producer.send(name, encoded, value, None, None, None))
            except Exception as exc:  # noqa: BLE001 - the producer refused to queue: retry the rest
                error: BaseException | None = exc
            else:
                error = None
            outcomes = await asyncio.gather(*futures, return_exceptions=True)
            _count_sends(sensors, producer, states, outcomes)
            failed = [item for item, outcome in zip(pending, outcomes, strict=False) if isinstance(outcome, BaseException)]
            pending = failed + pending[len(futures):]
            if not pending:
                return
            error = error or next(o for o in outcomes if isinstance(o, BaseException))
            delay = backoff.next_delay()
            log.warning("%s produce of %d records to %s: transient failure, retrying in %.1fs: %s", self.stage,
                        len(pending), topic.get_topic_name(), delay, error)
            EVENTS.labels(stage=self.stage, outcome="retry").inc()
            await asyncio.sleep(delay)

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

    async def handle_guarded(self, raws: list, handle: Callable[[list], Awaitable[Any]]) -> None:
        """`handle(raws)`, never raising (but for cancellation): see the module's docstring."""
        error = await self._attempts(raws, handle)
        if error is None:
            return
        if len(raws) > 1:
            log.warning("%s: a batch of %d events failed %d times (%s: %s): handling each event alone",
                        self.stage, len(raws), INTERNAL_RETRIES + 1, type(error).__name__, error)
            for raw in raws:
                await self.handle_guarded([raw], handle)
            return
        await self._dead_letter_internal(raws[0], error)

    async def _attempts(self, raws: list, handle) -> BaseException | None:
        """None once `handle(raws)` returned, else the last unexpected exception after the bounded retries."""
        backoff = self.backoff()
        for attempt in range(INTERNAL_RETRIES + 1):
            try:
                await handle(raws)
                return None
            except Exception as exc:  # noqa: BLE001 - anything the handler did not expect
                EVENTS.labels(stage=self.stage, outcome="internal_error").inc()
                log.exception("%s: unexpected %s handling %d event(s) (attempt %d of %d)", self.stage,
                              type(exc).__name__, len(raws), attempt + 1, INTERNAL_RETRIES + 1)
                error = exc
            if attempt < INTERNAL_RETRIES:
                await asyncio.sleep(backoff.next_delay())
        return error

    async def _dead_letter_internal(self, raw, error: BaseException) -> None:
        original = decode_original(raw) if isinstance(raw, (bytes, bytearray)) else raw
        sighting_id = original.get("sighting_id", "") if isinstance(original, dict) else ""
        failure = PermanentFailure(INTERNAL_ERROR, f"{type(error).__name__}: {error}"[:2000])
        try:
            await self.dead_letter(failure, original, str(sighting_id or ""))
        except Exception:  # noqa: BLE001 - not even the dead letter went out: the reconciler re-drives it
            log.exception("%s: sighting %s could not be dead-lettered after an unexpected error", self.stage,
                          sighting_id or "?")


def _count_sends(sensors, producer, states: list, outcomes: list) -> None:
    """Tell the app's sensors how each record queued by `ChainStage.send_many` ended (acknowledged: its send
    latency; failed, or never queued after `on_send_initiated`: a send error), as Faust's topic layer does."""
    for index, state in enumerate(states):
        outcome = outcomes[index] if index < len(outcomes) else None
        if index < len(outcomes) and not isinstance(outcome, BaseException):
            sensors.on_send_completed(producer, state, outcome)
        else:
            sensors.on_send_error(producer, outcome if isinstance(outcome, BaseException)
                                  else RuntimeError("not queued"), state)
