"""Authentication and role checks of every gateway route.

A handler declares the roles that may call it with `@allowed(APP, RESEARCHER, ...)`; a route without a
declaration is refused to everyone (deny by default). Answers, all JSON {"error", "code"}:
  401 unauthorized  no, malformed or unknown bearer token (also on unknown paths: routes are not enumerable)
  403 forbidden     a known token whose role may not call this route ("role", "allowed" say which)
PUBLIC_PATHS need no token. Handlers read the caller as `request[CREDENTIAL]`.
"""

from __future__ import annotations

from aiohttp import web

from services.core.access.credentials import Credential, CredentialTable
from services.core.metrics import UPLOADS

# the review page holds no data (its script calls the API with the researcher's token); the API reference is public
PUBLIC_PATHS = frozenset({"/healthz", "/metrics", "/openapi.json", "/docs", "/review", "/review/review.js",
                          "/review/review.css"})
CREDENTIAL = web.RequestKey("credential", Credential)
_ROLES_ATTRIBUTE = "whaleid_allowed_roles"


def allowed(*roles: str):
    """Decorator: the roles that may call this handler."""

    def mark(handler):
        setattr(handler, _ROLES_ATTRIBUTE, frozenset(roles))
        return handler

    return mark


def _unauthorized(reason: str) -> web.Response:
    UPLOADS.labels(outcome="unauthorized").inc()
    return web.json_response({"error": reason, "code": "unauthorized"}, status=401,
                             headers={"WWW-Authenticate": 'Bearer realm="whaleid"'})


def _forbidden(request: web.Request, credential: Credential, roles: frozenset[str]) -> web.Response:
    UPLOADS.labels(outcome="forbidden").inc()
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else request.path
    return web.json_response(
        {"error": f"role {credential.role!r} may not call {request.method} {route}"
                  f" (allowed: {', '.join(sorted(roles)) or 'nobody'})",
         "code": "forbidden", "role": credential.role, "allowed": sorted(roles)}, status=403)


def auth_middleware(table: CredentialTable):
    @web.middleware
    async def check_credential(request: web.Request, handler):
        if request.path in PUBLIC_PATHS:
            return await handler(request)
        header = request.headers.get("Authorization", "")
        credential = table.identify(header)
        if credential is None:
            return _unauthorized("missing bearer token" if not header else "wrong bearer token")
        request[CREDENTIAL] = credential
        if request.match_info.http_exception is not None:  # 404 / 405: let aiohttp answer
            return await handler(request)
        roles = getattr(request.match_info.handler, _ROLES_ATTRIBUTE, frozenset())
        if credential.role not in roles:
            return _forbidden(request, credential, roles)
        return await handler(request)

    return check_credential
