"""Redis markers that make the chain idempotent by sighting id.

    embedded:<sighting_id>  the worker produced its SightingEmbedded (set only after the broker acknowledged)
    failure:<sighting_id>   JSON {stage, reason, detail, failed_at}: a permanent failure was dead-lettered

Both expire after `ttl_s` (setting `redis_marker_ttl_s`, default 30 days; the bridge, which calls
`record_failure` without a TTL, gets that default): long enough to outlive any re-delivery (Kafka retention).
"""

from __future__ import annotations

import json

import redis

from services.chain.failures import TransientFailure
from services.core.keys import embedded_key, failure_key

MARKER_TTL_S = 30 * 24 * 3600  # == Settings.redis_marker_ttl_s's default


def redis_client(url: str) -> redis.Redis:
    if not url:
        from services.core.errors import ConfigError

        raise ConfigError("no Redis URL: start the stack (`whaleid stack up`) or set WHALEID_REDIS_URL")
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=3)


def already_handled(client: redis.Redis, sighting_id: str) -> bool:
    try:
        return bool(client.exists(embedded_key(sighting_id), failure_key(sighting_id)))
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None


def handled_many(client: redis.Redis, sighting_ids: list[str]) -> list[bool]:
    """`already_handled` of each id, in one round trip (a pipeline) for a whole batch."""
    if not sighting_ids:
        return []
    try:
        with client.pipeline(transaction=False) as pipe:
            for sighting_id in sighting_ids:
                pipe.exists(embedded_key(sighting_id), failure_key(sighting_id))
            return [bool(n) for n in pipe.execute()]
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None


def mark_embedded_many(client: redis.Redis, sighting_ids: list[str], model_version: str,
                       ttl_s: int = MARKER_TTL_S) -> None:
    try:
        with client.pipeline(transaction=False) as pipe:
            for sighting_id in sighting_ids:
                pipe.set(embedded_key(sighting_id), model_version, nx=True, ex=ttl_s or None)
            pipe.execute()
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None


def record_failure(client: redis.Redis, sighting_id: str, stage: str, reason: str, detail: str, failed_at: float,
                   ttl_s: int = MARKER_TTL_S) -> bool:
    value = json.dumps({"stage": stage, "reason": reason, "detail": detail, "failed_at": failed_at})
    try:
        return bool(client.set(failure_key(sighting_id), value, nx=True, ex=ttl_s or None))
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None
