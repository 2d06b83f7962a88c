"""A sighting's records in Redis, as the gateway writes them and the stages read them: its id, its `sighting:<id>`
hash decoded, the uploader's metadata, a stored JSON value and the status they add up to, and its entry in
`sightings:open` (the keys themselves: services.core.keys).

Pure functions only (no I/O, `open_sighting` queues on a pipeline), so the async gateway and the synchronous bridge
share them.
"""

from __future__ import annotations

import json
import uuid
from typing import Any, Mapping

from services.core.keys import OPEN_SIGHTINGS_KEY


def new_sighting_id() -> str:
    return uuid.uuid4().hex


def open_sighting(pipe, sighting_id: str, at: float, only_new: bool = False) -> None:
    """Queue the `sightings:open` entry of a sighting on `pipe` (`only_new`: keep an earlier entry's time)."""
    pipe.zadd(OPEN_SIGHTINGS_KEY, {sighting_id: at}, nx=only_new)


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
