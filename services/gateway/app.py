"""The gateway's aiohttp application: shared middlewares + the routes of each module in ROUTE_MODULES.

A route module exposes `add_routes(app, ctx)` (ctx: services.gateway.context.GatewayContext, also reachable
in handlers as `request.app[CTX]`). Every route needs `Authorization: Bearer <gateway_token>` except
PUBLIC_PATHS. WhaleIdError subclasses raised by handlers become 400 answers with the reason.
"""

from __future__ import annotations

import hmac
import importlib
import logging

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.errors import ConfigError, DataError
from services.gateway.context import CTX, GatewayContext
from services.gateway.presign import UploadSigner
from services.metrics import STEP_LATENCY, UPLOADS, timed
from services.settings import Settings

log = logging.getLogger(__name__)

# Route groups, in order. A module listed as OPTIONAL is skipped when it does not exist (yet).
ROUTE_MODULES = ("services.gateway.sightings", "services.gateway.confirmations")
OPTIONAL_ROUTE_MODULES = frozenset({"services.gateway.confirmations"})
PUBLIC_PATHS = frozenset({"/healthz", "/metrics"})


def _json_error(status: int, message: str, **extra) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


@web.middleware
async def errors_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except DataError as exc:
        UPLOADS.labels(outcome="invalid").inc()
        return _json_error(400, str(exc), problems=getattr(exc, "problems", [str(exc)]))
    except aioredis.RedisError as exc:
        UPLOADS.labels(outcome="error").inc()
        log.warning("gateway: Redis unavailable: %s", exc)
        return _json_error(503, "the sighting store (Redis) is unavailable; retry later")


@web.middleware
async def timing_middleware(request: web.Request, handler):
    route = request.match_info.route.name or "other"
    with timed(STEP_LATENCY, stage="gateway", step=route):
        return await handler(request)


def auth_middleware(token: str):
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check_token(request: web.Request, handler):
        if request.path not in PUBLIC_PATHS:
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                UPLOADS.labels(outcome="unauthorized").inc()
                reason = "missing bearer token" if not given else "wrong bearer token"
                return web.json_response({"error": reason}, status=401,
                                         headers={"WWW-Authenticate": 'Bearer realm="whaleid"'})
        return await handler(request)

    return check_token


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[CTX].redis.ping()
    except aioredis.RedisError as exc:
        return web.json_response({"status": "unhealthy", "redis": str(exc)}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def _route_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if name in OPTIONAL_ROUTE_MODULES and exc.name == name:
            log.debug("gateway: route module %s is not installed; skipped", name)
            return None
        raise


def build_app(settings: Settings, route_modules=ROUTE_MODULES) -> web.Application:
    """The gateway application (the caller runs it); refuses to build without a token or Redis."""
    if not settings.gateway_token:
        raise ConfigError("the gateway needs a token: set WHALEID_GATEWAY_TOKEN (apps send 'Authorization: Bearer ...')")
    if not settings.redis_url:
        raise ConfigError("no Redis URL: start the stack (`whaleid stack up`) or set WHALEID_REDIS_URL")
    app = web.Application(
        middlewares=[errors_middleware, timing_middleware, auth_middleware(settings.gateway_token)],
        client_max_size=64 * 1024,  # JSON metadata only: photos go straight to S3
    )
    ctx = GatewayContext(settings=settings, redis=aioredis.Redis.from_url(settings.redis_url),
                         signer=UploadSigner(settings))
    app[CTX] = ctx
    app.router.add_get("/healthz", healthz, name="healthz")
    app.router.add_get("/metrics", metrics, name="metrics")
    for name in route_modules:
        module = _route_module(name)
        if module is not None:
            module.add_routes(app, ctx)

    async def close_redis(_app):
        await ctx.redis.aclose()

    app.on_cleanup.append(close_redis)
    return app
