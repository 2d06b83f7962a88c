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
from dataclasses import dataclass

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
                  maxlen: int = STREAM_MAXLEN, stream: str = IDENTIFICATIONS_STREAM,
                  encoded: list[bytes] | None = None) -> list[bool]:
    """`announce` of a batch: the same atomic script per sighting (marker + XADD), all in one round trip.
    `encoded[i]`: the identification's JSON when the caller has it (the stored value, see `store_results`)."""
    if not identifications:
        return []
    encoded = encoded if encoded is not None else [i.to_json() for i in identifications]
    return [bool(reply) for reply in _run_script(client, _ANNOUNCE_ONCE, [
        ((announced_key(i.sighting_id), stream, UNANNOUNCED_INDEX),
         (i.sighting_id, as_json, int(maxlen), int(marker_ttl_s)))
        for i, as_json in zip(identifications, encoded, strict=True)])]


_STORE_RESULT = """
if ARGV[1] ~= '' then
  if tonumber(ARGV[2]) > 0 then
    redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  else
    redis.call('SET', KEYS[1], ARGV[1])
  end
end
if redis.call('EXISTS', KEYS[2]) == 1 then
  return {1}
end
local earlier = redis.call('GET', KEYS[3])
if not earlier then
  if tonumber(ARGV[4]) > 0 then
    redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4])
  else
    redis.call('SET', KEYS[3], ARGV[3])
  end
end
redis.call('ZADD', KEYS[4], ARGV[6], ARGV[5])
if earlier then
  return {0, earlier}
end
return {0}
"""


@dataclass(frozen=True)
class StoredResult:
    """What `store_results` found for one sighting."""

    identification: topics.Identification  # the stored result: the earlier one on re-delivery
    encoded: bytes  # its JSON, as stored (what the topics and the stream entry carry)
    announced: bool  # announced before (a re-delivery): nothing was stored, the caller skips it


def store_results(client: redis.Redis, identifications: list[topics.Identification],
                  embeddings: list[bytes | None] | None = None, embedding_ttl_s: int = 0,
                  result_ttl_s: int = 0) -> list[StoredResult]:
    """The matcher's after-search writes of a batch in one round trip: per sighting one atomic script that
    stores the embedding (`embeddings[i]`, the SightingEmbedded JSON; None: left as stored), then, unless the
    sighting was announced before, writes the result unless one exists (first one wins, as `store_identification`)
    and adds it to `identifications:unannounced`. The embedding is written before the result, so a reader that
    finds the result finds the embedding (confirmations re-index with it)."""
    if not identifications:
        return []
    encoded = [i.to_json() for i in identifications]
    embeddings = embeddings if embeddings is not None else [None] * len(identifications)
    replies = _run_script(client, _STORE_RESULT, [
        ((embedding_key(i.sighting_id), announced_key(i.sighting_id), identification_key(i.sighting_id),
          UNANNOUNCED_INDEX),
         (embedding or b"", int(embedding_ttl_s), as_json, int(result_ttl_s), i.sighting_id, i.identified_at))
        for i, as_json, embedding in zip(identifications, encoded, embeddings, strict=True)])
    out = []
    for identification, as_json, reply in zip(identifications, encoded, replies, strict=True):
        if len(reply) > 1:  # a re-delivery found the first result
            earlier = reply[1].encode() if isinstance(reply[1], str) else bytes(reply[1])
            out.append(StoredResult(topics.Identification.from_json(earlier), earlier, False))
        else:
            out.append(StoredResult(identification, as_json, bool(reply[0])))
    return out


def _run_script(client: redis.Redis, script: str, calls: list[tuple[tuple, tuple]]) -> list:
    """`script` once per (keys, args) of `calls`, in one round trip (a pipeline of EVALSHA: no SCRIPT EXISTS
    before each batch; a Redis that does not know the script yet, new or restarted, gets it and the pipeline
    again, none of whose calls ran). The replies in order; TransientFailure when Redis is unavailable."""
    sha = hashlib.sha1(script.encode()).hexdigest()

    def run():
        for attempt in range(2):
            with client.pipeline(transaction=False) as pipe:
                for keys, args in calls:
                    pipe.evalsha(sha, len(keys), *keys, *args)
                try:
                    return pipe.execute()
                except redis.exceptions.NoScriptError:
                    if attempt:
                        raise
                    client.script_load(script)
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
