"""`GET /v1/review/queue` (role researcher): what the review page (review.py) shows, item by item.

Queue: every identified sighting without a confirmation (confirmation:<id>), most uncertain first. Uncertainty
is the margin min(|top1 - threshold|, top1 - top2) over the known candidates (the threshold is the
identification's, else the score of its `new_individual` candidate, where the matcher put it). Filters:
species (the identification's species or the uploader's species_hint), since/until (ISO dates on taken_at),
observer (case-insensitive), near=lat,lon with radius_km (great-circle distance). Each item carries a presigned
GET of its photo (gateway_photo_url_expires_s), the crop box (the uploader's, else the one the worker used) and,
per candidate, presigned GETs of its reference photos in the served gallery (references.py), newest first.

Encounters (photos an app sent with one `encounter` id) are one item: the most uncertain of its photos awaiting
review stands for it, its candidates are the encounter's pooled ones (encounters.py) and `encounter` lists every
photo awaiting review; the page records the decision for each of them.

The queue is read from the index `review:awaiting` (sorted set: sighting id -> created_at), never by a SCAN: the
gateway adds each sighting when it creates it (trimmed to the sightings' TTL), a stored decision removes it
(services.curation.operations.confirmations), and a request drops the entries it finds decided or expired. A request
costs a fixed number of Redis round trips and commands in proportion to the sightings awaiting a decision,
whatever else Redis holds. Sightings created before the index existed are added once, when a gateway first
starts with it, from the sightings' own index `sightings:index` (marker `review:awaiting:built`).
"""

from __future__ import annotations

import logging
import math
from datetime import date, datetime, timezone

from aiohttp import web

from services.chain.gateway.auth import allowed
from services.chain.gateway.context import CTX, bad_query, query_limit
from services.chain.gateway.encounters import pooled_encounter
from services.chain.gateway.index_builds import build_in_background
from services.chain.gateway.photos import photo_url
from services.chain.gateway.references import REFERENCES, attach_catalogue, reference_photos
from services.chain.sighting_records import decode_hash, read_json_value, sighting_metadata
from services.core.access.credentials import RESEARCHER
from services.core.identification import NEW_INDIVIDUAL
from services.core.keys import (
    REVIEW_AWAITING_BUILT_KEY,
    REVIEW_AWAITING_KEY,
    SIGHTINGS_INDEX_KEY,
    confirmation_key,
    embedding_key,
    identification_key,
    sighting_key,
)

EARTH_RADIUS_KM = 6371.0

log = logging.getLogger(__name__)


def margin(candidates: list[dict], threshold: float | None) -> float:
    """How far the decision is from flipping (smaller = more uncertain)."""
    known = [c for c in candidates if c.get("individual_id") != NEW_INDIVIDUAL]
    if threshold is None:
        threshold = next((c["score"] for c in candidates if c.get("individual_id") == NEW_INDIVIDUAL), None)
    if not known:
        return math.inf
    top = float(known[0]["score"])
    gaps = [top - float(known[1]["score"])] if len(known) > 1 else []
    if threshold is not None:
        gaps.append(abs(top - float(threshold)))
    return min(gaps) if gaps else math.inf


def threshold_of(identification: dict) -> float | None:
    if identification.get("threshold") is not None:
        return float(identification["threshold"])
    for cand in identification.get("candidates", []):
        if cand.get("individual_id") == NEW_INDIVIDUAL:
            return float(cand["score"])
    return None


def _day(name: str, text: str) -> date | None:
    if not text:
        return None
    try:
        return date.fromisoformat(text[:10])
    except ValueError:
        raise bad_query(f"{name} must be an ISO 8601 date (YYYY-MM-DD), got {text!r}") from None


def _near(text: str, radius: str) -> tuple[float, float, float] | None:
    if not text:
        return None
    try:
        lat, lon = (float(v) for v in text.split(","))
        km = float(radius or 50)
    except ValueError:
        lat = lon = km = math.nan
    if not (abs(lat) <= 90 and abs(lon) <= 180 and 0 < km < math.inf):
        raise bad_query(f"near must be 'lat,lon' and radius_km a positive number, got {text!r}, {radius!r}")
    return lat, lon, km


def _distance_km(lat1, lon1, lat2, lon2) -> float:
    p1, p2, dl = math.radians(lat1), math.radians(lat2), math.radians(lon2 - lon1)
    h = math.sin((p2 - p1) / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


def _taken_day(metadata: dict) -> date | None:
    try:
        return datetime.fromisoformat(metadata.get("taken_at") or "").astimezone(timezone.utc).date()
    except ValueError:
        return None


class Filters:
    def __init__(self, query):
        self.species = query.get("species", "").strip()
        self.observer = query.get("observer", "").strip().lower()
        self.since, self.until = _day("since", query.get("since", "")), _day("until", query.get("until", ""))
        self.near = _near(query.get("near", ""), query.get("radius_km", ""))

    def keep(self, identification: dict, metadata: dict) -> bool:
        species = identification.get("species") or metadata.get("species_hint") or ""
        if self.species and species != self.species:
            return False
        if self.observer and str(metadata.get("observer", "")).lower() != self.observer:
            return False
        if self.since or self.until:
            day = _taken_day(metadata)
            if day is None or (self.since and day < self.since) or (self.until and day > self.until):
                return False
        if self.near:
            lat, lon = metadata.get("latitude"), metadata.get("longitude")
            if lat is None or lon is None or _distance_km(self.near[0], self.near[1], lat, lon) > self.near[2]:
                return False
        return True


def await_review(pipe, sighting_id: str, created_at: float, ttl_s: float) -> None:
    """Queue the index write of a new sighting on `pipe` (the MULTI that creates it)."""
    pipe.zadd(REVIEW_AWAITING_KEY, {sighting_id: created_at})
    if ttl_s:
        pipe.zremrangebyscore(REVIEW_AWAITING_KEY, "-inf", f"({created_at - ttl_s}")


async def build_awaiting_index(redis) -> int:
    """Once per Redis (marker REVIEW_AWAITING_BUILT_KEY): add the undecided sightings of `sightings:index` created
    before the review index existed. Returns how many were added."""
    if not await redis.set(REVIEW_AWAITING_BUILT_KEY, "1", nx=True):
        return 0
    rows = await redis.zrange(SIGHTINGS_INDEX_KEY, 0, -1, withscores=True)
    if not rows:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for member, _score in rows:
            pipe.exists(confirmation_key(_text(member)))
        decided = await pipe.execute()
    undecided = {_text(member): score for (member, score), done in zip(rows, decided, strict=True) if not done}
    if undecided:
        await redis.zadd(REVIEW_AWAITING_KEY, undecided)
    return len(undecided)


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _awaiting(redis) -> tuple[list[str], list]:
    """The sightings awaiting a decision (from the index) and, per sighting, its (identification, sighting hash)
    as read; index entries found decided or expired (neither sighting nor identification left) are dropped."""
    ids = [_text(m) for m in await redis.zrange(REVIEW_AWAITING_KEY, 0, -1)]
    if not ids:
        return [], []
    async with redis.pipeline(transaction=False) as pipe:
        for sighting_id in ids:
            pipe.exists(confirmation_key(sighting_id))
            pipe.get(identification_key(sighting_id))
            pipe.hgetall(sighting_key(sighting_id))
        raw = await pipe.execute()
    kept, rows, stale = [], [], []
    for n, sighting_id in enumerate(ids):
        decided, identification, sighting = raw[3 * n], raw[3 * n + 1], raw[3 * n + 2]
        if decided or (identification is None and not sighting):
            stale.append(sighting_id)
        else:
            kept.append(sighting_id)
            rows.append((identification, sighting))
    if stale:
        await redis.zrem(REVIEW_AWAITING_KEY, *stale)
    return kept, rows


def _item(ctx, sighting_id: str, identification: dict, sighting: dict, embedding: dict | None) -> dict:
    metadata = sighting_metadata(sighting)
    threshold = threshold_of(identification)
    uncertainty = margin(identification.get("candidates", []), threshold)
    crop_box, crop_source = metadata.get("crop_box"), "app"
    if not crop_box and embedding:
        crop_box, crop_source = embedding.get("crop_box"), embedding.get("crop_source") or "worker"
    candidates = [{"individual_id": c["individual_id"], "score": float(c["score"]),
                   "new_individual": c["individual_id"] == NEW_INDIVIDUAL,
                   "above_threshold": threshold is not None and float(c["score"]) >= threshold
                   and c["individual_id"] != NEW_INDIVIDUAL}
                  for c in identification.get("candidates", [])]
    return {
        "sighting_id": sighting_id,
        "photo_url": photo_url(ctx, sighting["key"], sighting.get("bucket", "")) if sighting.get("key") else None,
        "photo_expires_in": int(ctx.settings.gateway_photo_url_expires_s),
        "crop_box": crop_box, "crop_source": crop_source if crop_box else None,
        "metadata": metadata,
        "species": identification.get("species") or metadata.get("species_hint") or "",
        "threshold": threshold,
        "margin": None if math.isinf(uncertainty) else uncertainty,
        "candidates": candidates,
        "gallery_version": identification.get("gallery_version", ""),
        "identified_at": identification.get("identified_at", 0.0),
    }


@allowed(RESEARCHER)
async def review_queue(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    filters = Filters(request.query)
    limit = query_limit(request.query.get("limit"), 20, int(ctx.settings.gateway_list_max_limit))
    ids, raw = await _awaiting(ctx.redis)
    ranked = []
    for sighting_id, (raw_identification, raw_sighting) in zip(ids, raw, strict=True):
        identification, sighting = read_json_value(raw_identification), decode_hash(raw_sighting or {})
        if not isinstance(identification, dict) or not identification.get("candidates"):
            continue
        if filters.keep(identification, sighting_metadata(sighting)):
            ranked.append((margin(identification["candidates"], threshold_of(identification)), sighting_id,
                           identification, sighting))
    ranked.sort(key=lambda r: (r[0], r[1]))
    ranked, encounters = _one_item_per_encounter(ranked)
    page = ranked[:limit]
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for _, sighting_id, _, _ in page:
            pipe.get(embedding_key(sighting_id))
        embeddings = await pipe.execute()
    items = []
    for (_, sighting_id, identification, sighting), raw_embedding in zip(page, embeddings, strict=True):
        embedding = read_json_value(raw_embedding) if raw_embedding else None
        group = encounters.get(sighting_id)
        if group is not None:
            identification = _pooled_identification(identification, group)
        item = _item(ctx, sighting_id, identification, sighting, embedding if isinstance(embedding, dict) else None)
        if group is not None:
            item["encounter"] = _encounter_view(ctx, group)
        items.append(item)
    shown = [c["individual_id"] for item in items for c in item["candidates"] if not c["new_individual"]]
    photos = await reference_photos(ctx, request.app[REFERENCES], shown)
    for item in items:
        for cand in item["candidates"]:
            cand["reference_photos"] = photos.get(cand["individual_id"], [])
    return web.json_response({"items": items, "total": len(ranked)})


def _encounter_of(sighting: dict) -> tuple[str, str] | None:
    encounter = str(sighting_metadata(sighting).get("encounter") or "")
    return (sighting.get("owner", ""), encounter) if encounter else None


def _one_item_per_encounter(ranked: list[tuple]) -> tuple[list[tuple], dict[str, list[tuple]]]:
    """The ranked rows with one row per encounter (its most uncertain photo, ranked first already), and
    {that row's sighting id: every row of its encounter, in rank order}."""
    keys = [_encounter_of(row[3]) for row in ranked]
    members: dict[tuple[str, str], list[tuple]] = {}
    for row, key in zip(ranked, keys, strict=True):
        if key is not None:
            members.setdefault(key, []).append(row)
    kept, groups = [], {}
    for row, key in zip(ranked, keys, strict=True):
        if key is None:
            kept.append(row)
        elif members[key][0] is row:
            kept.append(row)
            groups[row[1]] = members[key]
    return kept, groups


def _pooled_identification(identification: dict, group: list[tuple]) -> dict:
    pooled = pooled_encounter("", [row[1] for row in group], [row[2] for row in group])
    return {**identification, "candidates": pooled["candidates"], "threshold": pooled["threshold"]}


def _encounter_view(ctx, group: list[tuple]) -> dict:
    first = group[0][3]
    return {"id": str(sighting_metadata(first).get("encounter") or ""),
            "sightings": [row[1] for row in group],
            "photos": [{"sighting_id": row[1],
                        "photo_url": photo_url(ctx, row[3]["key"], row[3].get("bucket", "")) if row[3].get("key")
                        else None,
                        "crop_box": sighting_metadata(row[3]).get("crop_box")} for row in group]}


def add_routes(app: web.Application, ctx) -> None:
    attach_catalogue(app, ctx.settings)

    build_in_background(app, "review queue", lambda: build_awaiting_index(ctx.redis))
    app.router.add_get("/v1/review/queue", review_queue, name="review_queue")
