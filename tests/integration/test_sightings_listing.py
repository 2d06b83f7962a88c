"""`GET /v1/sightings` (cursor pagination, filters, roles, GPS visibility), CORS and the bucket CORS rule, against
a real gateway process on the session stack; answers are checked against the gateway's own /openapi.json."""

from __future__ import annotations

import contextlib
import json
import time
import uuid

import jsonschema
import pytest
import requests

from services.core import keys
from services.core.access.cors import bucket_cors_rules
from support.front import (
    OTHER_APP_TOKEN,
    RESEARCHER_TOKEN,
    TOKEN,
    aws,
    bearer,
    create_sighting,
    front_settings,
    redis_of,
    start_gateway,
)

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def listing(stack, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("listing")
    settings = front_settings(stack).with_overrides(gateway_cors_origins=ORIGIN)
    exits = {}
    with contextlib.ExitStack() as cleanup:
        gateway, url = start_gateway(settings, run_dir, gateway_cors_origins=ORIGIN)
        cleanup.callback(lambda: exits.setdefault("gateway", gateway.stop()))
        yield settings, url
    assert exits == {"gateway": 0}, gateway.log_text()


def _get(url, token, **params):
    return requests.get(f"{url}/v1/sightings", params=params, headers=bearer(token), timeout=10)


def _conforms(url: str, schema_name: str, answer: dict) -> None:
    document = requests.get(f"{url}/openapi.json", timeout=10).json()
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": document["components"]}
    jsonschema.Draft202012Validator(schema).validate(answer)


def _all_pages(url, token, **params) -> list[dict]:
    items, cursor, pages = [], None, 0
    while True:
        answer = _get(url, token, **params, **({"cursor": cursor} if cursor else {}))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        items += body["items"]
        cursor, pages = body["next_cursor"], pages + 1
        if cursor is None:
            return items
        assert pages < 20


def test_pages_list_own_sightings_newest_first_without_gps(listing):
    settings, url = listing
    observer = f"obs-{uuid.uuid4().hex[:8]}"
    mine = [create_sighting(url, observer=observer)["sighting_id"] for _ in range(5)]
    theirs = [create_sighting(url, token=OTHER_APP_TOKEN, observer=observer)["sighting_id"] for _ in range(2)]

    first = _get(url, TOKEN, observer=observer, limit=2).json()
    _conforms(url, "SightingPage", first)
    assert len(first["items"]) == 2 and first["next_cursor"]
    items = _all_pages(url, TOKEN, observer=observer, limit=2)
    assert [i["sighting_id"] for i in items] == mine[::-1]  # newest first, each once
    assert all("latitude" not in i["metadata"] and i["owner"] == "app" for i in items)
    assert {i["status"] for i in items} == {"pending"}

    everything = _all_pages(url, RESEARCHER_TOKEN, observer=observer, limit=3)
    assert {i["sighting_id"] for i in everything} == set(mine) | set(theirs) and len(everything) == 7
    assert all(i["metadata"]["latitude"] == -33.9 for i in everything)


def test_status_and_since_filters(listing):
    settings, url = listing
    observer = f"obs-{uuid.uuid4().hex[:8]}"
    old = create_sighting(url, observer=observer)["sighting_id"]
    time.sleep(0.05)
    cut = time.time()
    done = create_sighting(url, observer=observer)["sighting_id"]
    redis_of(settings).set(keys.identification_key(done), json.dumps({
        "sighting_id": done, "candidates": [{"individual_id": "ind-0", "score": 0.9}], "new_individual": False,
        "model_version": "m", "gallery_version": "g"}))
    identified = _all_pages(url, RESEARCHER_TOKEN, observer=observer, status="identified")
    assert [i["sighting_id"] for i in identified] == [done]
    _conforms(url, "Sighting", identified[0])
    assert [i["sighting_id"] for i in _all_pages(url, TOKEN, observer=observer, status="pending")] == [old]
    assert [i["sighting_id"] for i in _all_pages(url, TOKEN, observer=observer, since=str(cut))] == [done]
    iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(cut - 3600))
    assert len(_all_pages(url, TOKEN, observer=observer, since=iso)) == 2


@pytest.mark.parametrize("params", [{"limit": "0"}, {"limit": "100000"}, {"status": "lost"}, {"since": "yesterday"},
                                    {"cursor": "not-a-cursor"}, {"since": "nan"},
                                    {"cursor": "WyJOYU4iLCAieCJd"}])
def test_bad_parameters_are_400(listing, params):
    _, url = listing
    answer = _get(url, TOKEN, **params)
    assert answer.status_code == 400 and answer.json()["error"]


def test_expired_sightings_leave_the_index(listing):
    settings, url = listing
    observer = f"obs-{uuid.uuid4().hex[:8]}"
    gone = create_sighting(url, observer=observer)["sighting_id"]
    kept = create_sighting(url, observer=observer)["sighting_id"]
    redis_of(settings).delete(keys.sighting_key(gone))  # as its TTL would
    assert [i["sighting_id"] for i in _all_pages(url, TOKEN, observer=observer)] == [kept]
    assert redis_of(settings).zscore(keys.SIGHTINGS_INDEX_KEY, gone) is None


def test_cors_preflight_and_headers_for_allowed_origins_only(listing):
    _, url = listing
    preflight = requests.options(f"{url}/v1/sightings", timeout=5, headers={
        "Origin": ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    answer = requests.get(f"{url}/v1/sightings", headers={"Origin": ORIGIN, **bearer(TOKEN)}, timeout=5)
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Access-Control-Allow-Credentials" not in answer.headers
    for status, path, token in ((404, "/v1/sightings/no-such-sighting", TOKEN), (401, "/v1/sightings", "wrong")):
        refused = requests.get(f"{url}{path}", headers={"Origin": ORIGIN, **bearer(token)}, timeout=5)
        assert refused.status_code == status and refused.headers["Access-Control-Allow-Origin"] == ORIGIN
    denied = requests.get(f"{url}/v1/sightings", headers={"Origin": "https://evil.example", **bearer(TOKEN)},
                          timeout=5)
    assert "Access-Control-Allow-Origin" not in denied.headers
    evil_preflight = requests.options(f"{url}/v1/sightings", timeout=5, headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert evil_preflight.status_code == 401 and "Access-Control-Allow-Origin" not in evil_preflight.headers


def test_bucket_cors_rules_apply_to_a_bucket(listing):
    settings, _ = listing
    assert bucket_cors_rules(settings.with_overrides(gateway_cors_origins="")) == []
    rules = bucket_cors_rules(settings)
    assert rules[0]["AllowedOrigins"] == [ORIGIN] and "PUT" in rules[0]["AllowedMethods"]
    s3 = aws(settings, "s3")
    bucket = f"cors-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": rules})
    stored = s3.get_bucket_cors(Bucket=bucket)["CORSRules"][0]
    assert stored["AllowedOrigins"] == [ORIGIN] and "If-None-Match" in stored["AllowedHeaders"]
