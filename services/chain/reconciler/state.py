"""What the reconciler keeps in Redis, besides the fields it adds to `sighting:<id>` (`redriven_at`, `redrives`).

    reconciler:lease               one pass at a time across reconciler processes and `run_once` callers
                                   (SET NX PX with an owner token; it expires by itself if its holder dies)
    reconciler:seen:<topic>        sorted set: record key (sighting id) -> record timestamp (s), every record read
                                   from the topic; members older than reconciler_topic_lookback_s are trimmed
    reconciler:position:<topic>    hash: "partitions" -> JSON list of the partitions read; "<p>" -> JSON
                                   {"next", "key", "ts"}: the next offset to read and the key and timestamp of the
                                   last record read (how a topic that was reset is recognised)
    reconciler:checked:<topic>     the `identifications` stream id up to which every entry was found on the topic
                                   (or re-produced to it)

The three keys of a topic are written together with one TTL (redis_result_ttl_s), so they expire together; one
without the others counts as a reset (read again from the beginning, check the whole look-back again).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import redis

from services.core.keys import (
    RECONCILER_LEASE_KEY,
    reconciler_checked_key,
    reconciler_position_key,
    reconciler_seen_key,
)

_REFRESH = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

_ACQUIRE = """
local held = redis.call('GET', KEYS[1])
if held == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if held then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclass(frozen=True)
class Position:
    """Where reading a partition stopped: the next offset and the (key, timestamp) of the record before it."""

    next: int
    key: str = ""
    ts: int = 0


class Lease:
    """`reconciler:lease`: held by one pass at a time (its owner token), released at the end of the pass."""

    def __init__(self, client: redis.Redis, ttl_s: float):
        self.client = client
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.token = uuid.uuid4().hex

    def acquire(self) -> bool:
        """True when the lease is free or already this owner's: a pass that could not release it (Redis went
        away mid-pass and came back with its append-only file) must not lock its own reconciler out until the
        lease expires."""
        return bool(self.client.eval(_ACQUIRE, 1, RECONCILER_LEASE_KEY, self.token, self.ttl_ms))

    def refresh(self) -> bool:
        """Extend the lease while a pass goes on (False when it was lost)."""
        return bool(self.client.eval(_REFRESH, 1, RECONCILER_LEASE_KEY, self.token, self.ttl_ms))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, RECONCILER_LEASE_KEY, self.token)


class TopicState:
    """The reconciler's Redis state of one topic (seen keys, read positions, check cursor)."""

    def __init__(self, client: redis.Redis, topic: str, ttl_s: int):
        self.client = client
        self.topic = topic
        self.ttl_s = ttl_s

    def _keys(self) -> tuple[str, str, str]:
        return (reconciler_seen_key(self.topic), reconciler_position_key(self.topic),
                reconciler_checked_key(self.topic))

    def exists(self) -> tuple[bool, bool]:
        """(the positions exist, the seen set exists)."""
        with self.client.pipeline(transaction=False) as pipe:
            pipe.exists(reconciler_position_key(self.topic))
            pipe.exists(reconciler_seen_key(self.topic))
            positions, seen = pipe.execute()
        return bool(positions), bool(seen)

    def positions(self) -> tuple[list[int] | None, dict[int, Position]]:
        """(the partitions read last time or None, {partition: Position})."""
        raw = {text(k): text(v) for k, v in self.client.hgetall(reconciler_position_key(self.topic)).items()}
        partitions = json.loads(raw.pop("partitions")) if "partitions" in raw else None
        return partitions, {int(p): Position(**json.loads(v)) for p, v in raw.items()}

    def clear(self) -> None:
        self.client.delete(*self._keys())

    def save(self, partitions: list[int], positions: dict[int, Position], seen: dict[str, float],
             trim_before: float) -> None:
        """Positions and newly seen keys in one transaction; the three keys' TTL refreshed together."""
        mapping = {"partitions": json.dumps(sorted(partitions))}
        mapping.update({str(p): json.dumps(vars(pos)) for p, pos in positions.items()})
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(reconciler_position_key(self.topic))
            pipe.hset(reconciler_position_key(self.topic), mapping=mapping)
            if seen:
                pipe.zadd(reconciler_seen_key(self.topic), seen)
            pipe.zremrangebyscore(reconciler_seen_key(self.topic), "-inf", f"({trim_before}")
            # the member "" (never a sighting id) keeps the set in existence when the topic is empty or everything
            # was trimmed: a missing set means "expired"
            pipe.zadd(reconciler_seen_key(self.topic), {"": trim_before})
            self._expire(pipe)
            pipe.execute()

    def missing(self, keys: list[str]) -> list[str]:
        """The keys of `keys` never read from the topic."""
        if not keys:
            return []
        scores = self.client.zmscore(reconciler_seen_key(self.topic), keys)
        return [key for key, score in zip(keys, scores, strict=True) if score is None]

    def cursor(self) -> str | None:
        raw = self.client.get(reconciler_checked_key(self.topic))
        return None if raw is None else text(raw)

    def set_cursor(self, stream_id: str) -> None:
        with self.client.pipeline(transaction=False) as pipe:
            pipe.set(reconciler_checked_key(self.topic), stream_id)
            self._expire(pipe)
            pipe.execute()

    def _expire(self, pipe) -> None:
        if self.ttl_s:
            for key in self._keys():
                pipe.expire(key, self.ttl_s)
