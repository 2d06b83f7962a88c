"""Where a sighting lives: its S3 upload key and its Redis keys, written by the gateway and read along the chain.

    uploads/<sighting_id>.<ext>   S3 key of the photo in settings.sightings_bucket (ext from the content type)
    sighting:<id>                 Redis hash written by the gateway: metadata (SightingMetadata JSON),
                                  content_type, bucket, key, declared_size, created_at; the bridge adds
                                  uploaded_at, size, etag when the upload event arrives
    identification:<id>           Redis string, JSON of services.core.topics.Identification (written by the matcher)
    encounter:<owner>:<id>        Redis set: the sighting ids of one app's encounter (photos of one sighting
                                  event), written by the gateway, same TTL as the sightings
    failure:<id>                  Redis string, JSON {"stage", "reason", "detail", "failed_at"}, written by the
                                  stage that dead-lettered the sighting (services.chain.markers.record_failure)
    sightings:open                Redis sorted set, sighting id -> created_at: the sightings that may still need
                                  the reconciler (added by the gateway at creation and by the bridge at upload,
                                  removed by the reconciler once identified, failed, expired or never uploadable),
                                  so a reconciler pass costs what is open, not what Redis holds

Pure functions only (no I/O), so the async gateway and the synchronous bridge share them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Mapping

UPLOAD_PREFIX = "uploads/"
EXTENSIONS = {"image/jpeg": "jpg", "image/png": "png", "image/webp": "webp"}
CONTENT_TYPES = {ext: content_type for content_type, ext in EXTENSIONS.items()}


class BadUploadKey(ValueError):
    """An S3 key that is not `uploads/<sighting_id>.<ext>`."""


def new_sighting_id() -> str:
    return uuid.uuid4().hex


def upload_key(sighting_id: str, content_type: str) -> str:
    return f"{UPLOAD_PREFIX}{sighting_id}.{EXTENSIONS[content_type]}"


def parse_upload_key(key: str) -> tuple[str, str]:
    """(sighting_id, extension) of a decoded key `uploads/<sighting_id>.<ext>`; BadUploadKey otherwise."""
    if not key.startswith(UPLOAD_PREFIX):
        raise BadUploadKey(f"key {key!r} is not under {UPLOAD_PREFIX}")
    name = key[len(UPLOAD_PREFIX):]
    sighting_id, dot, ext = name.rpartition(".")
    if "/" in name or not dot or not sighting_id:
        raise BadUploadKey(f"key {key!r} is not {UPLOAD_PREFIX}<sighting_id>.<ext>")
    if ext not in CONTENT_TYPES:
        raise BadUploadKey(f"key {key!r} has extension {ext!r}; expected one of {', '.join(CONTENT_TYPES)}")
    return sighting_id, ext


def sighting_key(sighting_id: str) -> str:
    return f"sighting:{sighting_id}"


def identification_key(sighting_id: str) -> str:
    return f"identification:{sighting_id}"


OPEN_SIGHTINGS_KEY = "sightings:open"


def open_sighting(pipe, sighting_id: str, at: float, only_new: bool = False) -> None:
    """Queue the `sightings:open` entry of a sighting on `pipe` (`only_new`: keep an earlier entry's time)."""
    pipe.zadd(OPEN_SIGHTINGS_KEY, {sighting_id: at}, nx=only_new)


def encounter_key(owner: str, encounter: str) -> str:
    """Redis set of the sighting ids of one app's encounter (app-scoped: two apps' ids never mix)."""
    return f"encounter:{owner}:{encounter}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode_hash(raw: Mapping[Any, Any]) -> dict[str, str]:
    """A Redis hash as str -> str (redis-py returns bytes unless decode_responses is set)."""
    return {_text(k): _text(v) for k, v in raw.items()}


def sighting_metadata(record: Mapping[str, str]) -> dict[str, Any]:
    """The uploader's metadata (SightingMetadata.asdict()) from a decoded `sighting:<id>` hash."""
    return json.loads(record.get("metadata") or "{}")


def read_json_value(raw: Any) -> Any:
    """A JSON value stored by another stage; a plain string is returned as {"reason": text} (failures)."""
    if raw is None:
        return None
    text = _text(raw)
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return {"reason": text}


def sighting_status(identification: Any, failure: Any) -> str:
    """pending | identified | failed."""
    if identification is not None:
        return "identified"
    if failure is not None:
        return "failed"
    return "pending"
