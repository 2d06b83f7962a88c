"""The topics of the chain and their records, in one place.

    sightings.uploaded   bridge  -> worker     an uploaded photo is in S3
    sightings.embedded   worker  -> matcher    its crop's blended embedding from Triton
    identifications      matcher -> apps       top-five candidates (new_individual included)
    new-individuals      matcher -> curators   sightings whose best candidate is new_individual
    confirmations        gateway -> reindex    a researcher's decision on a sighting
    sightings.dead-letter any stage            a permanent failure, with the reason and the original event

Records are `faust.Record`s serialised as JSON (orjson), keyed by sighting id, so non-Faust clients (kafka-python
in the bridge and the tests) read and write them with `to_json` / `from_json`.

SightingEmbedded is versioned (`record_version`, docs/interfaces.md "Records"): version 2 carries the embedding as
little-endian float32 bytes in base64 (`embedding_f32`), exactly what Triton returned; version 1 (no
`record_version`, written before) carried it as a JSON list of floats (`embedding`) and still parses. A version
this reader does not know raises UnsupportedRecordVersion (the matcher dead-letters it with that reason).
"""

from __future__ import annotations

import base64
import binascii
import time
from typing import Any

import faust
import numpy as np
import orjson

SIGHTINGS_UPLOADED = "sightings.uploaded"
SIGHTINGS_EMBEDDED = "sightings.embedded"
IDENTIFICATIONS = "identifications"
NEW_INDIVIDUALS = "new-individuals"
CONFIRMATIONS = "confirmations"
DEAD_LETTER = "sightings.dead-letter"

ALL_TOPICS = (SIGHTINGS_UPLOADED, SIGHTINGS_EMBEDDED, IDENTIFICATIONS, NEW_INDIVIDUALS, CONFIRMATIONS, DEAD_LETTER)


EMBEDDED_RECORD_VERSION = 2  # the SightingEmbedded form this code writes; it reads 1 and 2
EMBEDDED_RECORD_VERSIONS = (1, 2)


def now() -> float:
    return time.time()


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (orjson; numpy arrays and scalars as numbers, non-finite floats as null)."""
    return orjson.dumps(value, option=orjson.OPT_SERIALIZE_NUMPY)


def loads(data: bytes | bytearray | memoryview | str) -> Any:
    """Parsed JSON (orjson: strict, NaN/Infinity are refused as not JSON)."""
    return orjson.loads(data)


class RecordError(ValueError):
    """A record that cannot be read: `reason` is the dead-letter code."""

    reason = "malformed_event"


class UnsupportedRecordVersion(RecordError):
    reason = "unsupported_record_version"


class _JsonRecord(faust.Record, serializer="json", include_metadata=False):
    """Shared JSON helpers for clients that do not run Faust."""

    def to_json(self) -> bytes:
        return dumps(self.asdict())

    @classmethod
    def from_json(cls, data: bytes | str) -> "_JsonRecord":
        return cls.from_data(loads(data))


def encode_embedding(vector) -> str:
    """A vector as base64 of its little-endian float32 bytes (the `embedding_f32` field)."""
    return base64.b64encode(np.ascontiguousarray(vector, dtype="<f4").tobytes()).decode("ascii")


def embedding_of(data: dict) -> np.ndarray:
    """The embedding of a SightingEmbedded record's JSON object, of any version this code reads: float32 (D,) of
    version 2 (bit-exact), the float64 values of a version 1 list. RecordError when absent or not numbers;
    UnsupportedRecordVersion for a version it does not know."""
    version = data.get("record_version", 1)
    if version not in EMBEDDED_RECORD_VERSIONS or isinstance(version, bool):
        raise UnsupportedRecordVersion(f"record_version {version!r} is not one this reader knows "
                                       f"({', '.join(map(str, EMBEDDED_RECORD_VERSIONS))}): upgrade it")
    if version == 1:
        try:
            vector = np.asarray(data["embedding"], dtype=np.float64)
        except KeyError:
            raise RecordError("a version 1 record needs `embedding` (a list of numbers)") from None
        except (TypeError, ValueError) as exc:
            raise RecordError(f"`embedding` is not a list of numbers: {exc}") from None
    else:
        text = data.get("embedding_f32")
        if not isinstance(text, str):
            raise RecordError("a version 2 record needs `embedding_f32` (base64 of little-endian float32)")
        try:
            raw = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(f"`embedding_f32` is not base64: {exc}") from None
        if len(raw) % 4:
            raise RecordError(f"`embedding_f32` holds {len(raw)} bytes, not a whole number of float32 values")
        vector = np.frombuffer(raw, dtype="<f4").astype(np.float32, copy=False)
    if vector.ndim != 1:
        raise RecordError(f"`embedding` must be a flat vector, got shape {vector.shape}")
    return vector


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
    """Wire form (record_version 2): `{"record_version": 2, "sighting_id", "embedding_f32": base64 float32 LE,
    "model_version", "crop_box", ...}`; in memory `embedding` is a numpy vector once read (float32 from a version 2
    record, float64 from a version 1 list; never a list of 512 Python floats, which cost more to build and to encode
    again than the record's JSON) and a numpy vector or a list of floats when built in code. `to_data()` is the JSON
    object."""

    sighting_id: str
    embedding: list[float]
    model_version: str
    crop_box: list[float] | None = None
    crop_source: str = ""  # uploader | detector | full
    metadata: dict[str, Any] | None = None
    uploaded_at: float = 0.0
    embedded_at: float = 0.0
    species_scores: dict[str, float] | None = None  # the model's species probabilities by name; None: no species head
    # base64 of the crop's SIFT keypoints (services.core.identification.local_features.LocalFeatures.to_bytes, a
    # binary form with its own format version), written only when the worker re-ranks (setting
    # rerank_local_features); absent from the JSON when None, so records without it are as before
    local_features: str | None = None

    def to_data(self) -> dict[str, Any]:
        """The JSON object of the current record version (what `to_json` writes)."""
        fields = self.asdict()
        if fields.get("local_features") is None:
            fields.pop("local_features", None)
        data = {"record_version": EMBEDDED_RECORD_VERSION, "sighting_id": fields.pop("sighting_id"),
                "embedding_f32": encode_embedding(fields.pop("embedding"))}
        data.update(fields)
        return data

    def local_features_bytes(self) -> bytes | None:
        """The bytes of `local_features` (None when absent); RecordError when it is not base64."""
        if self.local_features is None:
            return None
        if not isinstance(self.local_features, str):
            raise RecordError("`local_features` must be a base64 string")
        try:
            return base64.b64decode(self.local_features, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise RecordError(f"`local_features` is not base64: {exc}") from None

    def to_json(self) -> bytes:
        return dumps(self.to_data())

    @classmethod
    def from_data(cls, data, *args, **kwargs) -> "SightingEmbedded":
        """A record from its JSON object, version 1 or 2 (RecordError / UnsupportedRecordVersion otherwise)."""
        if not isinstance(data, dict):
            raise RecordError(f"a SightingEmbedded record is a JSON object, not {type(data).__name__}")
        embedding = embedding_of(data)
        fields = {k: v for k, v in data.items() if k not in ("record_version", "embedding_f32", "embedding")}
        try:
            return super().from_data({**fields, "embedding": embedding}, *args, **kwargs)
        except TypeError as exc:  # a required field is missing
            raise RecordError(f"not a SightingEmbedded record: {exc}") from None


SPECIES_SOURCES = ("app", "model", "none")  # Identification.species_source


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
    # local-feature re-ranking applied ({method, weight, cap, inliers: per candidate, in `candidates` order});
    # None (and absent from the JSON): not re-ranked
    rerank: dict[str, Any] | None = None

    def to_json(self) -> bytes:
        data = self.asdict()
        if data.get("rerank") is None:
            data.pop("rerank", None)
        return dumps(data)


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
