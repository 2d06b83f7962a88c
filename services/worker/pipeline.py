"""What the worker does to one uploaded sighting, without Kafka: fetch, validate, crop, encode; then embed a batch.

Every function here is synchronous (boto3, Pillow, tritonclient); the Faust agent runs them in threads.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services import topics
from services.errors import DataError
from services.imaging import ImageRejected, decode_image, encode_png
from services.metrics import STEP_LATENCY, timed
from services.settings import Settings
from services.worker.cropping import Crop, CropStep, crop_sighting
from services.worker.failures import PermanentFailure
from services.worker.storage import fetch_object

STAGE = "worker"


@dataclass
class PreparedSighting:
    event: topics.SightingUploaded
    crop: Crop
    png: bytes  # the crop, losslessly encoded for the Triton ensemble


def parse_event(raw: bytes) -> topics.SightingUploaded:
    try:
        event = topics.SightingUploaded.from_json(raw)
    except Exception as exc:  # noqa: BLE001 - any decoding problem makes the event unusable
        raise PermanentFailure("malformed_event", f"not a SightingUploaded record: {exc}") from None
    if not event.sighting_id or not event.bucket or not event.key:
        raise PermanentFailure("malformed_event", "sighting_id, bucket and key are required")
    return event


def prepare(event: topics.SightingUploaded, s3, settings: Settings, crop_steps: list[CropStep]) -> PreparedSighting:
    """Fetch, validate and crop one sighting; PermanentFailure / TransientFailure on problems."""
    if event.bucket != settings.sightings_bucket:
        raise PermanentFailure("wrong_bucket", f"{event.bucket!r} is not the sightings bucket")
    with timed(STEP_LATENCY, stage=STAGE, step="fetch"):
        data = fetch_object(s3, event.bucket, event.key, settings.max_upload_bytes)
    with timed(STEP_LATENCY, stage=STAGE, step="validate"):
        try:
            image = decode_image(data, max_pixels=settings.max_image_pixels)
        except ImageRejected as exc:
            raise PermanentFailure(exc.reason, exc.detail) from None
    with timed(STEP_LATENCY, stage=STAGE, step="crop"):
        try:
            crop = crop_sighting(image, event.metadata, crop_steps)
        except DataError as exc:
            raise PermanentFailure("bad_box", str(exc)) from None
        png = encode_png(crop.pixels)
    return PreparedSighting(event, crop, png)


def species_scores(names, probabilities) -> dict[str, float] | None:
    """One crop's SPECIES row (EmbeddingClient.embed_with_species) as {name: probability}; None without one."""
    if probabilities is None or not names:
        return None
    return {str(n): round(float(p), 6) for n, p in zip(names, probabilities, strict=True)}


def embedded_record(prepared: PreparedSighting, embedding, model_version: str,
                    species: dict[str, float] | None = None) -> topics.SightingEmbedded:
    """The sightings.embedded record; `species`: the model's species probabilities (`species_scores`)."""
    event = prepared.event
    return topics.SightingEmbedded(
        sighting_id=event.sighting_id,
        embedding=[float(v) for v in embedding],
        model_version=model_version,
        crop_box=prepared.crop.box,
        crop_source=prepared.crop.source,
        metadata=event.metadata,
        uploaded_at=event.uploaded_at or time.time(),
        embedded_at=topics.now(),
        species_scores=species,
    )
