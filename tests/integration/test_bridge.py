"""The front of the chain on real servers: app -> gateway -> presigned PUT -> S3 event (SQS) -> bridge -> Kafka."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from urllib.parse import quote_plus

import pytest
import requests
from kafka.errors import KafkaError

from services.chain.bridge.bridge import UploadBridge
from services.chain.bridge.clients import kafka_producer
from services.chain.bridge.dedupe import Claim, Deduplicator
from services.chain.bridge.liveness import Liveness
from services.core import keys, topics
from support.front import (
    JPEG_BYTES,
    MAX_UPLOAD_BYTES,
    TOKEN,
    TopicReader,
    aws,
    create_sighting,
    front_settings,
    redis_of,
    start_bridge,
    start_gateway,
    upload,
)


@pytest.fixture(scope="module")
def chain(moto_stack, tmp_path_factory):
    """The AWS shape (S3 -> SQS -> bridge): moto is the only SQS here, so this module asks for the moto stack."""
    run_dir = tmp_path_factory.mktemp("bridge-stack")
    exits = {}
    with contextlib.ExitStack() as cleanup:
        settings = front_settings(moto_stack)
        gateway, url = start_gateway(settings, run_dir)
        cleanup.callback(lambda: exits.setdefault("gateway", gateway.stop()))
        bridge = start_bridge(settings, run_dir)
        cleanup.callback(lambda: exits.setdefault("bridge", bridge.stop()))
        uploaded = TopicReader(settings.kafka_bootstrap, topics.SIGHTINGS_UPLOADED)
        cleanup.callback(uploaded.close)
        dead = TopicReader(settings.kafka_bootstrap, topics.DEAD_LETTER)
        cleanup.callback(dead.close)
        yield {"settings": settings, "url": url, "uploaded": uploaded, "dead": dead, "bridge": bridge}
    assert exits == {"bridge": 0, "gateway": 0}, f"not stopped cleanly on SIGTERM:\n{bridge.log_text()}"


def _for(sighting_id):
    return lambda key, value: value.get("sighting_id") == sighting_id


def _event_body(settings, key: str, size: int, etag: str, event_name: str = "ObjectCreated:Put") -> str:
    """The S3 event JSON S3 sends to SQS for one object (key URL-encoded as S3 does)."""
    return json.dumps({"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": "2026-11-27T04:00:00.000Z",
        "eventName": event_name,
        "s3": {"bucket": {"name": settings.sightings_bucket},
               "object": {"key": quote_plus(key, safe="/"), "size": size, "eTag": etag}}}]})


def _send(settings, body: str, queue: str | None = None) -> None:
    sqs = aws(settings, "sqs")
    sqs.send_message(QueueUrl=sqs.get_queue_url(QueueName=queue or settings.upload_events_queue)["QueueUrl"],
                     MessageBody=body)


def test_upload_through_the_gateway_produces_one_record_with_metadata(chain):
    settings, url = chain["settings"], chain["url"]
    created = create_sighting(chain["url"], crop_box=[5, 6, 70, 80], species_hint="fin_whale", size=len(JPEG_BYTES))
    assert upload(created, JPEG_BYTES).status_code == 200

    records = chain["uploaded"].matching(_for(created["sighting_id"]), expected=1)
    assert len(records) == 1
    record = topics.SightingUploaded.from_json(json.dumps(records[0]))
    assert record.key == created["key"] and record.bucket == settings.sightings_bucket
    assert record.size == len(JPEG_BYTES) and record.event_name.endswith("ObjectCreated:Put")
    assert record.metadata["crop_box"] == [5.0, 6.0, 70.0, 80.0]
    assert record.metadata["species_hint"] == "fin_whale" and record.metadata["observer"] == "app-user-7"
    assert record.uploaded_at > 0

    status = requests.get(f"{url}/v1/sightings/{created['sighting_id']}",
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()
    assert status["status"] == "pending" and status["uploaded_at"] >= status["created_at"]


def test_url_encoded_key_with_spaces_and_plus_is_decoded(chain):
    settings = chain["settings"]
    sighting_id = f"whale 7+{uuid.uuid4().hex[:6]}"
    redis_of(settings).hset(keys.sighting_key(sighting_id), mapping={"metadata": json.dumps({"observer": "ship"})})
    aws(settings, "s3").put_object(Bucket=settings.sightings_bucket, Key=f"uploads/{sighting_id}.jpg",
                                   Body=JPEG_BYTES, ContentType="image/jpeg")
    records = chain["uploaded"].matching(_for(sighting_id), expected=1)
    assert [r["key"] for r in records] == [f"uploads/{sighting_id}.jpg"]
    assert records[0]["metadata"] == {"observer": "ship"}


def test_redelivered_event_and_multipart_upload_produce_one_record_each(chain):
    settings = chain["settings"]
    s3 = aws(settings, "s3")
    created = create_sighting(chain["url"])
    assert upload(created, JPEG_BYTES).status_code == 200
    assert len(chain["uploaded"].matching(_for(created["sighting_id"]), expected=1, settle=0.2)) == 1
    etag = s3.head_object(Bucket=settings.sightings_bucket, Key=created["key"])["ETag"].strip('"')
    for _ in range(2):  # SQS redelivers the same body
        _send(settings, _event_body(settings, created["key"], len(JPEG_BYTES), etag))

    multipart = create_sighting(chain["url"])
    upload_id = s3.create_multipart_upload(Bucket=settings.sightings_bucket, Key=multipart["key"],
                                           ContentType="image/jpeg")["UploadId"]
    part = s3.upload_part(Bucket=settings.sightings_bucket, Key=multipart["key"], UploadId=upload_id,
                          PartNumber=1, Body=JPEG_BYTES)
    s3.complete_multipart_upload(Bucket=settings.sightings_bucket, Key=multipart["key"], UploadId=upload_id,
                                 MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]})

    assert len(chain["uploaded"].matching(_for(multipart["sighting_id"]), expected=1, settle=2.0)) == 1
    assert len(chain["uploaded"].matching(_for(created["sighting_id"]), expected=1, settle=0)) == 1
    metrics = requests.get(chain["bridge"].metrics_url, timeout=5).text
    assert 'whaleid_events_total{outcome="duplicate",stage="bridge"} 3.0' in metrics


def test_malformed_and_refused_events_are_dead_lettered_and_the_stream_goes_on(chain):
    settings = chain["settings"]
    marker = uuid.uuid4().hex
    _send(settings, f"not json {marker}")
    _send(settings, json.dumps({"Records": [{"eventName": "ObjectCreated:Put", "marker": marker}]}))
    s3 = aws(settings, "s3")
    s3.put_object(Bucket=settings.sightings_bucket, Key=f"other/{marker}.jpg", Body=b"x")
    s3.put_object(Bucket=settings.sightings_bucket, Key=f"uploads/{marker}.jpg", Body=b"x")  # no sighting
    too_big = create_sighting(chain["url"])  # no declared size: the bridge enforces the limit
    assert upload(too_big, b"\xff" * (MAX_UPLOAD_BYTES + 1)).status_code == 200
    good = create_sighting(chain["url"])
    assert upload(good, JPEG_BYTES).status_code == 200

    letters = chain["dead"].matching(
        lambda key, value: marker in json.dumps(value) or value.get("sighting_id") == too_big["sighting_id"],
        expected=5)
    by_reason = {letter["reason"]: letter for letter in letters}  # reason: the short code, as worker and matcher
    assert sorted(by_reason) == ["bad_key", "missing_field", "not_json", "too_large", "unknown_sighting"], letters
    assert all(letter["stage"] == "bridge" for letter in letters)
    assert by_reason["not_json"]["original"] == f"not json {marker}"
    assert by_reason["not_json"]["detail"].startswith("the message is not JSON")
    assert by_reason["missing_field"]["detail"] == "record has no s3.bucket.name"
    assert by_reason["missing_field"]["original"]["marker"] == marker
    assert f"{MAX_UPLOAD_BYTES + 1} bytes > limit {MAX_UPLOAD_BYTES}" == by_reason["too_large"]["detail"]
    assert by_reason["unknown_sighting"]["sighting_id"] == marker and marker in by_reason["unknown_sighting"]["detail"]
    assert by_reason["bad_key"]["original"]["s3"]["object"]["key"] == f"other%2F{marker}.jpg"  # as S3 sent it
    assert by_reason["bad_key"]["detail"] == f"key 'other/{marker}.jpg' is not under uploads/"
    assert len(chain["uploaded"].matching(_for(good["sighting_id"]), expected=1)) == 1
    assert chain["uploaded"].matching(_for(too_big["sighting_id"]), expected=0, settle=0) == []

    status = requests.get(f"{chain['url']}/v1/sightings/{too_big['sighting_id']}",
                          headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5).json()
    assert status["status"] == "failed" and status["failure"]["reason"] == "too_large"


def test_claims_make_redelivery_safe(chain):
    dedupe = Deduplicator(redis_of(chain["settings"]), claim_ttl_s=60, done_ttl_s=600)
    key = f"uploads/{uuid.uuid4().hex}.jpg"
    assert dedupe.claim(key, "etag-1") is Claim.NEW
    assert dedupe.claim(key, "etag-1") is Claim.IN_FLIGHT  # someone is producing it: keep the message
    dedupe.release(key, "etag-1")  # the producer failed
    assert dedupe.claim(key, "etag-1") is Claim.NEW
    dedupe.done(key, "etag-1")
    assert dedupe.claim(key, "etag-1") is Claim.DUPLICATE
    assert dedupe.claim(key, "etag-2") is Claim.NEW  # a different upload of the same key


def test_kafka_failure_keeps_the_message_until_it_is_produced(chain):
    """At least once: when producing fails, the message stays in the queue and is produced on the next poll."""
    settings = chain["settings"].with_overrides(upload_events_queue=f"bridge-retry-{uuid.uuid4().hex[:8]}",
                                                bridge_poll_wait_s=1)
    sqs = aws(settings, "sqs")
    queue_url = sqs.create_queue(QueueName=settings.upload_events_queue,
                                 Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    created = create_sighting(chain["url"])
    _send(settings, _event_body(settings, created["key"], 10, "etag-retry"))

    broken = kafka_producer(settings)
    broken.close()  # a producer that can no longer send: every record fails
    bridge = UploadBridge(settings, sqs, queue_url, redis_of(settings), broken)
    with pytest.raises(KafkaError):
        bridge.poll_once()
    assert chain["uploaded"].matching(_for(created["sighting_id"]), expected=0, settle=0.5) == []

    bridge.producer = kafka_producer(settings)
    try:
        stop = threading.Event()
        runner = threading.Thread(target=bridge.run, args=(stop,))
        runner.start()
        records = chain["uploaded"].matching(_for(created["sighting_id"]), expected=1, timeout=15)
        stop.set()
        runner.join(10)
    finally:
        bridge.producer.close()
    assert len(records) == 1 and records[0]["size"] == 10
    time.sleep(1.2)  # past the visibility timeout: the message was deleted, nothing comes back
    assert sqs.receive_message(QueueUrl=queue_url, WaitTimeSeconds=0).get("Messages") is None


def test_one_receive_is_handled_as_a_batch_with_repeats_and_foreign_claims(chain):
    """Ten messages at a time: a repeat inside the batch is a duplicate, an upload claimed by another bridge keeps
    its message in the queue (and only that one), the rest is produced with one flush and deleted together."""
    settings = chain["settings"].with_overrides(upload_events_queue=f"bridge-batch-{uuid.uuid4().hex[:8]}")
    sqs = aws(settings, "sqs")
    queue_url = sqs.create_queue(QueueName=settings.upload_events_queue,
                                 Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    mine, foreign = create_sighting(chain["url"]), create_sighting(chain["url"])
    marker = uuid.uuid4().hex
    other_bridge = Deduplicator(redis_of(settings), claim_ttl_s=60, done_ttl_s=600)
    other_alive = Liveness(redis_of(settings), other_bridge.owner, 60)
    other_alive.start()  # a live bridge: its claim is left alone
    assert other_bridge.claim(foreign["key"], "etag-foreign") is Claim.NEW
    bodies = [_event_body(settings, mine["key"], 10, "etag-mine"), _event_body(settings, mine["key"], 10, "etag-mine"),
              _event_body(settings, foreign["key"], 10, "etag-foreign"), f"not json {marker}"]
    sqs.send_message_batch(QueueUrl=queue_url,
                           Entries=[{"Id": str(i), "MessageBody": body} for i, body in enumerate(bodies)])

    bridge = UploadBridge(settings, sqs, queue_url, redis_of(settings), kafka_producer(settings))
    try:
        assert bridge.poll_once() == 4
        assert {k: bridge.totals[k] for k in ("produced", "duplicate", "in_flight", "dead_letter", "messages")} == {
            "produced": 1, "duplicate": 1, "in_flight": 1, "dead_letter": 1, "messages": 4}
        assert len(chain["uploaded"].matching(_for(mine["sighting_id"]), expected=1, settle=0.3)) == 1
        assert chain["dead"].matching(lambda key, value: marker in json.dumps(value), expected=1, settle=0)
        time.sleep(1.2)  # past the visibility timeout: only the foreign upload's message is back
        back = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)["Messages"]
        assert [json.loads(m["Body"])["Records"][0]["s3"]["object"]["key"] for m in back] == [
            quote_plus(foreign["key"], safe="/")]
        other_bridge.release(foreign["key"], "etag-foreign")  # the other bridge failed: ours produces it now
        time.sleep(1.2)
        assert bridge.poll_once() == 1
        assert len(chain["uploaded"].matching(_for(foreign["sighting_id"]), expected=1, settle=0.3)) == 1
    finally:
        other_alive.stop()
        bridge.producer.close()


def test_a_dead_bridges_claim_is_taken_over_and_produced_at_once(chain):
    """kill_bridge's case: a bridge claimed an upload and died (SIGKILL) before marking it done; its liveness key is
    gone, so the next bridge takes the claim over at once (outcome taken_over) instead of waiting bridge_claim_ttl_s."""
    settings = chain["settings"].with_overrides(upload_events_queue=f"bridge-dead-{uuid.uuid4().hex[:8]}")
    sqs = aws(settings, "sqs")
    queue_url = sqs.create_queue(QueueName=settings.upload_events_queue,
                                 Attributes={"VisibilityTimeout": "1"})["QueueUrl"]
    created = create_sighting(chain["url"])
    dead_bridge = Deduplicator(redis_of(settings), claim_ttl_s=120, done_ttl_s=600)
    assert dead_bridge.claim(created["key"], "etag-dead") is Claim.NEW  # and no bridge:alive:<its owner> key
    _send(settings, _event_body(settings, created["key"], 10, "etag-dead"))

    bridge = UploadBridge(settings, sqs, queue_url, redis_of(settings), kafka_producer(settings))
    try:
        assert bridge.poll_once() == 1
        assert {k: bridge.totals[k] for k in ("produced", "taken_over", "in_flight")} == {
            "produced": 1, "taken_over": 1, "in_flight": 0}
        assert len(chain["uploaded"].matching(_for(created["sighting_id"]), expected=1, settle=0.3)) == 1
        assert redis_of(settings).get(keys.bridge_seen_key(created["key"], "etag-dead")) == b"done"
    finally:
        bridge.producer.close()
