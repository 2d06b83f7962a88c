"""What the matcher keeps in Redis (every key with a TTL from the settings, the stream trimmed; the keys are
built in services.core.keys).

    identification:<sighting_id>  JSON of topics.Identification, written once (SET NX): re-deliveries change nothing
                                  (TTL redis_result_ttl_s)
    announced:<sighting_id>       set after the identification was announced (topics, then the stream entry)
                                  (TTL redis_marker_ttl_s)
    embedding:<sighting_id>       JSON of the SightingEmbedded record (topics; record_version 2: embedding_f32, a
                                  version 1 record as it came: embedding): re-indexing of confirmed sightings reuses it
                                  (TTL redis_embedding_ttl_s: confirm within it)
    identifications:unannounced   sorted set, sighting id -> identified_at: added with each stored result, removed
                                  when it is announced, so the reconciler reads only what is still unannounced
    stream `identifications`      one entry per identification: {sighting_id, identification (JSON)}, trimmed to
                                  about redis_stream_maxlen entries at each XADD (MAXLEN ~)
A TTL or maxlen of 0 means none.
"""

from __future__ import annotations

import hashlib

import redis

from services.chain.failures import TransientFailure
from services.core import topics
from services.core.keys import (
    IDENTIFICATIONS_STREAM,
    UNANNOUNCED_INDEX,
    announced_key,
    embedding_key,
    identification_key,
)

STREAM_MAXLEN = 100_000


def _redis_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None


def store_embedding(client: redis.Redis, record: topics.SightingEmbedded, ttl_s: int = 0) -> None:
    _redis_call(client.set, embedding_key(record.sighting_id), record.to_json(), ex=ttl_s or None)


def stored_identification(client: redis.Redis, sighting_id: str) -> topics.Identification | None:
    raw = _redis_call(client.get, identification_key(sighting_id))
    return None if raw is None else topics.Identification.from_json(raw)


def is_announced(client: redis.Redis, sighting_id: str) -> bool:
    return bool(_redis_call(client.exists, announced_key(sighting_id)))


def store_embeddings_and_check(client: redis.Redis, records: list[topics.SightingEmbedded], ttl_s: int = 0,
                               encoded: list[bytes | None] | None = None) -> list[bool]:
    """`store_embedding` then `is_announced` for each record of a batch, in that order, in one round trip.
    `encoded[i]`: the record's JSON (`to_json()`) when the caller has it already (else None: encoded here)."""
    if not records:
        return []
    encoded = encoded if encoded is not None else [None] * len(records)

    def run():
        with client.pipeline(transaction=False) as pipe:
            for record, as_json in zip(records, encoded, strict=True):
                pipe.set(embedding_key(record.sighting_id),
                         as_json if as_json is not None else record.to_json(),
                         ex=ttl_s or None)
                pipe.exists(announced_key(record.sighting_id))
            replies = pipe.execute()
        return [bool(n) for n in replies[1::2]]

    return _redis_call(run)


def store_identifications(client: redis.Redis, identifications: list[topics.Identification],
                          ttl_s: int = 0) -> list[topics.Identification]:
    """`store_identification` of a batch: one pipeline of SET NX, then one GET pipeline for the sightings that
    had a result already (re-deliveries); returns the stored results in the same order."""
    if not identifications:
        return []

    def run():
        with client.pipeline(transaction=False) as pipe:
            for identification in identifications:
                pipe.set(identification_key(identification.sighting_id), identification.to_json(), nx=True,
                         ex=ttl_s or None)
            pipe.zadd(UNANNOUNCED_INDEX, {i.sighting_id: i.identified_at for i in identifications})
            created = pipe.execute()[:-1]
        earlier = [i for i, ok in zip(identifications, created, strict=True) if not ok]
        if not earlier:
            return list(identifications)
        with client.pipeline(transaction=False) as pipe:
            for identification in earlier:
                pipe.get(identification_key(identification.sighting_id))
            found = dict(zip((i.sighting_id for i in earlier), pipe.execute(), strict=True))
        return [i if ok or found[i.sighting_id] is None else topics.Identification.from_json(found[i.sighting_id])
                for i, ok in zip(identifications, created, strict=True)]

    return _redis_call(run)


def announced_many(client: redis.Redis, sighting_ids: list[str]) -> list[bool]:
    """`is_announced` of each id, in one round trip."""
    if not sighting_ids:
        return []

    def run():
        with client.pipeline(transaction=False) as pipe:
            for sighting_id in sighting_ids:
                pipe.exists(announced_key(sighting_id))
            return [bool(n) for n in pipe.execute()]

    return _redis_call(run)


def store_identification(client: redis.Redis, identification: topics.Identification,
                         ttl_s: int = 0) -> topics.Identification:
    """Write the result unless one exists; returns the result that is stored (the earlier one on re-delivery)."""
    def run():
        with client.pipeline(transaction=False) as pipe:
            pipe.set(identification_key(identification.sighting_id), identification.to_json(), nx=True,
                     ex=ttl_s or None)
            pipe.zadd(UNANNOUNCED_INDEX, {identification.sighting_id: identification.identified_at})
            return pipe.execute()[0]

    created = _redis_call(run)
    if created:
        return identification
    return stored_identification(client, identification.sighting_id) or identification


_ANNOUNCE_ONCE = """
redis.call('ZREM', KEYS[3], ARGV[1])
local created
if tonumber(ARGV[4]) > 0 then
  created = redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[4])
else
  created = redis.call('SET', KEYS[1], '1', 'NX')
end
if not created then
  return false
end
if tonumber(ARGV[3]) > 0 then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'sighting_id', ARGV[1], 'identification', ARGV[2])
end
return redis.call('XADD', KEYS[2], '*', 'sighting_id', ARGV[1], 'identification', ARGV[2])
"""


def new_individual_record(identification: topics.Identification) -> topics.NewIndividual:
    """The `new-individuals` record of an identification whose best candidate is new_individual (the matcher and
    the reconciler produce exactly this, so a re-produced record has the same content)."""
    known = [c for c in identification.candidates if c["individual_id"] != "new_individual"]
    best = known[0] if known else {"individual_id": "", "score": 0.0}
    return topics.NewIndividual(
        sighting_id=identification.sighting_id, best_known_id=best["individual_id"],
        best_known_score=float(best["score"]), gallery_version=identification.gallery_version,
        identified_at=identification.identified_at,
    )


def announce_many(client: redis.Redis, identifications: list[topics.Identification], marker_ttl_s: int = 0,
                  maxlen: int = STREAM_MAXLEN, stream: str = IDENTIFICATIONS_STREAM) -> list[bool]:
    """`announce` of a batch: the same atomic script per sighting (marker + XADD), all in one round trip."""
    if not identifications:
        return []

    sha = hashlib.sha1(_ANNOUNCE_ONCE.encode()).hexdigest()

    def run():
        for attempt in range(2):  # EVALSHA: no SCRIPT EXISTS round trip before each batch's pipeline
            with client.pipeline(transaction=False) as pipe:
                for identification in identifications:
                    pipe.evalsha(sha, 3, announced_key(identification.sighting_id), stream, UNANNOUNCED_INDEX,
                                 identification.sighting_id, identification.to_json(), int(maxlen), int(marker_ttl_s))
                try:
                    return [bool(reply) for reply in pipe.execute()]
                except redis.exceptions.NoScriptError:  # a new (or restarted) Redis: none of them ran
                    if attempt:
                        raise
                    client.script_load(_ANNOUNCE_ONCE)
        return []

    return _redis_call(run)


def announce(client: redis.Redis, identification: topics.Identification, marker_ttl_s: int = 0,
             maxlen: int = STREAM_MAXLEN, stream: str = IDENTIFICATIONS_STREAM) -> bool:
    """Add the stream entry once per sighting: the `announced:` marker (TTL `marker_ttl_s`) and the XADD (stream
    trimmed to about `maxlen`) run atomically (a Lua script), and the sighting leaves `identifications:unannounced`.
    False when the sighting was announced before."""
    keys = [announced_key(identification.sighting_id), stream, UNANNOUNCED_INDEX]
    args = [identification.sighting_id, identification.to_json(), int(maxlen), int(marker_ttl_s)]
    return bool(_redis_call(client.eval, _ANNOUNCE_ONCE, len(keys), *keys, *args))
