"""Merging and renaming individuals, with undo, and the "too similar individuals" list; role researcher only
(auth.py answers 401 / 403 before this module runs).

    POST /v1/individuals/{individual_id}/merge   {"into": id, "note"?}  -> 201 {"operation"}
    POST /v1/individuals/{individual_id}/rename  {"new_id": name, "note"?} -> 201 {"operation"}
    POST /v1/merges/{merge_id}/undo              -> 200 {"operation"} (undone)
    GET  /v1/merges?individual=&limit=           -> {"operations": [...], newest first}
    GET  /v1/individuals/similar?limit=          -> {"gallery_version", "threshold", "pairs": [...]}

The researcher recorded is the credential's name. Refusals: 400 bad body, 404 unknown individual or merge,
409 same individual, name taken (with where it exists), undo blocked or already done; 503 model store or Redis
unavailable. The rules and the Redis layout live in services.curation.operations.identities; this module is the HTTP shape
(the request schemas in /openapi.json come from the same table as the validation).
"""

from __future__ import annotations

import asyncio
import json
import logging

import redis as redis_lib
from aiohttp import web

from services.chain.gateway.auth import CREDENTIAL, allowed
from services.chain.gateway.context import query_limit
from services.chain.gateway.references import KNOWN, attach_catalogue
from services.core.access.credentials import RESEARCHER
from services.core.errors import ConfigError, DataError
from services.curation.operations.gallery_versions import GalleryStore, ModelStoreError
from services.curation.operations.identities import IdentityRefused, IdentityService, ServedSimilarities

log = logging.getLogger(__name__)

STATE = web.AppKey("identities_state", object)
MAX_LIST = 200


class _State:
    def __init__(self, app: web.Application, settings):
        if not settings.redis_url:
            raise ConfigError("redis_url is not set (WHALEID_REDIS_URL, or `whaleid stack up`)")
        attach_catalogue(app, settings)
        self.redis = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
        self.service = IdentityService(self.redis, app[KNOWN], log_maxlen=settings.redis_audit_maxlen)
        self.similar = ServedSimilarities(GalleryStore.from_settings(settings), self.redis)


def _error(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"error": reason, "code": code}, status=status)


async def _call(fn, *args, status: int = 200) -> web.Response:
    try:
        op = await asyncio.to_thread(fn, *args)
    except IdentityRefused as exc:
        return _error(exc.status, exc.code, str(exc))
    except (ModelStoreError, redis_lib.RedisError) as exc:
        return _error(503, "unavailable", f"cannot check the individuals now: {exc}")
    return web.json_response({"operation": op.asdict()}, status=status)


async def _body(request: web.Request):
    try:
        return await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def add_routes(app: web.Application, ctx) -> None:
    state = _State(app, ctx.settings)
    app[STATE] = state

    async def close(_app):
        state.redis.close()

    app.on_cleanup.append(close)

    @allowed(RESEARCHER)
    async def merge(request: web.Request) -> web.Response:
        return await _call(state.service.merge, request.match_info["individual_id"], await _body(request),
                           request[CREDENTIAL].name, status=201)

    @allowed(RESEARCHER)
    async def rename(request: web.Request) -> web.Response:
        return await _call(state.service.rename, request.match_info["individual_id"], await _body(request),
                           request[CREDENTIAL].name, status=201)

    @allowed(RESEARCHER)
    async def undo(request: web.Request) -> web.Response:
        return await _call(state.service.undo, request.match_info["merge_id"], request[CREDENTIAL].name)

    @allowed(RESEARCHER)
    async def merges(request: web.Request) -> web.Response:
        individual = request.query.get("individual", "").strip() or None
        ops = await asyncio.to_thread(state.service.operations, individual, query_limit(request.query.get("limit"), 50, MAX_LIST))
        return web.json_response({"operations": [op.asdict() for op in ops]})

    @allowed(RESEARCHER)
    async def similar(request: web.Request) -> web.Response:
        limit = query_limit(request.query.get("limit"), 50, MAX_LIST)
        try:
            version, threshold, pairs = await asyncio.to_thread(state.similar, MAX_LIST)
        except (ModelStoreError, DataError) as exc:
            return _error(503, "unavailable", f"cannot read the served gallery: {exc}")
        return web.json_response({"gallery_version": version, "threshold": threshold, "pairs": pairs[:limit],
                                  "total": len(pairs)})

    # before services.chain.gateway.individuals: /v1/individuals/similar must not be taken for an individual's id
    app.router.add_get("/v1/individuals/similar", similar, name="individuals_similar")
    app.router.add_post("/v1/individuals/{individual_id}/merge", merge, name="individual_merge")
    app.router.add_post("/v1/individuals/{individual_id}/rename", rename, name="individual_rename")
    app.router.add_post("/v1/merges/{merge_id}/undo", undo, name="merge_undo")
    app.router.add_get("/v1/merges", merges, name="merges")
