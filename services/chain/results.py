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


_ANNOUNCE = """
local maxlen, ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local out = {}
for i = 1, #KEYS - 2 do
  local sighting_id = ARGV[2 * i + 1]
  redis.call('ZREM', KEYS[2], sighting_id)
  local created
  if ttl > 0 then
    created = redis.call('SET', KEYS[i + 2], '1', 'NX', 'EX', ttl)
  else
    created = redis.call('SET', KEYS[i + 2], '1', 'NX')
  end
  if created then
    if maxlen > 0 then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*', 'sighting_id', sighting_id,
                 'identification', ARGV[2 * i + 2])
    else
      redis.call('XADD', KEYS[1], '*', 'sighting_id', sighting_id, 'identification', ARGV[2 * i + 2])
    end
    out[i] = 1
  else
    out[i] = 0
  end
end
return out
"""
SCRIPT_CHUNK = 256  # sightings per script call (its keys and arguments stay far below Lua's stack limit)


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
    """`announce` of a batch, in one round trip: one script for the batch (per sighting, in order: out of
    `identifications:unannounced`, the `announced:` marker if absent, and then only the XADD). `encoded[i]`: the
    identification's JSON when the caller has it (the stored value, see `store_results`)."""
    if not identifications:
        return []
    encoded = encoded if encoded is not None else [i.to_json() for i in identifications]
    calls = []
    for start in range(0, len(identifications), SCRIPT_CHUNK):
        chunk = list(zip(identifications[start:start + SCRIPT_CHUNK], encoded[start:start + SCRIPT_CHUNK],
                         strict=True))
        calls.append(((stream, UNANNOUNCED_INDEX, *(announced_key(i.sighting_id) for i, _ in chunk)),
                      (int(maxlen), int(marker_ttl_s), *(v for i, as_json in chunk for v in (i.sighting_id, as_json)))))
    return [bool(n) for reply in _run_script(client, _ANNOUNCE, calls) for n in reply]


_STORE_RESULTS = """
local embedding_ttl, result_ttl = tonumber(ARGV[1]), tonumber(ARGV[2])
local out, index = {}, {}
for i = 1, (#KEYS - 1) / 3 do
  local k, a = 3 * i - 1, 4 * i - 1
  if ARGV[a] ~= '' then
    if embedding_ttl > 0 then
      redis.call('SET', KEYS[k], ARGV[a], 'EX', embedding_ttl)
    else
      redis.call('SET', KEYS[k], ARGV[a])
    end
  end
  if redis.call('EXISTS', KEYS[k + 1]) == 1 then
    out[i] = 1
  else
    local earlier = redis.call('GET', KEYS[k + 2])
    if earlier then
      out[i] = earlier
    else
      if result_ttl > 0 then
        redis.call('SET', KEYS[k + 2], ARGV[a + 1], 'EX', result_ttl)
      else
        redis.call('SET', KEYS[k + 2], ARGV[a + 1])
      end
      out[i] = 0
    end
    index[#index + 1] = ARGV[a + 3]
    index[#index + 1] = ARGV[a + 2]
  end
end
if #index > 0 then
  redis.call('ZADD', KEYS[1], unpack(index))
end
return out
"""


@dataclass(frozen=True)
class StoredResult:
    """What `store_results` found for one sighting."""

    identification: topics.Identification  # the stored result: the earlier one on re-delivery
    encoded: bytes  # its JSON (`to_json()`: what the topics and the stream entry carry)
    announced: bool  # announced before (a re-delivery): nothing was stored, the caller skips it


def store_results(client: redis.Redis, identifications: list[topics.Identification],
                  embeddings: list[bytes | None] | None = None, embedding_ttl_s: int = 0,
                  result_ttl_s: int = 0) -> list[StoredResult]:
    """The matcher's after-search writes of a batch in one round trip, one atomic script for the batch: per
    sighting, in order, the embedding (`embeddings[i]`, the SightingEmbedded JSON; None: left as stored), then,
    unless the sighting was announced before, the result unless one exists (first one wins, as
    `store_identification`); the results' sightings then join `identifications:unannounced` (one ZADD). The
    embedding is written before the result, so a reader that finds the result finds the embedding (confirmations
    re-index with it)."""
    if not identifications:
        return []
    encoded = [i.to_json() for i in identifications]
    embeddings = embeddings if embeddings is not None else [None] * len(identifications)
    calls = []
    for start in range(0, len(identifications), SCRIPT_CHUNK):
        chunk = list(zip(identifications[start:start + SCRIPT_CHUNK], encoded[start:start + SCRIPT_CHUNK],
                         embeddings[start:start + SCRIPT_CHUNK], strict=True))
        calls.append(((UNANNOUNCED_INDEX, *(key for i, _, _ in chunk for key in (
                          embedding_key(i.sighting_id), announced_key(i.sighting_id), identification_key(i.sighting_id)))),
                      (int(embedding_ttl_s), int(result_ttl_s), *(value for i, as_json, embedding in chunk for value in (
                          embedding or b"", as_json, i.sighting_id, i.identified_at)))))
    replies = [reply for chunk in _run_script(client, _STORE_RESULTS, calls) for reply in chunk]
    out = []
    for identification, as_json, reply in zip(identifications, encoded, replies, strict=True):
        if isinstance(reply, (bytes, str)):  # a re-delivery found the first result
            earlier = topics.Identification.from_json(reply)
            out.append(StoredResult(earlier, earlier.to_json(), False))  # as the reconciler encodes it
        else:
            out.append(StoredResult(identification, as_json, bool(reply)))
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
    return announce_many(client, [identification], marker_ttl_s, maxlen, stream)[0]
