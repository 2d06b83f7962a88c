"""The Faust application of a chain stage (worker, matcher), configured from `services.core.settings` only.

Local profile: the Tansu workarounds of ENVIRONMENT.md (short sessions, unbatched producer, memory store);
production: Faust's defaults. Topics carry raw JSON bytes: each stage decodes the records itself so that a
malformed event is dead-lettered with its reason instead of being skipped by Faust's decoder.

Delivery: at least once. Offsets are committed only after a batch was handled (produced, acknowledged with
acks=all, Redis written), so a crash re-delivers; every record is keyed by its sighting id (the idempotency key).
The producer is idempotent (`faust_producer_idempotence`: aiokafka `enable_idempotence=True`, which Faust 0.15
sets only for exactly-once transactions, so `make_app` adds it), so the broker drops the duplicates of the
producer's own retries; Tansu 0.6 fails aiokafka's InitProducerId (v0) with an UNKNOWN error, hence off in the
local profile.
"""

from __future__ import annotations

import logging
from pathlib import Path

import faust

from services.chain import topic_resets
from services.core import topics
from services.core.metrics import CONSUMER_OFFSET
from services.core.settings import Settings

log = logging.getLogger(__name__)



def _ssl_context(settings: Settings):
    """TLS context of the broker connections: the system's CAs, or only `kafka_ssl_cafile` when set."""
    import ssl

    return ssl.create_default_context(cafile=settings.kafka_ssl_cafile or None)


def _broker_credentials(settings: Settings):
    if settings.kafka_security_protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        return faust.SASLCredentials(
            username=settings.kafka_username,
            password=settings.kafka_password,
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            # Faust speaks SASL_SSL only when it is given a context (else SASL_PLAINTEXT, in clear)
            ssl_context=_ssl_context(settings) if settings.kafka_security_protocol == "SASL_SSL" else None,
        )
    if settings.kafka_security_protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(settings))
    return None


def limit_fetch_wait(max_wait_ms: int) -> None:
    """Faust hard-codes aiokafka's fetch_max_wait_ms=1500; a broker that answers fetches only when the wait
    expires (Tansu) then adds that much latency per hop. Set it on each consumer before it starts."""
    from faust.transport.drivers import aiokafka as driver

    original = getattr(driver.AIOKafkaConsumerThread._create_worker_consumer, "__wrapped__",
                       driver.AIOKafkaConsumerThread._create_worker_consumer)

    def create_worker_consumer(self, transport):
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = max_wait_ms
        return consumer

    create_worker_consumer.__wrapped__ = original
    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer


def use_idempotent_producer(enabled: bool) -> None:
    """Make Faust's aiokafka producers idempotent (or not). Faust 0.15.3 has no `producer_enable_idempotence`
    setting: `Producer._settings_extra` adds `enable_idempotence` only inside exactly-once transactions."""
    from faust.transport.drivers import aiokafka as driver

    original = getattr(driver.Producer._settings_extra, "__wrapped__", driver.Producer._settings_extra)
    if not enabled:
        driver.Producer._settings_extra = original
        return

    def settings_extra(self):
        return {**original(self), "acks": "all", "enable_idempotence": True}

    settings_extra.__wrapped__ = original
    driver.Producer._settings_extra = settings_extra


def make_app(settings: Settings, stage: str, web_port: int) -> faust.App:
    """A Faust app for `stage` (consumer group `whaleid-<stage>`)."""
    if not settings.kafka_bootstrap:
        from services.core.errors import ConfigError

        raise ConfigError("no Kafka bootstrap address: start the stack (`whaleid stack up`) or set WHALEID_KAFKA_BOOTSTRAP")
    datadir = Path(settings.run_dir) / "faust" / f"{stage}-{web_port}"
    datadir.parent.mkdir(parents=True, exist_ok=True)
    brokers = ";".join(f"kafka://{address.strip()}" for address in settings.kafka_bootstrap.split(","))
    options = dict(
        broker=brokers,
        store=settings.faust_store,
        web_bind=settings.faust_web_host,  # loopback unless configured: Faust's /router, /stats, the reload page
        web_port=web_port,
        web_enabled=True,
        broker_session_timeout=settings.faust_broker_session_timeout,
        broker_heartbeat_interval=settings.faust_broker_heartbeat_interval,
        producer_max_batch_size=settings.faust_producer_max_batch_size,
        consumer_auto_offset_reset="earliest",  # an offset out of range: the start of the log (topic_resets)
        topic_partitions=4,
        autodiscover=False,
        datadir=str(datadir),
    )
    if settings.faust_fetch_max_wait_ms:
        limit_fetch_wait(settings.faust_fetch_max_wait_ms)
    use_idempotent_producer(settings.faust_producer_idempotence)
    credentials = _broker_credentials(settings)
    if credentials is not None:
        options["broker_credentials"] = credentials
    app = faust.App(f"whaleid-{stage}", **options)
    from services.chain.kafka_producers import kafka_options

    topic_resets.install(app, settings.faust_topic_reset_check_s, kafka_options(settings))
    report_committed_offsets(app, stage, OFFSET_REPORT_S)
    return app


OFFSET_REPORT_S = 5.0


def report_committed_offsets(app: faust.App, stage: str, interval_s: float) -> None:
    """Every `interval_s`, each assigned partition's committed offset as whaleid_consumer_committed_offset{stage,
    topic, partition} (the dashboard's consumer progress panels). Faust commits by itself; its consumer keeps the
    offsets in `_committed_offset`, which topic_resets reads too."""

    @app.timer(interval=interval_s)
    async def committed_offsets():
        for tp, offset in list((getattr(app.consumer, "_committed_offset", None) or {}).items()):
            if offset is not None:
                CONSUMER_OFFSET.labels(stage=stage, topic=tp.topic, partition=str(tp.partition)).set(offset)


def raw_topic(app: faust.App, name: str):
    return app.topic(name, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")


async def send_and_wait(topic, key: str, value: bytes) -> None:
    """Produce one message and wait until the broker acknowledged it (markers are set only after this)."""
    pending = await topic.send(key=key.encode(), value=value)
    await pending


def dead_letter_record(stage: str, reason: str, original, sighting_id: str = "", detail: str = "") -> topics.DeadLetter:
    return topics.DeadLetter(stage=stage, reason=reason, original=original, sighting_id=sighting_id,
                             failed_at=topics.now(), detail=detail)


def decode_original(raw: bytes):
    """The original event for a dead letter: decoded JSON when possible, else the text."""
    import json

    try:
        return json.loads(raw)
    except (ValueError, TypeError):
        return raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else str(raw)


EVENT_LOOPS = ("uvloop", "asyncio")  # the setting `event_loop`


def use_event_loop(kind: str) -> None:
    """Run this process's asyncio loops on `kind` (the setting `event_loop`): uvloop, or the standard library's.

    Call it before anything creates a loop (before `make_app`): it sets the loop policy, which Faust's main loop
    and the loops of its consumer thread and other service threads (`asyncio.new_event_loop`) all come from, and
    makes a new loop of that kind this thread's current one (mode resolves and keeps the loop of the thread
    that builds the app)."""
    import asyncio

    from services.core.errors import ConfigError

    if kind not in EVENT_LOOPS:
        raise ConfigError(f"setting 'event_loop': {kind!r} is not one of {', '.join(EVENT_LOOPS)}")
    if kind == "asyncio":
        asyncio.set_event_loop_policy(None)
    else:
        try:
            import uvloop
        except ImportError:
            raise ConfigError("setting 'event_loop' = uvloop, but uvloop is not installed: `make install`, or set "
                              "event_loop = asyncio (WHALEID_EVENT_LOOP=asyncio)") from None
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())


def describe_loop(loop) -> str:
    """`uvloop.Loop`, `asyncio._UnixSelectorEventLoop`, ...: the class of a loop, for the start-up log line."""
    return f"{type(loop).__module__.split('.')[0]}.{type(loop).__qualname__}"


def run_app(app: faust.App, loglevel: str = "info") -> None:
    """Run a Faust app in this process until SIGTERM/SIGINT."""
    worker = Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.execute_from_commandline()


class Worker(faust.Worker):
    """A stop (SIGTERM/SIGINT) is bounded: quick and quiet when the broker is gone (services.chain.shutdown).
    Named Worker: its log lines (`[^Worker]: Ready`) are what readiness checks wait for."""

    async def on_first_start(self) -> None:
        import asyncio

        log.info("%s: event loop %s", self.app.conf.id, describe_loop(asyncio.get_running_loop()))
        await super().on_first_start()

    def _schedule_shutdown(self, signal) -> None:
        if not self._signal_stop_time:
            from services.chain.shutdown import exit_after

            exit_after(",".join(f"{url.host}:{url.port}" for url in self.app.conf.broker_consumer))
        super()._schedule_shutdown(signal)
