"""`GET /openapi.json` (OpenAPI 3.1) and `GET /docs` (the same document as plain HTML, no external assets).

The document is generated from the running app: one operation per registered route (HEAD routes mirror their
GET), its roles read from the handler's `@allowed(...)` (auth.py), its schemas from the models the handlers
use: the sighting request from validation.request_schema (the same constants as parse_sighting_request), the
records from services.core.topics (their annotations), the confirmation actions from services.curation.operations. A route
without an entry in OPERATIONS is still listed, flagged `x-undocumented` (tests/unit/test_openapi.py refuses that).
Both routes are public, as the source is: the document holds no data and no secret.
"""

from __future__ import annotations

import html
import json
import types
import typing

from aiohttp import web

from services.chain.gateway import candidate_photos, schemas
from services.chain.gateway.auth import _ROLES_ATTRIBUTE, PUBLIC_PATHS
from services.chain.gateway.context import CTX
from services.chain.gateway.validation import request_schema
from services.core import topics

DOCUMENT = web.AppKey("openapi_document", dict)
_SIMPLE = {str: {"type": "string"}, float: {"type": "number"}, int: {"type": "integer"}, bool: {"type": "boolean"}}


def type_schema(hint) -> dict:
    """JSON Schema of a record field's annotation (str, float, int, bool, X | None, list[X], dict[...], Any)."""
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        schema = type_schema(inner[0]) if len(inner) == 1 else {"anyOf": [type_schema(a) for a in inner]}
        if "type" in schema:
            schema["type"] = [schema["type"], "null"]
            return schema
        return {"anyOf": [schema, {"type": "null"}]}
    if origin is list:
        return {"type": "array", "items": type_schema(args[0]) if args else {}}
    if origin is dict:
        return {"type": "object"}
    return {}


def record_schema(cls) -> dict:
    """JSON Schema of a services.core.topics record: its annotated fields (required: those without a default)."""
    hints = {k: v for k, v in typing.get_type_hints(cls).items()
             if not k.startswith("_") and typing.get_origin(v) is not typing.ClassVar}
    defaults = cls._options.defaults
    return {"type": "object", "properties": {name: type_schema(hint) for name, hint in hints.items()},
            "required": [name for name in hints if name not in defaults]}


def components(settings) -> dict:
    found = {"SightingRequest": request_schema(settings.max_upload_bytes, settings.upload_size_required),
             "SightingMetadata": record_schema(topics.SightingMetadata),
             "Identification": record_schema(topics.Identification),
             "Confirmation": record_schema(topics.Confirmation)}
    found.update(schemas.SCHEMAS)
    found.update(candidate_photos.SCHEMAS)  # answers carry a reference photo per candidate
    found["Identification"]["properties"]["candidates"]["items"] = _ref("IdentificationCandidate")
    return found


def _operation(method: str, path: str, handler, name: str) -> dict:
    doc = schemas.OPERATIONS.get(name)
    roles = sorted(getattr(handler, _ROLES_ATTRIBUTE, frozenset()))
    public = path in PUBLIC_PATHS
    op: dict = {"operationId": name, "summary": doc["summary"] if doc else f"{method} {path}"}
    if doc is None:
        op["x-undocumented"] = True
    if doc and doc.get("description"):
        op["description"] = doc["description"]
    op["x-roles"] = "public" if public else roles
    if not public:
        op["security"] = [{"bearer": []}]
    params = [{"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
              for p in _path_params(path)]
    params += [{"name": n, "in": "query", "required": False, "description": d, "schema": {"type": "string"}}
               for n, d in (doc or {}).get("query", {}).items()]
    if params:
        op["parameters"] = params
    if doc and doc.get("request"):
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _ref(doc["request"])}}}
    responses = {}
    for status, (description, schema) in (doc or {}).get("responses", {"200": ("OK", None)}).items():
        answer: dict = {"description": description}
        if schema:
            kind, ref = schema if isinstance(schema, tuple) else ("application/json", schema)
            plain = {"type": "object"} if kind == "application/json" else {"type": "string"}
            answer["content"] = {kind: {"schema": _ref(ref) if ref else plain}}
        responses[status] = answer
    if not public:
        responses.setdefault("401", {"description": "missing or unknown bearer token", "content": _error_content()})
        responses.setdefault("403", {"description": "this role may not call the route", "content": _error_content()})
    op["responses"] = responses
    return op


def _error_content() -> dict:
    return {"application/json": {"schema": _ref("Error")}}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _path_params(path: str) -> list[str]:
    return [part[1:-1] for part in path.split("/") if part.startswith("{") and part.endswith("}")]


def build_document(app: web.Application) -> dict:
    settings = app[CTX].settings
    paths: dict[str, dict] = {}
    for route in app.router.routes():
        if route.method == "HEAD" or route.resource is None:
            continue
        path = route.resource.canonical
        paths.setdefault(path, {})[route.method.lower()] = _operation(route.method, path, route.handler,
                                                                      route.name or path)
    return {
        "openapi": "3.1.0",
        "info": {"title": "whaleid gateway", "version": "1",
                 "description": "Sightings in, identifications out, researchers' confirmations. Every route but "
                                "the public ones needs `Authorization: Bearer <token>` of a role named in "
                                "`x-roles` (app, researcher, admin). HEAD mirrors every GET."},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": components(settings),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def document(app: web.Application) -> dict:
    if DOCUMENT not in app:
        app[DOCUMENT] = build_document(app)
    return app[DOCUMENT]


async def openapi_json(request: web.Request) -> web.Response:
    return web.json_response(document(request.app))


def render_html(doc: dict) -> str:
    e = html.escape
    out = ["<!doctype html><html lang='en'><head><meta charset='utf-8'><title>whaleid gateway API</title></head>",
           f"<body><h1>{e(doc['info']['title'])} API</h1><p>{e(doc['info']['description'])}</p>",
           "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p><ul>"]
    for path, ops in doc["paths"].items():
        for method in ops:
            out.append(f"<li><a href='#{e(ops[method]['operationId'])}'>{method.upper()} {e(path)}</a></li>")
    out.append("</ul>")
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            roles = op["x-roles"] if isinstance(op["x-roles"], str) else ", ".join(op["x-roles"]) or "nobody"
            out.append(f"<section id='{e(op['operationId'])}'><h2>{method.upper()} {e(path)}</h2>"
                       f"<p>{e(op['summary'])}</p><p>Roles: {e(roles)}</p>")
            if op.get("description"):
                out.append(f"<p>{e(op['description'])}</p>")
            for param in op.get("parameters", []):
                out.append(f"<p><code>{e(param['name'])}</code> ({param['in']}) {e(param.get('description', ''))}</p>")
            if "requestBody" in op:
                out.append("<h3>Request body</h3>" + _schema_block(op["requestBody"], doc))
            for status, answer in op["responses"].items():
                out.append(f"<h3>{e(status)}: {e(answer['description'])}</h3>")
                if "content" in answer and status.startswith("2"):
                    out.append(_schema_block(answer, doc))
            out.append("</section>")
    out.append("</body></html>")
    return "".join(out)


def _schema_block(holder: dict, doc: dict) -> str:
    kind, content = next(iter(holder["content"].items()))
    schema = content["schema"]
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return f"<p>{html.escape(kind)}</p><pre>{html.escape(json.dumps(schema, indent=1))}</pre>"


async def docs(request: web.Request) -> web.Response:
    return web.Response(text=render_html(document(request.app)), content_type="text/html", headers={
        "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'", "X-Content-Type-Options": "nosniff"})


def add_routes(app: web.Application, ctx) -> None:
    app.router.add_get("/openapi.json", openapi_json, name="openapi")
    app.router.add_get("/docs", docs, name="docs")
