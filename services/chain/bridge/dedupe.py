"""Produce each upload once although S3/SQS deliver its event more than once (multipart, redelivery).

A (key, etag) is first *claimed* (SET NX with a short TTL) while its record is produced, then marked *done*
(long TTL) once Kafka acknowledged it. A second delivery finds `done` (a duplicate: skip it) or `claimed`
(another bridge, or one that crashed, is on it: leave the message in the queue and look again later), so an
event is never skipped before its record is safely in Kafka.
"""

from __future__ import annotations

import enum

from services.core.keys import bridge_seen_key

CLAIMED = b"claimed"
DONE = b"done"


class Claim(enum.Enum):
    NEW = "new"  # ours to produce
    DUPLICATE = "duplicate"  # already produced
    IN_FLIGHT = "in_flight"  # someone else holds the claim: retry later


class Deduplicator:
    def __init__(self, redis, claim_ttl_s: int, done_ttl_s: int):
        self.redis = redis
        self.claim_ttl_s = claim_ttl_s
        self.done_ttl_s = done_ttl_s

    def claim(self, key: str, token: str) -> Claim:
        return self.claim_many([(key, token)])[0]

    def claim_many(self, pairs: list[tuple[str, str]]) -> list[Claim]:
        """`claim` for each (key, token), in one Redis round trip (a pipeline of SET NX + GET per pair)."""
        if not pairs:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for key, token in pairs:
            name = bridge_seen_key(key, token)
            pipe.set(name, CLAIMED, nx=True, ex=self.claim_ttl_s)
            pipe.get(name)
        replies = pipe.execute()
        return [Claim.NEW if created else Claim.DUPLICATE if value == DONE else Claim.IN_FLIGHT
                for created, value in zip(replies[0::2], replies[1::2], strict=True)]

    def done(self, key: str, token: str, client=None) -> None:
        """Mark a produced (key, token); `client` may be a pipeline of the caller's (default: this Redis)."""
        (client or self.redis).set(bridge_seen_key(key, token), DONE, ex=self.done_ttl_s)

    def release_many(self, pairs: list[tuple[str, str]]) -> None:
        """Give claims back after a failure, so the redelivered events are produced."""
        if pairs:
            self.redis.delete(*(bridge_seen_key(key, token) for key, token in pairs))

    def release(self, key: str, token: str) -> None:
        self.release_many([(key, token)])
