"""Validation of the JSON body of `POST /v1/sightings` (types and ranges); every problem is reported by name.

`request_schema()` is the JSON Schema of the same body (served in /openapi.json), built from the same constants
(REQUIRED, OPTIONAL, the ranges, MAX_TEXT, the content types); tests/unit/test_openapi.py checks both agree."""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from services.core.errors import DataError
from services.core.ids import MAX_ID_LENGTH, id_problem
from services.core.keys import EXTENSIONS
from services.core.topics import SightingMetadata

REQUIRED = ("taken_at", "latitude", "longitude", "observer", "content_type")
OPTIONAL = ("crop_box", "species_hint", "size", "encounter")
MAX_TEXT = 200
CLOCK_SKEW = timedelta(days=1)  # a photo may not be taken later than now + this
LATITUDE = (-90.0, 90.0)
LONGITUDE = (-180.0, 180.0)


class InvalidSighting(DataError):
    """The sighting request is invalid; `problems` lists every reason (one per field)."""

    def __init__(self, problems: list[str]):
        super().__init__("invalid sighting: " + "; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class SightingRequest:
    metadata: SightingMetadata
    content_type: str
    size: int | None  # declared byte size: signed into the PUT URL, so S3 accepts exactly this length


def _number(body: dict, name: str, low: float, high: float, problems: list[str]) -> float | None:
    value = body.get(name)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        problems.append(f"{name} must be a finite number, got {value!r}")
        return None
    if not low <= value <= high:
        problems.append(f"{name} must be within [{low:g}, {high:g}], got {value!r}")
        return None
    return float(value)


def _text(body: dict, name: str, problems: list[str], required: bool) -> str:
    value = body.get(name, None if required else "")
    if not isinstance(value, str) or (required and not value.strip()):
        problems.append(f"{name} must be a non-empty string" if required else f"{name} must be a string")
        return ""
    if len(value) > MAX_TEXT:
        problems.append(f"{name} is longer than {MAX_TEXT} characters")
        return ""
    return value.strip()


def _taken_at(body: dict, problems: list[str], now: datetime) -> str:
    value = body.get("taken_at")
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        problems.append(f"taken_at must be an ISO 8601 date-time, got {value!r}")
        return ""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    if moment > now + CLOCK_SKEW:
        problems.append(f"taken_at {value!r} is in the future")
        return ""
    return moment.isoformat()


def _crop_box(body: dict, problems: list[str]) -> list[float] | None:
    box = body.get("crop_box")
    if box is None:
        return None
    numbers_ok = isinstance(box, list) and len(box) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in box)
    if not numbers_ok:
        problems.append(f"crop_box must be [x0, y0, x1, y1] (four finite numbers), got {box!r}")
        return None
    x0, y0, x1, y1 = (float(v) for v in box)
    if min(x0, y0) < 0 or x1 <= x0 or y1 <= y0:
        problems.append(f"crop_box must have 0 <= x0 < x1 and 0 <= y0 < y1, got {box!r}")
        return None
    return [x0, y0, x1, y1]


def _size(body: dict, max_bytes: int, required: bool, problems: list[str]) -> int | None:
    size = body.get("size")
    if size is None:
        if required:
            problems.append("size (bytes of the photo) is required: the upload URL is signed for exactly that length")
        return None
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        problems.append(f"size must be a positive integer (bytes), got {size!r}")
        return None
    if size > max_bytes:
        problems.append(f"size {size} bytes is over the upload limit of {max_bytes} bytes")
        return None
    return size


def parse_sighting_request(body: Any, max_upload_bytes: int, now: datetime | None = None,
                           size_required: bool = False) -> SightingRequest:
    """The validated request, or InvalidSighting naming every bad field."""
    if not isinstance(body, dict):
        raise InvalidSighting([f"the body must be a JSON object, got {type(body).__name__}"])
    now = now or datetime.now(timezone.utc)
    problems = [f"missing field {name}" for name in REQUIRED if name not in body]
    problems += [f"unknown field {name}" for name in sorted(set(body) - set(REQUIRED) - set(OPTIONAL))]
    if problems:
        raise InvalidSighting(problems)
    taken_at = _taken_at(body, problems, now)
    latitude = _number(body, "latitude", *LATITUDE, problems)
    longitude = _number(body, "longitude", *LONGITUDE, problems)
    observer = _text(body, "observer", problems, required=True)
    species_hint = _text(body, "species_hint", problems, required=False)
    encounter = _text(body, "encounter", problems, required=False)
    if encounter and (problem := id_problem(encounter, "encounter")):  # a key is made of it: an id's limits
        problems.append(problem)
        encounter = ""
    crop_box = _crop_box(body, problems)
    size = _size(body, max_upload_bytes, size_required, problems)
    content_type = body.get("content_type")
    if content_type not in EXTENSIONS:
        problems.append(f"content_type must be one of {', '.join(EXTENSIONS)}, got {content_type!r}")
    if problems:
        raise InvalidSighting(problems)
    metadata = SightingMetadata(observer=observer, taken_at=taken_at, latitude=latitude, longitude=longitude,
                                species_hint=species_hint, crop_box=crop_box, encounter=encounter)
    return SightingRequest(metadata=metadata, content_type=content_type, size=size)


def request_schema(max_upload_bytes: int, size_required: bool = False) -> dict[str, Any]:
    """JSON Schema (2020-12, as OpenAPI 3.1 uses) of the body parse_sighting_request accepts with these settings.
    What a schema cannot say (taken_at not in the future, crop_box x0 < x1 and y0 < y1) is in the descriptions."""
    properties = {
        "taken_at": {"type": "string", "format": "date-time",
                     "description": f"ISO 8601 (no zone: UTC), not later than now + {CLOCK_SKEW.days} day"},
        "latitude": {"type": "number", "minimum": LATITUDE[0], "maximum": LATITUDE[1]},
        "longitude": {"type": "number", "minimum": LONGITUDE[0], "maximum": LONGITUDE[1]},
        "observer": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT, "pattern": "\\S",
                     "description": "who took the photo (trimmed)"},
        "content_type": {"type": "string", "enum": list(EXTENSIONS)},
        "crop_box": {"type": ["array", "null"], "items": {"type": "number", "minimum": 0}, "minItems": 4,
                     "maxItems": 4, "description": "[x0, y0, x1, y1] in pixels, x0 < x1 and y0 < y1"},
        "species_hint": {"type": "string", "maxLength": MAX_TEXT},
        "encounter": {"type": "string", "maxLength": MAX_ID_LENGTH,
                      "description": "the app's id of one sighting event: its photos (of one animal) are identified "
                                     "together, the answer's `encounter` pools their candidates"},
        "size": {"type": "integer" if size_required else ["integer", "null"], "minimum": 1,
                 "maximum": max_upload_bytes,
                 "description": "bytes of the photo: the upload URL is signed for exactly this length"},
    }
    assert set(properties) == set(REQUIRED) | set(OPTIONAL), "request_schema is out of step with REQUIRED/OPTIONAL"
    required = list(REQUIRED) + (["size"] if size_required else [])
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": False}
