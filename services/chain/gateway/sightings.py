"""Routes `POST /v1/sightings` (role app: create a sighting, get its one upload; per-app quotas and the encounter
size limit in quotas.py: 429 with Retry-After, 409 encounter_full) and `GET /v1/sightings/{id}`
(role app: its own sightings, without GPS; role researcher: every sighting). See visibility.py and presign.py."""

from __future__ import annotations

import json
import time

from aiohttp import web

from services.chain.gateway.auth import CREDENTIAL, allowed
from services.chain.gateway.candidate_photos import attach_candidate_photos, with_reference_photos
from services.chain.gateway.context import CTX, not_found
from services.chain.gateway.encounters import encounter_of, remember_member
from services.chain.gateway.listing import index_sighting, sighting_view
from services.chain.gateway.quotas import admit
from services.chain.gateway.review_queue import await_review
from services.chain.gateway.validation import InvalidSighting, parse_sighting_request
from services.chain.sighting_records import decode_hash, new_sighting_id, open_sighting, read_json_value
from services.core.access.credentials import APP, RESEARCHER
from services.core.access.visibility import may_read
from services.core.keys import failure_key, identification_key, sighting_key, upload_key
from services.core.metrics import UPLOADS


@allowed(APP)
async def create_sighting(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):  # RecursionError: hostile nesting depth
        raise InvalidSighting(["the body is not valid JSON"]) from None
    sighting = parse_sighting_request(body, ctx.settings.max_upload_bytes,
                                      size_required=ctx.settings.upload_size_required)
    refusal = await admit(ctx.redis, ctx.settings, request[CREDENTIAL].name, sighting.metadata.encounter)
    if refusal is not None:  # per-app quota (429 + Retry-After) or a full encounter (409): nothing created
        UPLOADS.labels(outcome=refusal.code).inc()
        return refusal.response()
    sighting_id = new_sighting_id()
    key = upload_key(sighting_id, sighting.content_type)
    offer = ctx.signer.offer(key, sighting.content_type, sighting.size)
    record = {
        "metadata": json.dumps(sighting.metadata.asdict()),
        "content_type": sighting.content_type,
        "bucket": ctx.settings.sightings_bucket,
        "key": key,
        "declared_size": "" if sighting.size is None else sighting.size,
        "owner": request[CREDENTIAL].name,
        "upload_method": offer.method,
        "created_at": time.time(),
    }
    ttl_s = ctx.settings.redis_sighting_ttl_s
    async with ctx.redis.pipeline(transaction=True) as pipe:
        pipe.hset(sighting_key(sighting_id), mapping=record)
        if ttl_s:
            pipe.expire(sighting_key(sighting_id), int(ttl_s))
        index_sighting(pipe, sighting_id, record["owner"], record["created_at"], ttl_s)  # GET /v1/sightings
        await_review(pipe, sighting_id, record["created_at"], ttl_s)  # the review queue's index
        open_sighting(pipe, sighting_id, record["created_at"])  # the reconciler's index
        if sighting.metadata.encounter:
            remember_member(pipe, record["owner"], sighting.metadata.encounter, sighting_id, ttl_s)
        await pipe.execute()
    UPLOADS.labels(outcome="created").inc()
    return web.json_response(
        {"sighting_id": sighting_id, **offer.asdict(), "key": key, "expires_in": ctx.signer.expires_s},
        status=201,
    )


@allowed(APP, RESEARCHER)
async def get_sighting(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    credential = request[CREDENTIAL]
    sighting_id = request.match_info["sighting_id"]
    async with ctx.redis.pipeline(transaction=False) as pipe:
        pipe.hgetall(sighting_key(sighting_id))
        pipe.get(identification_key(sighting_id))
        pipe.get(failure_key(sighting_id))
        raw_sighting, raw_identification, raw_failure = await pipe.execute()
    sighting = decode_hash(raw_sighting or {})
    if not sighting or not may_read(credential, sighting):
        raise not_found(f"unknown sighting {sighting_id!r}")
    identification, = await with_reference_photos(request, credential, [read_json_value(raw_identification)])
    answer = sighting_view(credential, sighting_id, sighting, identification, read_json_value(raw_failure))
    encounter = answer["metadata"].get("encounter")
    if encounter:
        answer["encounter"] = await encounter_of(ctx.redis, sighting.get("owner", ""), encounter)
    return web.json_response(answer)


def add_routes(app: web.Application, ctx) -> None:
    app.router.add_post("/v1/sightings", create_sighting, name="create_sighting")
    app.router.add_get("/v1/sightings/{sighting_id}", get_sighting, name="get_sighting")
    attach_candidate_photos(app, ctx.settings)  # a reference photo per candidate (candidate_photos.py)
