"""Roles at the gateway, through its real HTTP API (`python -m services.chain.gateway` against the session's Redis, S3 and
Kafka): app / researcher / admin credentials, 401 for unknown tokens, 403 for the wrong role, apps confined to
their own sightings without GPS, the researcher taken from the credential, admin gallery operations; and the
production profile refusing unsafe tokens at start."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import uuid

import pytest
import requests
import yaml

from services.chain.gateway.app import build_app
from services.core.errors import ConfigError
from services.core.settings import load_settings
from services.curation.operations.confirmations import audit_trail, stored_confirmation
from services.curation.operations.gallery_versions import GalleryStore
from support.front import (
    ADMIN_TOKEN,
    JPEG_BYTES,
    OTHER_APP_TOKEN,
    REPO,
    RESEARCHER_TOKEN,
    TOKEN,
    bearer,
    create_sighting,
    front_settings,
    redis_of,
    start_gateway,
)
from support.operations import Clusters, publish_initial_gallery, seed_sighting

INDIVIDUALS = ["ind-0", "ind-1", "ind-2"]
SAFE = "s" * 40  # a token the production profile accepts


@pytest.fixture(scope="module")
def roles(stack, tmp_path_factory):
    """A gateway with two apps, two researchers and an admin; its own gallery prefix with two versions."""
    run_dir = tmp_path_factory.mktemp("roles")
    settings = front_settings(stack).with_overrides(gallery_prefix=f"galleries-roles-{uuid.uuid4().hex[:6]}",
                                                    upload_size_required=True)
    store = GalleryStore.from_settings(settings)
    clusters = Clusters()
    versions = [publish_initial_gallery(store, clusters, INDIVIDUALS, run_dir) for _ in range(2)]
    exits = {}
    with contextlib.ExitStack() as cleanup:
        gateway, url = start_gateway(settings, run_dir, gallery_prefix=settings.gallery_prefix)
        cleanup.callback(lambda: exits.setdefault("gateway", gateway.stop()))
        yield {"settings": settings, "url": url, "clusters": clusters, "versions": versions, "gateway": gateway}
    assert exits == {"gateway": 0}, gateway.log_text()


def _call(url: str, method: str, path: str, token: str | None = None, raw_header: str | None = None, **kw):
    headers = bearer(token) if token else ({"Authorization": raw_header} if raw_header is not None else {})
    return requests.request(method, url + path, headers=headers, timeout=10, **kw)


ROUTES = [("POST", "/v1/sightings"), ("GET", "/v1/sightings/x"), ("POST", "/v1/sightings/x/confirmation"),
          ("GET", "/v1/sightings/x/confirmation"), ("GET", "/v1/gallery"), ("POST", "/v1/gallery/rollback"),
          ("GET", "/v1/no-such-route")]


@pytest.mark.parametrize("header", [None, "Bearer wrong-token", TOKEN, "Bearer ", f"Basic {TOKEN}"],
                         ids=["missing", "wrong", "not-bearer", "empty", "basic"])
def test_missing_or_wrong_tokens_are_401_on_every_route(roles, header):
    for method, path in ROUTES:
        response = _call(roles["url"], method, path, raw_header=header, json={})
        assert response.status_code == 401, (method, path, response.text)
        body = response.json()
        assert body["code"] == "unauthorized" and "bearer token" in body["error"]
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


FORBIDDEN = [
    (RESEARCHER_TOKEN, "POST", "/v1/sightings", "researcher"),
    (ADMIN_TOKEN, "POST", "/v1/sightings", "admin"),
    (ADMIN_TOKEN, "GET", "/v1/sightings/{sid}", "admin"),
    (TOKEN, "POST", "/v1/sightings/{sid}/confirmation", "app"),
    (ADMIN_TOKEN, "POST", "/v1/sightings/{sid}/confirmation", "admin"),
    (TOKEN, "GET", "/v1/sightings/{sid}/confirmation", "app"),
    (TOKEN, "GET", "/v1/gallery", "app"),
    (RESEARCHER_TOKEN, "GET", "/v1/gallery", "researcher"),
    (TOKEN, "POST", "/v1/gallery/rollback", "app"),
    (RESEARCHER_TOKEN, "POST", "/v1/gallery/rollback", "researcher"),
]


@pytest.mark.parametrize("token, method, path, role", FORBIDDEN,
                         ids=[f"{role}-{method}-{path}" for _, method, path, role in FORBIDDEN])
def test_a_known_token_outside_its_role_is_403_and_changes_nothing(roles, token, method, path, role):
    settings, url = roles["settings"], roles["url"]
    r = redis_of(settings)
    sid = seed_sighting(r, roles["clusters"].sample("ind-0"), [("ind-0", 0.9)])
    pointer_before = GalleryStore.from_settings(settings).current_version()
    sightings_before = set(r.scan_iter("sighting:*"))
    body = {"action": "confirm", "individual_id": "ind-0"} if "confirmation" in path else {
        "taken_at": "2026-11-20T08:30:00+00:00", "latitude": 1.0, "longitude": 2.0, "observer": "x",
        "content_type": "image/jpeg", "size": 10}
    response = _call(url, method, path.format(sid=sid), token, json=body)
    assert response.status_code == 403, response.text
    answer = response.json()
    assert answer["code"] == "forbidden" and answer["role"] == role and role not in answer["allowed"]
    assert f"role '{role}' may not call {method}" in answer["error"]
    assert set(r.scan_iter("sighting:*")) == sightings_before
    assert stored_confirmation(r, sid) is None and audit_trail(r, sid) == []
    assert GalleryStore.from_settings(settings).current_version() == pointer_before


def test_an_app_reads_only_its_own_sightings_and_never_their_gps(roles):
    url = roles["url"]
    mine = create_sighting(url, size=len(JPEG_BYTES), species_hint="beluga")
    theirs = create_sighting(url, token=OTHER_APP_TOKEN, size=len(JPEG_BYTES))

    own = _call(url, "GET", f"/v1/sightings/{mine['sighting_id']}", TOKEN).json()
    assert own["owner"] == "app" and own["metadata"]["species_hint"] == "beluga"
    assert "latitude" not in own["metadata"] and "longitude" not in own["metadata"]
    assert own["metadata"]["observer"] == "app-user-7"

    unknown = _call(url, "GET", "/v1/sightings/no-such-sighting", TOKEN)
    foreign = _call(url, "GET", f"/v1/sightings/{theirs['sighting_id']}", TOKEN)
    assert foreign.status_code == unknown.status_code == 404  # indistinguishable from an unknown id
    assert foreign.json()["error"] == f"unknown sighting {theirs['sighting_id']!r}"
    assert _call(url, "GET", f"/v1/sightings/{theirs['sighting_id']}", OTHER_APP_TOKEN).json()["owner"] == "other-app"

    seen_by_researcher = _call(url, "GET", f"/v1/sightings/{theirs['sighting_id']}", RESEARCHER_TOKEN).json()
    assert seen_by_researcher["owner"] == "other-app"
    assert (seen_by_researcher["metadata"]["latitude"], seen_by_researcher["metadata"]["longitude"]) == (-33.9, 18.4)

    legacy = seed_sighting(redis_of(roles["settings"]), None, None)  # created before owners were recorded
    assert _call(url, "GET", f"/v1/sightings/{legacy}", TOKEN).status_code == 404
    assert _call(url, "GET", f"/v1/sightings/{legacy}", RESEARCHER_TOKEN).status_code == 200


def test_with_size_required_every_upload_is_a_single_use_put(roles):
    url = roles["url"]
    response = _call(url, "POST", "/v1/sightings", TOKEN, json={
        "taken_at": "2026-11-20T08:30:00+00:00", "latitude": 1.0, "longitude": 2.0, "observer": "x",
        "content_type": "image/png"})
    assert response.status_code == 400
    assert any("size (bytes of the photo) is required" in p for p in response.json()["problems"])
    created = create_sighting(url, size=len(JPEG_BYTES))
    assert created["upload_method"] == "PUT" and created["upload_headers"]["If-None-Match"] == "*"


def test_the_researcher_is_the_credential_not_the_body(roles):
    settings, url = roles["settings"], roles["url"]
    r = redis_of(settings)
    clusters = roles["clusters"]
    first = seed_sighting(r, clusters.sample("ind-1"), [("ind-1", 0.9)])
    second = seed_sighting(r, clusters.sample("ind-2"), [("ind-2", 0.9)])
    path = "/v1/sightings/{}/confirmation"

    accepted = _call(url, "POST", path.format(first), RESEARCHER_TOKEN,
                     json={"action": "confirm", "individual_id": "ind-1"})  # no researcher in the body
    assert accepted.status_code == 201, accepted.text
    assert accepted.json()["confirmation"]["researcher"] == "dr-fluke"
    stored = _call(url, "GET", path.format(first), RESEARCHER_TOKEN).json()["confirmation"]
    assert stored["researcher"] == "dr-fluke"

    spoofed = _call(url, "POST", path.format(second), RESEARCHER_TOKEN,
                    json={"action": "confirm", "individual_id": "ind-2", "researcher": "dr-tail"})
    assert spoofed.status_code == 403
    assert spoofed.json()["code"] == "researcher_mismatch" and "'dr-tail'" in spoofed.json()["error"]
    assert stored_confirmation(r, second) is None
    (entry,) = audit_trail(r, second)
    assert (entry["researcher"], entry["outcome"]) == ("dr-fluke", "researcher_mismatch")

    same = _call(url, "POST", path.format(second), RESEARCHER_TOKEN,
                 json={"action": "confirm", "individual_id": "ind-2", "researcher": "dr-fluke"})
    assert same.status_code == 201 and same.json()["confirmation"]["researcher"] == "dr-fluke"
    assert [e["outcome"] for e in audit_trail(r, second)] == ["researcher_mismatch", "accepted"]


def test_admin_lists_and_rolls_back_the_gallery(roles):
    url = roles["url"]
    v1, v2 = roles["versions"]
    listing = _call(url, "GET", "/v1/gallery", ADMIN_TOKEN).json()
    assert listing["current"]["version"] == v2 and [v["version"] for v in listing["versions"]] == [v1, v2]

    rolled = _call(url, "POST", "/v1/gallery/rollback", ADMIN_TOKEN)
    assert rolled.status_code == 200, rolled.text
    assert rolled.json()["current"]["version"] == v1
    assert rolled.json()["current"]["reason"] == f"rollback from {v2} by admin ops-admin"
    assert GalleryStore.from_settings(roles["settings"]).current_version() == v1

    nothing_left = _call(url, "POST", "/v1/gallery/rollback", ADMIN_TOKEN)
    assert nothing_left.status_code == 409
    assert nothing_left.json()["code"] == "model_store" and "no previous version" in nothing_left.json()["error"]


# --------------------------------------------------------------------------- the production profile
def _production(**tokens):
    return load_settings(profile="production", environ={}, redis_url="redis://127.0.0.1:1/0", **tokens)


@pytest.mark.parametrize("setting, value, reason", [
    ("gateway_token", "local-dev-token", "local profile's default"),
    ("gateway_token", "change-me", "placeholder"),
    ("gateway_researcher_tokens", "dr-fluke=local-researcher-token", "local profile's default"),
    ("gateway_admin_tokens", "ops=short-admin-token", "shorter than 24 characters"),
    ("gateway_app_tokens", f"good={SAFE},bad=change-me", "placeholder"),
])
def test_production_refuses_unsafe_tokens_naming_the_setting(setting, value, reason):
    tokens = {"gateway_token": SAFE + "-app", setting: value} if setting != "gateway_token" else {setting: value}
    with pytest.raises(ConfigError) as refused:
        build_app(_production(**tokens))
    message = str(refused.value)
    assert setting in message and f"WHALEID_{setting.upper()}" in message and reason in message, message
    assert value.rpartition("=")[2] not in message  # the token itself is never echoed


def test_production_refuses_the_placeholders_the_manifests_ship():
    secret = next(doc for doc in yaml.safe_load_all((REPO / "deploy/k8s/settings.yaml").read_text())
                  if doc and doc["kind"] == "Secret")
    environ = {k: str(v) for k, v in secret["stringData"].items()}
    assert "change-me" not in environ.values()
    with pytest.raises(ConfigError) as refused:
        build_app(load_settings(environ={"WHALEID_PROFILE": "production", **environ}, redis_url="redis://x:1/0"))
    for setting in ("gateway_token", "gateway_researcher_tokens", "gateway_admin_tokens"):
        assert setting in str(refused.value)


def test_production_accepts_long_distinct_tokens_and_local_keeps_its_defaults():
    build_app(_production(gateway_token=SAFE + "-app", gateway_researcher_tokens=f"dr-fluke={SAFE}-researcher",
                          gateway_admin_tokens=f"ops={SAFE}-admin"))
    build_app(load_settings(profile="local", environ={}, redis_url="redis://127.0.0.1:1/0"))


@pytest.mark.parametrize("overrides, words", [
    ({"gateway_token": "", "gateway_researcher_tokens": "", "gateway_admin_tokens": ""}, ["at least one token"]),
    ({"gateway_admin_tokens": "ops=local-dev-token"}, ["same token", "gateway_token", "gateway_admin_tokens"]),
    ({"gateway_researcher_tokens": "dr-fluke"}, ["gateway_researcher_tokens", "entry 1 is not name=token"]),
    ({"gateway_researcher_tokens": "a=one-token,a=two-token"}, ["gateway_researcher_tokens", "'a'", "twice"]),
], ids=["no-token", "shared-token", "bad-entry", "duplicate-name"])
def test_token_tables_that_cannot_work_are_refused_in_any_profile(overrides, words):
    with pytest.raises(ConfigError) as refused:
        build_app(load_settings(profile="local", environ={}, redis_url="redis://127.0.0.1:1/0", **overrides))
    assert all(word in str(refused.value) for word in words), str(refused.value)


def test_the_gateway_process_refuses_to_start_with_the_default_token_in_production(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "WHALEID_PROFILE": "production", "WHALEID_GATEWAY_TOKEN": "local-dev-token",
           "WHALEID_REDIS_URL": "redis://127.0.0.1:1/0", "WHALEID_RUN_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "services.chain.gateway"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode != 0
    assert "gateway_token" in done.stderr and "local profile's default" in done.stderr, done.stderr
    assert "local-dev-token" not in done.stderr
