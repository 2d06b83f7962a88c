"""Reading what the chain stored per sighting in Redis (written by the gateway and the matcher; the keys:
services.core.keys).

    sighting:<id>        hash, the upload's metadata (gateway)
    identification:<id>  JSON string: candidates, new_individual, gallery_version, ... (matcher)
    embedding:<id>       the sighting's blended embedding (matcher): the SightingEmbedded record's JSON (version 2
                         `embedding_f32`, version 1 `embedding`: topics.embedding_of), a bare JSON list, or raw
                         little-endian float32 bytes
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from services.core import topics
from services.core.errors import DataError
from services.core.keys import embedding_key, identification_key, sighting_key


def sighting_exists(redis, sighting_id: str) -> bool:
    return bool(redis.exists(sighting_key(sighting_id), identification_key(sighting_id),
                             embedding_key(sighting_id)))


def read_identification(redis, sighting_id: str) -> dict[str, Any] | None:
    raw = redis.get(identification_key(sighting_id))
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        raise DataError(f"{identification_key(sighting_id)} is not JSON") from None


def read_species_hint(redis, sighting_id: str) -> str:
    """The uploader's species hint from the sighting's metadata, '' when absent."""
    key = sighting_key(sighting_id)
    kind = redis.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "hash":
        fields = {_text(k): _text(v) for k, v in redis.hgetall(key).items()}
        if fields.get("species_hint"):
            return fields["species_hint"]
        blob = fields.get("metadata") or fields.get("meta") or ""
    elif kind == "string":
        blob = _text(redis.get(key))
    else:
        return ""
    try:
        value = json.loads(blob) if blob else {}
    except ValueError:
        return ""
    if isinstance(value, dict):
        meta = value.get("metadata") if isinstance(value.get("metadata"), dict) else value
        return str(meta.get("species_hint") or "")
    return ""


def decode_embedding(raw: bytes | str | None, sighting_id: str) -> np.ndarray:
    """The stored embedding as float32 (D,), whatever of the accepted encodings it uses."""
    if raw is None:
        raise DataError(f"sighting {sighting_id} has no stored embedding ({embedding_key(sighting_id)})")
    data = raw.encode() if isinstance(raw, str) else raw
    stripped = data.lstrip()[:1]
    if stripped in (b"[", b"{"):
        try:
            value = json.loads(data)
        except ValueError:
            raise DataError(f"{embedding_key(sighting_id)} is not valid JSON") from None
        if isinstance(value, dict):  # a SightingEmbedded record, any version it reads (embedding_f32 or embedding)
            try:
                value = topics.embedding_of(value)
            except topics.RecordError as exc:
                raise DataError(f"{embedding_key(sighting_id)}: {exc}") from None
        vector = np.asarray(value, dtype=np.float32)
    elif len(data) % 4 == 0 and data:
        vector = np.frombuffer(data, dtype="<f4").astype(np.float32)
    else:
        raise DataError(f"{embedding_key(sighting_id)}: unrecognised encoding ({len(data)} bytes)")
    if vector.ndim != 1 or vector.size == 0 or not np.all(np.isfinite(vector)):
        raise DataError(f"{embedding_key(sighting_id)} is not a finite vector (shape {vector.shape})")
    return vector


def read_embedding(redis, sighting_id: str) -> np.ndarray:
    return decode_embedding(redis.get(embedding_key(sighting_id)), sighting_id)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
