"""`GET /v1/individuals?q=` (search by id) and `GET /v1/individuals/{individual_id}` (one individual's photos and
sightings on a timeline), role researcher; both read-only.

Ids: those of the served gallery version, the new individuals confirmed since (confirmations:new-ids) and the
names given by renames, each as the live id it stands for (merges and renames: services.curation.operations.identities).
An id merged or renamed away resolves to its survivor: its page is the survivor's (`requested_id` says which was
asked, `merged_from` lists the ids that resolve to it).
An individual's sightings are the `confirm`/`new` decisions naming it or one of those ids, read from the
per-individual indexes `confirmations:individual:<id>` (written with each decision; built once from
confirmations:index when a gateway first starts with them, marker `confirmations:individual:built`), so a page
costs in proportion to that individual's decisions, not to the catalogue's, oldest photo first,
each with its metadata (GPS included: researchers only) and a presigned photo GET while `sighting:<id>` exists;
its gallery photos are the served version's `sighting/<id>` rows (references.py).
"""

from __future__ import annotations

import asyncio

from aiohttp import web

from services.chain.gateway.auth import allowed
from services.chain.gateway.context import CTX, not_found
from services.chain.gateway.index_builds import build_in_background
from services.chain.gateway.photos import photo_url
from services.chain.gateway.references import KNOWN, REFERENCES, attach_catalogue, reference_photos
from services.chain.sighting_records import decode_hash, sighting_metadata
from services.core import keys
from services.core.access.credentials import RESEARCHER
from services.core.keys import sighting_key
from services.curation.operations.gallery_versions import ModelStoreError
from services.curation.operations.identities import aliases_of, live_ids, resolve_in

MAX_INDIVIDUALS = 50
MAX_GALLERY_PHOTOS = 12


async def _known(request: web.Request) -> tuple[set[str], str | None, set[str], dict[str, str]]:
    """(live ids, served version, the served gallery's own ids, the alias map)."""
    ctx = request.app[CTX]
    try:
        known = await asyncio.to_thread(request.app[KNOWN])
        ids, version = set(known.ids), known.version
    except ModelStoreError:
        ids, version = set(), None
    aliases = decode_hash(await ctx.redis.hgetall(keys.IDENTITY_ALIASES_KEY))
    others = {m.decode() for m in await ctx.redis.smembers(keys.CONFIRMATIONS_NEW_IDS_KEY)}
    others |= {m.decode() for m in await ctx.redis.smembers(keys.IDENTITY_NAMES_KEY)}
    return live_ids(ids | others, aliases), version, ids, aliases


@allowed(RESEARCHER)
async def search_individuals(request: web.Request) -> web.Response:
    q = request.query.get("q", "").strip().lower()
    ids, version, _, _ = await _known(request)
    found = sorted(i for i in ids if q in i.lower())
    return web.json_response({"individuals": found[:MAX_INDIVIDUALS], "total": len(found),
                              "gallery_version": version})


async def build_individual_indexes(redis) -> int:
    """Once per Redis (marker confirmations:individual:built): index the confirm/new decisions recorded before the
    per-individual indexes existed. Returns how many were indexed."""
    if not await redis.set(keys.INDIVIDUAL_CONFIRMATIONS_BUILT_KEY, "1", nx=True):
        return 0
    members = [m.decode() for m in await redis.zrange(keys.CONFIRMATIONS_INDEX_KEY, 0, -1)]
    if not members:
        return 0
    async with redis.pipeline(transaction=False) as pipe:
        for sighting_id in members:
            pipe.hgetall(keys.confirmation_key(sighting_id))
        raw = await pipe.execute()
    count = 0
    async with redis.pipeline(transaction=False) as pipe:
        for sighting_id, fields in zip(members, raw, strict=True):
            decision = decode_hash(fields or {})
            if decision.get("action") in ("confirm", "new") and decision.get("individual_id"):
                pipe.zadd(keys.individual_confirmations_key(decision["individual_id"]),
                          {sighting_id: float(decision.get("confirmed_at") or 0)})
                count += 1
        await pipe.execute()
    return count


async def _decisions(redis, individual_ids: set[str]) -> list[tuple[str, dict[str, str]]]:
    async with redis.pipeline(transaction=False) as pipe:
        for individual_id in sorted(individual_ids):
            pipe.zrange(keys.individual_confirmations_key(individual_id), 0, -1)
        indexed = await pipe.execute()
    members = sorted({m.decode() for found in indexed for m in found})
    if not members:
        return []
    async with redis.pipeline(transaction=False) as pipe:
        for sighting_id in members:
            pipe.hgetall(keys.confirmation_key(sighting_id))
        raw = await pipe.execute()
    decisions = [(sid, decode_hash(fields or {})) for sid, fields in zip(members, raw, strict=True)]
    return [(sid, d) for sid, d in decisions
            if d.get("individual_id") in individual_ids and d.get("action") in ("confirm", "new")]


@allowed(RESEARCHER)
async def get_individual(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    requested = request.match_info["individual_id"]
    ids, version, gallery_ids, aliases = await _known(request)
    individual_id = resolve_in(aliases, requested)
    merged_from = aliases_of(aliases, individual_id)
    decisions = await _decisions(ctx.redis, {individual_id, *merged_from})
    if individual_id not in ids and not decisions:
        raise not_found(f"unknown individual {requested!r}")
    async with ctx.redis.pipeline(transaction=False) as pipe:
        for sighting_id, _ in decisions:
            pipe.hgetall(sighting_key(sighting_id))
        records = await pipe.execute()
    sightings = []
    for (sighting_id, decision), raw in zip(decisions, records, strict=True):
        record = decode_hash(raw or {})
        sightings.append({
            "sighting_id": sighting_id, "action": decision["action"], "researcher": decision.get("researcher", ""),
            "recorded_as": decision.get("individual_id", ""),
            "confirmed_at": float(decision.get("confirmed_at") or 0), "metadata": sighting_metadata(record),
            "photo_url": photo_url(ctx, record["key"], record.get("bucket", "")) if record.get("key") else None})
    sightings.sort(key=lambda s: (s["metadata"].get("taken_at") or "", s["confirmed_at"]))
    # the served version may still label rows with a merged id (until `whaleid reindex`): theirs are shown too
    labels = [individual_id, *merged_from]
    photos = await reference_photos(ctx, request.app[REFERENCES], labels, MAX_GALLERY_PHOTOS)
    gallery_photos = [url for label in labels for url in photos.get(label, [])][:MAX_GALLERY_PHOTOS]
    return web.json_response({"individual_id": individual_id, "requested_id": requested,
                              "merged_from": merged_from, "in_gallery": bool(set(labels) & gallery_ids),
                              "gallery_version": version, "gallery_photos": gallery_photos,
                              "sightings": sightings})


def add_routes(app: web.Application, ctx) -> None:
    attach_catalogue(app, ctx.settings)

    build_in_background(app, "individual pages", lambda: build_individual_indexes(ctx.redis))
    app.router.add_get("/v1/individuals", search_individuals, name="individuals")
    app.router.add_get("/v1/individuals/{individual_id}", get_individual, name="individual")
