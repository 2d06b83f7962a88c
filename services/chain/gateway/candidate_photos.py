"""One reference photo per candidate of an identification, for apps to show next to the result
(`GET /v1/sightings/{id}` and `GET /v1/sightings`): a short-lived presigned GET, never a proxied file.

Each known candidate of the answer (not `new_individual`) gets `reference_photo`: `{"url", "expires_in",
"source", "key"}` or null when none can be shown. The photo is, in this order:

  1. `gallery_match`: the gallery image the matcher recorded for the candidate (`image` of the candidate, when
     it names a catalogue photo `catalogue/photos/...` or a confirmed sighting `sighting/<id>`);
  2. `catalogue`: the individual's first catalogue photo (`whaleid catalogue import`: the first imported, ties
     by photo id), in `models_bucket`;
  3. `confirmed_sighting`: a confirmed sighting of the individual in the served gallery (newest first,
     services/chain/gateway/references.py, the review page's reference photos), for individuals that exist only
     through confirmations.

Sighting photos follow the sighting's visibility (visibility.may_read): an app is only shown sightings it
uploaded itself. The stored identification is not changed; the URLs are signed locally (gateway_photo_url_expires_s)
for each answer. The catalogue's manifest is re-read when its ETag changes, at most every `refresh_s`.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from aiohttp import web

from services.chain.gateway.photos import photo_url
from services.chain.gateway.references import REFERENCES, SIGHTING_IMAGE_PREFIX, attach_catalogue
from services.chain.sighting_records import decode_hash
from services.core.access.visibility import may_read
from services.core.errors import WhaleIdError
from services.core.identification import NEW_INDIVIDUAL
from services.core.keys import sighting_key

log = logging.getLogger(__name__)
SOURCES = ("gallery_match", "catalogue", "confirmed_sighting")
SIGHTINGS_PER_INDIVIDUAL = 3


class CatalogueFirstPhotos:
    """Callable -> {individual_id: S3 key of its first catalogue photo} (services.curation.catalogue.photo_bucket)."""

    def __init__(self, catalogue, refresh_s: float = 60.0):
        self.catalogue, self.refresh_s = catalogue, refresh_s
        self._lock = threading.Lock()
        self._etag: str | None = None
        self._first: dict[str, str] = {}
        self._checked = -float("inf")

    @property
    def bucket(self) -> str:
        return self.catalogue.bucket

    @property
    def photo_prefix(self) -> str:
        return f"{self.catalogue.prefix}/photos/"

    def __call__(self) -> dict[str, str]:
        with self._lock:
            if time.monotonic() - self._checked >= self.refresh_s:
                self._refresh()
            return self._first

    def _refresh(self) -> None:
        self._checked = time.monotonic()
        try:
            head = self.catalogue._call("head records", self.catalogue.client.head_object,
                                        Key=self.catalogue.records_key)
        except FileNotFoundError:
            self._first, self._etag = {}, None
            return
        if head.get("ETag") == self._etag:
            return
        first: dict[str, tuple] = {}
        for record in self.catalogue.records().values():
            rank = (float(record.get("imported_at") or 0.0), record["photo_id"])
            held = first.get(record["individual_id"])
            if held is None or rank < held[0]:
                first[record["individual_id"]] = (rank, record["key"])
        self._first = {ind: key for ind, (_, key) in first.items()}
        self._etag = head.get("ETag")


CATALOGUE_PHOTOS = web.AppKey("candidate_catalogue_photos", CatalogueFirstPhotos)

# OpenAPI components (openapi.components): the candidates of an answered Identification
SCHEMAS = {
    "ReferencePhoto": {
        "type": "object", "required": ["url", "expires_in", "source", "key"],
        "description": "a photo of the candidate the app may show: a presigned GET valid expires_in seconds",
        "properties": {"url": {"type": "string"}, "expires_in": {"type": "integer"},
                       "source": {"type": "string", "enum": list(SOURCES),
                                  "description": "gallery_match: the gallery image the matcher matched; catalogue: "
                                                 "the individual's first catalogue photo; confirmed_sighting: a "
                                                 "confirmed sighting of it (only the caller's own for apps)"},
                       "key": {"type": "string", "description": "the photo's S3 key"}}},
    "IdentificationCandidate": {
        "type": "object", "required": ["individual_id", "score"],
        "properties": {"individual_id": {"type": "string"}, "score": {"type": "number"},
                       "image": {"type": "string", "description": "the gallery image this candidate matched best "
                                                                  "(a catalogue photo key, sighting/<id>, or a "
                                                                  "training image name); absent for new_individual"},
                       "reference_photo": {"anyOf": [{"$ref": "#/components/schemas/ReferencePhoto"},
                                                     {"type": "null"}],
                                           "description": "null for new_individual or when no photo can be shown"}}},
}


def attach_candidate_photos(app: web.Application, settings) -> None:
    """app[REFERENCES] (references.attach_catalogue) and app[CATALOGUE_PHOTOS], made once per app."""
    from services.curation.catalogue.photo_bucket import CatalogueStore

    attach_catalogue(app, settings)
    if CATALOGUE_PHOTOS not in app:
        app[CATALOGUE_PHOTOS] = CatalogueFirstPhotos(CatalogueStore.from_settings(settings))


async def _read(source, what: str):
    try:
        return await asyncio.to_thread(source)
    except WhaleIdError as exc:  # the model store or the catalogue unreachable: the answer goes out without photos
        log.warning("reference photos: %s unavailable: %s", what, exc)
        return {}


def _options(candidate: dict, catalogue: CatalogueFirstPhotos, first: dict[str, str],
             confirmed: dict[str, list[str]]) -> list[tuple[str, str, str]]:
    """(source, kind, value) in order of preference; kind "key" (catalogue object) or "sighting" (an id)."""
    individual = str(candidate.get("individual_id", ""))
    found = []
    image = str(candidate.get("image") or "")
    if image.startswith(SIGHTING_IMAGE_PREFIX):
        found.append(("gallery_match", "sighting", image[len(SIGHTING_IMAGE_PREFIX):]))
    elif image.startswith(catalogue.photo_prefix):
        found.append(("gallery_match", "key", image))
    if individual in first:
        found.append(("catalogue", "key", first[individual]))
    found += [("confirmed_sighting", "sighting", s) for s in confirmed.get(individual, [])[:SIGHTINGS_PER_INDIVIDUAL]]
    return found


async def with_reference_photos(request: web.Request, credential, identifications: list[Any]) -> list[Any]:
    """Copies of the identifications whose known candidates carry `reference_photo` (module docstring);
    anything that is not an identification with candidates is returned as it is."""
    from services.chain.gateway.context import CTX

    app, ctx = request.app, request.app[CTX]
    wanted = [i for i in identifications if isinstance(i, dict) and isinstance(i.get("candidates"), list)]
    if not wanted or CATALOGUE_PHOTOS not in app:
        return identifications
    catalogue = app[CATALOGUE_PHOTOS]
    first = await _read(catalogue, "catalogue")
    confirmed = await _read(app[REFERENCES], "served gallery")
    plans = {}
    for identification in wanted:
        for candidate in identification["candidates"]:
            if isinstance(candidate, dict) and candidate.get("individual_id") not in (None, NEW_INDIVIDUAL):
                plans[id(candidate)] = _options(candidate, catalogue, first, confirmed)
    sighting_ids = sorted({value for options in plans.values() for _, kind, value in options if kind == "sighting"})
    sightings: dict[str, dict] = {}
    if sighting_ids:
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for sighting_id in sighting_ids:
                pipe.hgetall(sighting_key(sighting_id))
            for sighting_id, raw in zip(sighting_ids, await pipe.execute(), strict=True):
                sightings[sighting_id] = decode_hash(raw or {})
    expires = int(ctx.settings.gateway_photo_url_expires_s)

    def choose(options) -> dict | None:
        for source, kind, value in options:
            if kind == "key":
                return {"url": photo_url(ctx, value, catalogue.bucket), "expires_in": expires, "source": source,
                        "key": value}
            sighting = sightings.get(value) or {}
            if sighting.get("key") and may_read(credential, sighting):
                return {"url": photo_url(ctx, sighting["key"], sighting.get("bucket", "")), "expires_in": expires,
                        "source": source, "key": sighting["key"]}
        return None

    out, annotated = [], {id(i) for i in wanted}
    for identification in identifications:
        if id(identification) not in annotated:
            out.append(identification)
            continue
        candidates = []
        for candidate in identification["candidates"]:
            if isinstance(candidate, dict):
                candidate = {**candidate, "reference_photo": choose(plans[id(candidate)])
                             if id(candidate) in plans else None}
            candidates.append(candidate)
        out.append({**identification, "candidates": candidates})
    return out
