"""Results include, per candidate, a reference photo the app may show (#12): GET /v1/sightings/{id} and the
listing give each known candidate a presigned GET of the gallery image the matcher matched, else the
individual's first catalogue photo, else a confirmed sighting of it the caller may see. A real gateway process
on the session stack, with its own models bucket (catalogue + gallery); the URLs are fetched from S3."""

from __future__ import annotations

import contextlib
import json
import time
import uuid

import jsonschema
import numpy as np
import pytest
import requests

from services.core import keys
from services.core.identification import Tuning, build_gallery
from services.curation.catalogue.importer import import_catalogue
from services.curation.catalogue.photo_bucket import CatalogueStore
from services.curation.operations.gallery_versions import GalleryStore
from services.curation.operations.publish import publish_gallery
from support.catalogue import photo
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


@pytest.fixture(scope="module")
def world(stack, tmp_path_factory):
    """A gateway whose models bucket holds a catalogue (ind-a: 2 photos, ind-b: 1) and a served gallery with the
    catalogue's means plus two confirmed sightings: whale-mine (uploaded by the app `app`) and whale-theirs (by
    `other-app`)."""
    tmp = tmp_path_factory.mktemp("candidate_photos")
    bucket = f"test-refs-{uuid.uuid4().hex[:10]}"
    settings = front_settings(stack).with_overrides(models_bucket=bucket)
    s3 = aws(settings, "s3")
    s3.create_bucket(Bucket=bucket)
    for n, individual in enumerate(["ind-a", "ind-a", "ind-b"]):
        photo(tmp / "src" / individual / f"{n}.jpg", 700 + n)
    catalogue = CatalogueStore(s3, bucket)
    import_catalogue(tmp / "src", catalogue, progress=False)
    redis = redis_of(settings)
    confirmed = {}
    for individual, owner in (("whale-mine", "app"), ("whale-theirs", "other-app")):
        sighting_id = uuid.uuid4().hex
        key = f"uploads/{sighting_id}.jpg"
        s3.put_object(Bucket=settings.sightings_bucket, Key=key, Body=f"photo of {individual}".encode())
        redis.hset(keys.sighting_key(sighting_id), mapping={"key": key, "bucket": settings.sightings_bucket,
                                                      "owner": owner, "metadata": "{}", "created_at": time.time()})
        confirmed[individual] = (sighting_id, key)
    names = ["ind-a", "ind-b", "whale-mine", "whale-theirs"]
    vectors = np.eye(4, 8, dtype=np.float32)
    images = ["mean/ind-a", "mean/ind-b"] + [f"sighting/{confirmed[n][0]}" for n in names[2:]]
    store = GalleryStore.from_settings(settings)
    publish_gallery(store, build_gallery(vectors, names, ["beluga"] * 4, images),
                    Tuning(threshold=0.5).save(tmp / "tuning.json"), reason="candidate photos test")
    with contextlib.ExitStack() as cleanup:
        gateway, url = start_gateway(settings, tmp, models_bucket=bucket)
        cleanup.callback(gateway.stop)
        yield {"settings": settings, "url": url, "catalogue": catalogue, "confirmed": confirmed, "redis": redis}
    redis.close()


def identified(world, token: str = TOKEN, candidates=None) -> str:
    """A sighting created through the gateway, identified as the matcher would store it."""
    sighting_id = create_sighting(world["url"], token=token, observer=f"obs-{uuid.uuid4().hex[:6]}")["sighting_id"]
    records = world["catalogue"].records().values()
    second_a = max((r for r in records if r["individual_id"] == "ind-a"), key=lambda r: r["photo_id"])
    candidates = candidates or [
        {"individual_id": "ind-a", "score": 0.9, "image": second_a["key"]},  # the matcher recorded its match
        {"individual_id": "ind-b", "score": 0.6},
        {"individual_id": "new_individual", "score": 0.5},
        {"individual_id": "whale-mine", "score": 0.4},
        {"individual_id": "whale-theirs", "score": 0.3},
        {"individual_id": "ind-nowhere", "score": 0.2}]
    world["redis"].set(keys.identification_key(sighting_id), json.dumps({
        "sighting_id": sighting_id, "candidates": candidates, "new_individual": False, "model_version": "m",
        "gallery_version": "v"}))
    return sighting_id


def conforms(url: str, name: str, answer: dict) -> None:
    document = requests.get(f"{url}/openapi.json", timeout=10).json()
    jsonschema.Draft202012Validator({"$ref": f"#/components/schemas/{name}",
                                     "components": document["components"]}).validate(answer)


def by_id(answer: dict) -> dict[str, dict]:
    return {c["individual_id"]: c for c in answer["identification"]["candidates"]}


def test_each_candidate_gets_a_photo_the_app_may_show(world):
    url, catalogue = world["url"], world["catalogue"]
    sighting_id = identified(world)
    answer = requests.get(f"{url}/v1/sightings/{sighting_id}", headers=bearer(TOKEN), timeout=10)
    assert answer.status_code == 200, answer.text
    body = answer.json()
    conforms(url, "Sighting", body)
    candidates = by_id(body)
    records = sorted(catalogue.records().values(), key=lambda r: r["photo_id"])
    a_photos = [r for r in records if r["individual_id"] == "ind-a"]
    b_photo = next(r for r in records if r["individual_id"] == "ind-b")
    match = candidates["ind-a"]["reference_photo"]
    assert (match["source"], match["key"]) == ("gallery_match", a_photos[-1]["key"])
    assert match["expires_in"] == world["settings"].gateway_photo_url_expires_s
    assert candidates["ind-b"]["reference_photo"]["source"] == "catalogue"
    assert candidates["ind-b"]["reference_photo"]["key"] == b_photo["key"]
    assert candidates["new_individual"]["reference_photo"] is None
    assert candidates["ind-nowhere"]["reference_photo"] is None
    mine = candidates["whale-mine"]["reference_photo"]
    assert (mine["source"], mine["key"]) == ("confirmed_sighting", world["confirmed"]["whale-mine"][1])
    assert candidates["whale-theirs"]["reference_photo"] is None  # another app's upload is not shown to this app
    # the URLs are real presigned GETs of the photos (not proxied by the gateway)
    got = requests.get(match["url"], timeout=10)
    assert got.status_code == 200 and got.content == catalogue.get_bytes(a_photos[-1]["key"])
    assert requests.get(mine["url"], timeout=10).content == b"photo of whale-mine"
    assert url not in match["url"]
    # the stored identification is not changed
    stored = json.loads(world["redis"].get(keys.identification_key(sighting_id)))
    assert all("reference_photo" not in c for c in stored["candidates"])


def test_without_a_recorded_match_the_first_catalogue_photo_is_shown(world):
    sighting_id = identified(world, candidates=[{"individual_id": "ind-a", "score": 0.8},
                                                {"individual_id": "ind-b", "score": 0.1}])
    candidates = by_id(requests.get(f"{world['url']}/v1/sightings/{sighting_id}", headers=bearer(TOKEN),
                                    timeout=10).json())
    records = [r for r in world["catalogue"].records().values() if r["individual_id"] == "ind-a"]
    first = min(records, key=lambda r: (r["imported_at"], r["photo_id"]))
    assert candidates["ind-a"]["reference_photo"]["source"] == "catalogue"
    assert candidates["ind-a"]["reference_photo"]["key"] == first["key"]


def test_researchers_see_every_confirmed_sighting_and_the_listing_has_photos_too(world):
    url = world["url"]
    sighting_id = identified(world, token=OTHER_APP_TOKEN)
    researcher = by_id(requests.get(f"{url}/v1/sightings/{sighting_id}", headers=bearer(RESEARCHER_TOKEN),
                                    timeout=10).json())
    assert researcher["whale-theirs"]["reference_photo"]["key"] == world["confirmed"]["whale-theirs"][1]
    assert researcher["whale-mine"]["reference_photo"]["source"] == "confirmed_sighting"
    # the other app sees its own confirmed sighting, not the first app's
    other = by_id(requests.get(f"{url}/v1/sightings/{sighting_id}", headers=bearer(OTHER_APP_TOKEN),
                               timeout=10).json())
    assert other["whale-theirs"]["reference_photo"]["source"] == "confirmed_sighting"
    assert other["whale-mine"]["reference_photo"] is None
    page = requests.get(f"{url}/v1/sightings", params={"limit": 5}, headers=bearer(OTHER_APP_TOKEN), timeout=10)
    assert page.status_code == 200, page.text
    conforms(url, "SightingPage", page.json())
    item = next(i for i in page.json()["items"] if i["sighting_id"] == sighting_id)
    assert by_id(item)["ind-b"]["reference_photo"]["source"] == "catalogue"
