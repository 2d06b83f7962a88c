"""The review page: `GET /review` (+ its script and style), plain HTML and vanilla JavaScript, no build step.

Sign-in: the page itself holds no data and needs no credential. The researcher pastes their researcher token
into the page's sign-in form, or opens `/review#token=<token>` (a URL fragment never reaches a server, a log or a
Referer); the script keeps it in sessionStorage (this tab only, gone when it closes), removes it from the address
bar, and sends it as `Authorization: Bearer` on its fetch calls to the researcher API (`/v1/review/queue`,
`/v1/individuals`, `/v1/sightings/{id}/confirmation`, the merge / rename / undo / similar routes of
identities.py), exactly as any app would. No cookie is ever set, so no request can be forged cross-site (CSRF),
and the page is served with a strict Content-Security-Policy (scripts
and styles from this origin only, images from this origin and the S3 endpoint of the presigned photo GETs,
no framing) and renders every value with textContent, never as HTML.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from services.core.settings import Settings

STATIC = Path(__file__).with_name("static")
PAGE_PATHS = {"/review": ("review.html", "text/html"), "/review/review.js": ("review.js", "text/javascript"),
              "/review/review.css": ("review.css", "text/css")}


def _photo_origin(settings: Settings) -> str:
    if settings.s3_endpoint:
        parts = urlsplit(settings.s3_endpoint)
        return f"{parts.scheme}://{parts.netloc}"
    return "https://*.amazonaws.com"


def security_headers(settings: Settings) -> dict[str, str]:
    csp = ("default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
           f"img-src 'self' {_photo_origin(settings)}; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {"Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
            "X-Frame-Options": "DENY", "Cache-Control": "no-cache"}


def add_routes(app: web.Application, ctx) -> None:
    headers = security_headers(ctx.settings)
    for path, (name, content_type) in PAGE_PATHS.items():
        body = (STATIC / name).read_bytes()

        async def serve(_request: web.Request, body=body, content_type=content_type) -> web.Response:
            return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)

        app.router.add_get(path, serve, name="review_page" if path == "/review" else "review_" + name.split(".")[1])
