"""Webhooks per app for finished identifications (#12): signed with HMAC-SHA256, retried with capped exponential
backoff, dead-lettered after N failures; isolated per endpoint (#22 item 6): a total deadline per attempt, a bounded
queue per endpoint, private addresses refused by a setting. The receivers are real HTTP servers (http.server in a
thread, and a raw TCP server that drips its answer one byte per second); Redis and Kafka are the session stack's
(Redis: a database of its own)."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import redis as redis_lib
from prometheus_client import REGISTRY

from services.chain.webhooks import service as hooks
from services.chain.webhooks.endpoints import Endpoint, endpoints_from_settings
from services.chain.webhooks.signing import sign, verify
from services.core import keys
from services.core.errors import ConfigError
from services.core.topics import IDENTIFICATIONS, NEW_INDIVIDUALS, Identification, NewIndividual
from services.devtools.chaos.webhook_drip import DripReceiver

REDIS_DB = 12
SECRET = "s3cret-for-hook-app-0123"
OTHER_SECRET = "another-secret-of-quiet-app"


class Receiver:
    """A real HTTP server recording every call; `script[path]` lists the statuses it answers, then 200."""

    def __init__(self):
        self.calls: list[dict] = []
        self.script: dict[str, list[int]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.calls.append({"path": self.path, "headers": dict(self.headers), "body": body})
                    statuses = receiver.script.get(self.path, [])
                    status = statuses.pop(0) if statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def on(self, path: str) -> list[dict]:
        with self.lock:
            return [c for c in self.calls if c["path"] == path]

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def receiver():
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def redis_db(stack):
    client = redis_lib.Redis.from_url(stack.settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def hook_settings(stack, receiver, path: str, **overrides):
    values = dict(
        redis_url=stack.settings.redis_url.rsplit("/", 1)[0] + f"/{REDIS_DB}",
        gateway_app_tokens="hook-app=hook-app-token-000000000000,quiet-app=quiet-app-token-0000000000",
        webhook_urls=f"hook-app={receiver.url(path)}", webhook_secrets=f"hook-app={SECRET}",
        webhook_backoff_initial_s=0.05, webhook_backoff_max_s=0.2, webhook_max_attempts=4,
        webhooks_group=f"test-webhooks-{uuid.uuid4().hex[:8]}")
    return stack.settings.with_overrides(**{**values, **overrides})


def sighting(redis_db, owner: str = "hook-app") -> str:
    sighting_id = uuid.uuid4().hex
    redis_db.hset(keys.sighting_key(sighting_id), mapping={"owner": owner, "metadata": json.dumps(
        {"observer": "obs-1", "latitude": 64.1, "longitude": -21.9, "taken_at": "2026-11-20T08:30:00+00:00"})})
    return sighting_id


def identification(sighting_id: str) -> bytes:
    return Identification(sighting_id=sighting_id, candidates=[{"individual_id": "ind-a", "score": 0.91}],
                          new_individual=False, model_version="m", gallery_version="v1",
                          identified_at=time.time()).to_json()


def counter(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def drain(service, until, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not until():
        assert time.monotonic() < deadline, "the retries did not finish in time"
        service.process_due()
        time.sleep(0.02)


# ----------------------------------------------------------------------------- signing and settings
def test_signatures_verify_and_refuse_tampering_and_replays():
    body = b'{"event":"identification"}'
    headers = sign(SECRET, body, now=1_700_000_000)
    assert headers["X-WhaleId-Timestamp"] == "1700000000"
    assert headers["X-WhaleId-Signature"].startswith("sha256=") and len(headers["X-WhaleId-Signature"]) == 71
    args = (headers["X-WhaleId-Timestamp"], headers["X-WhaleId-Signature"])
    assert verify(SECRET, body, *args, now=1_700_000_010)
    assert not verify(SECRET, body + b" ", *args, now=1_700_000_010)
    assert not verify("wrong-secret-0123456789", body, *args, now=1_700_000_010)
    assert not verify(SECRET, body, *args, now=1_700_000_000 + 301)  # too old: a replay
    assert not verify(SECRET, body, "not-a-time", args[1])


def test_backoff_doubles_and_is_capped():
    assert [hooks.backoff_s(n, 2.0, 30.0) for n in range(1, 7)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_webhook_settings_are_checked(stack):
    base = stack.settings.with_overrides(gateway_app_tokens="hook-app=hook-app-token-000000000000")
    assert endpoints_from_settings(base) == {}
    good = endpoints_from_settings(base.with_overrides(webhook_urls="hook-app=https://example.org/h",
                                                       webhook_secrets=f"hook-app={SECRET}"))
    assert good["hook-app"].url == "https://example.org/h" and SECRET not in repr(good)
    for urls, secrets, problem in (
            ("hook-app=ftp://example.org", f"hook-app={SECRET}", "is not http(s)"),
            ("hook-app=https://example.org", "", "needs a secret of at least 16"),
            ("hook-app=https://example.org", "hook-app=short", "needs a secret of at least 16"),
            ("nobody=https://example.org", f"nobody={SECRET}", "'nobody' is not an app of the gateway"),
            ("hook-app=https://example.org", f"hook-app={SECRET},other={SECRET}", "'other' has a secret but no URL"),
            ("hook-app=https://a.org,hook-app=https://b.org", f"hook-app={SECRET}", "configured twice")):
        with pytest.raises(ConfigError, match=re.escape(problem)) as caught:
            endpoints_from_settings(base.with_overrides(webhook_urls=urls, webhook_secrets=secrets))
        assert SECRET not in str(caught.value)


# ----------------------------------------------------------------------------- deliveries
def test_a_failing_then_succeeding_receiver_gets_the_call_again_with_backoff(stack, receiver, redis_db):
    path = f"/flaky-{uuid.uuid4().hex[:6]}"
    receiver.script[path] = [500, 503]
    service = hooks.WebhookService(hook_settings(stack, receiver, path), redis_db)
    sighting_id = sighting(redis_db)
    before = counter("whaleid_webhook_deliveries_total", app="hook-app", outcome="delivered")
    assert service.handle_record(IDENTIFICATIONS, sighting_id.encode(), identification(sighting_id)) == "retried"
    assert redis_db.zcard(keys.webhooks_retry_key("hook-app")) == 1
    due = redis_db.zscore(keys.webhooks_retry_key("hook-app"), f"identification:{sighting_id}")
    assert 0.04 < due - time.time() <= 0.06  # the first pause: webhook_backoff_initial_s
    drain(service, lambda: len(receiver.on(path)) == 3)
    calls = receiver.on(path)
    assert [c["headers"]["X-WhaleId-Attempt"] for c in calls] == ["1", "2", "3"]
    assert len({c["body"] for c in calls}) == 1  # the same bytes every time: receivers dedupe by delivery id
    last = calls[-1]
    assert verify(SECRET, last["body"], last["headers"]["X-WhaleId-Timestamp"], last["headers"]["X-WhaleId-Signature"])
    assert last["headers"]["X-WhaleId-Event"] == "identification"
    assert last["headers"]["X-WhaleId-Delivery"] == f"identification:{sighting_id}"
    payload = json.loads(last["body"])
    assert (payload["event"], payload["app"], payload["sighting_id"]) == ("identification", "hook-app", sighting_id)
    assert payload["data"]["candidates"] == [{"individual_id": "ind-a", "score": 0.91}]
    assert payload["metadata"]["observer"] == "obs-1" and "latitude" not in payload["metadata"]  # an app: no GPS
    assert redis_db.exists(keys.webhooks_delivered_key(f"identification:{sighting_id}"))
    assert redis_db.hlen(keys.WEBHOOKS_PENDING_KEY) == 0 and redis_db.zcard(keys.webhooks_retry_key("hook-app")) == 0
    assert counter("whaleid_webhook_deliveries_total", app="hook-app", outcome="delivered") == before + 1
    # a topic duplicate is not sent again
    assert service.handle_record(IDENTIFICATIONS, sighting_id.encode(), identification(sighting_id)) == "duplicate"
    assert len(receiver.on(path)) == 3


def test_after_n_failures_the_delivery_is_dead_lettered(stack, receiver, redis_db):
    path = f"/down-{uuid.uuid4().hex[:6]}"
    receiver.script[path] = [500] * 10
    service = hooks.WebhookService(hook_settings(stack, receiver, path), redis_db)
    sighting_id = sighting(redis_db)
    before = counter("whaleid_webhook_deliveries_total", app="hook-app", outcome="dead_lettered")
    service.handle_record(IDENTIFICATIONS, sighting_id.encode(), identification(sighting_id))
    drain(service, lambda: redis_db.xlen(keys.WEBHOOKS_DEAD_LETTER_STREAM) == 1)
    (_, fields), = redis_db.xrange(keys.WEBHOOKS_DEAD_LETTER_STREAM)
    fields = {k.decode(): v.decode() for k, v in fields.items()}
    assert (fields["reason"], fields["attempts"], fields["last_error"]) == ("max_attempts", "4", "HTTP 500")
    assert fields["sighting_id"] == sighting_id and json.loads(fields["body"])["sighting_id"] == sighting_id
    assert len(receiver.on(path)) == 4 and redis_db.hlen(keys.WEBHOOKS_PENDING_KEY) == 0
    assert counter("whaleid_webhook_deliveries_total", app="hook-app", outcome="dead_lettered") == before + 1
    # a refusal (4xx) is not retried
    refused = sighting(redis_db)
    receiver.script[path] = [400]
    assert service.handle_record(IDENTIFICATIONS, refused.encode(), identification(refused)) == "dead_lettered"
    assert json.loads(redis_db.xrevrange(keys.WEBHOOKS_DEAD_LETTER_STREAM, count=1)[0][1][b"body"])["sighting_id"] == refused
    assert redis_db.xrevrange(keys.WEBHOOKS_DEAD_LETTER_STREAM, count=1)[0][1][b"reason"] == b"rejected"


def test_only_the_owners_webhook_is_called(stack, receiver, redis_db):
    path = f"/owner-{uuid.uuid4().hex[:6]}"
    service = hooks.WebhookService(hook_settings(stack, receiver, path), redis_db)
    quiet = sighting(redis_db, owner="quiet-app")
    assert service.handle_record(IDENTIFICATIONS, quiet.encode(), identification(quiet)) == "no_webhook"
    unknown = uuid.uuid4().hex
    assert service.handle_record(IDENTIFICATIONS, unknown.encode(), identification(unknown)) == "no_owner"
    assert service.handle_record(IDENTIFICATIONS, b"x", b"not json") == "malformed"
    assert receiver.on(path) == []


def test_the_service_consumes_both_topics_through_kafka(stack, receiver, redis_db):
    from kafka import KafkaProducer

    path = f"/kafka-{uuid.uuid4().hex[:6]}"
    receiver.script[path] = [502]  # the first call fails: the retry comes from Redis, not from the topic
    settings = hook_settings(stack, receiver, path)
    stop = threading.Event()  # `whaleid serve webhooks` is run_webhooks(settings) until SIGTERM
    loop = threading.Thread(target=hooks.run_webhooks, args=(settings,), kwargs={"metrics_port": 0, "stop": stop},
                            daemon=True)
    loop.start()
    try:
        known, new = sighting(redis_db), sighting(redis_db)
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        producer.send(IDENTIFICATIONS, key=known.encode(), value=identification(known))
        producer.send(NEW_INDIVIDUALS, key=new.encode(), value=NewIndividual(
            sighting_id=new, best_known_id="ind-a", best_known_score=0.2, gallery_version="v1").to_json())
        producer.flush()
        producer.close()
        deadline = time.monotonic() + 30
        while len({json.loads(c["body"])["delivery_id"] for c in receiver.on(path)}) < 2 or len(receiver.on(path)) < 3:
            assert time.monotonic() < deadline, receiver.on(path)
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(timeout=10)
    assert not loop.is_alive()
    events = sorted(c["headers"]["X-WhaleId-Event"] for c in receiver.on(path))
    assert events.count("new_individual") >= 1 and events.count("identification") >= 1
    for call in receiver.on(path):
        headers = call["headers"]
        assert verify(SECRET, call["body"], headers["X-WhaleId-Timestamp"], headers["X-WhaleId-Signature"])
    assert redis_db.exists(keys.webhooks_delivered_key(f"new_individual:{new}"), keys.webhooks_delivered_key(f"identification:{known}")) == 2


def test_serve_webhooks_refuses_to_start_without_a_webhook(monkeypatch, capsys):
    from services.cli.main import main

    monkeypatch.setenv("WHALEID_WEBHOOK_URLS", "")
    assert main(["serve", "webhooks"]) == 2
    assert "no webhook is configured" in capsys.readouterr().err
    assert main(["serve", "webhooks", "--index", "1"]) == 2
    assert "`serve webhooks` does not use --index: it takes --config, --metrics-port" in capsys.readouterr().err


# ----------------------------------------------------------------------------- isolation (#22 item 6)
@pytest.fixture
def dripper():
    server = DripReceiver()
    yield server
    server.close()


def test_a_dripping_answer_ends_at_the_attempts_deadline(dripper):
    sender = hooks.Sender(timeout_s=5.0, deadline_s=1.5)  # each byte comes within the per-read timeout
    endpoint = Endpoint("drip-app", dripper.url, SECRET)
    job = hooks.Job("identification:s1", "drip-app", "identification", "s1", "{}", attempts=1)
    began = time.monotonic()
    answer = sender.post(endpoint, job)
    took = time.monotonic() - began
    assert not answer.ok and answer.retry and answer.error == "deadline exceeded (1.5 s)", answer
    assert 1.4 <= took < 2.5, took
    deadline = time.monotonic() + 5
    while dripper.open_now():  # the receiver sees the hang-up at its next byte
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_a_dripping_receiver_does_not_stall_another_apps_deliveries(stack, receiver, dripper, redis_db):
    """8 deliveries to a receiver that drips its answer, then 10 to a fast one, through Kafka and the real loop:
    the fast ones arrive within seconds while the dripper still holds connections; each dripping attempt ends by
    the deadline; every dripping delivery ends in the dead letters with a reason (max_attempts after deadlines,
    or backlog_full when the app's queue and backlog were full); nothing stays pending."""
    from kafka import KafkaProducer

    path = f"/fast-{uuid.uuid4().hex[:6]}"
    settings = hook_settings(
        stack, receiver, path,
        gateway_app_tokens="hook-app=hook-app-token-000000000000,drip-app=drip-app-token-0000000000",
        webhook_urls=f"hook-app={receiver.url(path)},drip-app={dripper.url}",
        webhook_secrets=f"hook-app={SECRET},drip-app={OTHER_SECRET}",
        webhook_timeout_s=5.0, webhook_deadline_s=2.0, webhook_max_attempts=2, webhook_backoff_initial_s=0.2,
        webhook_backoff_max_s=0.5, webhook_queue_size=2, webhook_endpoint_concurrency=2, webhook_backlog_max=4)
    stop = threading.Event()
    loop = threading.Thread(target=hooks.run_webhooks, args=(settings,), kwargs={"metrics_port": 0, "stop": stop},
                            daemon=True)
    loop.start()
    try:
        drips = [sighting(redis_db, owner="drip-app") for _ in range(8)]
        fasts = [sighting(redis_db) for _ in range(10)]
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        for sighting_id in drips + fasts:
            producer.send(IDENTIFICATIONS, key=sighting_id.encode(), value=identification(sighting_id))
        producer.flush()
        producer.close()
        sent = time.monotonic()
        expected = {f"identification:{s}" for s in fasts}
        while {json.loads(c["body"])["delivery_id"] for c in receiver.on(path)} != expected:
            assert time.monotonic() - sent < 30, "the fast receiver's deliveries did not arrive"
            time.sleep(0.05)
        fast_s = time.monotonic() - sent
        stuck = dripper.open_now()
        deadline = time.monotonic() + 60
        while redis_db.xlen(keys.WEBHOOKS_DEAD_LETTER_STREAM) < len(drips):
            assert time.monotonic() < deadline, redis_db.xlen(keys.WEBHOOKS_DEAD_LETTER_STREAM)
            time.sleep(0.1)
    finally:
        stop.set()
        loop.join(timeout=15)
    assert not loop.is_alive()
    assert stuck >= 1, "the dripper held no connection when the fast deliveries arrived"
    assert fast_s < 8.0, fast_s  # poll, hand-over and POST; not behind the dripper (it holds each attempt 2 s)
    dead = {f[b"delivery_id"].decode(): {k.decode(): v.decode() for k, v in f.items()}
            for _, f in redis_db.xrange(keys.WEBHOOKS_DEAD_LETTER_STREAM)}
    assert set(dead) == {f"identification:{s}" for s in drips}
    reasons = sorted(d["reason"] for d in dead.values())
    assert set(reasons) == {"max_attempts", "backlog_full"}, reasons
    for entry in dead.values():
        if entry["reason"] == "max_attempts":
            assert entry["attempts"] == "2" and entry["last_error"] == "deadline exceeded (2 s)", entry
        else:
            assert entry["attempts"] == "0" and "webhook_backlog_max" in entry["last_error"], entry
    attempts = [c for c in dripper.connections if c["delivery"]]
    assert len(attempts) == 2 * reasons.count("max_attempts")
    assert max(c["ended"] - c["accepted"] for c in attempts) < 2.0 + 1.5  # the deadline, + the next byte's wait
    assert redis_db.hlen(keys.WEBHOOKS_PENDING_KEY) == 0
    assert redis_db.zcard(keys.webhooks_retry_key("drip-app")) == redis_db.zcard(keys.webhooks_retry_key("hook-app")) == 0
    assert not any(redis_db.exists(keys.webhooks_delivered_key(f"identification:{s}")) for s in drips)


def test_private_addresses_are_refused_unless_allowed(stack, receiver, redis_db):
    from services.chain.webhooks.sender import is_private
    from services.core.settings import load_settings

    assert load_settings(profile="production", environ={}).webhook_allow_private is False
    assert load_settings(profile="local", environ={}).webhook_allow_private is True  # tests' loopback receivers
    assert all(map(is_private, ("127.0.0.1", "10.1.2.3", "192.168.0.9", "169.254.169.254", "::1", "0.0.0.0",
                                "fd00::1", "224.0.0.1")))
    assert not any(map(is_private, ("93.184.216.34", "2606:4700::1111")))
    path = f"/private-{uuid.uuid4().hex[:6]}"
    service = hooks.WebhookService(hook_settings(stack, receiver, path, webhook_allow_private=False), redis_db)
    sighting_id = sighting(redis_db)
    assert service.handle_record(IDENTIFICATIONS, sighting_id.encode(), identification(sighting_id)) == "dead_lettered"
    (_, fields), = redis_db.xrange(keys.WEBHOOKS_DEAD_LETTER_STREAM)
    assert fields[b"reason"] == b"private_address" and b"127.0.0.1" in fields[b"last_error"], fields
    assert receiver.on(path) == []  # never connected


def test_jobs_pending_without_a_due_time_and_the_old_single_retry_set_are_recovered(stack, receiver, redis_db):
    service = hooks.WebhookService(hook_settings(stack, receiver, "/unused"), redis_db)
    crashed = hooks.Job("identification:a", "hook-app", "identification", "a", "{}", attempts=1)
    older = hooks.Job("identification:b", "hook-app", "identification", "b", "{}", attempts=2)
    redis_db.hset(keys.WEBHOOKS_PENDING_KEY, mapping={crashed.delivery_id: crashed.to_json(), older.delivery_id: older.to_json()})
    redis_db.zadd(keys.WEBHOOKS_LEGACY_RETRY_KEY, {older.delivery_id: 1234.0})
    assert service.recover() == 2
    assert redis_db.zscore(keys.webhooks_retry_key("hook-app"), older.delivery_id) == 1234.0
    assert abs(redis_db.zscore(keys.webhooks_retry_key("hook-app"), crashed.delivery_id) - time.time()) < 5
    assert not redis_db.exists(keys.WEBHOOKS_LEGACY_RETRY_KEY) and service.recover() == 0
