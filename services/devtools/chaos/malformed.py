"""The `malformed_record` scenario of `whaleid chaos` (issue #22, item 8): records written straight into
`sightings.embedded`, past the worker, while the app's good sightings stream on. Each must end on
`sightings.dead-letter` from the matcher with a reason, and the good ones must all be identified.

Three kinds, `PER_KIND` of each, every one carrying a marker (`chaos-malformed-<run>-<n>`) that its dead letter's
`original` (or `sighting_id`) shows: random bytes around the marker; JSON cut off mid-record; and a record of an
unknown `record_version` (with a sighting id, so `failure:<marker>` is also checked in Redis).
"""

from __future__ import annotations

import json
import random
import time
import uuid

from services.core import topics
from services.core.keys import failure_key

NAME = "malformed_record"
PER_KIND = 50
KINDS = ("garbage", "invalid_json", "unknown_version")


def malformed_records(run: str, per_kind: int = PER_KIND, seed: int = 0) -> list[tuple[str, str, bytes]]:
    """[(kind, marker, value)]."""
    rng = random.Random(seed)
    out = []
    for n in range(per_kind * len(KINDS)):
        kind = KINDS[n % len(KINDS)]
        marker = f"chaos-malformed-{run}-{n:04d}"
        if kind == "garbage":
            value = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 200))) + b" " + marker.encode() + b" " \
                + bytes([0xff, 0xfe, 0x00])
        elif kind == "invalid_json":
            value = (f'{{"record_version": 2, "sighting_id": "{marker}", "model_version": "probe", '
                     f'"embedding_f32": "AAAA').encode()[: rng.randrange(40, 110)]
            if marker.encode() not in value:
                value = f'{{"sighting_id": "{marker}", "embedding": [0.1, 0.2,'.encode()
        else:
            value = json.dumps({"record_version": 99, "sighting_id": marker, "model_version": "probe",
                                "embedding_v99": "opaque", "embedded_at": time.time()}).encode()
        out.append((kind, marker, value))
    return out


class MalformedInjection:
    """inject(env): produce the records; check(env, timeout_s): the row's extra fields (see the module doc)."""

    def __init__(self, per_kind: int = PER_KIND):
        self.per_kind = per_kind
        self.records: list[tuple[str, str, bytes]] = []

    def inject(self, env) -> None:
        from kafka import KafkaProducer

        self.records = malformed_records(uuid.uuid4().hex[:8], self.per_kind)
        producer = KafkaProducer(bootstrap_servers=env.settings.kafka_bootstrap, acks="all", retries=5,
                                 client_id="whaleid-chaos-malformed")
        try:
            for kind, marker, value in self.records:
                key = marker.encode() if kind == "unknown_version" else None
                producer.send(topics.SIGHTINGS_EMBEDDED, key=key, value=value)
            producer.flush(30)
        finally:
            producer.close(5)
        env.progress(f"{NAME}: {len(self.records)} malformed records written to {topics.SIGHTINGS_EMBEDDED} "
                     f"({', '.join(f'{self.per_kind} {k}' for k in KINDS)})")

    def check(self, env, timeout_s: float) -> dict:
        found = _dead_letters(env.settings.kafka_bootstrap, {m for _, m, _ in self.records}, timeout_s)
        in_redis = _failure_markers(env.redis, [m for k, m, _ in self.records if k == "unknown_version"])
        by_kind: dict[str, dict] = {}
        missing = []
        for kind, marker, _ in self.records:
            row = by_kind.setdefault(kind, {"sent": 0, "with_reason": 0})
            row["sent"] += 1
            letter = found.get(marker)
            ok = bool(letter and letter.get("stage") == "matcher" and letter.get("reason"))
            if kind == "unknown_version":
                ok = ok and bool(in_redis.get(marker))
            row["with_reason"] += ok
            if not ok:
                missing.append(f"{kind} {marker}: " + ("no dead letter" if not letter else
                                                       f"dead letter {letter.get('stage')}/{letter.get('reason')}"))
        reasons: dict[str, int] = {}
        for letter in found.values():
            reasons[letter.get("reason") or "(none)"] = reasons.get(letter.get("reason") or "(none)", 0) + 1
        return {"bad_inputs": len(self.records), "with_reason": sum(r["with_reason"] for r in by_kind.values()),
                "bad_input_reasons": reasons, "by_category": by_kind,
                "problems": ([f"{len(missing)} malformed record(s) without a dead letter and reason, e.g. "
                              f"{missing[0]}"] if missing else [])}


def _dead_letters(bootstrap: str, markers: set[str], timeout_s: float) -> dict[str, dict]:
    """{marker: the dead letter (decoded) naming it}, reading `sightings.dead-letter` from its start until all
    markers were seen or `timeout_s` passed."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=1000, client_id="whaleid-chaos-malformed-check")
    found: dict[str, dict] = {}
    try:
        deadline = time.monotonic() + timeout_s
        partitions = None
        while partitions is None and time.monotonic() < deadline:
            known = consumer.partitions_for_topic(topics.DEAD_LETTER)
            partitions = [TopicPartition(topics.DEAD_LETTER, p) for p in sorted(known)] if known else None
            if partitions is None:
                time.sleep(0.5)
        if not partitions:
            return found
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        while len(found) < len(markers) and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=500).values():
                for message in batch:
                    _match(message.value, markers, found)
    finally:
        consumer.close()
    return found


def _match(value: bytes, markers: set[str], found: dict) -> None:
    try:
        letter = json.loads(value)
    except (ValueError, UnicodeDecodeError):
        return
    if not isinstance(letter, dict):
        return
    text = json.dumps(letter.get("original"), ensure_ascii=False) + " " + str(letter.get("sighting_id", ""))
    start = text.find("chaos-malformed-")
    while start >= 0:
        marker = text[start:start + len("chaos-malformed-") + 8 + 1 + 4]
        if marker in markers:
            found.setdefault(marker, letter)
        start = text.find("chaos-malformed-", start + 1)


def _failure_markers(redis, sighting_ids: list[str]) -> dict[str, bool]:
    pipe = redis.pipeline(transaction=False)
    for sighting_id in sighting_ids:
        pipe.exists(failure_key(sighting_id))
    return {s: bool(v) for s, v in zip(sighting_ids, pipe.execute(), strict=True)}
