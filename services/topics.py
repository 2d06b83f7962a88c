"""The topics of the chain and their records, in one place.

    sightings.uploaded   bridge  -> worker     an uploaded photo is in S3
    sightings.embedded   worker  -> matcher    its crop's blended embedding from Triton
    identifications      matcher -> apps       top-five candidates (new_individual included)
    new-individuals      matcher -> curators   sightings whose best candidate is new_individual
    confirmations        gateway -> reindex    a researcher's decision on a sighting
    sightings.dead-letter any stage            a permanent failure, with the reason and the original event

Records are `faust.Record`s serialised as JSON, keyed by sighting id, so non-Faust clients (kafka-python in the
bridge and the tests) read and write them with `to_json` / `from_json`.
"""

from __future__ import annotations

import json
import time
from typing import Any

import faust

SIGHTINGS_UPLOADED = "sightings.uploaded"
SIGHTINGS_EMBEDDED = "sightings.embedded"
IDENTIFICATIONS = "identifications"
NEW_INDIVIDUALS = "new-individuals"
CONFIRMATIONS = "confirmations"
DEAD_LETTER = "sightings.dead-letter"

ALL_TOPICS = (SIGHTINGS_UPLOADED, SIGHTINGS_EMBEDDED, IDENTIFICATIONS, NEW_INDIVIDUALS, CONFIRMATIONS, DEAD_LETTER)


def now() -> float:
    return time.time()


class _JsonRecord(faust.Record, serializer="json", include_metadata=False):
    """Shared JSON helpers for clients that do not run Faust."""

    def to_json(self) -> bytes:
        return json.dumps(self.asdict(), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes | str) -> "_JsonRecord":
        return cls.from_data(json.loads(data))


class SightingMetadata(_JsonRecord):
    """What the uploader said about the photo (all optional)."""

    observer: str = ""
    taken_at: str = ""  # ISO 8601
    latitude: float | None = None
    longitude: float | None = None
    species_hint: str = ""
    crop_box: list[float] | None = None  # [x0, y0, x1, y1] in pixels of the uploaded image
    encounter: str = ""  # one sighting event of one animal: the app's photos with this id are identified together


class SightingUploaded(_JsonRecord):
    sighting_id: str
    bucket: str
    key: str
    size: int = 0
    event_name: str = ""
    event_time: str = ""
    metadata: dict[str, Any] | None = None  # SightingMetadata.asdict()
    uploaded_at: float = 0.0  # when the bridge saw the event (epoch seconds)


class SightingEmbedded(_JsonRecord):
    sighting_id: str
    embedding: list[float]
    model_version: str
    crop_box: list[float] | None = None
    crop_source: str = ""  # uploader | detector | full
    metadata: dict[str, Any] | None = None
    uploaded_at: float = 0.0
    embedded_at: float = 0.0
    species_scores: dict[str, float] | None = None  # the model's species probabilities by name; None: no species head


SPECIES_SOURCES = ("app", "model", "none")  # Identification.species_source


class Candidate(_JsonRecord):
    individual_id: str
    score: float


class Identification(_JsonRecord):
    sighting_id: str
    candidates: list[dict[str, Any]]  # [{"individual_id": ..., "score": ...}] x 5, best first
    new_individual: bool  # new_individual ranks first
    model_version: str
    gallery_version: str
    uploaded_at: float = 0.0
    identified_at: float = 0.0
    species: str = ""  # the species whose new_individual threshold was looked up ("" = none: the global one)
    species_source: str = "none"  # app (metadata species_hint) | model (its most probable species) | none
    threshold: float | None = None  # the new_individual threshold applied (None: written before it was recorded)


class NewIndividual(_JsonRecord):
    sighting_id: str
    best_known_id: str
    best_known_score: float
    gallery_version: str
    identified_at: float = 0.0


class Confirmation(_JsonRecord):
    sighting_id: str
    action: str  # confirm | new | reject
    individual_id: str = ""  # the confirmed (or rejected) id; assigned by the system for `new`
    researcher: str = ""
    predicted: list[dict[str, Any]] | None = None  # what the system had predicted
    confirmed_at: float = 0.0


class DeadLetter(_JsonRecord):
    stage: str  # bridge | worker | matcher | gateway
    reason: str
    original: Any  # the original event (decoded JSON when possible, else the raw text)
    sighting_id: str = ""
    failed_at: float = 0.0
    detail: str = ""  # human-readable explanation; `reason` then holds only the short code (bridge, worker, matcher)
