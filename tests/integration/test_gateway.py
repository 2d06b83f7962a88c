"""The upload gateway against real Redis and S3 (moto_server), run as its own process (`python -m services.chain.gateway`)."""

from __future__ import annotations

import base64
import contextlib
import json

import pytest
import requests

from services.core import keys
from support.front import (
    JPEG_BYTES,
    MAX_UPLOAD_BYTES,
    TOKEN,
    aws,
    create_sighting,
    front_settings,
    redis_of,
    sighting_body,
    sigv4_query_signature_valid,
    start_gateway,
    upload,
)

AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def front(stack, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("gateway-stack")
    exits = {}
    with contextlib.ExitStack() as cleanup:
        settings = front_settings(stack)
        gateway, url = start_gateway(settings, run_dir)
        cleanup.callback(lambda: exits.setdefault("gateway", gateway.stop()))
        yield settings, url
    assert exits == {"gateway": 0}, f"gateway did not stop cleanly on SIGTERM:\n{gateway.log_text()}"


def _sighting_keys(settings) -> set[bytes]:
    return set(redis_of(settings).scan_iter("sighting:*"))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}],
                         ids=["no-token", "wrong-token", "not-bearer"])
def test_requests_without_the_token_are_401_and_store_nothing(front, headers):
    settings, url = front
    before = _sighting_keys(settings)
    response = requests.post(f"{url}/v1/sightings", json=sighting_body(), headers=headers, timeout=5)
    assert response.status_code == 401
    assert "bearer token" in response.json()["error"]
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert requests.get(f"{url}/v1/sightings/anything", headers=headers, timeout=5).status_code == 401
    assert _sighting_keys(settings) == before
    assert requests.get(f"{url}/healthz", timeout=5).json() == {"status": "ok"}  # public


def test_create_sighting_stores_metadata_and_signs_one_key(front):
    settings, url = front
    created = create_sighting(url, crop_box=[10, 20, 300, 200], species_hint="humpback_whale",
                              size=len(JPEG_BYTES))
    sighting_id = created["sighting_id"]
    assert created["key"] == f"uploads/{sighting_id}.jpg"
    assert created["expires_in"] == settings.upload_url_expires_s
    assert created["upload_method"] == "PUT" and created["upload_max_bytes"] == len(JPEG_BYTES)
    assert created["upload_headers"] == {"Content-Type": "image/jpeg", "Content-Length": str(len(JPEG_BYTES)),
                                         "If-None-Match": "*"}

    stored = {k.decode(): v.decode() for k, v in redis_of(settings).hgetall(keys.sighting_key(sighting_id)).items()}
    metadata = json.loads(stored["metadata"])
    assert metadata["crop_box"] == [10.0, 20.0, 300.0, 200.0]
    assert metadata["species_hint"] == "humpback_whale"
    assert metadata["observer"] == "app-user-7" and metadata["latitude"] == -33.9
    assert stored["owner"] == "app" and stored["upload_method"] == "PUT"
    ttl = redis_of(settings).ttl(keys.sighting_key(sighting_id))  # bounded state: the hash expires (redis_sighting_ttl_s)
    assert settings.redis_sighting_ttl_s - 600 < ttl <= settings.redis_sighting_ttl_s

    assert upload(created, JPEG_BYTES).status_code == 200
    head = aws(settings, "s3").head_object(Bucket=settings.sightings_bucket, Key=created["key"])
    assert head["ContentType"] == "image/jpeg" and head["ContentLength"] == len(JPEG_BYTES)

    # The signature covers the key, the content type, the length and If-None-Match (S3 refuses any other
    # request; moto does not check signatures).
    url_, headers = created["upload_url"], created["upload_headers"]
    assert sigv4_query_signature_valid(url_, "PUT", headers, settings)
    other_key = url_.replace(f"/uploads/{sighting_id}.jpg", "/uploads/someone-else.jpg")
    assert not sigv4_query_signature_valid(other_key, "PUT", headers, settings)
    assert not sigv4_query_signature_valid(url_, "PUT", {**headers, "Content-Type": "image/png"}, settings)
    assert not sigv4_query_signature_valid(url_, "PUT", {**headers, "Content-Length": "999999"}, settings)
    without_condition = {k: v for k, v in headers.items() if k != "If-None-Match"}
    assert not sigv4_query_signature_valid(url_, "PUT", without_condition, settings)
    assert not sigv4_query_signature_valid(url_, "GET", headers, settings)


def test_an_uploaded_photo_cannot_be_replaced(front):
    """The PUT is single-use: S3 (and moto) refuse a second write of the key with 412, the first photo stays."""
    settings, url = front
    created = create_sighting(url, size=len(JPEG_BYTES))
    assert upload(created, JPEG_BYTES).status_code == 200
    replacement = JPEG_BYTES[:-3] + b"bad"
    second = upload(created, replacement)
    assert second.status_code == 412 and "PreconditionFailed" in second.text
    body = aws(settings, "s3").get_object(Bucket=settings.sightings_bucket, Key=created["key"])["Body"].read()
    assert body == JPEG_BYTES


def test_without_a_declared_size_the_upload_is_a_bounded_post(front):
    """The local profile lets apps omit `size`: they get a POST form whose policy caps the length at
    max_upload_bytes (S3 enforces it; moto 5.2 does not, so the bridge and worker keep their own limit)."""
    settings, url = front
    created = create_sighting(url)
    assert created["upload_method"] == "POST" and created["upload_max_bytes"] == MAX_UPLOAD_BYTES
    fields = created["upload_fields"]
    assert fields["key"] == created["key"] and fields["Content-Type"] == "image/jpeg"
    policy = json.loads(base64.b64decode(fields["policy"]))
    assert ["content-length-range", 1, MAX_UPLOAD_BYTES] in policy["conditions"]
    assert {"key": created["key"]} in policy["conditions"] and {"Content-Type": "image/jpeg"} in policy["conditions"]
    assert upload(created, JPEG_BYTES).status_code == 200
    head = aws(settings, "s3").head_object(Bucket=settings.sightings_bucket, Key=created["key"])
    assert head["ContentType"] == "image/jpeg" and head["ContentLength"] == len(JPEG_BYTES)


@pytest.mark.parametrize(
    "body, problem",
    [
        (sighting_body(latitude=91), "latitude must be within [-90, 90]"),
        (sighting_body(longitude="18.4"), "longitude must be a finite number"),
        (sighting_body(observer=None), "missing field observer"),
        (sighting_body(taken_at="yesterday"), "taken_at must be an ISO 8601"),
        (sighting_body(taken_at="2999-01-01T00:00:00Z"), "is in the future"),
        (sighting_body(crop_box=[50, 10, 20, 40]), "crop_box must have 0 <= x0 < x1"),
        (sighting_body(crop_box=[1, 2, 3]), "crop_box must be [x0, y0, x1, y1]"),
        (sighting_body(content_type="image/gif"), "content_type must be one of"),
        (sighting_body(size=MAX_UPLOAD_BYTES + 1), "over the upload limit"),
        (sighting_body(size=True), "size must be a positive integer"),
        (sighting_body(colour="grey"), "unknown field colour"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_metadata_is_400_with_the_reason(front, body, problem):
    settings, url = front
    before = _sighting_keys(settings)
    response = requests.post(f"{url}/v1/sightings", json=body, headers=AUTH, timeout=5)
    assert response.status_code == 400, response.text
    assert any(problem in p for p in response.json()["problems"]), response.json()
    assert _sighting_keys(settings) == before


def test_body_that_is_not_json_is_400(front):
    _settings, url = front
    response = requests.post(f"{url}/v1/sightings", data=b"{not json", headers=AUTH, timeout=5)
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]


def test_sighting_status_follows_the_chain(front):
    settings, url = front
    assert requests.get(f"{url}/v1/sightings/no-such-id", headers=AUTH, timeout=5).status_code == 404

    created = create_sighting(url, species_hint="beluga")
    sid = created["sighting_id"]
    status = requests.get(f"{url}/v1/sightings/{sid}", headers=AUTH, timeout=5).json()
    assert status["status"] == "pending" and status["metadata"]["species_hint"] == "beluga"
    assert "identification" not in status and status["uploaded_at"] is None

    r = redis_of(settings)
    r.set(keys.failure_key(sid), json.dumps({"stage": "worker", "reason": "truncated", "detail": "x", "failed_at": 1.0}))
    status = requests.get(f"{url}/v1/sightings/{sid}", headers=AUTH, timeout=5).json()
    assert status["status"] == "failed" and status["failure"]["reason"] == "truncated"

    identification = {"sighting_id": sid, "candidates": [{"individual_id": "w-1", "score": 0.9}],
                      "new_individual": False, "model_version": "m", "gallery_version": "g"}
    r.set(keys.identification_key(sid), json.dumps(identification))
    status = requests.get(f"{url}/v1/sightings/{sid}", headers=AUTH, timeout=5).json()
    assert status["status"] == "identified" and status["identification"] == {**identification, "candidates": [
        {"individual_id": "w-1", "score": 0.9, "reference_photo": None}]}  # no gallery nor catalogue photo of w-1


def test_metrics_count_gateway_requests(front):
    _settings, url = front
    create_sighting(url)
    text = requests.get(f"{url}/metrics", timeout=5).text
    assert 'whaleid_uploads_total{outcome="created"}' in text
    assert 'whaleid_uploads_total{outcome="unauthorized"}' in text
    assert 'whaleid_step_latency_seconds_count{stage="gateway",step="create_sighting"}' in text
