"""Bounded state under hostile use (issue 22 item 5), against the real Redis and the gateway as its own process:
ids have a length limit (400 with a reason), a refused confirmation on an unknown id makes no key, each
sighting's audit trail is capped, an encounter has a most members, `matcher:parked` is capped, and each app has a
quota of sightings per minute and per day (429 with Retry-After)."""

from __future__ import annotations

import contextlib
import time
import uuid

import pytest
import redis
import requests

from services.chain import parking
from services.core import keys, topics
from services.core.settings import load_settings
from services.curation.operations.confirmations import ConfirmationService, KnownIndividuals
from support.front import (
    OTHER_APP_TOKEN,
    RESEARCHER_TOKEN,
    TOKEN,
    bearer,
    create_sighting,
    front_settings,
    redis_of,
    sighting_body,
    start_gateway,
)

QUOTA_APP, QUOTA_TOKEN = "quota-app", "bounded-quota-app-token"
PER_MINUTE, PER_DAY = 40, 10_000
ENCOUNTER_MAX = 3
TRAIL_MAX = 5
STREAM_NODE = 100  # Redis' stream-node-max-entries: MAXLEN ~ trims whole nodes of this many entries


@pytest.fixture(scope="module")
def front(stack, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("bounded-state")
    with contextlib.ExitStack() as cleanup:
        settings = front_settings(stack)
        gateway, url = start_gateway(
            settings, run_dir, gateway_app_tokens=f"other-app={OTHER_APP_TOKEN},{QUOTA_APP}={QUOTA_TOKEN}",
            sightings_quota_per_minute=PER_MINUTE, sightings_quota_per_day=PER_DAY,
            encounter_max_members=ENCOUNTER_MAX, redis_sighting_audit_maxlen=TRAIL_MAX)
        cleanup.callback(gateway.stop)
        yield settings, url


def _confirm(url, sighting_id, body, token=RESEARCHER_TOKEN):
    return requests.post(f"{url}/v1/sightings/{sighting_id}/confirmation", json=body, headers=bearer(token),
                         timeout=10)


# --------------------------------------------------------------------------- ids
def test_an_individual_id_over_128_characters_is_refused_with_400(front):
    settings, url = front
    sighting_id = create_sighting(url)["sighting_id"]
    response = _confirm(url, sighting_id, {"action": "confirm", "individual_id": "w" * 129})
    assert response.status_code == 400, response.text
    assert "128" in response.json()["error"] and response.json()["code"] == "invalid"
    # at the limit the id is not refused for its length (here: no embedding yet, 409)
    assert _confirm(url, sighting_id, {"action": "confirm", "individual_id": "w" * 128}).status_code == 409
    unprintable = _confirm(url, sighting_id, {"action": "confirm", "individual_id": "whale\x00-1"})
    assert unprintable.status_code == 400 and "unprintable" in unprintable.json()["error"]


def test_a_sighting_id_over_128_characters_is_refused_and_makes_no_key(front):
    settings, url = front
    long_id = "s" * 500
    response = _confirm(url, long_id, {"action": "new"})
    assert response.status_code == 400 and response.json()["code"] == "invalid_id", response.text
    assert "128" in response.json()["error"]
    assert not redis_of(settings).exists(keys.confirmation_audit_stream(long_id))
    got = requests.get(f"{url}/v1/sightings/{long_id}/confirmation", headers=bearer(RESEARCHER_TOKEN), timeout=10)
    assert got.status_code == 400


def test_merge_and_rename_refuse_ids_over_128_characters(front):
    _settings, url = front
    for path, body in ((f"/v1/individuals/{'a' * 129}/merge", {"into": "whale-1"}),
                       ("/v1/individuals/whale-1/merge", {"into": "b" * 129}),
                       (f"/v1/individuals/{'c' * 129}/rename", {"new_id": "d"}),
                       (f"/v1/merges/{'e' * 129}/undo", None)):
        response = requests.post(f"{url}{path}", json=body, headers=bearer(RESEARCHER_TOKEN), timeout=10)
        assert response.status_code == 400, (path, response.text)
        assert "128" in response.json()["error"], (path, response.text)


def test_an_encounter_id_over_128_characters_is_refused(front):
    settings, url = front
    response = requests.post(f"{url}/v1/sightings", json=sighting_body(encounter="e" * 129),
                             headers=bearer(TOKEN), timeout=10)
    assert response.status_code == 400, response.text
    assert any("128" in p for p in response.json()["problems"])
    assert not redis_of(settings).exists(keys.encounter_key("app", 'e' * 129))


# --------------------------------------------------------------------------- confirmations' audit
def test_a_refused_confirmation_on_an_unknown_sighting_makes_no_key(front):
    settings, url = front
    client = redis_of(settings)
    unknown = uuid.uuid4().hex
    before = client.xlen(keys.CONFIRMATIONS_AUDIT_STREAM)
    response = _confirm(url, unknown, {"action": "confirm", "individual_id": "whale-1"})
    assert response.status_code == 404 and response.json()["code"] == "unknown_sighting"
    assert not client.exists(keys.confirmation_audit_stream(unknown))  # no key of an id nobody created
    assert client.xlen(keys.CONFIRMATIONS_AUDIT_STREAM) == before + 1  # the attempt is in the global (capped) stream
    last = client.xrevrange(keys.CONFIRMATIONS_AUDIT_STREAM, count=1)[0][1]
    assert last[b"sighting_id"] == unknown.encode() and last[b"outcome"] == b"unknown_sighting"


def test_a_sightings_audit_trail_is_capped(front):
    settings, url = front
    client = redis_of(settings)
    sighting_id = create_sighting(url)["sighting_id"]
    attempts = 3 * STREAM_NODE
    with requests.Session() as session:
        for i in range(attempts):  # refused: no embedding yet (409), each one audited
            response = session.post(f"{url}/v1/sightings/{sighting_id}/confirmation",
                                    json={"action": "confirm", "individual_id": f"whale-{i}"},
                                    headers=bearer(RESEARCHER_TOKEN), timeout=10)
            assert response.status_code == 409, response.text
    trail = client.xlen(keys.confirmation_audit_stream(sighting_id))
    assert TRAIL_MAX <= trail <= TRAIL_MAX + STREAM_NODE, trail  # MAXLEN ~ TRAIL_MAX: whole nodes trimmed
    newest = client.xrevrange(keys.confirmation_audit_stream(sighting_id), count=1)[0][1]
    assert newest[b"individual_id"] == f"whale-{attempts - 1}".encode()  # the newest kept, the oldest dropped


# --------------------------------------------------------------------------- encounters
def test_an_encounter_takes_at_most_encounter_max_members(front):
    settings, url = front
    encounter = f"enc-{uuid.uuid4().hex[:8]}"
    for _ in range(ENCOUNTER_MAX):
        create_sighting(url, encounter=encounter)
    response = requests.post(f"{url}/v1/sightings", json=sighting_body(encounter=encounter), headers=bearer(TOKEN),
                             timeout=10)
    assert response.status_code == 409, response.text
    assert response.json()["code"] == "encounter_full" and "encounter_max_members" in response.json()["error"]
    assert redis_of(settings).scard(keys.encounter_key("app", encounter)) == ENCOUNTER_MAX
    # another app's encounter of the same name is its own
    other = requests.post(f"{url}/v1/sightings", json=sighting_body(encounter=encounter),
                          headers=bearer(OTHER_APP_TOKEN), timeout=10)
    assert other.status_code == 201, other.text


# --------------------------------------------------------------------------- quotas
def _sighting_count(client) -> int:
    return sum(1 for _ in client.scan_iter("sighting:*", count=1000))


def _post_as_quota_app(url):
    return requests.post(f"{url}/v1/sightings", json=sighting_body(), headers=bearer(QUOTA_TOKEN), timeout=10)


def test_past_the_per_minute_quota_an_app_gets_429_with_retry_after(front):
    settings, url = front
    client = redis_of(settings)
    if time.time() % 60 > 55:  # both requests in one minute
        time.sleep(60.5 - time.time() % 60)
    now = time.time()
    minute_keys = [keys.quota_key(QUOTA_APP, "minute", m) for m in (int(now // 60), int(now // 60) + 1)]
    for key in minute_keys:  # this minute and the next (the request may cross into it)
        client.set(key, PER_MINUTE - 1, ex=180)
    try:
        assert _post_as_quota_app(url).status_code == 201  # the last one of the minute
        before = _sighting_count(client)
        refused = _post_as_quota_app(url)
        assert refused.status_code == 429, refused.text
        assert refused.json()["code"] == "quota_exceeded" and "sightings_quota_per_minute" in refused.json()["error"]
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert refused.json()["retry_after_s"] == int(refused.headers["Retry-After"])
        assert _sighting_count(client) == before  # nothing created
        create_sighting(url)  # the quota is per app: the app named `app` still creates sightings
    finally:
        client.delete(*minute_keys)


def test_past_the_per_day_quota_an_app_gets_429_until_the_next_utc_day(front):
    settings, url = front
    client = redis_of(settings)
    day = int(time.time() // 86400)
    client.set(keys.quota_key(QUOTA_APP, "day", day), PER_DAY, ex=3600)
    try:
        refused = _post_as_quota_app(url)
        assert refused.status_code == 429, refused.text
        assert "sightings_quota_per_day" in refused.json()["error"]
        seconds_to_midnight = (day + 1) * 86400 - time.time()
        assert abs(int(refused.headers["Retry-After"]) - seconds_to_midnight) <= 5
    finally:
        client.delete(keys.quota_key(QUOTA_APP, "day", day))


def test_the_quota_counters_expire(front):
    settings, url = front
    client = redis_of(settings)
    assert _post_as_quota_app(url).status_code == 201
    now = time.time()
    minute_keys = [keys.quota_key(QUOTA_APP, "minute", m) for m in (int(now // 60) - 1, int(now // 60))]
    ttls = [client.ttl(k) for k in minute_keys if client.exists(k)]
    assert ttls and all(0 < t <= 120 for t in ttls), ttls
    assert 0 < client.ttl(keys.quota_key(QUOTA_APP, "day", int(now // 86400))) <= 2 * 86400


def test_quotas_are_off_in_the_local_profile_and_on_in_production():
    local, production = load_settings(profile="local", environ={}), load_settings(profile="production", environ={})
    assert (local.sightings_quota_per_minute, local.sightings_quota_per_day) == (0, 0)  # demo, tests, chaos
    assert production.sightings_quota_per_minute > 0 and production.sightings_quota_per_day > 0
    assert production.encounter_max_members > 0 and production.redis_sighting_audit_maxlen > 0


# --------------------------------------------------------------------------- matcher:parked
def test_matcher_parked_is_capped_and_drops_the_oldest(stack):
    client = redis.Redis.from_url(stack.settings.redis_url, db=14)  # a database of its own: the matcher's is db 0
    client.delete(keys.PARKED_INDEX, keys.PARKED_RECORDS)
    try:
        ids = [f"parked-{i}" for i in range(7)]
        for sighting_id in ids:
            record = topics.SightingEmbedded(sighting_id=sighting_id, embedding=[0.0, 1.0], model_version="m-old")
            parking.park(client, record, "model_not_in_gallery", "test", max_parked=4)
            time.sleep(0.002)  # distinct parking times
        assert parking.parked_count(client) == 4
        assert client.hlen(keys.PARKED_RECORDS) == 4
        assert [sid for sid, _ in parking.parked_page(client, 0, 10)] == ids[-4:]
        assert parking.PARKED_MAX > 0  # the matcher's default cap
    finally:
        client.delete(keys.PARKED_INDEX, keys.PARKED_RECORDS)


# --------------------------------------------------------------------------- the review queue's index
def _forget_decisions(client, sighting_ids, individual_ids=()) -> None:
    """The session's Redis is shared by every test module (re-indexing reads confirmations:index): remove the
    decisions this module made."""

    with client.pipeline(transaction=False) as pipe:
        for sighting_id in sighting_ids:
            pipe.delete(keys.confirmation_key(sighting_id))
        pipe.zrem(keys.CONFIRMATIONS_INDEX_KEY, *sighting_ids)
        for individual_id in individual_ids:
            pipe.delete(keys.individual_confirmations_key(individual_id))
            pipe.srem(keys.CONFIRMATIONS_NEW_IDS_KEY, individual_id)
        pipe.execute()


def _commands(client) -> int:
    """Commands Redis has run so far (all clients; INFO commandstats)."""
    return sum(int(stats["calls"]) for name, stats in client.info("commandstats").items()
               if name.startswith("cmdstat_"))


def _queue_cost(client, url, observer) -> tuple[int, dict]:
    before = _commands(client)
    answer = requests.get(f"{url}/v1/review/queue", params={"observer": observer, "limit": 50},
                          headers=bearer(RESEARCHER_TOKEN), timeout=60)
    assert answer.status_code == 200, answer.text
    return _commands(client) - before, answer.json()


def test_the_review_queue_reads_an_index_whose_cost_does_not_grow_with_unrelated_keys(front):
    from services.chain.results import store_identification

    settings, url = front
    client = redis_of(settings)
    deadline = time.monotonic() + 30
    while not client.exists(keys.REVIEW_AWAITING_BUILT_KEY) and time.monotonic() < deadline:
        time.sleep(0.1)  # the gateway builds (or finds) the index in the background after it starts
    assert client.exists(keys.REVIEW_AWAITING_BUILT_KEY)
    observer = f"queue-{uuid.uuid4().hex[:8]}"
    sightings = [create_sighting(url, observer=observer)["sighting_id"] for _ in range(3)]
    for n, sighting_id in enumerate(sightings):
        assert client.zscore(keys.REVIEW_AWAITING_KEY, sighting_id) is not None  # indexed when created
        store_identification(client, topics.Identification(
            sighting_id=sighting_id, candidates=[{"individual_id": "ind-a", "score": 0.6 + n / 10},
                                                 {"individual_id": "ind-b", "score": 0.3}],
            new_individual=False, model_version="toy", gallery_version="v-test", uploaded_at=time.time(),
            identified_at=time.time(), species="humpback_whale", species_source="app", threshold=0.5))
    _queue_cost(client, url, observer)  # warm (connections, the served catalogue)
    small, answer = _queue_cost(client, url, observer)
    assert sorted(item["sighting_id"] for item in answer["items"]) == sorted(sightings)

    unrelated = 30_000
    with client.pipeline(transaction=False) as pipe:
        for i in range(unrelated):
            pipe.set(f"bounded-test:unrelated:{i}", "x", ex=600)
        pipe.execute()
    try:
        large, answer = _queue_cost(client, url, observer)
        assert sorted(item["sighting_id"] for item in answer["items"]) == sorted(sightings)
        # a SCAN of the keyspace would take at least unrelated / 500 more SCAN calls (60); the index: none
        assert large - small <= 5, (small, large)
    finally:
        with client.pipeline(transaction=False) as pipe:
            for i in range(unrelated):
                pipe.delete(f"bounded-test:unrelated:{i}")
            pipe.execute()

    # a decision takes the sighting off the index and the queue
    decided = sightings[0]  # (the service directly: the gateway's route needs a published gallery)
    service = ConfirmationService(client, known=lambda: KnownIndividuals("v-test", frozenset({"ind-a", "ind-b"})))
    try:
        conf, created = service.submit(decided, {"action": "reject"}, researcher="dr-fluke")
        assert created and conf.individual_id == "ind-a"  # the top candidate is the one rejected
        assert client.zscore(keys.REVIEW_AWAITING_KEY, decided) is None
        _cost, answer = _queue_cost(client, url, observer)
        assert sorted(item["sighting_id"] for item in answer["items"]) == sorted(sightings[1:])
    finally:
        _forget_decisions(client, [decided])


# --------------------------------------------------------------------------- an individual's confirmations
def _individual_cost(client, url, individual_id) -> tuple[int, dict]:
    before = _commands(client)
    answer = requests.get(f"{url}/v1/individuals/{individual_id}", headers=bearer(RESEARCHER_TOKEN), timeout=60)
    assert answer.status_code == 200, answer.text
    return _commands(client) - before, answer.json()


def test_an_individuals_page_reads_its_own_index_not_every_confirmation(front):
    from services.chain.results import store_embedding

    settings, url = front
    client = redis_of(settings)
    service = ConfirmationService(client, known=lambda: KnownIndividuals("v-test", frozenset()))
    sightings = [create_sighting(url)["sighting_id"] for _ in range(2)]
    for sighting_id in sightings:
        store_embedding(client, topics.SightingEmbedded(sighting_id=sighting_id, embedding=[0.1] * 8,
                                                        model_version="toy"))
    first, _ = service.submit(sightings[0], {"action": "new"}, researcher="dr-fluke")
    try:
        _page_cost_is_flat(client, url, service, sightings, first.individual_id)
    finally:
        _forget_decisions(client, sightings, [first.individual_id])


def _page_cost_is_flat(client, url, service, sightings, individual) -> None:

    service.submit(sightings[1], {"action": "confirm", "individual_id": individual}, researcher="dr-fluke")
    _individual_cost(client, url, individual)  # warm
    small, answer = _individual_cost(client, url, individual)
    assert sorted(s["sighting_id"] for s in answer["sightings"]) == sorted(sightings)

    others = [f"bounded-other-{uuid.uuid4().hex}" for _ in range(3000)]  # the rest of the catalogue's decisions
    with client.pipeline(transaction=False) as pipe:
        for n, sighting_id in enumerate(others):
            pipe.hset(keys.confirmation_key(sighting_id), mapping={
                "action": "confirm", "individual_id": f"someone-{n % 50}", "researcher": "dr-tail",
                "predicted": "null", "confirmed_at": repr(time.time()), "gallery_version": "v-test",
                "published": "1"})
            pipe.zadd(keys.CONFIRMATIONS_INDEX_KEY, {sighting_id: time.time()})
        pipe.execute()
    try:
        large, answer = _individual_cost(client, url, individual)
        assert sorted(s["sighting_id"] for s in answer["sightings"]) == sorted(sightings)
        assert large - small <= 5, (small, large)  # reading the whole index: 3,000 HGETALLs more
    finally:
        with client.pipeline(transaction=False) as pipe:
            for sighting_id in others:
                pipe.delete(keys.confirmation_key(sighting_id))
            pipe.zrem(keys.CONFIRMATIONS_INDEX_KEY, *others)
            pipe.execute()
