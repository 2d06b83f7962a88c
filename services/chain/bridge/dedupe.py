"""Produce each upload once although S3/SQS deliver its event more than once (multipart, redelivery).

A (key, etag) is first *claimed* (SET NX with a short TTL, value `claimed:<owner>`, the claiming bridge
process's token) while its record is produced, then marked *done* (long TTL) once Kafka acknowledged it. A second
delivery finds `done` (a duplicate: skip it) or a claim. A claim whose owner is alive (its `bridge:alive:<owner>`
key exists, `liveness.py`) is left alone (the message stays in the queue, to be looked at again later), so an event
is never skipped before its record is safely in Kafka. A claim whose owner is gone (SIGKILLed between its claim
and its `done` mark: its liveness key expired, or it stopped cleanly and deleted it) is taken over at once
instead of blocking its partition until the claim's TTL. The plain `claimed` of older bridges names no owner: it
waits for its TTL as before.
"""

from __future__ import annotations

import enum
import uuid

from services.core.keys import bridge_alive_key, bridge_seen_key

CLAIMED = b"claimed"  # an older bridge's claim (no owner); claims now read `claimed:<owner>`
DONE = b"done"

# KEYS: the claims' bridge:seen keys. ARGV: our claim value (`claimed:<owner>`), the claim TTL (s), the liveness
# key prefix. One reply per key: 0 NEW, 1 DUPLICATE, 2 IN_FLIGHT, 3 TAKEN_OVER. Each key is decided atomically
# (the script runs alone). It reads the owners' liveness keys, which it cannot name in KEYS (they come from the
# values): fine on the single Redis the chain uses, not on a Redis Cluster.
_CLAIM_MANY = """
local results = {}
for i, name in ipairs(KEYS) do
  if redis.call('SET', name, ARGV[1], 'NX', 'EX', ARGV[2]) then
    results[i] = 0
  else
    local value = redis.call('GET', name)
    if not value then  -- gone since the SET NX (a script sees no expiry: a guard only)
      redis.call('SET', name, ARGV[1], 'EX', ARGV[2])
      results[i] = 0
    elseif value == 'done' then
      results[i] = 1
    elseif value ~= ARGV[1] and string.sub(value, 1, 8) == 'claimed:'
        and redis.call('EXISTS', ARGV[3] .. string.sub(value, 9)) == 0 then
      redis.call('SET', name, ARGV[1], 'EX', ARGV[2])
      results[i] = 3
    else
      results[i] = 2
    end
  end
end
return results
"""


class Claim(enum.Enum):
    NEW = "new"  # ours to produce
    TAKEN_OVER = "taken_over"  # ours to produce: the claim of a bridge that is no longer alive, now ours
    DUPLICATE = "duplicate"  # already produced
    IN_FLIGHT = "in_flight"  # a live bridge (this one too: an unfinished batch), or an older one, holds the claim


_REPLIES = (Claim.NEW, Claim.DUPLICATE, Claim.IN_FLIGHT, Claim.TAKEN_OVER)


def new_owner() -> str:
    """A bridge process's owner token (random, one per process start)."""
    return uuid.uuid4().hex


class Deduplicator:
    def __init__(self, redis, claim_ttl_s: int, done_ttl_s: int, owner: str | None = None):
        self.redis = redis
        self.claim_ttl_s = claim_ttl_s
        self.done_ttl_s = done_ttl_s
        self.owner = owner or new_owner()
        self._claimed = CLAIMED + b":" + self.owner.encode()
        self._claim_many = redis.register_script(_CLAIM_MANY)

    def claim(self, key: str, token: str) -> Claim:
        return self.claim_many([(key, token)])[0]

    def claim_many(self, pairs: list[tuple[str, str]]) -> list[Claim]:
        """`claim` for each (key, token), in one Redis round trip (one Lua script)."""
        if not pairs:
            return []
        replies = self._claim_many(keys=[bridge_seen_key(key, token) for key, token in pairs],
                                   args=[self._claimed, int(self.claim_ttl_s), bridge_alive_key("")])
        return [_REPLIES[int(reply)] for reply in replies]

    def done(self, key: str, token: str, client=None) -> None:
        """Mark a produced (key, token); `client` may be a pipeline of the caller's (default: this Redis)."""
        (client or self.redis).set(bridge_seen_key(key, token), DONE, ex=self.done_ttl_s)

    def release_many(self, pairs: list[tuple[str, str]]) -> None:
        """Give claims back after a failure, so the redelivered events are produced."""
        if pairs:
            self.redis.delete(*(bridge_seen_key(key, token) for key, token in pairs))

    def release(self, key: str, token: str) -> None:
        self.release_many([(key, token)])
