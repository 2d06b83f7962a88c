"""A confirmed sighting's photo in S3 and the crop the live chain made of it: what `reindex --re-embed` embeds
again (services.curation.catalogue.re_embed) and what a plain `reindex` takes the keypoints of for the next
version's local features (services.curation.operations.reindex_features).

The photo: the `key`/`bucket` of the sighting's `sighting:<id>` hash (the key the gateway signed), else, once the
hash expired, `uploads/<id>.<ext>` of the sightings bucket. The crop: the worker's `crop_box` stored with its
embedding (`embedding:<id>`), else the uploader's (`metadata.crop_box`), else the whole photo.
"""

from __future__ import annotations

import json
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from services.core import keys
from services.core.errors import DataError
from services.core.keys import CONTENT_TYPES, upload_key


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _json(raw) -> dict:
    if raw is None:
        return {}
    try:
        value = json.loads(_text(raw))
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _box(value) -> list[float] | None:
    if isinstance(value, (list, tuple)) and len(value) == 4:
        try:
            box = [float(v) for v in value]
        except (TypeError, ValueError):
            return None
        if box[2] > box[0] and box[3] > box[1]:
            return box
    return None


def sighting_photo_source(redis, sighting_id: str, sightings_bucket: str) -> tuple[str, list[str], list | None]:
    """(bucket, candidate keys, crop box) of a sighting's photo (module docstring)."""
    fields = {_text(k): _text(v) for k, v in (redis.hgetall(keys.sighting_key(sighting_id)) or {}).items()}
    metadata = _json(fields.get("metadata"))
    stored = _json(redis.get(keys.embedding_key(sighting_id)))
    box = _box(stored.get("crop_box")) or _box(metadata.get("crop_box"))
    if fields.get("key"):
        return fields.get("bucket") or sightings_bucket, [fields["key"]], box
    return sightings_bucket, [upload_key(sighting_id, c) for c in CONTENT_TYPES.values()], box


def download(s3, bucket: str, keys: list[str], target_dir: Path, sighting_id: str) -> Path:
    """The first of `keys` that exists, saved under target_dir; DataError naming the keys when none does."""
    for key in keys:
        try:
            body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code", "") in ("NoSuchKey", "404", "NotFound"):
                continue
            raise DataError(f"photo s3://{bucket}/{key} of sighting {sighting_id}: {exc}") from None
        except BotoCoreError as exc:
            raise DataError(f"photo s3://{bucket}/{key} of sighting {sighting_id} unreachable: {exc}") from None
        path = target_dir / f"{sighting_id}.{key.rsplit('.', 1)[-1]}"
        path.write_bytes(body)
        return path
    shown = keys[0] if len(keys) == 1 else "{" + ", ".join(keys) + "}"
    raise DataError(f"photo s3://{bucket}/{shown} of sighting {sighting_id} is gone")


def sighting_photo(redis, s3, sighting_id: str, sightings_bucket: str, target_dir: Path) -> tuple[Path, list | None]:
    """(the downloaded photo, the chain's crop box or None); DataError when the photo cannot be read."""
    bucket, candidates, box = sighting_photo_source(redis, sighting_id, sightings_bucket)
    return download(s3, bucket, candidates, target_dir, sighting_id), box
