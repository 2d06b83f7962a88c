"""The `webhook_slow` scenario of `whaleid chaos` (issue #22, items 6 and 8): `whaleid serve webhooks` with two
apps, one whose receiver answers at once and one whose receiver drips its answer one byte per second (it would
take minutes to finish). Both apps stream sightings at the same time.

It passes when every sighting is identified, every delivery to the fast receiver arrives within
`FAST_MAX_S` of its identification (the dripper never holds its threads), every attempt at the dripper ends by
the deadline (`DEADLINE_S`, measured by the dripper: from the connection to the caller's hang-up) and every
dripping delivery ends in `webhooks:dead-letter` with a reason (`max_attempts` after its deadlines, or
`backlog_full` when the app's backlog was full): nothing lost, none delivered twice with different bodies.
"""

from __future__ import annotations

import json
import re
import select
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from services.core import topics
from services.core.keys import WEBHOOKS_DEAD_LETTER_STREAM  # the webhooks service's; chaos sees it as an app
from services.devtools.chaos.workload import Workload

NAME = "webhook_slow"
DRIP_APP = "chaos-drip"
DRIP_TOKEN = "chaos-drip-token-0000000000000000"
SECRETS = {"app": "chaos-webhook-secret-app-000000", DRIP_APP: "chaos-webhook-secret-drip-00000"}
DEADLINE_S = 2.0
FAST_MAX_S = 10.0
DRIP_SIGHTINGS = 30
GROUP = "whaleid-chaos-webhooks"
WEBHOOK_SETTINGS = {"webhook_deadline_s": DEADLINE_S, "webhook_timeout_s": 5.0, "webhook_max_attempts": 2,
                    "webhook_backoff_initial_s": 0.5, "webhook_backoff_max_s": 1.0, "webhook_queue_size": 4,
                    "webhook_endpoint_concurrency": 2, "webhook_backlog_max": 12, "webhooks_group": GROUP}


class FastReceiver:
    """Answers 200 at once; records each call's delivery id, body and arrival time."""

    def __init__(self):
        self.calls: list[tuple[str, bytes, float]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                with receiver.lock:
                    receiver.calls.append((self.headers.get("X-WhaleId-Delivery", ""), body, time.time()))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class DripReceiver:
    """Reads the request, then answers one byte per `interval_s` (a status line with a long header: it never
    finishes within a deadline); records each connection's delivery id, when it was accepted and when the caller
    hung up. Also the dripping receiver of tests/integration/test_webhooks.py."""

    ANSWER = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 300 + b"\r\nContent-Length: 0\r\n\r\n"

    def __init__(self, interval_s: float = 1.0):
        self.interval_s = interval_s
        self.connections: list[dict] = []
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self.server = socket.create_server(("127.0.0.1", 0))
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn) -> None:
        entry = {"accepted": time.monotonic(), "ended": None, "delivery": ""}
        with self.lock:
            self.connections.append(entry)
        try:
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    raise ConnectionError
                head += chunk
            found = re.search(rb"X-WhaleId-Delivery: ([^\r]+)", head)
            entry["delivery"] = found.group(1).decode() if found else ""
            for byte in self.ANSWER:  # one byte per interval; a hang-up is seen at once (readable, then b"")
                if self.closed.is_set() or (select.select([conn], [], [], self.interval_s)[0] and not conn.recv(1)):
                    break
                conn.sendall(bytes([byte]))
        except OSError:
            pass
        finally:
            entry["ended"] = time.monotonic()
            conn.close()

    def open_now(self) -> int:
        with self.lock:
            return sum(1 for c in self.connections if c["ended"] is None)

    def close(self) -> None:
        self.closed.set()
        self.server.close()


def _skip_to_the_end(bootstrap: str) -> None:
    """Commit the end of both topics for the scenario's consumer group: the service delivers what comes now, not
    every earlier scenario's identifications."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=GROUP, enable_auto_commit=False,
                             client_id="whaleid-chaos-webhook-offsets")
    try:
        partitions = [TopicPartition(t, p) for t in (topics.IDENTIFICATIONS, topics.NEW_INDIVIDUALS)
                      for p in sorted(consumer.partitions_for_topic(t) or ())]
        if partitions:
            consumer.assign(partitions)
            consumer.seek_to_end(*partitions)
            for partition in partitions:
                consumer.position(partition)
            consumer.commit()
    finally:
        consumer.close()


def run_webhook_slow(env, options, first_sighting: int, progress) -> dict:
    from services.devtools.chaos.observe import redis_outcome
    fast, drip = FastReceiver(), DripReceiver()
    service = None
    try:
        _skip_to_the_end(env.settings.kafka_bootstrap)
        hooks = {**WEBHOOK_SETTINGS, "webhook_urls": f"app={fast.url},{DRIP_APP}={drip.url}",
                 "webhook_secrets": ",".join(f"{app}={secret}" for app, secret in SECRETS.items())}
        service = env.start_service("webhooks", extra=hooks)
        service.wait_log("webhooks: 2 app(s)", 60)
        time.sleep(3.0)  # the consumer group's first assignment
        progress(f"{NAME}: the app's sightings' webhook answers at once; {DRIP_APP}'s receiver drips its answer one "
                 f"byte per second (deadline {DEADLINE_S:g} s per attempt)")
        good = Workload(env.gateway_url, env.settings.gateway_token, options.sightings, options.rate_per_s,
                        env.individuals, first_sighting=first_sighting).start()
        slow = Workload(env.gateway_url, DRIP_TOKEN, DRIP_SIGHTINGS, options.rate_per_s / 4, env.individuals,
                        first_sighting=first_sighting + 50_000).start()
        started = time.monotonic()
        good.join()
        slow.join()
        sent_at = time.monotonic()
        good_ids = [u.sighting_id for u in good.uploaded]
        drip_ids = [u.sighting_id for u in slow.uploaded]
        progress(f"{NAME}: {len(good_ids)} + {len(drip_ids)} uploaded; waiting until each is identified and its "
                 "webhook delivered or dead-lettered")
        deadline = time.monotonic() + options.settle_timeout_s
        stuck_seen = 0
        while True:
            state = _state(env, fast, good_ids, drip_ids, redis_outcome, WEBHOOKS_DEAD_LETTER_STREAM)
            stuck_seen = max(stuck_seen, drip.open_now())
            if state["open"] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        settled_at = time.monotonic() if state["open"] == 0 else None
    finally:
        if service is not None:
            service.stop()
        fast.close()
        drip.close()
    attempts = [c for c in drip.connections if c["delivery"]]
    longest = max((c["ended"] - c["accepted"] for c in attempts if c["ended"] is not None), default=0.0)
    outcome = state["outcome"]
    result = {
        "name": NAME,
        "fault": f"one app's webhook receiver drips its answer one byte per second ({DRIP_SIGHTINGS} sightings) "
                 f"while the other app's ({options.sightings}) answers at once",
        "uploaded": len(good_ids) + len(drip_ids),
        "not_accepted": good.not_accepted + slow.not_accepted,
        "refused": len(good.refused) + len(slow.refused),
        "identified": sum(1 for e in outcome.values() if e["status"] == "identified"),
        "dead_lettered": dict(_count(e.get("reason", "") for e in outcome.values() if e["status"] == "failed")),
        "lost": {"sightings": sum(1 for e in outcome.values() if e["status"] == "pending"),
                 "webhooks": state["fast_missing"] + state["drip_open"]},
        "duplicated": {"webhooks": state["fast_conflicting"]},
        "redelivered": {"webhooks": state["fast_repeats"]},
        "webhook_dead_lettered": state["drip_reasons"],
        "webhook_fast_max_s": round(state["fast_max_s"], 2),
        "webhook_drip_attempts": len(attempts),
        "webhook_drip_longest_attempt_s": round(longest, 2),
        "webhook_drip_stuck_connections": stuck_seen,
        "fault_s": round(sent_at - started, 1),
        "recover_s": round(settled_at - sent_at, 1) if settled_at is not None else None,
    }
    problems = []
    if state["fast_max_s"] > FAST_MAX_S:
        problems.append(f"a fast delivery arrived {state['fast_max_s']:.1f} s after its identification "
                        f"(> {FAST_MAX_S:g} s)")
    if longest > DEADLINE_S + 1.5:
        problems.append(f"a dripping attempt lasted {longest:.1f} s (deadline {DEADLINE_S:g} s)")
    if not attempts:
        problems.append("the dripping receiver was never called")
    result["problems"] = problems
    result["passed"] = (not problems and not any(result["lost"].values()) and not any(result["duplicated"].values())
                        and not result["dead_lettered"] and not result["refused"])
    return result


def _count(values) -> dict:
    counts: dict = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    return counts


def _state(env, fast, good_ids, drip_ids, redis_outcome, stream) -> dict:
    outcome = redis_outcome(env.redis, good_ids + drip_ids)
    identified_at = {}
    bodies: dict[str, set] = {}
    arrivals: dict[str, float] = {}
    repeats = 0
    with fast.lock:
        calls = list(fast.calls)
    for delivery, body, arrived in calls:
        if delivery in bodies:
            repeats += 1
        bodies.setdefault(delivery, set()).add(body)
        if delivery not in arrivals:
            arrivals[delivery] = arrived
            try:
                identified_at[delivery] = float(json.loads(body)["data"].get("identified_at") or 0.0)
            except (ValueError, KeyError, AttributeError):
                identified_at[delivery] = 0.0
    expected_fast = {f"identification:{s}" for s in good_ids if outcome[s]["status"] == "identified"}
    fast_missing = len(expected_fast - set(arrivals))
    fast_max = max((arrivals[d] - identified_at[d] for d in expected_fast & set(arrivals) if identified_at[d]),
                   default=0.0)
    dead = {}
    for _, fields in env.redis.xrange(stream):  # this run's stack: only this scenario's dead letters
        dead[fields[b"delivery_id"].decode()] = fields[b"reason"].decode()
    expected_drip = {f"identification:{s}" for s in drip_ids if outcome[s]["status"] == "identified"}
    drip_reasons = _count(dead[d] for d in expected_drip if d in dead)
    drip_open = len(expected_drip - set(dead))
    pending = sum(1 for e in outcome.values() if e["status"] == "pending")
    return {"outcome": outcome, "fast_missing": fast_missing, "fast_max_s": fast_max, "drip_open": drip_open,
            "drip_reasons": drip_reasons, "fast_repeats": repeats,
            "fast_conflicting": sum(1 for b in bodies.values() if len(b) > 1),
            "open": pending + fast_missing + drip_open}
