"""`whaleid serve webhooks`: POST each finished identification to the webhook of the app that uploaded it.

Reads the topics `identifications` (event `identification`) and `new-individuals` (event `new_individual`) in
consumer group `webhooks_group`. The app is the sighting's `owner` (`sighting:<id>`, the gateway's credential
name); apps without a webhook (endpoints.py) are skipped. The body (JSON, the same bytes on every attempt):

    {"event", "delivery_id": "<event>:<sighting_id>", "app", "sighting_id",
     "data": the topic's record (Identification or NewIndividual), "metadata": the sighting's, without GPS}

Headers: `Content-Type: application/json`, `X-WhaleId-Event`, `X-WhaleId-Delivery` (= delivery_id: receivers
dedupe by it), `X-WhaleId-Attempt` (1, 2, ...), `X-WhaleId-Timestamp` and `X-WhaleId-Signature: sha256=<hex>`
(signing.py). A 2xx answer is delivered. A network error, an attempt past its deadline (`webhook_deadline_s`, wall
clock for the whole attempt: sender.py), 5xx, 408, 425 or 429 is retried after `webhook_backoff_initial_s` x
2^(attempt-1), capped at `webhook_backoff_max_s` (a numeric Retry-After is honoured up to the same cap); any other
answer (4xx, 3xx: redirects are not followed) is dead-lettered at once (`rejected`), and so is a delivery still
failing after `webhook_max_attempts` attempts (`max_attempts`) and a refused private address (`private_address`).

Isolation (lanes.py): each endpoint has its own bounded queue (`webhook_queue_size`) and its own sender threads
(`webhook_endpoint_concurrency`); the topic consumer only looks up the sighting and hands the job over, never
waiting for a receiver. A job its lane cannot take waits in Redis (the app's retry set, due at once) and is
handed over as the lane frees; when an app already has `webhook_backlog_max` deliveries waiting, a new one is
dead-lettered `backlog_full` instead (nothing is dropped without a dead letter).

Redis (durable, so the topic offset is committed once the job is recorded):
    webhooks:pending          hash delivery id -> the job JSON (app, event, sighting_id, body, attempts, ...),
                              from its hand-over until it is delivered or dead-lettered
    webhooks:retry:<app>      sorted set delivery id -> when the next attempt is due (claimed with ZREM); one per
                              app, so one app's backlog never delays another's retries
    webhooks:delivered:<id>   marker of a delivered call (TTL redis_marker_ttl_s): topic duplicates are not resent
    webhooks:dead-letter      stream: {delivery_id, app, event, sighting_id, reason, attempts, last_error, body,
                              dead_at}; trimmed to about redis_stream_maxlen
On start, pending jobs without a due time (a crash while they were queued or in flight) are due at once, and the
single retry set of earlier versions (`webhooks:retry`) is moved into the per-app sets. Delivery is at least once
(a crash between the POST and the marker sends again with the same delivery id).
Metrics: whaleid_webhook_deliveries_total{app, outcome}, whaleid_webhook_delivery_seconds{app},
whaleid_webhook_records_total{outcome}, whaleid_webhook_retry_queue.
"""

from __future__ import annotations

import collections
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass

from services.chain.webhooks.endpoints import Endpoint, endpoints_from_settings
from services.chain.webhooks.lanes import Lanes
from services.chain.webhooks.sender import Answer, Sender
from services.core.access.credentials import APP, Credential
from services.core.access.visibility import visible_metadata
from services.core.errors import ConfigError
from services.core.keys import (
    WEBHOOKS_DEAD_LETTER_STREAM,
    WEBHOOKS_LEGACY_RETRY_KEY,
    WEBHOOKS_PENDING_KEY,
    sighting_key,
    webhooks_delivered_key,
    webhooks_retry_key,
)
from services.core.metrics import WEBHOOK_DELIVERIES, WEBHOOK_LATENCY, WEBHOOK_RECORDS, WEBHOOK_RETRY_QUEUE
from services.core.topics import IDENTIFICATIONS, NEW_INDIVIDUALS

log = logging.getLogger(__name__)

EVENTS = {IDENTIFICATIONS: "identification", NEW_INDIVIDUALS: "new_individual"}
POLL_MS = 500
DUE_BATCH = 100

__all__ = ["Answer", "Job", "Sender", "WebhookService", "backoff_s", "run_webhooks"]


@dataclass
class Job:
    delivery_id: str
    app: str
    event: str
    sighting_id: str
    body: str
    attempts: int = 0
    first_at: float = 0.0
    last_error: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw) -> "Job":
        return cls(**json.loads(raw))


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """The pause after failed attempt number `attempt` (1, 2, ...): initial x 2^(attempt-1), at most max_s."""
    return float(min(max_s, initial_s * 2 ** max(0, attempt - 1)))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WebhookService:
    """Without `start_lanes()` (tests, one-off use) each attempt runs in the caller's thread; `run()` starts one
    lane per endpoint."""

    def __init__(self, settings, redis, endpoints: dict[str, Endpoint] | None = None, sender: Sender | None = None,
                 clock=time.time):
        self.settings, self.redis, self.clock = settings, redis, clock
        self.endpoints = endpoints_from_settings(settings) if endpoints is None else endpoints
        self.sender = sender or Sender.from_settings(settings)
        self.max_attempts = max(1, int(settings.webhook_max_attempts))
        self.backlog_max = max(1, int(settings.webhook_backlog_max))
        self.lanes: Lanes | None = None
        self._orphans: collections.deque[Job] = collections.deque()  # jobs whose outcome Redis did not take

    # --- lanes
    def start_lanes(self) -> "WebhookService":
        self.lanes = Lanes(self.endpoints, self.settings.webhook_queue_size, self.settings.webhook_endpoint_concurrency,
                           self._deliver).start()
        return self

    def stop_lanes(self) -> None:
        """The attempts in flight end (each by its deadline); jobs still queued are due again in Redis."""
        if self.lanes is None:
            return
        left = self.lanes.stop(float(self.settings.webhook_deadline_s) + 1.0)
        self.lanes = None
        if left:
            self._orphans.extend(left)
            self._reschedule_orphans(pause=0.0)

    def _deliver(self, job: Job) -> None:
        """A lane thread's work: one attempt; if Redis refused its outcome, the job is kept to be scheduled again."""
        try:
            self.attempt(job)
        except Exception as exc:  # noqa: BLE001 - Redis unavailable: the job must not be lost with the thread's work
            log.warning("webhook %s -> %s: the attempt's outcome was not recorded (%s); it is retried",
                        job.delivery_id, job.app, exc)
            self._orphans.append(job)

    def _reschedule_orphans(self, pause: float) -> None:
        while self._orphans:
            job = self._orphans[0]
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(WEBHOOKS_PENDING_KEY, job.delivery_id, job.to_json())
                pipe.zadd(webhooks_retry_key(job.app), {job.delivery_id: self.clock() + pause})
                pipe.execute()
            self._orphans.popleft()

    def backlog(self, app: str) -> int:
        """Deliveries of `app` waiting: in its Redis retry set and in its lane's queue."""
        lane = self.lanes.get(app) if self.lanes is not None else None
        return int(self.redis.zcard(webhooks_retry_key(app))) + (lane.waiting() if lane is not None else 0)

    # --- topic records
    def handle_record(self, topic: str, key, value) -> str:
        """One topic record -> outcome: delivered | retried | dead_lettered (without lanes) | queued | deferred |
        dead_lettered (backlog_full) | no_webhook | no_owner | duplicate | malformed | ignored."""
        outcome = self._handle(topic, key, value)
        WEBHOOK_RECORDS.labels(outcome=outcome).inc()
        return outcome

    def _handle(self, topic: str, key, value) -> str:
        event = EVENTS.get(topic)
        if event is None:
            return "ignored"
        try:
            record = json.loads(value)
        except (TypeError, ValueError):
            return "malformed"
        sighting_id = str(record.get("sighting_id") or (_text(key) if key else "")) if isinstance(record, dict) else ""
        if not sighting_id:
            return "malformed"
        owner, metadata = self.redis.hmget(sighting_key(sighting_id), "owner", "metadata")
        if not owner:
            return "no_owner"
        app = _text(owner)
        if app not in self.endpoints:
            return "no_webhook"
        delivery_id = f"{event}:{sighting_id}"
        if (self.redis.exists(webhooks_delivered_key(delivery_id))
                or self.redis.hexists(WEBHOOKS_PENDING_KEY, delivery_id)):
            return "duplicate"
        try:
            meta = json.loads(_text(metadata)) if metadata else {}
        except ValueError:
            meta = {}
        body = json.dumps({"event": event, "delivery_id": delivery_id, "app": app, "sighting_id": sighting_id,
                           "data": record, "metadata": visible_metadata(Credential(APP, app), meta)},
                          sort_keys=True, separators=(",", ":"))
        job = Job(delivery_id, app, event, sighting_id, body, first_at=self.clock())
        if self.lanes is None:
            return self.attempt(job)
        return self.dispatch(job)

    def dispatch(self, job: Job) -> str:
        """Hand a new job to its endpoint's lane: queued | deferred (waits in Redis) | dead_lettered (backlog_full).
        The job is in Redis before this returns, so the topic offset may be committed."""
        lane = self.lanes.get(job.app)
        if self.backlog(job.app) >= self.backlog_max:
            job.last_error = f"{self.backlog_max} deliveries of this app already wait (webhook_backlog_max)"
            return self._dead_letter(job, "backlog_full")
        if lane.room():
            self.redis.hset(WEBHOOKS_PENDING_KEY, job.delivery_id, job.to_json())
            if lane.offer(job):
                return "queued"
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(WEBHOOKS_PENDING_KEY, job.delivery_id, job.to_json())
            pipe.zadd(webhooks_retry_key(job.app), {job.delivery_id: self.clock()})
            pipe.execute()
        WEBHOOK_DELIVERIES.labels(app=job.app, outcome="deferred").inc()
        return "deferred"

    # --- one attempt
    def attempt(self, job: Job) -> str:
        endpoint = self.endpoints.get(job.app)
        if endpoint is None:  # the app's webhook was removed while a retry waited
            return self._dead_letter(job, "no_webhook")
        job.attempts += 1
        start = time.perf_counter()
        answer = self.sender.post(endpoint, job)
        WEBHOOK_LATENCY.labels(app=job.app).observe(time.perf_counter() - start)
        if answer.ok:
            ttl = int(self.settings.redis_marker_ttl_s)
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.set(webhooks_delivered_key(job.delivery_id), job.attempts, ex=ttl or None)
                pipe.hdel(WEBHOOKS_PENDING_KEY, job.delivery_id)
                pipe.zrem(webhooks_retry_key(job.app), job.delivery_id)
                pipe.execute()
            WEBHOOK_DELIVERIES.labels(app=job.app, outcome="delivered").inc()
            log.info("webhook %s -> %s delivered (attempt %d, HTTP %s)", job.delivery_id, job.app, job.attempts,
                     answer.status)
            return "delivered"
        job.last_error = answer.error
        if not answer.retry:
            return self._dead_letter(job, answer.reason or "rejected")
        if job.attempts >= self.max_attempts:
            return self._dead_letter(job, "max_attempts")
        pause = backoff_s(job.attempts, self.settings.webhook_backoff_initial_s, self.settings.webhook_backoff_max_s)
        if answer.retry_after is not None:
            pause = min(max(pause, answer.retry_after), float(self.settings.webhook_backoff_max_s))
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(WEBHOOKS_PENDING_KEY, job.delivery_id, job.to_json())
            pipe.zadd(webhooks_retry_key(job.app), {job.delivery_id: self.clock() + pause})
            pipe.execute()
        WEBHOOK_DELIVERIES.labels(app=job.app, outcome="retried").inc()
        log.warning("webhook %s -> %s failed (attempt %d/%d: %s); next attempt in %.1f s", job.delivery_id, job.app,
                    job.attempts, self.max_attempts, answer.error, pause)
        return "retried"

    def _dead_letter(self, job: Job, reason: str) -> str:
        fields = {"delivery_id": job.delivery_id, "app": job.app, "event": job.event, "sighting_id": job.sighting_id,
                  "reason": reason, "attempts": job.attempts, "last_error": job.last_error, "body": job.body,
                  "dead_at": self.clock()}
        maxlen = int(self.settings.redis_stream_maxlen) or None
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(WEBHOOKS_DEAD_LETTER_STREAM, fields, maxlen=maxlen, approximate=True)
            pipe.hdel(WEBHOOKS_PENDING_KEY, job.delivery_id)
            pipe.zrem(webhooks_retry_key(job.app), job.delivery_id)
            pipe.execute()
        WEBHOOK_DELIVERIES.labels(app=job.app, outcome="dead_lettered").inc()
        log.error("webhook %s -> %s dead-lettered (%s after %d attempt(s): %s)", job.delivery_id, job.app, reason,
                  job.attempts, job.last_error)
        return "dead_lettered"

    # --- retries
    def recover(self) -> int:
        """Pending jobs without a due time in their app's retry set (a crash while queued or in flight) are due
        now, keeping a due time from the single retry set of earlier versions; returns how many."""
        legacy = {_text(m): score for m, score in self.redis.zrange(WEBHOOKS_LEGACY_RETRY_KEY, 0, -1, withscores=True)}
        now, moved = self.clock(), 0
        for delivery_id, raw in self.redis.hscan_iter(WEBHOOKS_PENDING_KEY):
            delivery_id, app = _text(delivery_id), Job.from_json(raw).app
            if self.redis.zscore(webhooks_retry_key(app), delivery_id) is None:
                self.redis.zadd(webhooks_retry_key(app), {delivery_id: legacy.get(delivery_id, now)})
                moved += 1
        if legacy:
            self.redis.delete(WEBHOOKS_LEGACY_RETRY_KEY)
        return moved

    def process_due(self, limit: int = DUE_BATCH) -> list[str]:
        """Claim the retries that are due, per app (each claimed with ZREM, so replicas never send one twice at
        once): with lanes, only as many as the app's lane takes now (the rest wait in Redis), handed over;
        without, up to `limit` per app, attempted here. Returns the outcomes (queued with lanes)."""
        outcomes = []
        for app in self.endpoints:
            lane = self.lanes.get(app) if self.lanes is not None else None
            take = lane.room() if lane is not None else limit
            if take <= 0:
                continue
            due = self.redis.zrangebyscore(webhooks_retry_key(app), "-inf", self.clock(), start=0, num=take)
            for delivery_id in map(_text, due):
                if not self.redis.zrem(webhooks_retry_key(app), delivery_id):
                    continue  # another replica claimed it
                raw = self.redis.hget(WEBHOOKS_PENDING_KEY, delivery_id)
                if raw is None:
                    continue
                job = Job.from_json(raw)
                if lane is None:
                    outcomes.append(self.attempt(job))
                elif lane.offer(job):
                    outcomes.append("queued")
                else:  # cannot happen with one thread filling the lane; kept due rather than dropped
                    self.redis.zadd(webhooks_retry_key(app), {delivery_id: self.clock()})
        WEBHOOK_RETRY_QUEUE.set(sum(int(self.redis.zcard(webhooks_retry_key(app))) for app in self.endpoints))
        return outcomes

    # --- the loop
    def run(self, consumer, stop: threading.Event) -> None:
        """Consume both topics until `stop` is set; offsets are committed after each batch was handed over."""
        consumer.subscribe([IDENTIFICATIONS, NEW_INDIVIDUALS])
        self.recover()
        self.start_lanes()
        pause = float(self.settings.retry_backoff_initial_s)
        try:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=POLL_MS, max_records=DUE_BATCH)
                records = [r for part in batch.values() for r in part]
                try:
                    self._reschedule_orphans(pause=float(self.settings.webhook_backoff_initial_s))
                    for record in records:
                        self.handle_record(record.topic, record.key, record.value)
                    if records:
                        consumer.commit()
                    self.process_due()
                    pause = float(self.settings.retry_backoff_initial_s)
                except Exception as exc:  # noqa: BLE001 - Redis/Kafka unavailable: handle the batch again later
                    log.warning("webhooks: %s; the batch is handled again in %.1f s", exc, pause)
                    for partition, part in batch.items():
                        consumer.seek(partition, min(r.offset for r in part))
                    stop.wait(pause)
                    pause = min(pause * 2, float(self.settings.retry_backoff_max_s))
        finally:
            try:
                self.stop_lanes()
            except Exception as exc:  # noqa: BLE001 - Redis away at shutdown: the jobs are pending, recovered on start
                log.warning("webhooks: queued jobs not rescheduled at shutdown (%s); the next start recovers them",
                            exc)


def kafka_consumer(settings, group_id: str | None = None):
    from kafka import KafkaConsumer

    from services.chain.kafka_producers import kafka_options

    return KafkaConsumer(**kafka_options(settings), group_id=group_id or settings.webhooks_group,
                         enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
                         heartbeat_interval_ms=1000, fetch_max_wait_ms=100, client_id="whaleid-webhooks")


def run_webhooks(settings, metrics_port: int | None = None, stop: threading.Event | None = None) -> int:
    """`whaleid serve webhooks` (blocking; SIGTERM/SIGINT stop it)."""
    import redis as redis_lib

    from services.core.metrics import serve_metrics
    from services.core.service_ports import default_port

    endpoints = endpoints_from_settings(settings)
    if not endpoints:
        raise ConfigError("no webhook is configured: set webhook_urls (app=https://...) and webhook_secrets "
                          "(app=secret)")
    if not settings.redis_url:
        raise ConfigError("redis_url is not set (WHALEID_REDIS_URL, or `whaleid stack up` for the local stack)")
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    port = default_port(settings.metrics_port_base, "webhooks") if metrics_port is None else metrics_port
    serve_metrics(port, settings.metrics_host)
    redis = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)
    service = WebhookService(settings, redis, endpoints)
    consumer = kafka_consumer(settings)
    log.info("webhooks: %d app(s) (%s), group %s, metrics on %s", len(endpoints), ", ".join(sorted(endpoints)),
             settings.webhooks_group, port or "-")
    try:
        service.run(consumer, stop)
    finally:
        consumer.close()
        redis.close()
    return 0
