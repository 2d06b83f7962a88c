"""`whaleid serve webhooks`: POST each finished identification to the webhook of the app that uploaded it.

Reads the topics `identifications` (event `identification`) and `new-individuals` (event `new_individual`) in
consumer group `webhooks_group`. The app is the sighting's `owner` (`sighting:<id>`, the gateway's credential
name); apps without a webhook (endpoints.py) are skipped. The body (JSON, the same bytes on every attempt):

    {"event", "delivery_id": "<event>:<sighting_id>", "app", "sighting_id",
     "data": the topic's record (Identification or NewIndividual), "metadata": the sighting's, without GPS}

Headers: `Content-Type: application/json`, `X-WhaleId-Event`, `X-WhaleId-Delivery` (= delivery_id: receivers
dedupe by it), `X-WhaleId-Attempt` (1, 2, ...), `X-WhaleId-Timestamp` and `X-WhaleId-Signature: sha256=<hex>`
(signing.py). A 2xx answer is delivered. A network error, a timeout, 5xx, 408, 425 or 429 is retried after
`webhook_backoff_initial_s` x 2^(attempt-1), capped at `webhook_backoff_max_s` (a numeric Retry-After is honoured
up to the same cap); any other answer (4xx, 3xx: redirects are not followed) is dead-lettered at once, and so is a
delivery still failing after `webhook_max_attempts` attempts.

Redis (durable, so the topic offset is committed once the first attempt is made or its retry is scheduled):
    webhooks:pending          hash delivery id -> the job JSON (app, event, sighting_id, body, attempts, ...)
    webhooks:retry            sorted set delivery id -> when the next attempt is due (claimed with ZREM)
    webhooks:delivered:<id>   marker of a delivered call (TTL redis_marker_ttl_s): topic duplicates are not resent
    webhooks:dead-letter      stream: {delivery_id, app, event, sighting_id, reason, attempts, last_error, body,
                              dead_at}; trimmed to about redis_stream_maxlen
Delivery is at least once (a crash between the POST and the marker sends again with the same delivery id).
Metrics: whaleid_webhook_deliveries_total{app, outcome}, whaleid_webhook_delivery_seconds{app},
whaleid_webhook_records_total{outcome}, whaleid_webhook_retry_queue.
"""

from __future__ import annotations

import http.client
import json
import logging
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from urllib.parse import urlsplit

from services.access.credentials import APP, Credential
from services.access.visibility import visible_metadata
from services.errors import ConfigError
from services.metrics import WEBHOOK_DELIVERIES, WEBHOOK_LATENCY, WEBHOOK_RECORDS, WEBHOOK_RETRY_QUEUE
from services.topics import IDENTIFICATIONS, NEW_INDIVIDUALS
from services.webhooks.endpoints import Endpoint, endpoints_from_settings
from services.webhooks.signing import sign

log = logging.getLogger(__name__)

EVENTS = {IDENTIFICATIONS: "identification", NEW_INDIVIDUALS: "new_individual"}
PENDING_KEY = "webhooks:pending"
RETRY_KEY = "webhooks:retry"
DELIVERED_KEY = "webhooks:delivered:{}"
DEAD_LETTER_STREAM = "webhooks:dead-letter"
RETRYABLE_STATUSES = frozenset({408, 425, 429})
USER_AGENT = "whaleid-webhooks/1"
POLL_MS = 500
DUE_BATCH = 100


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


@dataclass(frozen=True)
class Answer:
    ok: bool
    retry: bool
    status: int | None = None
    error: str = ""
    retry_after: float | None = None


class Sender:
    """One signed POST per call (http.client: header names go out exactly as written; redirects are answers)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s

    def post(self, endpoint: Endpoint, job: Job) -> Answer:
        body = job.body.encode()
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, "X-WhaleId-Event": job.event,
                   "X-WhaleId-Delivery": job.delivery_id, "X-WhaleId-Attempt": str(job.attempts),
                   **sign(endpoint.secret, body)}
        url = urlsplit(endpoint.url)
        kind = http.client.HTTPSConnection if url.scheme == "https" else http.client.HTTPConnection
        connection = kind(url.hostname, url.port, timeout=self.timeout_s)
        try:
            connection.request("POST", (url.path or "/") + (f"?{url.query}" if url.query else ""), body, headers)
            response = connection.getresponse()
            response.read(65536)
            status = response.status
            retry_after = _seconds(response.getheader("Retry-After"))
        except (OSError, http.client.HTTPException, ValueError) as exc:  # refused, timeout, DNS, TLS, bad answer
            return Answer(ok=False, retry=True, error=f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()
        if 200 <= status < 300:
            return Answer(ok=True, retry=False, status=status)
        return Answer(ok=False, retry=status >= 500 or status in RETRYABLE_STATUSES, status=status,
                      error=f"HTTP {status}", retry_after=retry_after)


def _seconds(text) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value >= 0 else None


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """The pause after failed attempt number `attempt` (1, 2, ...): initial x 2^(attempt-1), at most max_s."""
    return float(min(max_s, initial_s * 2 ** max(0, attempt - 1)))


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class WebhookService:
    def __init__(self, settings, redis, endpoints: dict[str, Endpoint] | None = None, sender: Sender | None = None,
                 clock=time.time):
        self.settings, self.redis, self.clock = settings, redis, clock
        self.endpoints = endpoints_from_settings(settings) if endpoints is None else endpoints
        self.sender = sender or Sender(settings.webhook_timeout_s)
        self.max_attempts = max(1, int(settings.webhook_max_attempts))

    # --- topic records
    def handle_record(self, topic: str, key, value) -> str:
        """One topic record -> outcome: delivered | retried | dead_lettered | no_webhook | no_owner | duplicate |
        malformed | ignored."""
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
        owner, metadata = self.redis.hmget(f"sighting:{sighting_id}", "owner", "metadata")
        if not owner:
            return "no_owner"
        app = _text(owner)
        if app not in self.endpoints:
            return "no_webhook"
        delivery_id = f"{event}:{sighting_id}"
        if self.redis.exists(DELIVERED_KEY.format(delivery_id)) or self.redis.hexists(PENDING_KEY, delivery_id):
            return "duplicate"
        try:
            meta = json.loads(_text(metadata)) if metadata else {}
        except ValueError:
            meta = {}
        body = json.dumps({"event": event, "delivery_id": delivery_id, "app": app, "sighting_id": sighting_id,
                           "data": record, "metadata": visible_metadata(Credential(APP, app), meta)},
                          sort_keys=True, separators=(",", ":"))
        job = Job(delivery_id, app, event, sighting_id, body, first_at=self.clock())
        return self.attempt(job)

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
                pipe.set(DELIVERED_KEY.format(job.delivery_id), job.attempts, ex=ttl or None)
                pipe.hdel(PENDING_KEY, job.delivery_id)
                pipe.zrem(RETRY_KEY, job.delivery_id)
                pipe.execute()
            WEBHOOK_DELIVERIES.labels(app=job.app, outcome="delivered").inc()
            log.info("webhook %s -> %s delivered (attempt %d, HTTP %s)", job.delivery_id, job.app, job.attempts,
                     answer.status)
            return "delivered"
        job.last_error = answer.error
        if not answer.retry:
            return self._dead_letter(job, "rejected")
        if job.attempts >= self.max_attempts:
            return self._dead_letter(job, "max_attempts")
        pause = backoff_s(job.attempts, self.settings.webhook_backoff_initial_s, self.settings.webhook_backoff_max_s)
        if answer.retry_after is not None:
            pause = min(max(pause, answer.retry_after), float(self.settings.webhook_backoff_max_s))
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(PENDING_KEY, job.delivery_id, job.to_json())
            pipe.zadd(RETRY_KEY, {job.delivery_id: self.clock() + pause})
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
            pipe.xadd(DEAD_LETTER_STREAM, fields, maxlen=maxlen, approximate=True)
            pipe.hdel(PENDING_KEY, job.delivery_id)
            pipe.zrem(RETRY_KEY, job.delivery_id)
            pipe.execute()
        WEBHOOK_DELIVERIES.labels(app=job.app, outcome="dead_lettered").inc()
        log.error("webhook %s -> %s dead-lettered (%s after %d attempt(s): %s)", job.delivery_id, job.app, reason,
                  job.attempts, job.last_error)
        return "dead_lettered"

    # --- retries
    def recover(self) -> int:
        """Pending jobs without a due time (a crash after claiming one) are due now; returns how many."""
        lost = [_text(k) for k in self.redis.hkeys(PENDING_KEY) if self.redis.zscore(RETRY_KEY, k) is None]
        if lost:
            self.redis.zadd(RETRY_KEY, {k: self.clock() for k in lost})
        return len(lost)

    def process_due(self, limit: int = DUE_BATCH, executor: ThreadPoolExecutor | None = None) -> list[str]:
        """Attempt the retries that are due (each claimed with ZREM, so replicas never send one twice at once)."""
        due = [_text(m) for m in self.redis.zrangebyscore(RETRY_KEY, "-inf", self.clock(), start=0, num=limit)]
        jobs = []
        for delivery_id in due:
            if self.redis.zrem(RETRY_KEY, delivery_id):
                raw = self.redis.hget(PENDING_KEY, delivery_id)
                if raw is not None:
                    jobs.append(Job.from_json(raw))
        outcomes = list(executor.map(self.attempt, jobs)) if executor and len(jobs) > 1 else \
            [self.attempt(job) for job in jobs]
        WEBHOOK_RETRY_QUEUE.set(self.redis.zcard(RETRY_KEY))
        return outcomes

    # --- the loop
    def run(self, consumer, stop: threading.Event, workers: int = 8) -> None:
        """Consume both topics until `stop` is set; offsets are committed after each batch was handled."""
        consumer.subscribe([IDENTIFICATIONS, NEW_INDIVIDUALS])
        self.recover()
        pause = float(self.settings.retry_backoff_initial_s)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="webhook") as executor:
            while not stop.is_set():
                batch = consumer.poll(timeout_ms=POLL_MS, max_records=DUE_BATCH)
                records = [r for part in batch.values() for r in part]
                try:
                    if records:
                        list(executor.map(lambda r: self.handle_record(r.topic, r.key, r.value), records))
                        consumer.commit()
                    self.process_due(executor=executor)
                    pause = float(self.settings.retry_backoff_initial_s)
                except Exception as exc:  # noqa: BLE001 - Redis/Kafka unavailable: handle the batch again later
                    log.warning("webhooks: %s; the batch is handled again in %.1f s", exc, pause)
                    for partition, part in batch.items():
                        consumer.seek(partition, min(r.offset for r in part))
                    stop.wait(pause)
                    pause = min(pause * 2, float(self.settings.retry_backoff_max_s))


def kafka_consumer(settings, group_id: str | None = None):
    from kafka import KafkaConsumer

    from services.chain.kafka_producers import kafka_options

    return KafkaConsumer(**kafka_options(settings), group_id=group_id or settings.webhooks_group,
                         enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=6000,
                         heartbeat_interval_ms=1000, fetch_max_wait_ms=100, client_id="whaleid-webhooks")


def run_webhooks(settings, metrics_port: int | None = None, stop: threading.Event | None = None) -> int:
    """`whaleid serve webhooks` (blocking; SIGTERM/SIGINT stop it)."""
    import redis as redis_lib

    from services.metrics import serve_metrics
    from services.service_ports import default_port

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
