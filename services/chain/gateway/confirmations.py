"""`POST /v1/sightings/{id}/confirmation` and `GET /v1/sightings/{id}/confirmation`: role researcher only
(auth.py answers 401 / 403 before this module runs).

Body: {"action": "confirm" | "new" | "reject", "individual_id": "...", "researcher"?: "..."}. The researcher
recorded is the credential's name; a body `researcher` that differs is refused (403 researcher_mismatch).
201: stored and announced on the `confirmations` topic; 200: the same decision was already stored (it is
announced again if an earlier announcement failed); 400 invalid body or id (services.core.ids: at most 128 printable characters); 404 unknown sighting; 409 refused (unknown
individual, conflicting earlier decision, no stored embedding); 503 model store or Kafka unavailable (a stored
but unannounced confirmation is announced when the request is repeated).
The rules live in services.curation.operations.confirmations; this module is only the HTTP shape.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

import redis as redis_lib
from aiohttp import web

from services.chain.gateway.auth import CREDENTIAL, allowed
from services.core.access.credentials import RESEARCHER
from services.core.errors import ConfigError
from services.core.ids import id_problem
from services.core.topics import CONFIRMATIONS
from services.curation.operations.confirmations import (
    ConfirmationRefused,
    ConfirmationService,
    stored_confirmation,
)
from services.curation.operations.gallery_versions import GalleryStore, ModelStoreError
from services.curation.operations.known import CurrentGalleryIndividuals

log = logging.getLogger(__name__)

ROUTE = "/v1/sightings/{sighting_id}/confirmation"
PRODUCE_TIMEOUT_S = 10.0
POINTER_POLL_S = 30.0
STATE = web.AppKey("confirmations_state", object)
WATCHER = web.AppKey("confirmations_pointer_watcher", asyncio.Task)


class _State:
    """The route's connections, made once per app; the Kafka producer is opened on first use."""

    def __init__(self, settings):
        if not settings.redis_url:
            raise ConfigError("redis_url is not set (WHALEID_REDIS_URL, or `whaleid stack up`)")
        self.settings = settings
        self.redis = redis_lib.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
        self.service = ConfirmationService(self.redis, CurrentGalleryIndividuals(GalleryStore.from_settings(settings)),
                                           audit_maxlen=settings.redis_audit_maxlen,
                                           sighting_audit_maxlen=settings.redis_sighting_audit_maxlen)
        self._producer = None
        self._lock = threading.Lock()

    def announce(self, confirmation) -> None:
        from services.chain.kafka_producers import acks_all_producer

        with self._lock:
            if self._producer is None:
                self._producer = acks_all_producer(self.settings, "whaleid-gateway")
            self._producer.send(CONFIRMATIONS, key=confirmation.sighting_id.encode(),
                                value=confirmation.to_json()).get(timeout=PRODUCE_TIMEOUT_S)
        self.service.mark_published(confirmation.sighting_id)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
        self.redis.close()


def _error(status: int, code: str, reason: str) -> web.Response:
    return web.json_response({"error": reason, "code": code}, status=status)


def add_routes(app: web.Application, ctx) -> None:
    state = _State(ctx.settings)
    app[STATE] = state

    async def watch_pointer(_app):
        """Keep the known individuals and REINDEX_LAST_SUCCESS fresh without waiting for a confirmation."""
        while True:
            try:
                await asyncio.to_thread(state.service.known)
            except Exception as exc:  # noqa: BLE001 - model store down or empty: log, keep serving, retry
                log.warning("confirmations: cannot read the gallery pointer: %s", exc)
            await asyncio.sleep(POINTER_POLL_S)

    async def start(_app):
        app[WATCHER] = asyncio.get_running_loop().create_task(watch_pointer(_app))

    async def close(_app):
        if WATCHER in app:
            app[WATCHER].cancel()
        state.close()

    app.on_startup.append(start)
    app.on_cleanup.append(close)

    @allowed(RESEARCHER)
    async def post_confirmation(request: web.Request) -> web.Response:
        sighting_id = request.match_info["sighting_id"]
        try:
            body = await request.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            return _error(400, "invalid", "the body must be JSON")
        try:
            conf, created = await asyncio.to_thread(state.service.submit, sighting_id, body,
                                                    researcher=request[CREDENTIAL].name)
        except ConfirmationRefused as exc:
            return _error(exc.status, exc.code, str(exc))
        except (ModelStoreError, redis_lib.RedisError) as exc:
            return _error(503, "unavailable", f"cannot check the confirmation now: {exc}")
        if created or not await asyncio.to_thread(state.service.is_published, sighting_id):
            try:
                await asyncio.to_thread(state.announce, conf)
            except Exception as exc:  # noqa: BLE001 - any Kafka failure: stored, announced on a repeat
                log.error("confirmation %s stored but not announced: %s", sighting_id, exc)
                return _error(503, "not_announced", f"the confirmation is stored but could not be announced on "
                              f"the {CONFIRMATIONS} topic ({exc}); repeat the same request")
        return web.json_response({"confirmation": conf.asdict(), "created": created}, status=201 if created else 200)

    @allowed(RESEARCHER)
    async def get_confirmation(request: web.Request) -> web.Response:
        sighting_id = request.match_info["sighting_id"]
        if problem := id_problem(sighting_id, "the sighting id"):
            return _error(400, "invalid_id", problem)
        conf = await asyncio.to_thread(stored_confirmation, state.redis, sighting_id)
        if conf is None:
            return _error(404, "not_found", f"sighting {sighting_id!r} has no confirmation")
        return web.json_response({"confirmation": conf.asdict()})

    app.router.add_post(ROUTE, post_confirmation, name="confirmation")
    app.router.add_get(ROUTE, get_confirmation, name="confirmation_get")
