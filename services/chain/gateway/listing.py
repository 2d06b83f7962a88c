"""`GET /v1/sightings?observer=&status=&since=&cursor=&limit=`: sightings newest first, cursor-paginated.

Apps see the sightings they created (without GPS), researchers every sighting (visibility.py). The order comes
from two sorted sets written with each `sighting:<id>` hash (sightings.py), scored by created_at:

    sightings:index           every sighting
    sightings:owner:<name>    the sightings of one app

Entries older than redis_sighting_ttl_s are trimmed at each write (the hashes expire then), and entries whose
hash is gone are dropped when met. Sightings created before the index existed are not listed.

`since`: ISO 8601 date-time (or epoch seconds) on created_at. `cursor`: opaque (the last entry scanned); a page
may hold fewer than `limit` items while `next_cursor` is set, because at most SCAN_FACTOR x limit entries are
read per request; `next_cursor` is null when the listing is exhausted.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from datetime import datetime, timezone

from aiohttp import web

from services.chain.gateway.auth import CREDENTIAL, allowed
from services.chain.gateway.candidate_photos import with_reference_photos
from services.chain.gateway.context import CTX, bad_query, query_limit
from services.chain.sighting_records import decode_hash, read_json_value, sighting_metadata, sighting_status
from services.core.access.credentials import APP, RESEARCHER, Credential
from services.core.access.visibility import may_read, visible_metadata
from services.core.keys import (
    SIGHTINGS_INDEX_KEY,
    failure_key,
    identification_key,
    owner_sightings_key,
    sighting_key,
)

STATUSES = ("pending", "identified", "failed")
DEFAULT_LIMIT = 50
SCAN_FACTOR = 10


def index_sighting(pipe, sighting_id: str, owner: str, created_at: float, ttl_s: float) -> None:
    """Queue the index writes of a new sighting on `pipe` (the MULTI that writes its hash)."""
    for key in (SIGHTINGS_INDEX_KEY, owner_sightings_key(owner)):
        pipe.zadd(key, {sighting_id: created_at})
        if ttl_s:
            pipe.zremrangebyscore(key, "-inf", f"({created_at - ttl_s}")


def _since(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if math.isfinite(value):
            return value
        raise bad_query(f"since must be finite, got {text!r}")
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise bad_query(f"since must be an ISO 8601 date-time or epoch seconds, got {text!r}") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def encode_cursor(score: float, member: str) -> str:
    return base64.urlsafe_b64encode(json.dumps([score, member]).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> tuple[float, str]:
    try:
        score, member = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if math.isfinite(float(score)) and isinstance(member, str):
            return float(score), member
    except (binascii.Error, ValueError, TypeError, UnicodeDecodeError):
        pass
    raise bad_query(f"cursor {text[:40]!r} is not a cursor of this listing")


def sighting_view(credential: Credential, sighting_id: str, sighting: dict, identification, failure) -> dict:
    """One sighting as GET /v1/sightings/{id} and the listing answer it."""
    answer = {
        "sighting_id": sighting_id,
        "status": sighting_status(identification, failure),
        "metadata": visible_metadata(credential, sighting_metadata(sighting)),
        "key": sighting.get("key", ""),
        "owner": sighting.get("owner", ""),
        "created_at": float(sighting.get("created_at") or 0),
        "uploaded_at": float(sighting["uploaded_at"]) if sighting.get("uploaded_at") else None,
    }
    if identification is not None:
        answer["identification"] = identification
    if failure is not None:
        answer["failure"] = failure
    return answer


@allowed(APP, RESEARCHER)
async def list_sightings(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    credential = request[CREDENTIAL]
    query = request.query
    limit = query_limit(query.get("limit"), DEFAULT_LIMIT, int(ctx.settings.gateway_list_max_limit))
    status, observer = query.get("status", ""), query.get("observer", "")
    if status and status not in STATUSES:
        raise bad_query(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
    low = _since(query["since"]) if query.get("since") else "-inf"
    cursor = decode_cursor(query["cursor"]) if query.get("cursor") else None
    key = owner_sightings_key(credential.name) if credential.role == APP else SIGHTINGS_INDEX_KEY
    items, expired, scanned, last, exhausted = [], [], 0, cursor, False
    batch = max(limit * 2, 50)
    while len(items) < limit and scanned < SCAN_FACTOR * limit:
        # no offsets: each batch starts at the last entry seen, so inserts and removals meanwhile shift nothing
        entries = await ctx.redis.zrevrangebyscore(key, last[0] if last else "+inf", low, start=0, num=batch,
                                                   withscores=True)
        fresh = [(m.decode(), s) for m, s in entries if not (last and s == last[0] and m.decode() >= last[1])]
        if not fresh:
            if len(entries) < batch:
                exhausted = True
                break
            batch *= 2  # a full batch of ties with `last`: widen it
            continue
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for sighting_id, _ in fresh:
                pipe.hgetall(sighting_key(sighting_id))
                pipe.get(identification_key(sighting_id))
                pipe.get(failure_key(sighting_id))
            raw = await pipe.execute()
        for n, (sighting_id, score) in enumerate(fresh):
            scanned += 1
            last = (score, sighting_id)
            sighting = decode_hash(raw[3 * n] or {})
            if not sighting:
                expired.append(sighting_id)
                continue
            if not may_read(credential, sighting):
                continue
            view = sighting_view(credential, sighting_id, sighting, read_json_value(raw[3 * n + 1]),
                                 read_json_value(raw[3 * n + 2]))
            if (status and view["status"] != status) or (observer and view["metadata"].get("observer") != observer):
                continue
            items.append(view)
            if len(items) == limit:
                break
        else:
            exhausted = len(entries) < batch
            if exhausted:
                break
    if expired:  # hashes gone (TTL): drop their entries (an owner's index is also trimmed at its next write)
        async with ctx.redis.pipeline(transaction=False) as pipe:
            for index in {key, SIGHTINGS_INDEX_KEY}:
                pipe.zrem(index, *expired)
            await pipe.execute()
    next_cursor = None if exhausted or last is None else encode_cursor(*last)
    annotated = await with_reference_photos(request, credential, [i.get("identification") for i in items])
    for item, identification in zip(items, annotated, strict=True):
        if identification is not None:
            item["identification"] = identification
    return web.json_response({"items": items, "next_cursor": next_cursor})


def add_routes(app: web.Application, ctx) -> None:
    app.router.add_get("/v1/sightings", list_sightings, name="list_sightings")
