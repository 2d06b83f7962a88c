"""CORS for browser apps: the gateway's own answers and the matching rule of the sightings bucket.

`gateway_cors_origins` (comma-separated origins, `*` for any, empty for none) names the origins whose pages may
call the gateway. Credentials are bearer tokens sent by the app's JavaScript, never cookies, so no
`Access-Control-Allow-Credentials` is sent and `*` exposes nothing a token-less page could use.
Preflights (OPTIONS with Access-Control-Request-Method) from an allowed origin are answered 204 before
authentication (browsers send them without the Authorization header); others fall through (401 / 404).

`bucket_cors_rules(settings)`: the CORSRules for `put_bucket_cors` on settings.sightings_bucket, so that the same
origins can send the presigned PUT (Content-Type, If-None-Match) or POST form of an upload and GET photos.
"""

from __future__ import annotations

from aiohttp import web

from services.core.settings import Settings

ALLOWED_METHODS = ("GET", "POST", "OPTIONS")
ALLOWED_HEADERS = ("Authorization", "Content-Type")
MAX_AGE_S = 600
BUCKET_ALLOWED_HEADERS = ("Content-Type", "If-None-Match", "x-amz-*")


def cors_origins(settings: Settings) -> tuple[str, ...]:
    return tuple(o.strip().rstrip("/") for o in settings.gateway_cors_origins.split(",") if o.strip())


def _allowed_origin(origins: tuple[str, ...], origin: str) -> str | None:
    if not origin or not origins:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


def cors_middleware(settings: Settings):
    origins = cors_origins(settings)

    @web.middleware
    async def cors(request: web.Request, handler):
        allow = _allowed_origin(origins, request.headers.get("Origin", ""))
        if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers and allow:
            return web.Response(status=204, headers={
                "Access-Control-Allow-Origin": allow, "Vary": "Origin",
                "Access-Control-Allow-Methods": ", ".join(ALLOWED_METHODS),
                "Access-Control-Allow-Headers": ", ".join(ALLOWED_HEADERS),
                "Access-Control-Max-Age": str(MAX_AGE_S)})
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # JSON 404s raised by handlers are answers too
            response = exc
        if allow:
            response.headers["Access-Control-Allow-Origin"] = allow
            response.headers["Vary"] = "Origin"
        if isinstance(response, web.HTTPException):
            raise response
        return response

    return cors


def bucket_cors_rules(settings: Settings) -> list[dict]:
    """CORSRules of the sightings bucket for `gateway_cors_origins` ([] when none: leave the bucket without CORS).

    The stack (services/devtools/stack/s3.py) and deploy should apply them when they create the bucket:
    `client.put_bucket_cors(Bucket=settings.sightings_bucket, CORSConfiguration={"CORSRules": rules})`."""
    origins = cors_origins(settings)
    if not origins:
        return []
    return [{"AllowedOrigins": list(origins), "AllowedMethods": ["PUT", "POST", "GET"],
             "AllowedHeaders": list(BUCKET_ALLOWED_HEADERS), "ExposeHeaders": ["ETag"],
             "MaxAgeSeconds": MAX_AGE_S}]
