"""The gateway's aiohttp application: shared middlewares + the routes of each module in ROUTE_MODULES.

A route module exposes `add_routes(app, ctx)` (ctx: services.chain.gateway.context.GatewayContext, also reachable
in handlers as `request.app[CTX]`). Every route but auth.PUBLIC_PATHS needs `Authorization: Bearer <token>` of a
credential (credentials.py) whose role the handler allows (auth.py: 401 / 403). With the production profile the
app refuses to build when a token is unsafe (token_policy.py). DataErrors raised by handlers become 400 answers.
"""

from __future__ import annotations

import importlib
import logging

import redis.asyncio as aioredis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from services.chain.gateway.auth import auth_middleware
from services.chain.gateway.context import CTX, GatewayContext
from services.chain.gateway.presign import UploadSigner
from services.core.access.cors import cors_middleware
from services.core.access.credentials import CredentialTable, configured_tokens
from services.core.access.token_policy import refuse_default_tokens_beyond_loopback, refuse_unsafe_tokens
from services.core.errors import ConfigError, DataError
from services.core.metrics import STEP_LATENCY, UPLOADS, timed
from services.core.settings import Settings

log = logging.getLogger(__name__)

# Route groups, in order.
ROUTE_MODULES = ("services.chain.gateway.sightings", "services.chain.gateway.listing", "services.chain.gateway.confirmations",
                 "services.chain.gateway.gallery", "services.chain.gateway.review_queue", "services.chain.gateway.identities",
                 "services.chain.gateway.individuals",
                 "services.chain.gateway.review", "services.chain.gateway.openapi")  # openapi last: it documents them all


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


async def healthz(request: web.Request) -> web.Response:
    try:
        await request.app[CTX].redis.ping()
    except aioredis.RedisError as exc:
        return web.json_response({"status": "unhealthy", "redis": str(exc)}, status=503)
    return web.json_response({"status": "ok"})


async def metrics(_request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


REDIS_HEALTH_CHECK_S = 5  # a pooled connection idle this long is checked (PING) before it is used


def gateway_redis(url: str) -> aioredis.Redis:
    """The gateway's Redis client: a pooled connection that Redis closed while it sat idle (a Redis restart) is
    found by a PING before use and replaced, and a connection error is retried twice, so the first requests after a
    restart are not answered 503 for a stale connection."""
    from redis.asyncio.retry import Retry
    from redis.backoff import ExponentialBackoff
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    return aioredis.Redis.from_url(url, health_check_interval=REDIS_HEALTH_CHECK_S,
                                   retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
                                   retry_on_error=[RedisConnectionError, RedisTimeoutError])


def build_app(settings: Settings, route_modules=ROUTE_MODULES) -> web.Application:
    """The gateway application (the caller runs it); refuses to build without safe tokens or Redis."""
    tokens = configured_tokens(settings)
    refuse_unsafe_tokens(settings, tokens)
    refuse_default_tokens_beyond_loopback(settings, tokens, settings.gateway_host)
    credentials = CredentialTable(tokens)
    if not settings.redis_url:
        raise ConfigError("no Redis URL: start the stack (`whaleid stack up`) or set WHALEID_REDIS_URL")
    app = web.Application(
        middlewares=[cors_middleware(settings), errors_middleware, timing_middleware, auth_middleware(credentials)],
        client_max_size=64 * 1024,  # JSON metadata only: photos go straight to S3
    )
    ctx = GatewayContext(settings=settings, redis=gateway_redis(settings.redis_url), signer=UploadSigner(settings))
    app[CTX] = ctx
    app.router.add_get("/healthz", healthz, name="healthz")
    if not settings.gateway_metrics_port:  # else /metrics is served on its own address (service.run_gateway)
        app.router.add_get("/metrics", metrics, name="metrics")
    for name in route_modules:
        importlib.import_module(name).add_routes(app, ctx)

    async def close_redis(_app):
        await ctx.redis.aclose()

    app.on_cleanup.append(close_redis)
    return app
