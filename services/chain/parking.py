"""Sightings the matcher cannot rank yet because their embedding comes from a model the served gallery was not
built with (services.core.model_versions). They are parked, not dead-lettered and not lost:

    matcher:parked            sorted set: sighting id -> when it was first parked (epoch seconds)
    matcher:parked:records    hash: sighting id -> JSON {"record": SightingEmbedded, "reason", "detail", "parked_at"}

The matcher retries every parked sighting when it hot-swaps to another gallery version and every
`matcher_parked_retry_interval_s`; those that now match are identified (the usual result / topics / stream path,
idempotent by sighting id) and only then removed. Parked entries have no TTL: they wait for a gallery of their
model (publish one, or re-embed the sightings); `parked_count` (ZCARD) says how many wait. Both keys are capped at
PARKED_MAX entries: parking past it drops the oldest (logged; the reconciler then re-drives or dead-letters them as
`unresolved`, as any sighting without a result), so a flood of one unserved model cannot fill Redis.
"""

from __future__ import annotations

import json
import logging
import time

import redis

from services.chain.failures import TransientFailure
from services.core import topics
from services.core.keys import PARKED_INDEX, PARKED_RECORDS

log = logging.getLogger(__name__)

PARKED_MAX = 100_000  # most parked sightings kept (the matcher passes settings.matcher_parked_max)


def _call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None


def park(client: redis.Redis, record: topics.SightingEmbedded, reason: str, detail: str,
         max_parked: int = PARKED_MAX) -> None:
    """Keep `record` until a gallery of its model is served (first parking time kept on re-delivery); past
    `max_parked` the oldest are dropped."""
    now = time.time()
    entry = json.dumps({"record": record.to_data(), "reason": reason, "detail": detail, "parked_at": now},
                       separators=(",", ":"))

    def write():
        with client.pipeline(transaction=True) as pipe:
            pipe.hset(PARKED_RECORDS, record.sighting_id, entry)
            pipe.zadd(PARKED_INDEX, {record.sighting_id: now}, nx=True)
            pipe.zrange(PARKED_INDEX, 0, -max_parked - 1)  # the oldest beyond the cap
            dropped = pipe.execute()[-1]
        if dropped:
            log.warning("matcher: %d parked sightings dropped (over %d parked)", len(dropped), max_parked)
            unpark(client, [d.decode() if isinstance(d, bytes) else str(d) for d in dropped])

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

