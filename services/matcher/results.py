"""What the matcher keeps in Redis.

    identification:<sighting_id>  JSON of topics.Identification, written once (SET NX): re-deliveries change nothing
    announced:<sighting_id>       set after the identification was announced (stream + topics)
    embedding:<sighting_id>       JSON {sighting_id, model_version, embedding, crop_box, crop_source, metadata,
                                  uploaded_at, embedded_at}: re-indexing of confirmed sightings reuses it
    stream `identifications`      one entry per identification: {sighting_id, identification (JSON)}
"""

from __future__ import annotations

import json

import redis

from services import topics
from services.worker.failures import TransientFailure

IDENTIFICATIONS_STREAM = "identifications"
STREAM_MAXLEN = 100_000


def identification_key(sighting_id: str) -> str:
    return f"identification:{sighting_id}"


def announced_key(sighting_id: str) -> str:
    return f"announced:{sighting_id}"


def embedding_key(sighting_id: str) -> str:
    return f"embedding:{sighting_id}"


def _redis_call(fn, *args, **kwargs):
    try:
        return fn(*args, **kwargs)
    except redis.RedisError as exc:
        raise TransientFailure(f"Redis unavailable: {exc}") from None


def store_embedding(client: redis.Redis, record: topics.SightingEmbedded) -> None:
    _redis_call(client.set, embedding_key(record.sighting_id), json.dumps(record.asdict(), separators=(",", ":")))


def load_embedding(client: redis.Redis, sighting_id: str) -> topics.SightingEmbedded | None:
    raw = _redis_call(client.get, embedding_key(sighting_id))
    return None if raw is None else topics.SightingEmbedded.from_json(raw)


def stored_identification(client: redis.Redis, sighting_id: str) -> topics.Identification | None:
    raw = _redis_call(client.get, identification_key(sighting_id))
    return None if raw is None else topics.Identification.from_json(raw)


def is_announced(client: redis.Redis, sighting_id: str) -> bool:
    return bool(_redis_call(client.exists, announced_key(sighting_id)))


def store_identification(client: redis.Redis, identification: topics.Identification) -> topics.Identification:
    """Write the result unless one exists; returns the result that is stored (the earlier one on re-delivery)."""
    created = _redis_call(client.set, identification_key(identification.sighting_id), identification.to_json(), nx=True)
    if created:
        return identification
    return stored_identification(client, identification.sighting_id) or identification


_ANNOUNCE_ONCE = """
if redis.call('SET', KEYS[1], '1', 'NX') then
  return redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'sighting_id', ARGV[1], 'identification', ARGV[2])
end
return false
"""


def announce(client: redis.Redis, identification: topics.Identification) -> bool:
    """Add the stream entry exactly once: the `announced:` marker and XADD run atomically (a Lua script)."""
    keys = [announced_key(identification.sighting_id), IDENTIFICATIONS_STREAM]
    args = [identification.sighting_id, identification.to_json(), STREAM_MAXLEN]
    return bool(_redis_call(client.eval, _ANNOUNCE_ONCE, len(keys), *keys, *args))
