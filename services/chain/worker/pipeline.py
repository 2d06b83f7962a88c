"""What the worker does to one uploaded sighting, without Kafka: fetch, validate, crop, encode; then embed a batch.

Every function here is synchronous (Pillow, tritonclient); the Faust agent runs them in threads, after fetching
the objects on its event loop (`prepare_fetched`; `prepare` fetches with the synchronous `ObjectReader.fetch`).

What goes to Triton (`PreparedSighting.payload(formats)`; the served models decode it with `decode_image`):
- no box (crop source `full`) and a plain upload (`Decoded.plain`: one-frame 8-bit RGB JPEG or PNG, no EXIF
  rotation, no transparency): the uploaded bytes themselves, which any decoder (the ensemble's `decode_image`,
  a model's own Pillow `open().convert("RGB")`) turns into exactly the pixels the worker validated: no
  re-encoding, nothing lost;
- anything else (a crop; a 16-bit, grey, CMYK, palette, animated, MPO, WebP or EXIF-rotated upload, which the
  worker's decode normalises): the validated pixels, losslessly, as binary PPM (`encode_ppm`: raw RGB, written
  and read at memory speed) when the served build says it reads PPM (its ensemble parameter `image_formats`,
  services.core.imaging.TRANSFER_FORMATS), else as PNG (`encode_png`, for builds made before). Side by side on an
  800x600 crop here: PNG 40 ms to write and 15 ms to read back, PPM under 1 ms each. Not JPEG: even at quality
  95 (4:4:4) the embeddings of the same crop moved to a mean cosine of 0.88 with the demo's trained lite0
  (quality 100: 0.99), and its leave-one-out MAP@5 fell from 0.755 to 0.724.

Each upload is opened once (services.core.imaging.OpenedImage: the header, the decode and the plain-upload
check share one Pillow open). Memory (`prepare`): a sighting's decode waits for room in the worker's decode budget (`worker_decode_budget_mb`,
the cost estimated from the image header: services.chain.worker.decode_budget), so a batch of small files of many
pixels is decoded a few at a time instead of all at once; a large JPEG is decoded at 1/2, 1/4 or 1/8 of its size
when its box (or the whole photo, with no detector loaded) keeps MODEL_PIXELS_MIN_SIDE pixels a side; and only
the crop's pixels, reduced to what the model needs, are held until the batch's Triton call. Measured here: 16
40 MP 16-bit PNGs and a 40 MP CMYK JPEG prepared at once peak at 366 MB of RSS with the default budget (3.0 GB
without one); a 40 MP 16-bit PNG alone decodes at 214 MB (760 MB before its 64-bit copies were removed).
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from PIL import Image

from services.chain.failures import PermanentFailure
from services.chain.worker.cropping import Crop, CropStep, crop_sighting
from services.chain.worker.decode_budget import DecodeBudget, decode_cost, shared_budget
from services.chain.worker.storage import ObjectReader
from services.core import topics
from services.core.errors import DataError
from services.core.imaging import (
    Header,
    ImageRejected,
    OpenedImage,
    encode_png,
    encode_ppm,
    validate_box,
)
from services.core.metrics import STEP_LATENCY, timed
from services.core.settings import Settings

STAGE = "worker"
# pixels the worker keeps on each side of what the model sees (the uploader's box, or the whole photo): the
# served models resize to at most 384 (lite4 380) and the detector to 1024, so 1024 leaves a margin of 2.7 over
# the largest embedding input. A JPEG whose region has 2x, 4x or 8x this on both sides is decoded at 1/2, 1/4
# or 1/8 of its size (libjpeg's DCT scaling, Image.draft); pixels kept for Triton that are 2x this or more on
# both sides are reduced (an integer box filter) before they are held for the batch's Triton call.
MODEL_PIXELS_MIN_SIDE = 1024
REDUCE_BAND_PIXELS = 1 << 20  # pixels reduced at a time by `_held`


@dataclass
class PreparedSighting:
    event: topics.SightingUploaded
    crop: Crop
    original: bytes | None = None  # the upload itself when Triton may decode it as it is (no box, plain upload)

    def payload(self, formats: frozenset[str] | tuple[str, ...] = ()) -> bytes:
        """The bytes Triton decodes: the upload itself, else the crop's pixels as PPM when `formats` (what the
        served build reads) has it, else as PNG."""
        if self.original is not None:
            return self.original
        return encode_ppm(self.crop.pixels) if "PPM" in formats else encode_png(self.crop.pixels)

    @property
    def image(self) -> bytes:  # for a build that reads only upload formats (PNG for anything re-encoded)
        return self.payload()


def parse_event(raw: bytes) -> topics.SightingUploaded:
    try:
        event = topics.SightingUploaded.from_json(raw)
    except Exception as exc:  # noqa: BLE001 - any decoding problem makes the event unusable
        raise PermanentFailure("malformed_event", f"not a SightingUploaded record: {exc}") from None
    if not event.sighting_id or not event.bucket or not event.key:
        raise PermanentFailure("malformed_event", "sighting_id, bucket and key are required")
    return event


def draft_reduction(region: tuple[float, float], min_side: int = MODEL_PIXELS_MIN_SIDE) -> int:
    """The largest of 8, 4, 2 by which a region of (width, height) keeps at least `min_side` pixels on both
    sides; 1 when none does."""
    width, height = region
    return next((f for f in (8, 4, 2) if width / f >= min_side and height / f >= min_side), 1)


def _reduction(header: Header | None, metadata: dict, crop_steps: list[CropStep]) -> int:
    """How much the worker may reduce a sighting's JPEG when decoding it: enough pixels must stay for the
    uploader's box (in the uploaded image's upright coordinates), else for the whole photo; none (1) when a
    detector that is ready may look for the box (its box is unknown before decoding; a step without `ready`
    counts as ready), or the header or box is unusable."""
    if header is None:
        return 1
    box = (metadata or {}).get("crop_box")
    if box is None:
        if any(getattr(step, "source", "") != "uploader" and getattr(step, "ready", lambda: True)()
               for step in crop_steps):
            return 1
        return draft_reduction(header.size)
    try:
        x0, y0, x1, y1 = validate_box(box, *header.size)
    except Exception:  # noqa: BLE001 - an unusable box is refused after decoding (bad_box), as before
        return 1
    return draft_reduction((x1 - x0, y1 - y0))


def _held(pixels: np.ndarray, view: bool, min_side: int = MODEL_PIXELS_MIN_SIDE) -> np.ndarray:
    """The pixels to keep for the Triton call: an own copy of a crop (`view`: not a view that keeps the whole
    photo alive), reduced by an integer box filter when it has 2x `min_side` or more on both sides."""
    height, width = pixels.shape[:2]
    factor = min(width // min_side, height // min_side)
    if factor < 2:
        return pixels.copy() if view else pixels
    # Image.reduce a band of rows at a time (bands start on multiples of `factor`: the same blocks, the same
    # pixels as one call), so no full-size 4-byte Pillow copy of the photo is made
    rows = factor * max(1, REDUCE_BAND_PIXELS // (width * factor * factor))
    return np.concatenate([np.asarray(Image.fromarray(np.ascontiguousarray(pixels[top:top + rows])).reduce(factor),
                                      dtype=np.uint8) for top in range(0, height, rows)])


def prepare(event: topics.SightingUploaded, objects: ObjectReader, settings: Settings,
            crop_steps: list[CropStep], budget: DecodeBudget | None = None) -> PreparedSighting:
    """Fetch (`objects.fetch`), validate and crop one sighting; PermanentFailure / TransientFailure on problems.

    Memory: the decode waits for room in the worker's decode budget (`worker_decode_budget_mb`, its cost
    estimated from the header: services.chain.worker.decode_budget; `budget` overrides the process's shared one), a
    large JPEG is decoded at the reduced size its box (or the whole photo) needs (`_reduction`; the box, in
    the uploaded image's coordinates, is mapped onto the reduced pixels and recorded as given), and only the
    crop's pixels (`_held`) outlive the decode."""
    check_bucket(event, settings)
    with timed(STEP_LATENCY, stage=STAGE, step="fetch"):
        data = objects.fetch(event.bucket, event.key, settings.max_upload_bytes)
    return prepare_fetched(event, data, settings, crop_steps, budget)


def check_bucket(event: topics.SightingUploaded, settings: Settings) -> None:
    """PermanentFailure (`wrong_bucket`) for an event of another bucket than the sightings bucket (not fetched)."""
    if event.bucket != settings.sightings_bucket:
        raise PermanentFailure("wrong_bucket", f"{event.bucket!r} is not the sightings bucket")


def prepare_fetched(event: topics.SightingUploaded, data: bytes, settings: Settings, crop_steps: list[CropStep],
                    budget: DecodeBudget | None = None) -> PreparedSighting:
    """`prepare` of an object already fetched (`data`; the worker fetches on its event loop: ObjectReader.fetch_async)."""
    with OpenedImage(data) as opened:  # one Pillow open for the header and the decode
        header = opened.header
        reduce = _reduction(header, event.metadata, crop_steps)
        budget = budget if budget is not None else shared_budget(settings.worker_decode_budget_mb)
        cost = decode_cost(header, reduce, settings.max_image_pixels)
        with budget.hold(cost) if budget is not None else nullcontext():
            with timed(STEP_LATENCY, stage=STAGE, step="validate"):
                try:
                    decoded = opened.decode(reduce, max_pixels=settings.max_image_pixels)
                except ImageRejected as exc:
                    raise PermanentFailure(exc.reason, exc.detail) from None
            image = decoded.pixels
            with timed(STEP_LATENCY, stage=STAGE, step="crop"):
                metadata = event.metadata
                box = (metadata or {}).get("crop_box")
                scaled = decoded.scale != 1 and box is not None
                try:
                    if scaled:  # the uploader's box onto the reduced pixels; the record keeps it as given
                        given = [float(v) for v in validate_box(box, *decoded.size)]
                        metadata = {**metadata, "crop_box": decoded.to_pixels(given)}
                    crop = crop_sighting(image, metadata, crop_steps)
                except DataError as exc:
                    raise PermanentFailure("bad_box", str(exc)) from None
                if scaled and crop.box is not None and crop.source == "uploader":
                    crop = Crop(crop.pixels, given, crop.source)
                elif decoded.scale != 1 and crop.box is not None:  # a detector that became ready meanwhile
                    crop = Crop(crop.pixels, decoded.to_original(crop.box), crop.source)
                plain = crop.box is None and crop.pixels is image and decoded.plain
                crop = Crop(_held(crop.pixels, crop.pixels is not image), crop.box, crop.source)
            del image, decoded
    # the whole photo as uploaded (every decoder turns it into these very pixels), else the pixels (encoded at
    # embed time, in the format the served build reads)
    return PreparedSighting(event, crop, data if plain else None)


def species_scores(names, probabilities) -> dict[str, float] | None:
    """One crop's SPECIES row (EmbeddingClient.embed_with_species) as {name: probability}; None without one."""
    if probabilities is None or not names:
        return None
    return {str(n): round(float(p), 6) for n, p in zip(names, probabilities, strict=True)}


def local_features(prepared: PreparedSighting) -> str | None:
    """base64 of the SIFT keypoints (services.core.keypoints, LocalFeatures.to_bytes) of the crop the worker
    embeds: the record's `local_features` when re-ranking is on (setting rerank_local_features). None when the
    extraction fails: the sighting is then ranked by its embedding alone, never lost for it."""
    import base64
    import logging

    from services.core.keypoints import extract

    try:
        return base64.b64encode(extract(prepared.crop.pixels).to_bytes()).decode("ascii")
    except Exception as exc:  # noqa: BLE001 - an optional enhancement: never fail the sighting for it
        logging.getLogger(__name__).warning("sighting %s: no local features (%s)", prepared.event.sighting_id, exc)
        return None


def embedded_record(prepared: PreparedSighting, embedding, model_version: str,
                    species: dict[str, float] | None = None, features: str | None = None) -> topics.SightingEmbedded:
    """The sightings.embedded record; `species`: the model's species probabilities (`species_scores`);
    `features`: `local_features` (re-ranking on)."""
    event = prepared.event
    return topics.SightingEmbedded(
        sighting_id=event.sighting_id,
        embedding=np.asarray(embedding, dtype=np.float32),  # Triton's float32 values (record version 2), no list
        model_version=model_version,
        crop_box=prepared.crop.box,
        crop_source=prepared.crop.source,
        metadata=event.metadata,
        uploaded_at=event.uploaded_at or time.time(),
        embedded_at=topics.now(),
        species_scores=species,
        local_features=features,
    )
