"""What every route module of the gateway shares: settings, the async Redis client, the upload signer."""

from __future__ import annotations

import json
from dataclasses import dataclass

from aiohttp import web

from services.chain.gateway.presign import UploadSigner
from services.core.settings import Settings


@dataclass
class GatewayContext:
    settings: Settings
    redis: object  # redis.asyncio.Redis
    signer: UploadSigner


CTX = web.AppKey("gateway_ctx", GatewayContext)


def not_found(message: str) -> web.HTTPNotFound:
    """A 404 with a JSON body {"error": message}, as every gateway error."""
    return web.HTTPNotFound(text=json.dumps({"error": message}), content_type="application/json")


def bad_query(problem: str) -> web.HTTPBadRequest:
    """A 400 for a bad query parameter, {"error", "problems"} like an invalid body (not counted as an upload)."""
    return web.HTTPBadRequest(text=json.dumps({"error": f"invalid query: {problem}", "problems": [problem]}),
                              content_type="application/json")


def query_limit(text: str | None, default: int, maximum: int) -> int:
    """The `limit` query parameter of a listing: `default` when absent, else an integer from 1 to `maximum`
    (bad_query otherwise)."""
    try:
        limit = int(text) if text else default
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise bad_query(f"limit must be an integer from 1 to {maximum}, got {text!r}")
    return limit
