"""The reconciler on real servers (session stack: Kafka, S3, Redis, Triton): lost upload events re-driven and then
identified by a real worker and matcher (exactly once), unannounced identifications announced once, a reset topic
refilled, stuck sightings dead-lettered with a reason (`unresolved`, `object_missing`), nothing done while the
chain has a backlog, and `whaleid serve reconciler` as a process.

The module works in its own Redis databases (the worker and matcher it starts too), so the sightings of other
modules are not its business; topics that a test wants to itself are fresh names (ReconcilerTopics)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid

import boto3
import numpy as np
import pytest
import redis
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic

from services.chain import results
from services.chain.reconciler import KINDS, Reconciler, ReconcilerTopics
from services.chain.sighting_records import open_sighting
from services.core import keys, topics
from services.devtools.stack.ports import free_port
from support.chain import (
    TOY_MODEL,
    TOY_MODEL_IDS,
    ServiceProcess,
    chain_env,
    failure,
    identification,
    jpeg_bytes,
    photo,
    read_topic,
    stream_counts,
    toy_config,
    wait_announced,
    wait_until,
)

TOY = "reconciler_toy"  # the toy ensemble under its own name in the session's Triton
DB, SERVICE_DB, COST_DB = 11, 12, 13  # Redis databases: this module's chain, the reconciler process, the cost test
KNOWN = 4


def _db_url(stack, db: int) -> str:
    return stack.settings.redis_url.rsplit("/", 1)[0] + f"/{db}"


@pytest.fixture(scope="module")
def base(stack):
    """Settings of this module (its Redis database, short reconciler ages) and its Redis client."""
    settings = stack.settings.with_overrides(redis_url=_db_url(stack, DB), reconciler_stale_after_s=1.0,
                                             reconciler_announce_grace_s=1.0)
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    yield settings, client, s3
    client.close()


@pytest.fixture(scope="module")
def chain(stack, base, tmp_path_factory):
    """The toy ensemble loaded in the session's Triton as `reconciler_toy`, a gallery of random embeddings, and
    `whaleid serve worker` + `matcher` on this module's Redis database."""
    import tritonclient.grpc as grpcclient

    from services.core.identification import Tuning, build_gallery
    from services.curation.operations.gallery_versions import GalleryStore

    settings, client, s3 = base
    root = tmp_path_factory.mktemp("chain-reconciler")
    model = stack.model_repository / TOY
    (model / "1").mkdir(parents=True, exist_ok=True)
    (model / "config.pbtxt").write_text(toy_config().replace('name: "ensemble"', f'name: "{TOY}"'))
    (model / "1" / "model.py").write_text(TOY_MODEL)
    grpc = stack.settings.triton_grpc_url
    with grpcclient.InferenceServerClient(grpc) as admin:
        admin.load_model(TOY)
    services: list[ServiceProcess] = []
    try:
        models_bucket = f"models-{uuid.uuid4().hex[:8]}"
        s3.create_bucket(Bucket=models_bucket)
        store = GalleryStore.from_settings(settings.with_overrides(models_bucket=models_bucket))
        rows = np.random.default_rng(7).normal(size=(KNOWN, 512)).astype(np.float32)
        gallery = build_gallery(rows / np.linalg.norm(rows, axis=1, keepdims=True),
                                [f"whale-{i}" for i in range(KNOWN)], ["humpback_whale"] * KNOWN,
                                [f"g{i}.jpg" for i in range(KNOWN)], model_ids=list(TOY_MODEL_IDS))
        gallery.save(root / "gallery")
        Tuning(threshold=0.9).save(root / "gallery" / "tuning.json")
        version = store.publish(root / "gallery", parent=None, added_sightings=[],
                                individuals=gallery.individual_ids, size=KNOWN)
        store.set_current(version, "test_reconciler")
        env = chain_env(stack.state, root / "run", grpc, redis_url=settings.redis_url, models_bucket=models_bucket,
                        triton_model=TOY, triton_detector_model="no-detector", retry_backoff_max_s=1.0)
        services += [ServiceProcess("worker", env, root / "logs").start(),
                     ServiceProcess("matcher", env, root / "logs").start()]
        for service in services:
            service.wait_ready()
        yield settings, client, s3
    finally:
        for service in services:
            service.stop()
        with grpcclient.InferenceServerClient(grpc) as admin:
            admin.unload_model(TOY)


def fresh_topics(**names) -> ReconcilerTopics:
    tag = uuid.uuid4().hex[:8]
    return ReconcilerTopics(**{field: f"test-{field}-{tag}" for field in names})


def add_sighting(settings, client, s3, *, upload: bool = True, recorded: bool = True, age_s: float = 30.0,
                 **fields) -> str:
    """A sighting as the gateway creates it; `upload`: its photo is in S3; `recorded`: the bridge recorded the
    upload (uploaded_at) `age_s` ago, as if the event it produced was lost on the way."""
    sighting_id = uuid.uuid4().hex
    key = f"uploads/{sighting_id}.jpg"
    if upload:
        s3.put_object(Bucket=settings.sightings_bucket, Key=key, Body=jpeg_bytes(photo(hash(sighting_id) % 1000)),
                      ContentType="image/jpeg")
    record = {"metadata": json.dumps({"observer": "test", "latitude": 64.1}), "content_type": "image/jpeg",
              "bucket": settings.sightings_bucket, "key": key, "declared_size": 0,
              "created_at": time.time() - age_s - 5}
    if recorded:
        record["uploaded_at"] = time.time() - age_s
    record.update(fields)
    with client.pipeline(transaction=True) as pipe:  # the hash and the reconciler's index, as the gateway writes them
        pipe.hset(keys.sighting_key(sighting_id), mapping=record)
        open_sighting(pipe, sighting_id, record["created_at"])
        pipe.execute()
    return sighting_id


def stored_identification(client, new_individual: bool = True, age_s: float = 10.0) -> topics.Identification:
    """A matcher result written to Redis (SET NX) and nothing else: as if the matcher stopped right after."""
    candidates = [{"individual_id": "new_individual", "score": 0.8}, {"individual_id": "whale-1", "score": 0.7}]
    if not new_individual:
        candidates.reverse()
    record = topics.Identification(
        sighting_id=uuid.uuid4().hex, candidates=candidates, new_individual=new_individual, model_version="m:1",
        gallery_version="v-test", uploaded_at=time.time() - age_s - 1, identified_at=time.time() - age_s)
    return results.store_identification(client, record)


def announce_like_the_matcher(settings, client, identification: topics.Identification, names: ReconcilerTopics):
    """Topics (acknowledged), then the stream entry: what the matcher's `_publish` does."""
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        producer.send(names.identifications, key=identification.sighting_id.encode(), value=identification.to_json())
        if identification.new_individual:
            producer.send(names.new_individuals, key=identification.sighting_id.encode(),
                          value=results.new_individual_record(identification).to_json())
        producer.flush()
    finally:
        producer.close()
    assert results.announce(client, identification)


def run_until(reconciler: Reconciler, done, timeout: float = 60.0, what: str = "") -> list[dict]:
    """Passes until `done(found ids by kind so far)`; the passes' counts."""
    seen: dict[str, set[str]] = {}
    passes: list[dict] = []

    def one_pass() -> bool:
        passes.append(reconciler.run_once())
        for kind, ids in reconciler.last_found.items():
            seen.setdefault(kind, set()).update(ids)
        return done(seen)

    wait_until(one_pass, timeout, what or "the reconciler's passes", interval=0.3)
    return passes


def keyed(bootstrap: str, topic: str, key: str) -> list[dict]:
    return [value for k, value in read_topic(bootstrap, topic) if k == key]


# --------------------------------------------------------------------------- lost events, re-driven
def test_lost_upload_events_are_redriven_and_identified_exactly_once(chain):
    settings, client, s3 = chain
    lost_uploaded = add_sighting(settings, client, s3)  # the bridge's sightings.uploaded record was lost
    lost_embedded = add_sighting(settings, client, s3)  # the worker's sightings.embedded record was lost
    client.set(keys.embedded_key(lost_embedded), "reconciler_toy:1:toy")
    never_bridged = add_sighting(settings, client, s3, recorded=False)  # the S3 event never reached the bridge
    ids = [lost_uploaded, lost_embedded, never_bridged]
    with Reconciler(settings) as reconciler:
        passes = run_until(reconciler, lambda seen: set(ids) <= seen.get("redriven", set()), 60,
                           "the three sightings re-driven")
    wait_announced(client, ids, 60, "the re-driven sightings identified")
    counts = stream_counts(client)
    for sighting_id in ids:
        result = identification(client, sighting_id)
        assert result["model_version"] == "reconciler_toy:1:toy" and len(result["candidates"]) == 5
        assert counts[sighting_id] == 1, sighting_id
        sighting = {k.decode(): v.decode() for k, v in client.hgetall(keys.sighting_key(sighting_id)).items()}
        assert int(sighting["redrives"]) >= 1 and float(sighting["redriven_at"]) > 0
        assert failure(client, sighting_id) is None
    assert float(client.hget(keys.sighting_key(never_bridged), "uploaded_at")) > 0  # recorded as the bridge would
    assert all(set(p) == set(KINDS) for p in passes)
    published = [k for k, _ in read_topic(settings.kafka_bootstrap, topics.IDENTIFICATIONS)]
    assert all(published.count(sighting_id) == 1 for sighting_id in ids)


# --------------------------------------------------------------------------- announcements and topics
def test_an_unannounced_identification_is_announced_once(base):
    settings, client, _ = base
    stored = stored_identification(client, new_individual=True)
    with Reconciler(settings) as reconciler:
        first = reconciler.run_once()
        assert stored.sighting_id in reconciler.last_found.get("unannounced", [])
        assert first["unannounced"] >= 1
        assert results.is_announced(client, stored.sighting_id)
        assert stream_counts(client)[stored.sighting_id] == 1
        second = reconciler.run_once()
        assert not any(stored.sighting_id in ids for ids in reconciler.last_found.values())
        assert second["topic_resets"] == 0
    assert stream_counts(client)[stored.sighting_id] == 1
    entry = [json.loads(f[b"identification"]) for _, f in client.xrange(keys.IDENTIFICATIONS_STREAM)
             if f[b"sighting_id"].decode() == stored.sighting_id]
    assert entry == [json.loads(stored.to_json())]
    assert keyed(settings.kafka_bootstrap, topics.IDENTIFICATIONS, stored.sighting_id) == [json.loads(stored.to_json())]
    assert keyed(settings.kafka_bootstrap, topics.NEW_INDIVIDUALS, stored.sighting_id) == [
        results.new_individual_record(stored).asdict()]


def test_an_identification_not_read_yet_is_not_produced_again(base):
    """Announced a moment ago (no grace): the pass reads the topics up to their end offsets first."""
    settings, client, _ = base
    settings = settings.with_overrides(reconciler_announce_grace_s=0.0)
    with Reconciler(settings) as reconciler:
        reconciler.run_once()  # positions stored: the next pass reads only what comes after
        stored = stored_identification(client, new_individual=True, age_s=0.0)
        announce_like_the_matcher(settings, client, stored, ReconcilerTopics())
        counts = reconciler.run_once()
        assert stored.sighting_id not in reconciler.last_found.get("missing_from_topic", []), counts
    assert len(keyed(settings.kafka_bootstrap, topics.IDENTIFICATIONS, stored.sighting_id)) == 1


def test_a_reset_topic_is_detected_and_refilled_once(base):
    settings, client, _ = base
    settings = settings.with_overrides(reconciler_announce_grace_s=0.0)  # entries announced before a pass count
    names = fresh_topics(identifications=1, new_individuals=1)
    stored = stored_identification(client, new_individual=True)
    announce_like_the_matcher(settings, client, stored, names)
    bootstrap = settings.kafka_bootstrap
    with Reconciler(settings, topic_names=names) as reconciler:
        reconciler.run_once()  # reads both topics; the module's other identifications are produced to them
        assert stored.sighting_id not in reconciler.last_found.get("missing_from_topic", [])
        reconciler.run_once()
        assert stored.sighting_id not in reconciler.last_found.get("missing_from_topic", [])
        # the broker lost both topics; `identifications` comes back with other records at least as far as the
        # offsets read before (offsets alone would not tell), `new-individuals` does not come back
        positions = {int(p): json.loads(v)["next"] for p, v in
                     client.hgetall(keys.reconciler_position_key(names.identifications)).items() if p != b"partitions"}
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            admin.delete_topics([names.identifications, names.new_individuals])
        finally:
            admin.close()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", batch_size=1)
        for partition, offset in positions.items():
            for i in range(offset + 1):
                producer.send(names.identifications, key=f"filler-{i}".encode(), value=b"{}", partition=partition)
        producer.flush()
        producer.close()
        counts = reconciler.run_once()
        assert counts["topic_resets"] == 2, counts
        assert reconciler.last_found["missing_from_topic"].count(stored.sighting_id) == 2  # once per topic
        again = reconciler.run_once()
        assert again["topic_resets"] == 0 and stored.sighting_id not in reconciler.last_found.get(
            "missing_from_topic", [])
    assert keyed(bootstrap, names.identifications, stored.sighting_id) == [json.loads(stored.to_json())]
    assert keyed(bootstrap, names.new_individuals, stored.sighting_id) == [
        results.new_individual_record(stored).asdict()]
    identified = [k for k, _ in read_topic(bootstrap, names.identifications) if not k.startswith("filler-")]
    assert len(identified) == len(set(identified)), "an identification was produced twice after the reset"


# --------------------------------------------------------------------------- dead letters
def test_a_sighting_still_unresolved_after_the_redrives_is_dead_lettered(base):
    settings, client, s3 = base
    settings = settings.with_overrides(reconciler_stale_after_s=0.0, reconciler_max_redrives=2)
    names = fresh_topics(uploaded=1, dead_letter=1)  # no worker reads these re-drives: nothing comes of them
    sighting_id = add_sighting(settings, client, s3)
    with Reconciler(settings, topic_names=names, backlog=lambda: None) as reconciler:
        for _ in range(2):
            reconciler.run_once()
            assert sighting_id in reconciler.last_found["redriven"]
        counts = reconciler.run_once()
        assert sighting_id in reconciler.last_found["unresolved"] and counts["unresolved"] >= 1
        reconciler.run_once()
        assert not any(sighting_id in ids for ids in reconciler.last_found.values())
    assert failure(client, sighting_id)["reason"] == "unresolved"
    assert failure(client, sighting_id)["stage"] == "reconciler"
    assert "2 re-drive" in failure(client, sighting_id)["detail"]
    redrives = keyed(settings.kafka_bootstrap, names.uploaded, sighting_id)
    assert len(redrives) == 2 and all(r["event_name"] == "whaleid:Redrive" for r in redrives)
    assert redrives[0]["metadata"] == {"observer": "test", "latitude": 64.1}
    assert redrives[0]["key"] == f"uploads/{sighting_id}.jpg" and redrives[0]["size"] > 0
    letters = keyed(settings.kafka_bootstrap, names.dead_letter, sighting_id)
    assert [(d["stage"], d["reason"]) for d in letters] == [("reconciler", "unresolved")]


def test_a_vanished_photo_is_dead_lettered_and_an_awaited_one_left_alone(base):
    settings, client, s3 = base
    names = fresh_topics(uploaded=1, dead_letter=1)
    vanished = add_sighting(settings, client, s3, upload=False)  # uploaded, then gone from S3
    awaited = add_sighting(settings, client, s3, upload=False, recorded=False)  # the app has not uploaded yet
    with Reconciler(settings, topic_names=names, backlog=lambda: None) as reconciler:
        reconciler.run_once()
        assert vanished in reconciler.last_found["object_missing"]
        assert awaited in reconciler.last_found["awaiting_upload"]
        reconciler.run_once()
        assert awaited in reconciler.last_found["awaiting_upload"]
    assert failure(client, vanished)["reason"] == "object_missing"
    assert failure(client, awaited) is None and not client.hexists(keys.sighting_key(awaited), "redrives")
    letters = keyed(settings.kafka_bootstrap, names.dead_letter, vanished)
    assert [(d["stage"], d["reason"]) for d in letters] == [("reconciler", "object_missing")]
    assert letters[0]["original"]["key"] == f"uploads/{vanished}.jpg" and letters[0]["detail"]
    assert read_topic(settings.kafka_bootstrap, names.uploaded, timeout_s=1.0) == []


def test_nothing_is_redriven_again_or_given_up_while_the_chain_has_a_backlog(base):
    """The re-drive goes to a topic no worker consumes: the worker group is behind on it from then on."""
    settings, client, s3 = base
    settings = settings.with_overrides(reconciler_stale_after_s=0.0, reconciler_max_redrives=1)
    names = fresh_topics(uploaded=1, dead_letter=1)
    sighting_id = add_sighting(settings, client, s3)
    with Reconciler(settings, topic_names=names) as reconciler:
        run_until(reconciler, lambda seen: sighting_id in seen.get("redriven", set()), 60, "the re-drive")
        for _ in range(2):
            counts = reconciler.run_once()
            assert sighting_id in reconciler.last_found["deferred"] and counts["deferred"] >= 1
    assert failure(client, sighting_id) is None
    assert client.hget(keys.sighting_key(sighting_id), "redrives") == b"1"


def test_a_group_that_committed_inside_the_last_batch_is_behind(base):
    """Two batches of 10 and 5 records: Tansu lists the end as 11 (the last batch's base offset + 1), the fetch's
    high-water mark is 15. A group committed at 11 is 4 records behind, not caught up."""
    from kafka import TopicPartition
    from kafka.structs import OffsetAndMetadata

    from services.chain.reconciler import kafka_io

    settings, _, _ = base
    topic, group = f"test-lag-{uuid.uuid4().hex[:8]}", f"test-lag-group-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        admin.close()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5000,
                             batch_size=1 << 20)
    try:
        for count in (10, 5):  # lingering until flush: each round is one batch
            for i in range(count):
                producer.send(topic, key=f"k{i}".encode(), value=b"v" * 200, partition=0)
            producer.flush()
    finally:
        producer.close()
    tp = TopicPartition(topic, 0)
    reader = kafka_io.kafka_consumer(settings)
    committer = kafka_io.kafka_consumer(settings, group_id=group)
    lag = kafka_io.GroupLag(settings, reader, [(group, topic)])
    try:
        listed = reader.end_offsets([tp])[tp]
        assert listed in (11, 15)  # 11 on Tansu; a broker with exact end offsets lists 15
        for committed, expected in ((11, f"{group} is 4 record(s) behind on {topic}"),
                                    (0, f"{group} is 15 record(s) behind on {topic}"), (15, None)):
            committer.commit({tp: OffsetAndMetadata(committed, "", -1)})
            assert lag.behind() == expected, committed
    finally:
        lag.close()
        committer.close()
        reader.close()


# --------------------------------------------------------------------------- the process
def test_serve_reconciler_runs_passes_and_serves_metrics(stack, tmp_path):
    client = redis.Redis.from_url(_db_url(stack, SERVICE_DB))
    client.flushdb()
    stored = stored_identification(client, new_individual=False)
    port = free_port()
    env = chain_env(stack.state, tmp_path / "run", redis_url=_db_url(stack, SERVICE_DB), reconciler_interval_s=0.5,
                    reconciler_announce_grace_s=1.0)
    service = ServiceProcess("reconciler", env, tmp_path / "logs", metrics_port=port).start()
    try:
        service.wait_ready(60)
        wait_announced(client, [stored.sighting_id], 30, "the reconciler process announcing the identification")

        def scraped() -> str:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                return response.read().decode()

        wait_until(lambda: 'whaleid_reconciler_found_total{kind="unannounced"} 1.0' in scraped(), 30,
                   "the found counter on /metrics")
        text = scraped()
        assert "whaleid_reconciler_last_pass_timestamp_seconds" in text
        assert 'whaleid_reconciler_sightings{state="pending"}' in text
        assert "unannounced 1" in service.log_text(since_start=True)  # the pass's progress line
    finally:
        service.stop()
    assert service.proc.returncode == 0, service.tail()
    assert stream_counts(client)[stored.sighting_id] == 1
    client.flushdb()
    client.close()


def test_serve_reconciler_refuses_the_faust_options():
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "serve", "reconciler", "--index", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "`serve reconciler` does not use --index: it takes --config, --metrics-port" in done.stderr


def test_a_lease_its_own_pass_could_not_release_does_not_lock_the_reconciler_out(stack):
    """Redis went away mid-pass: the release failed, and Redis came back with the lease from its append-only
    file. The same reconciler takes it again at once; another one still waits until it is released."""
    from services.chain.reconciler.state import Lease

    client = redis.Redis.from_url(_db_url(stack, 13))
    client.delete(keys.RECONCILER_LEASE_KEY)
    mine, other = Lease(client, 120), Lease(client, 120)
    assert mine.acquire()
    client.pexpire(keys.RECONCILER_LEASE_KEY, 60_000)  # time passed; the pass died before its release
    assert mine.acquire() and client.pttl(keys.RECONCILER_LEASE_KEY) > 60_000  # taken again, its time renewed
    assert not other.acquire()
    mine.release()
    assert other.acquire() and not mine.acquire()
    other.release()
    assert client.get(keys.RECONCILER_LEASE_KEY) is None


def test_a_reconciler_killed_mid_pass_locks_the_next_one_out_for_seconds_not_minutes(stack):
    """The pass lease is short and renewed by a heartbeat while a pass runs: a long pass keeps it, and the lease
    of a reconciler killed mid-pass (no release, no heartbeat) expires within LEASE_TTL_S (it was 120 s: the
    scenarios after `kill_reconciler` waited that long for their re-drives)."""
    from services.chain.reconciler.reconciler import LEASE_TTL_S, _Heartbeat
    from services.chain.reconciler.state import Lease

    assert LEASE_TTL_S <= 15
    client = redis.Redis.from_url(_db_url(stack, 13))
    client.delete(keys.RECONCILER_LEASE_KEY)
    killed, successor = Lease(client, 1.0), Lease(client, 1.0)
    assert killed.acquire()
    heartbeat = _Heartbeat(killed, 0.2).start()
    time.sleep(2.0)  # a pass twice as long as the lease
    assert not successor.acquire()  # still held: the heartbeat renewed it
    heartbeat.stop()  # the process dies: nobody renews or releases it
    time.sleep(1.6)  # its last renewal was at most 0.2 s before: it expires within 1.0 s of that
    assert successor.acquire()
    successor.release()


# --------------------------------------------------------------------------- cost of a pass
class _CountingConnection(redis.Connection):
    """Counts the commands sent (one by one and in pipelines) by the clients of one pool."""

    sent: list[str] = []

    def send_command(self, *args, **kwargs):
        type(self).sent.append(str(args[0]).upper())
        return super().send_command(*args, **kwargs)

    def pack_commands(self, commands):
        type(self).sent.extend(str(command[0]).upper() for command in commands)
        return super().pack_commands(commands)


def test_a_pass_costs_what_is_open_not_what_redis_holds(base):
    """Issue 22 item 5: the reconciler reads its indexes (`sightings:open`, `identifications:unannounced`), never a
    scan of every key. 20,000 resolved sightings in the index are dropped by one pass; then a pass with those
    keys (and 20,000 announced results) in Redis sends the same commands as a pass over an empty database."""
    settings = base[0].with_overrides(redis_url=base[0].redis_url.rsplit("/", 1)[0] + f"/{COST_DB}")
    db = redis.Redis.from_url(settings.redis_url)
    db.flushdb()
    pool = redis.ConnectionPool(connection_class=_CountingConnection, **db.connection_pool.connection_kwargs)
    counted = redis.Redis(connection_pool=pool)
    names = fresh_topics(uploaded=1, dead_letter=1, identifications=1, new_individuals=1)

    def one_pass(reconciler) -> list[str]:
        _CountingConnection.sent = []
        counts = reconciler.run_once()
        assert counts["errors"] == 0, reconciler.last_findings.summary()
        return sorted(_CountingConnection.sent)

    try:
        with Reconciler(settings, redis_client=counted, topic_names=names, backlog=lambda: None) as reconciler:
            one_pass(reconciler)  # the connection's own set-up commands
            empty = one_pass(reconciler)
            now = time.time()
            with db.pipeline(transaction=False) as pipe:
                for n in range(20_000):
                    sighting_id = f"resolved-{n}"
                    pipe.hset(keys.sighting_key(sighting_id), mapping={"created_at": now - 60, "uploaded_at": now - 60})
                    open_sighting(pipe, sighting_id, now - 60)
                    pipe.set(results.identification_key(sighting_id), "{}")
                    pipe.set(keys.announced_key(sighting_id), "1")
                pipe.execute()
            one_pass(reconciler)  # drops them from the index, all resolved
            assert db.zcard(keys.OPEN_SIGHTINGS_KEY) == 0
            assert db.dbsize() >= 60_000
            full = one_pass(reconciler)
        assert "SCAN" not in full and "KEYS" not in full
        assert full == empty, (len(full), len(empty))
    finally:
        db.flushdb()
        counted.close()
        db.close()
