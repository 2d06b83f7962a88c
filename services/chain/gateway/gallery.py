"""Gallery operations for the admin role: `GET /v1/gallery` (the `current` pointer and every complete version)
and `POST /v1/gallery/rollback` (move the pointer back one step; matchers hot-swap on their next poll).

200 {"current": pointer or null, "versions": [...]} / {"current": pointer}; 409 {"code": "model_store"} when the
store refuses (nothing published, nothing to roll back to, store unreachable), with its reason.
"""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from services.chain.gateway.auth import CREDENTIAL, allowed
from services.core.access.credentials import ADMIN
from services.curation.operations.gallery_versions import GalleryStore, ModelStoreError

log = logging.getLogger(__name__)
STORE = web.AppKey("gallery_store", GalleryStore)


def _refused(exc: ModelStoreError) -> web.Response:
    return web.json_response({"error": str(exc), "code": "model_store"}, status=409)


@allowed(ADMIN)
async def get_gallery(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        pointer = await asyncio.to_thread(store.pointer)
        versions = await asyncio.to_thread(store.list_versions)
    except ModelStoreError as exc:
        return _refused(exc)
    return web.json_response({"current": pointer.__dict__ if pointer else None, "versions": versions})


@allowed(ADMIN)
async def rollback_gallery(request: web.Request) -> web.Response:
    admin = request[CREDENTIAL].name
    try:
        pointer = await asyncio.to_thread(request.app[STORE].rollback, f"admin {admin}")
    except ModelStoreError as exc:
        return _refused(exc)
    log.warning("gallery rolled back to %s by admin %s", pointer.version, admin)
    return web.json_response({"current": pointer.__dict__})


def add_routes(app: web.Application, ctx) -> None:
    app[STORE] = GalleryStore.from_settings(ctx.settings)
    app.router.add_get("/v1/gallery", get_gallery, name="gallery")
    app.router.add_post("/v1/gallery/rollback", rollback_gallery, name="gallery_rollback")
