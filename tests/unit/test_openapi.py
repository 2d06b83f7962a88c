"""The gateway's OpenAPI 3.1 document: every registered route is in it, it validates, and its sighting request
schema agrees with the validator the handler uses (no server needed: the app is built, not run)."""

from __future__ import annotations

import jsonschema
import pytest
from openapi_spec_validator import validate

from services.chain.gateway.app import build_app
from services.chain.gateway.openapi import build_document, render_html
from services.chain.gateway.validation import InvalidSighting, parse_sighting_request
from services.core.settings import load_settings

MAX_BYTES = 1000


@pytest.fixture(scope="module")
def app():
    settings = load_settings(profile="local", environ={}).with_overrides(
        redis_url="redis://127.0.0.1:1/0", s3_endpoint="http://127.0.0.1:1", max_upload_bytes=MAX_BYTES)
    return build_app(settings)  # connections are lazy: nothing is reached


@pytest.fixture(scope="module")
def document(app):
    return build_document(app)


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1")
    validate(document)


def test_every_registered_route_is_documented(app, document):
    registered = {(route.method, route.resource.canonical) for route in app.router.routes()}
    assert ("GET", "/v1/sightings") in registered and ("GET", "/openapi.json") in registered
    for method, path in registered:
        documented = "GET" if method == "HEAD" else method  # aiohttp's HEAD mirrors each GET
        assert documented.lower() in document["paths"].get(path, {}), f"{method} {path} is not in /openapi.json"
    operations = [op for ops in document["paths"].values() for op in ops.values()]
    assert not [op["operationId"] for op in operations if op.get("x-undocumented")]
    assert {m.lower() for m, _ in registered} >= {m for ops in document["paths"].values() for m in ops}


def test_roles_come_from_the_handlers(document):
    paths = document["paths"]
    assert paths["/v1/sightings"]["post"]["x-roles"] == ["app"]
    assert paths["/v1/sightings"]["get"]["x-roles"] == ["app", "researcher"]
    assert paths["/v1/sightings/{sighting_id}/confirmation"]["post"]["x-roles"] == ["researcher"]
    assert paths["/v1/gallery/rollback"]["post"]["x-roles"] == ["admin"]
    assert paths["/review"]["get"]["x-roles"] == "public" and "security" not in paths["/review"]["get"]
    assert paths["/v1/review/queue"]["get"]["security"] == [{"bearer": []}]


GOOD = {"taken_at": "2026-11-20T08:30:00+00:00", "latitude": -33.9, "longitude": 18.4, "observer": "me",
        "content_type": "image/jpeg"}
BODIES = [
    GOOD,
    {**GOOD, "crop_box": [1, 2, 30, 40], "species_hint": "beluga", "size": 10},
    {**GOOD, "crop_box": None, "size": None},
    {**GOOD, "latitude": 91},
    {**GOOD, "longitude": -180.5},
    {**GOOD, "latitude": "1"},
    {**GOOD, "observer": ""},
    {**GOOD, "observer": "x" * 201},
    {**GOOD, "content_type": "image/gif"},
    {**GOOD, "size": 0},
    {**GOOD, "size": MAX_BYTES + 1},
    {**GOOD, "size": 1.5},
    {**GOOD, "crop_box": [1, 2, 3]},
    {**GOOD, "crop_box": [-1, 2, 3, 4]},
    {**GOOD, "species_hint": None},
    {**GOOD, "extra": 1},
    {k: v for k, v in GOOD.items() if k != "observer"},
]


@pytest.mark.parametrize("body", BODIES, ids=[str(n) for n in range(len(BODIES))])
def test_the_request_schema_agrees_with_the_validator(document, body):
    schema = document["components"]["schemas"]["SightingRequest"]
    try:
        parse_sighting_request(body, MAX_BYTES)
        accepted = True
    except InvalidSighting:
        accepted = False
    assert jsonschema.Draft202012Validator(schema).is_valid(body) == accepted


def test_docs_render_every_operation_offline(document):
    page = render_html(document)
    for path, ops in document["paths"].items():
        for method in ops:
            assert f"{method.upper()} {path}" in page
    assert "http://" not in page and "https://" not in page  # no external assets
