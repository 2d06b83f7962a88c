"""The Faust worker on real servers (session stack: Kafka, S3, Redis) with a dedicated Triton serving the toy
ensemble (tests/support/chain.py) and a real matcher behind it: hostile uploads, duplicates, the crop step,
a SIGKILLed worker, Triton down and back, Triton overloaded (timeouts), the ensemble reloaded with another
model (version refreshed, sightings parked until a gallery of that model is served), TTLs on every key."""

from __future__ import annotations

import json
import time
import urllib.request
import uuid

import boto3
import numpy as np
import pytest
import redis
from kafka import KafkaProducer

from services.core import keys, topics
from services.devtools.stack.ports import free_port
from support.chain import (
    TOY_MODEL_IDS,
    ServiceProcess,
    chain_env,
    failure,
    identification,
    jpeg_bytes,
    make_slow,
    parked,
    photo,
    png_bomb,
    png_bytes,
    read_topic,
    slow_calls_left,
    stream_counts,
    toy_config,
    truncated_jpeg,
    uploaded_event,
    wait_announced,
    wait_until,
    write_toy_repository,
)

KNOWN = 6  # gallery individuals (toy photos 0..5)
MAX_UPLOAD = 300_000
TRITON_TIMEOUT_S = 2.0  # the worker's triton_timeout_s: the overload test's slow calls take longer
TTLS = {"redis_result_ttl_s": 3 * 86400, "redis_embedding_ttl_s": 4 * 86400, "redis_marker_ttl_s": 2 * 86400}


@pytest.fixture(scope="module")
def chain(stack, tmp_path_factory):
    """Toy Triton + gallery of the toy photos + `whaleid serve worker` and `matcher` subprocesses."""
    from services.curation.operations.gallery_versions import GalleryStore
    from services.devtools.stack.triton import launch_triton
    from services.serving.triton_client import EmbeddingClient

    root = tmp_path_factory.mktemp("chain-worker")
    repository = write_toy_repository(root / "repo", detector=True)
    triton = launch_triton(repository, root / "triton")
    services: list[ServiceProcess] = []
    handle = None
    try:
        triton.wait_healthy(90)
        settings = stack.settings.with_overrides(models_bucket=f"models-{uuid.uuid4().hex[:8]}",
                                                 triton_grpc_url=triton.grpc, max_upload_bytes=MAX_UPLOAD)
        s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=settings.models_bucket)
        with EmbeddingClient(triton.grpc) as client:
            client.wait_ready(60)
            embeddings = client.embed([png_bytes(photo(i)) for i in range(KNOWN)])
        store = GalleryStore.from_settings(settings)
        publish_toy_gallery(store, embeddings, root / "gallery", TOY_MODEL_IDS)

        env = chain_env(stack.state, root / "run", triton.grpc, models_bucket=settings.models_bucket,
                        max_upload_bytes=MAX_UPLOAD, retry_backoff_max_s=1.0, triton_timeout_s=TRITON_TIMEOUT_S,
                        **TTLS)
        worker = ServiceProcess("worker", env, root / "logs").start()
        matcher = ServiceProcess("matcher", env, root / "logs").start()
        services += [worker, matcher]
        worker.wait_ready()
        matcher.wait_ready()
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        handle = Chain(settings, s3, producer, redis.Redis.from_url(settings.redis_url), worker, matcher, triton,
                       repository, root)
        handle.store, handle.embeddings = store, embeddings
        yield handle
        producer.close()
    finally:
        for service in services:
            service.stop()
        triton.stop()
        if handle is not None and handle.triton is not triton:  # restarted by the Triton test
            handle.triton.stop()


def publish_toy_gallery(store, embeddings, folder, model_ids) -> str:
    """The toy photos 0..KNOWN-1 as whale-0.., recorded as made by the export models `model_ids`; made current."""
    from services.core.identification import Tuning, build_gallery

    gallery = build_gallery(embeddings, [f"whale-{i}" for i in range(KNOWN)], ["humpback_whale"] * KNOWN,
                            [f"g{i}.jpg" for i in range(KNOWN)], model_ids=list(model_ids))
    gallery.save(folder)
    Tuning(threshold=0.9).save(folder / "tuning.json")
    version = store.publish(folder, parent=store.current_version(), added_sightings=[],
                            individuals=gallery.individual_ids, size=len(gallery))
    store.set_current(version, "test_worker")
    return version


def assert_ttl(client, key: str, bound_s: int) -> None:
    """`key` exists and expires within `bound_s` (set moments ago: close to the bound)."""
    ttl = client.ttl(key)
    assert bound_s - 600 < ttl <= bound_s, f"{key}: TTL {ttl}, configured {bound_s}"


class Chain:
    def __init__(self, settings, s3, producer, redis_client, worker, matcher, triton, repository, root):
        self.settings, self.s3, self.producer, self.redis = settings, s3, producer, redis_client
        self.worker, self.matcher, self.triton, self.repository, self.root = worker, matcher, triton, repository, root

    def upload(self, data: bytes, content_type: str = "image/jpeg", metadata: dict | None = None,
               put: bool = True, sighting_id: str | None = None, partition_key: str | None = None) -> str:
        """Put the object in S3 and produce its sightings.uploaded event (as the bridge would). The Kafka key is
        the sighting id unless `partition_key` puts the event behind another one of the same partition."""
        sighting_id = sighting_id or uuid.uuid4().hex
        key = f"uploads/{sighting_id}.jpg"
        if put:
            self.s3.put_object(Bucket=self.settings.sightings_bucket, Key=key, Body=data, ContentType=content_type)
        self.send(uploaded_event(sighting_id, self.settings.sightings_bucket, key, metadata),
                  partition_key or sighting_id)
        return sighting_id

    def send(self, value: bytes, key: str = "x") -> None:
        self.producer.send(topics.SIGHTINGS_UPLOADED, key=key.encode(), value=value)
        self.producer.flush()

    def wait_identified(self, sighting_ids, timeout: float = 60.0) -> None:
        """Until the matcher has finished each sighting: result key, topics, then the stream entry."""
        wait_announced(self.redis, sighting_ids, timeout, f"{len(sighting_ids)} announced identifications")


def test_good_uploads_are_identified_with_the_full_record(chain):
    ids = [chain.upload(jpeg_bytes(photo(i))) for i in range(3)]
    unknown = chain.upload(jpeg_bytes(photo(1000)))
    chain.wait_identified(ids + [unknown])
    for i, sighting_id in enumerate(ids):
        result = identification(chain.redis, sighting_id)
        assert result["candidates"][0]["individual_id"] == f"whale-{i}"
        assert len(result["candidates"]) == 5
        scores = [c["score"] for c in result["candidates"] if c["individual_id"] != "new_individual"]
        assert scores == sorted(scores, reverse=True)
        assert result["new_individual"] is False
        assert result["model_version"] == "ensemble:1:toy"
        assert result["gallery_version"].startswith("v")
        assert 0 < result["uploaded_at"] <= result["identified_at"]
    assert identification(chain.redis, unknown)["new_individual"] is True
    stored = chain.redis.get(keys.embedding_key(ids[0]))
    embedding = np.asarray(topics.SightingEmbedded.from_json(stored).embedding)
    assert embedding.shape == (512,) and abs(np.linalg.norm(embedding) - 1) < 1e-4
    new_individuals = {key for key, _ in read_topic(chain.settings.kafka_bootstrap, topics.NEW_INDIVIDUALS)}
    assert unknown in new_individuals and not set(ids) & new_individuals
    # bounded state: every key the worker and the matcher wrote expires within its configured TTL (the worker's
    # marker comes after the produce was acknowledged: possibly after the matcher's announcement)
    wait_until(lambda: all(chain.redis.exists(keys.embedded_key(s)) for s in ids), 30, "the worker's embedded markers")
    for sighting_id in ids:
        assert_ttl(chain.redis, keys.embedded_key(sighting_id), TTLS["redis_marker_ttl_s"])
        assert_ttl(chain.redis, keys.announced_key(sighting_id), TTLS["redis_marker_ttl_s"])
        assert_ttl(chain.redis, keys.identification_key(sighting_id), TTLS["redis_result_ttl_s"])
        assert_ttl(chain.redis, keys.embedding_key(sighting_id), TTLS["redis_embedding_ttl_s"])
    assert_ttl(chain.redis, "model-version:ensemble:1:toy", TTLS["redis_embedding_ttl_s"])


def test_hostile_uploads_go_to_the_dead_letter_topic_with_reasons(chain):
    good = chain.upload(jpeg_bytes(photo(2)))
    hostile = {
        "not_an_image": chain.upload(b"#!/bin/sh\necho this is not a photo\n", "application/octet-stream"),
        "truncated": chain.upload(truncated_jpeg()),
        "empty": chain.upload(b""),
        "too_many_pixels": chain.upload(png_bomb(), "image/png"),
        "wrong_content_type": chain.upload(jpeg_bytes(photo(3)), "text/html"),
        "missing_object": chain.upload(b"", put=False),
        "too_large": chain.upload(np.random.default_rng(0).bytes(MAX_UPLOAD + 1)),
        "bad_box": chain.upload(jpeg_bytes(photo(4)), metadata={"crop_box": [500, 500, 900, 900]}),
    }
    chain.send(b"{not json", key="garbage")
    chain.wait_identified([good])
    wait_until(lambda: all(failure(chain.redis, s) for s in hostile.values()), 60, "every hostile upload's failure")
    for reason, sighting_id in hostile.items():
        assert failure(chain.redis, sighting_id)["reason"] == reason, sighting_id
        assert identification(chain.redis, sighting_id) is None
    letters = read_topic(chain.settings.kafka_bootstrap, topics.DEAD_LETTER)
    by_id = {value["sighting_id"]: value for _, value in letters if value}
    for reason, sighting_id in hostile.items():
        assert by_id[sighting_id]["reason"] == reason
        assert by_id[sighting_id]["stage"] == "worker"
        assert by_id[sighting_id]["original"]["sighting_id"] == sighting_id
        assert by_id[sighting_id]["detail"]
    assert any(v["reason"] == "malformed_event" and v["original"] == "{not json" for _, v in letters)
    assert identification(chain.redis, good)["candidates"][0]["individual_id"] == "whale-2"
    for sighting_id in hostile.values():
        assert_ttl(chain.redis, keys.failure_key(sighting_id), TTLS["redis_marker_ttl_s"])


def test_duplicate_events_give_one_identification(chain):
    sighting_id = chain.upload(jpeg_bytes(photo(5)))
    event = uploaded_event(sighting_id, chain.settings.sightings_bucket, f"uploads/{sighting_id}.jpg")
    for _ in range(3):
        chain.send(event, sighting_id)
    chain.wait_identified([sighting_id])
    first = identification(chain.redis, sighting_id)
    chain.send(event, sighting_id)  # a late re-delivery after the result exists
    # Events are handled in order per partition: a later event with the same key has its result only after the
    # worker handled the re-delivery.
    marker = chain.upload(jpeg_bytes(photo(0)), partition_key=sighting_id)
    chain.wait_identified([marker])
    assert identification(chain.redis, sighting_id) == first
    assert stream_counts(chain.redis)[sighting_id] == 1
    embedded = [k for k, _ in read_topic(chain.settings.kafka_bootstrap, topics.SIGHTINGS_EMBEDDED) if k == sighting_id]
    identified = [k for k, _ in read_topic(chain.settings.kafka_bootstrap, topics.IDENTIFICATIONS) if k == sighting_id]
    assert len(identified) == 1, f"{len(identified)} identifications from {len(embedded)} embedded events"
    assert len(embedded) == 1


def test_crop_step_uploader_box_then_detector_then_whole_image(chain):
    scene = np.zeros((300, 400, 3), dtype=np.uint8)
    scene[100:250, 150:350] = photo(1, (200, 150))  # the animal on a dark sea
    boxed = chain.upload(jpeg_bytes(scene), metadata={"crop_box": [150, 100, 350, 250]})
    detected = chain.upload(jpeg_bytes(scene))
    plain = chain.upload(jpeg_bytes(photo(3)))
    chain.wait_identified([boxed, detected, plain])

    def embedded(sighting_id):
        return topics.SightingEmbedded.from_json(chain.redis.get(keys.embedding_key(sighting_id)))

    assert embedded(boxed).crop_source == "uploader" and embedded(boxed).crop_box == [150.0, 100.0, 350.0, 250.0]
    assert embedded(detected).crop_source == "detector"
    assert np.allclose(embedded(detected).crop_box, [150, 100, 350, 250], atol=3)
    assert embedded(plain).crop_source == "full" and embedded(plain).crop_box is None
    for sighting_id in (boxed, detected):
        best = identification(chain.redis, sighting_id)["candidates"][0]
        assert best["individual_id"] == "whale-1" and best["score"] > 0.9


def test_a_killed_worker_restarts_and_every_sighting_is_identified_once(chain):
    ids = [chain.upload(jpeg_bytes(photo(i % KNOWN)), sighting_id=f"kill-{i:03d}-{uuid.uuid4().hex[:6]}")
           for i in range(60)]
    wait_until(lambda: sum(identification(chain.redis, s) is not None for s in ids) >= 3, 60, "the first results")
    chain.worker.kill()  # mid-stream when the worker is slower than the uploads; maybe after the first 60 if not
    # a second wave while the worker is down: whatever its speed, the restarted worker has a backlog to take over
    ids += [chain.upload(jpeg_bytes(photo(i % KNOWN)), sighting_id=f"kill-{i:03d}-{uuid.uuid4().hex[:6]}")
            for i in range(60, 80)]
    chain.worker.restart().wait_ready()
    chain.wait_identified(ids, timeout=120)
    counts = stream_counts(chain.redis)
    assert all(counts[s] == 1 for s in ids)
    for i, sighting_id in enumerate(ids):
        assert identification(chain.redis, sighting_id)["candidates"][0]["individual_id"] == f"whale-{i % KNOWN}"


def test_triton_down_then_back_drains_the_backlog(chain):
    from services.devtools.stack.triton import TritonServer

    ports = (chain.triton.http_port, chain.triton.grpc_port, chain.triton.metrics_port)
    chain.triton.stop()
    ids = [chain.upload(jpeg_bytes(photo(i % KNOWN))) for i in range(8)]
    time.sleep(4.0)
    assert all(identification(chain.redis, s) is None and failure(chain.redis, s) is None for s in ids)
    assert "transient failure" in chain.worker.log_text() or "Triton call" in chain.worker.log_text()
    chain.triton = TritonServer(chain.root / "triton2", owner=f"{chain.root}#triton2",
                                model_repository=chain.repository, ports=ports).start()
    chain.triton.wait_healthy(90)
    chain.wait_identified(ids, timeout=90)
    assert all(failure(chain.redis, s) is None for s in ids)
    assert all(stream_counts(chain.redis)[s] == 1 for s in ids)


def test_an_overloaded_triton_is_waited_for_never_dead_lettered(chain):
    """Triton answers "ready" but its next calls take longer than the worker's triton_timeout_s (deadline
    exceeded, requests queued behind): overload, not a refusal. The worker backs off and retries; every sighting is
    identified, none dead-lettered."""
    slow = make_slow(chain.repository, calls=3, seconds=1.5 * TRITON_TIMEOUT_S)
    try:
        ids = [chain.upload(jpeg_bytes(photo(i))) for i in range(4)]
        chain.wait_identified(ids, timeout=120)
        assert slow_calls_left(chain.repository) == 0, "Triton was not slow: the test did not overload it"
    finally:
        slow.unlink(missing_ok=True)
    assert all(failure(chain.redis, s) is None for s in ids)
    dead = {v.get("sighting_id") for _, v in read_topic(chain.settings.kafka_bootstrap, topics.DEAD_LETTER) if v}
    assert not set(ids) & dead
    for i, sighting_id in enumerate(ids):
        assert identification(chain.redis, sighting_id)["candidates"][0]["individual_id"] == f"whale-{i}"
    assert "overloaded" in chain.worker.log_text(since_start=True)


def reload_gallery(chain) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{chain.matcher.web_port}/gallery/reload/", method="POST",
                                     data=b"", headers={"Authorization": "Bearer local-admin-token"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def reload_model(chain) -> dict:
    """The worker's reload path (what reloads the ensemble in Triton calls it): read the served model now."""
    request = urllib.request.Request(f"http://127.0.0.1:{chain.worker.web_port}/model/reload/", method="POST",
                                     data=b"", headers={"Authorization": "Bearer local-admin-token"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def worker_model(chain) -> str | None:
    """The model version the worker tags with, as last read (GET of its reload page: no Triton call)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{chain.worker.web_port}/model/reload/", timeout=30) as response:
        return json.loads(response.read())["model_version"]


def test_a_reloaded_ensemble_is_noticed_and_its_sightings_wait_for_a_gallery_of_its_model(chain):
    """Triton reloads the ensemble with another build (no outage) and tells the worker (its reload page): the
    worker tags the next embeddings with the new version and registers its model ids; the matcher parks them
    (the gallery holds another model's embeddings) until a gallery of that model is served, then identifies
    them."""
    import tritonclient.grpc as grpcclient

    config = chain.repository / "ensemble" / "config.pbtxt"
    original = config.read_text()
    admin = grpcclient.InferenceServerClient(chain.triton.grpc)
    try:
        config.write_text(toy_config("toy-b", ["toy-embedder-b"]))
        admin.load_model("ensemble")
        # what `whaleid model-repo reload --worker-url URL` does after loading the models into Triton
        from services.serving.model_repo.cli import tell_workers

        worker_url = f"http://127.0.0.1:{chain.worker.web_port}"
        assert tell_workers([worker_url], chain.settings) == 0
        assert worker_model(chain) == "ensemble:1:toy-b"  # what it tags the next batch with
        assert tell_workers([f"http://127.0.0.1:{free_port()}"], chain.settings) == 1  # no worker there: told so
        sighting = chain.upload(jpeg_bytes(photo(2)))
        wait_until(lambda: parked(chain.redis, sighting), 60, "the sighting parked by the matcher")
        stored = topics.SightingEmbedded.from_json(chain.redis.get(keys.embedding_key(sighting)))
        assert stored.model_version == "ensemble:1:toy-b"
        registered = json.loads(chain.redis.get("model-version:ensemble:1:toy-b"))
        assert registered["model_ids"] == ["toy-embedder-b"]
        assert identification(chain.redis, sighting) is None and failure(chain.redis, sighting) is None

        version = publish_toy_gallery(chain.store, chain.embeddings, chain.root / "gallery-b", ["toy-embedder-b"])
        reload_gallery(chain)  # (or the matcher's own poll got there first) the swap retries the parked ones
        chain.wait_identified([sighting])
        result = identification(chain.redis, sighting)
        assert result["gallery_version"] == version and result["model_version"] == "ensemble:1:toy-b"
        assert result["candidates"][0]["individual_id"] == "whale-2"
        assert not parked(chain.redis, sighting)
        assert failure(chain.redis, sighting) is None
    finally:
        config.write_text(original)
        admin.load_model("ensemble")
        reload_model(chain)
        admin.close()
        publish_toy_gallery(chain.store, chain.embeddings, chain.root / f"gallery-{uuid.uuid4().hex[:6]}",
                            TOY_MODEL_IDS)
        reload_gallery(chain)


def test_an_unexpected_exception_is_retried_then_dead_lettered_and_the_rest_of_the_batch_goes_on(chain):
    """No silent acknowledgement: faust's Stream.take() acknowledges the buffered events even when the agent
    raises, so an exception escaping the batch would skip the whole batch. Metadata that is not an object (the
    bridge never sends one; a record written straight to the topic can) makes the crop step raise AttributeError,
    which no stage expects: that event is retried, then dead-lettered `internal_error` with the exception type;
    the others of its batch are identified, and the worker goes on with later traffic."""
    partition_key = uuid.uuid4().hex  # one partition, produced together: one batch
    good = [uuid.uuid4().hex for _ in range(3)]
    bad = uuid.uuid4().hex
    batch = [good[0], bad, good[1], good[2]]
    for sighting_id in batch:
        chain.s3.put_object(Bucket=chain.settings.sightings_bucket, Key=f"uploads/{sighting_id}.jpg",
                            Body=jpeg_bytes(photo(len(sighting_id) % KNOWN)), ContentType="image/jpeg")
    log_start = chain.worker.log_path.stat().st_size
    for sighting_id in batch:
        metadata = ["not", "an", "object"] if sighting_id == bad else None
        chain.producer.send(topics.SIGHTINGS_UPLOADED, key=partition_key.encode(),
                            value=uploaded_event(sighting_id, chain.settings.sightings_bucket,
                                                 f"uploads/{sighting_id}.jpg", metadata))
    chain.producer.flush()
    chain.wait_identified(good)
    wait_until(lambda: failure(chain.redis, bad), 60, "the dead letter of the event that raised")
    failed = failure(chain.redis, bad)
    assert failed["stage"] == "worker" and failed["reason"] == "internal_error"
    assert failed["detail"].startswith("AttributeError:")
    assert identification(chain.redis, bad) is None
    counts = stream_counts(chain.redis)
    assert [counts.get(s) for s in good] == [1, 1, 1]
    letters = [v for k, v in read_topic(chain.settings.kafka_bootstrap, topics.DEAD_LETTER) if k == bad]
    assert [(v["stage"], v["reason"], v["original"]["metadata"]) for v in letters] == [
        ("worker", "internal_error", ["not", "an", "object"])]
    log = chain.worker.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert log.count("unexpected AttributeError") >= 3  # retried (whole batch or alone) before it was given up
    later = chain.upload(jpeg_bytes(photo(1)))
    chain.wait_identified([later])
