"""Sightings the matcher cannot rank yet because their embedding comes from a model the served gallery was not
built with (services.model_versions). They are parked, not dead-lettered and not lost:

    matcher:parked            sorted set: sighting id -> when it was first parked (epoch seconds)
    matcher:parked:records    hash: sighting id -> JSON {"record": SightingEmbedded, "reason", "detail", "parked_at"}

The matcher retries every parked sighting when it hot-swaps to another gallery version and every
`matcher_parked_retry_interval_s`; those that now match are identified (the usual result / topics / stream path,
idempotent by sighting id) and only then removed. Parked entries have no TTL: they wait for a gallery of their
model (publish one, or re-embed the sightings); `parked_count` (ZCARD) says how many wait.
"""

from __future__ import annotations

import json
import time

import redis

from services import topics
from services.chain.failures import TransientFailure

PARKED_INDEX = "matcher:parked"
PARKED_RECORDS = "matcher:parked:records"


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None


def park(client: redis.Redis, record: topics.SightingEmbedded, reason: str, detail: str) -> None:
    """Keep `record` until a gallery of its model is served (first parking time kept on re-delivery)."""
    now = time.time()
    entry = json.dumps({"record": record.asdict(), "reason": reason, "detail": detail, "parked_at": now},
                       separators=(",", ":"))

    def write():
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(PARKED_RECORDS, record.sighting_id, entry)
            pipe.zadd(PARKED_INDEX, {record.sighting_id: now}, nx=True)
            pipe.execute()

    _call(write)


def parked_count(client: redis.Redis) -> int:
    return int(_call(client.zcard, PARKED_INDEX))


def parked_page(client: redis.Redis, start: int, count: int) -> list[tuple[str, topics.SightingEmbedded | None]]:
    """Parked sightings `start`..`start + count - 1`, oldest first: (id, record or None when unreadable)."""
    ids = [i.decode() if isinstance(i, bytes) else str(i)
           for i in _call(client.zrange, PARKED_INDEX, start, start + count - 1)]
    if not ids:
        return []
    raws = _call(client.hmget, PARKED_RECORDS, ids)
    page = []
    for sighting_id, raw in zip(ids, raws, strict=True):
        try:
            page.append((sighting_id, topics.SightingEmbedded.from_data(json.loads(raw)["record"])))
        except (TypeError, ValueError, KeyError):
            page.append((sighting_id, None))
    return page


def unpark(client: redis.Redis, sighting_ids: list[str]) -> None:
    if not sighting_ids:
        return

    def remove():
        with client.pipeline(transaction=True) as pipe:
            pipe.zrem(PARKED_INDEX, *sighting_ids)
            pipe.hdel(PARKED_RECORDS, *sighting_ids)
            pipe.execute()

    _call(remove)


def is_parked(client: redis.Redis, sighting_id: str) -> bool:
    return _call(client.zscore, PARKED_INDEX, sighting_id) is not None
