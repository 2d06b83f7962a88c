"""Delivery guarantees of the chain (issue 11), on real servers (session stack: Kafka, S3, Redis, Triton):

- Triton failures are classified from tritonclient's real exceptions: overload and unavailability are transient,
  only a refusal of the input is permanent (services.serving.triton_client.failures);
- the producers are idempotent where the client and the broker allow it (kafka-python in the bridge: yes, also
  against Tansu; aiokafka in Faust: Tansu refuses it, so the local profile turns it off);
- the matcher is at least once with the sighting id as idempotency key: a re-delivery yields one Redis result and
  one stream entry, and a topic duplicate carries the same key and content;
- embeddings of a model the gallery was not built with are parked, not lost, and identified once a matching
  gallery is served (swap) or their model becomes known (timer); `whaleid reindex` leaves them out;
- the matcher's keys carry TTLs and the stream is trimmed.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.request
import uuid

import boto3
import numpy as np
import pytest
import redis
from kafka import KafkaProducer

from services.core import keys, topics
from support.chain import (
    ServiceProcess,
    chain_env,
    failure,
    identification,
    parked,
    read_topic,
    stream_counts,
    wait_announced,
    wait_until,
)

DIM = 512
KNOWN = 4
TTLS = {"redis_result_ttl_s": 7200, "redis_embedding_ttl_s": 10800, "redis_marker_ttl_s": 3600}
BUILD_A = "ensemble:1:build-a"  # registered as blending ["model-a"], the gallery's model


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


CENTRES = unit(np.random.default_rng(11).normal(size=(KNOWN, DIM)))


def near(index: int, seed: int) -> np.ndarray:
    return unit(CENTRES[index] + np.random.default_rng(seed).normal(size=DIM) * 0.02)


# ============================================================================ Triton failures, classified
def test_status_codes_and_messages_are_classified():
    from tritonclient.utils import InferenceServerException

    from services.serving.triton_client.failures import classify

    def kind(status, message="x"):
        return classify(InferenceServerException(msg=message, status=status))

    cases = {
        ("StatusCode.DEADLINE_EXCEEDED", "Deadline Exceeded"): ("overloaded", True),
        ("StatusCode.RESOURCE_EXHAUSTED", "queue full"): ("overloaded", True),
        ("StatusCode.UNAVAILABLE", "[request id: <id_unknown>] Exceeds maximum queue size"): ("overloaded", True),
        ("StatusCode.UNAVAILABLE", "failed to connect to all addresses"): ("unavailable", True),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'ensemble' has no available versions"):
            ("model_not_loaded", True),
        ("StatusCode.NOT_FOUND", "Request for unknown model: 'x' is not found"): ("model_not_loaded", True),
        ("StatusCode.INTERNAL", "Stub process 'ensemble_0_0' is not healthy."): ("unavailable", True),
        ("StatusCode.UNAUTHENTICATED", "no token"): ("unclassified", True),
        (None, "something odd"): ("unclassified", True),
        ("StatusCode.INVALID_ARGUMENT", "unexpected inference input 'NOPE'"): ("refused_input", False),
        ("StatusCode.INTERNAL", "preprocess: IMAGE #0: not_an_image: cannot identify image file"):
            ("model_error", False),
        ("400", "bad request"): ("refused_input", False),
        ("503", "service unavailable"): ("unavailable", True),
    }
    for (status, message), (expected_kind, transient) in cases.items():
        result = kind(status, message)
        assert (result.kind, result.transient) == (expected_kind, transient), (status, message, result)


@pytest.fixture(scope="module")
def probe_triton(stack):
    """A python-backend model `delivery_probe` in the session's Triton: b"slow" sleeps 1.5 s, b"bad" fails in the
    model, anything else -> zeros; a queue of one request (more are refused with "Exceeds maximum queue size")."""
    import tritonclient.grpc as grpcclient

    folder = stack.model_repository / "delivery_probe"
    (folder / "1").mkdir(parents=True, exist_ok=True)
    (folder / "config.pbtxt").write_text("""name: "delivery_probe"
backend: "python"
max_batch_size: 4
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 4 ] } ]
dynamic_batching { max_queue_delay_microseconds: 100 default_queue_policy { max_queue_size: 1 } }
instance_group [ { count: 1 kind: KIND_CPU } ]
""")
    (folder / "1" / "model.py").write_text('''
import time
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            items = [bytes(i[0]) for i in pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()]
            if b"slow" in items:
                time.sleep(1.5)
            if b"bad" in items:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError("probe: cannot read image")))
                continue
            rows = np.zeros((len(items), 4), dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", rows)]))
        return responses
''')
    url = stack.settings.triton_grpc_url
    with grpcclient.InferenceServerClient(url) as admin:
        admin.load_model("delivery_probe")
    yield url
    with grpcclient.InferenceServerClient(url) as admin:
        admin.unload_model("delivery_probe")


def _infer(url: str, data: bytes, model: str = "delivery_probe", name: str = "IMAGE", timeout: float | None = None):
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        tensor = grpcclient.InferInput(name, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        return client.infer(model, [tensor], client_timeout=timeout)


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001 - the exception is what the test looks at
        return exc
    raise AssertionError("the call did not fail")


def test_real_triton_failures_are_classified(probe_triton):
    """Exceptions raised by tritonclient against a real Triton: overload/unavailable are transient, refusals of
    the input are permanent."""
    from services.devtools.stack.ports import free_port
    from services.serving.triton_client.failures import classify

    timeout = classify(_raised(lambda: _infer(probe_triton, b"slow", timeout=0.3)))
    assert (timeout.kind, timeout.transient, timeout.status) == ("overloaded", True, "DEADLINE_EXCEEDED")

    # 8 slow requests at once: at most one batch of 4 executes and one more waits in the queue of one; the others
    # are refused with "Exceeds maximum queue size" (a real queue-full answer)
    errors: list[Exception] = []

    def call():
        try:
            _infer(probe_triton, b"slow")
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors, "no request was refused: the queue never filled"
    for exc in errors:
        result = classify(exc)
        assert "exceeds maximum queue size" in result.message.lower()
        assert (result.kind, result.transient) == ("overloaded", True)

    refused = classify(_raised(lambda: _infer(probe_triton, b"x", name="NOPE")))
    assert (refused.kind, refused.transient) == ("refused_input", False)
    model_error = classify(_raised(lambda: _infer(probe_triton, b"bad")))
    assert (model_error.kind, model_error.transient, model_error.status) == ("model_error", False, "INTERNAL")
    missing = classify(_raised(lambda: _infer(probe_triton, b"x", model="no_such_model")))
    assert (missing.kind, missing.transient) == ("model_not_loaded", True)
    down = classify(_raised(lambda: _infer(f"127.0.0.1:{free_port()}", b"x", timeout=5)))
    assert (down.kind, down.transient) == ("unavailable", True)


def test_embedding_client_errors_carry_the_classification(probe_triton):
    from services.serving.triton_client import (
        EmbeddingClient,
        TritonRequestError,
        TritonUnavailable,
        is_transient,
    )

    with EmbeddingClient(probe_triton, model="delivery_probe", timeout_s=0.3, retries=0) as client:
        slow = _raised(lambda: client.embed([b"slow"]))
        assert isinstance(slow, TritonUnavailable) and slow.kind == "overloaded" and is_transient(slow)
    with EmbeddingClient(probe_triton, model="delivery_probe", timeout_s=30, retries=0) as client:
        bad = _raised(lambda: client.embed([b"bad"]))  # (waits behind the slow one, then the model refuses it)
        assert isinstance(bad, TritonRequestError) and bad.transient is False and not is_transient(bad)
    with EmbeddingClient(probe_triton, model="no_such_model", retries=0) as client:
        missing = _raised(lambda: client.infer({"IMAGE": np.array([[b"x"]], dtype=np.object_)}))
        assert isinstance(missing, TritonRequestError) and missing.transient is True


# ============================================================================ idempotent producers
def test_the_bridge_producer_can_be_idempotent_against_tansu(stack):
    """Tansu answers kafka-python's InitProducerId (the local profile still turns idempotence off, for what an
    empty restart does to it: test_kafka_python_producers_are_idempotent_in_production_and_not_on_tansu)."""
    from services.chain.bridge.clients import kafka_producer

    producer = kafka_producer(stack.settings.with_overrides(bridge_producer_idempotence=True))
    try:
        assert producer.config["enable_idempotence"] is True
        producer.send("delivery.idempotence", key=b"k", value=b"v").get(timeout=30)
        assert producer._transaction_manager.producer_id_and_epoch.producer_id >= 0  # InitProducerId answered
    finally:
        producer.close()


def test_kafka_python_producers_are_idempotent_in_production_and_not_on_tansu(stack, tmp_path):
    """After a restart that lost its data, Tansu answers an idempotent kafka-python producer's records with
    UnknownProducerId, which kafka-python 3.0.12 takes for retention and retries until its delivery timeout: the
    restart_kafka scenario's 40 s-and-longer stalls (docs/chaos.md). The bridge, the reconciler and the gateway's
    confirmations therefore produce without idempotence on the local profile, and with it in production."""
    from services.chain.bridge.clients import kafka_producer
    from services.chain.reconciler.kafka_io import kafka_producer as reconciler_producer
    from services.core.settings import load_settings

    for profile, idempotent in (("production", True), ("local", False)):
        settings = load_settings(profile=profile, environ={}, kafka_bootstrap=stack.settings.kafka_bootstrap,
                                 run_dir=tmp_path / profile)
        for make in (kafka_producer, reconciler_producer):
            producer = make(settings)
            try:
                assert producer.config["enable_idempotence"] is idempotent, (profile, make)
            finally:
                producer.close()


def test_faust_producers_are_idempotent_in_production_and_not_on_tansu(tmp_path):
    from services.chain.faust_app import make_app, use_idempotent_producer
    from services.core.settings import load_settings

    async def idempotent(profile: str) -> bool:
        settings = load_settings(profile=profile, environ={}, kafka_bootstrap="127.0.0.1:1",
                                 run_dir=tmp_path / profile)
        app = make_app(settings, "worker", 6099)  # (never started: the port is not bound)
        producer = app.producer._new_producer()  # the aiokafka producer Faust would start (not connected)
        try:
            return producer._txn_manager is not None
        finally:
            await producer.stop()

    try:
        assert asyncio.run(idempotent("production")) is True
        assert asyncio.run(idempotent("local")) is False
    finally:
        use_idempotent_producer(False)


def test_tansu_refuses_the_aiokafka_idempotent_producer(stack):
    """Why the local profile turns `faust_producer_idempotence` off: Tansu 0.6 fails aiokafka's InitProducerId
    (v0) with an UNKNOWN error. Should this start passing, the local profile can turn it on."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaError

    async def start():
        producer = AIOKafkaProducer(bootstrap_servers=stack.settings.kafka_bootstrap, enable_idempotence=True,
                                    acks="all", request_timeout_ms=10000)
        try:
            await asyncio.wait_for(producer.start(), 30)
            await asyncio.wait_for(producer.send_and_wait("delivery.idempotence", b"v"), 30)
            return None
        except (KafkaError, asyncio.TimeoutError) as exc:
            return exc
        finally:
            await producer.stop()

    assert asyncio.run(start()) is not None


# ============================================================================ the matcher: at least once, versions
def _publish(store, root, model_ids, reason: str) -> str:
    from services.core.identification import Tuning, build_gallery

    labels = [f"ind-{i}" for i in range(KNOWN)]
    gallery = build_gallery(CENTRES, labels, ["beluga"] * KNOWN, [f"g{i}.jpg" for i in range(KNOWN)],
                            model_ids=list(model_ids))
    folder = root / f"gallery-{uuid.uuid4().hex[:6]}"
    gallery.save(folder)
    Tuning(threshold=0.6).save(folder / "tuning.json")
    version = store.publish(folder, parent=store.current_version(), added_sightings=[], individuals=labels, size=KNOWN)
    store.set_current(version, reason)
    return version


class Delivery:
    def __init__(self, settings, store, service, producer, client, root):
        self.settings, self.store, self.service, self.producer, self.redis, self.root = (
            settings, store, service, producer, client, root)

    def send(self, embedding, model_version: str = BUILD_A, sighting_id: str | None = None,
             partition_key: str | None = None) -> str:
        sighting_id = sighting_id or uuid.uuid4().hex
        record = topics.SightingEmbedded(sighting_id=sighting_id, embedding=[float(v) for v in embedding],
                                         model_version=model_version, uploaded_at=time.time(),
                                         embedded_at=time.time())
        self.producer.send(topics.SIGHTINGS_EMBEDDED, key=(partition_key or sighting_id).encode(),
                           value=record.to_json())
        self.producer.flush()
        return sighting_id

    def register(self, model_version: str, model_ids) -> None:
        """What the worker does when it first sees a served build."""
        from services.core import model_versions as versions

        versions.register(self.redis, model_version, list(model_ids), 3600)

    def reload(self) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.service.web_port}/gallery/reload/",
                                         method="POST", data=b"", headers={"Authorization": "Bearer local-admin-token"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    def topic_entries(self, topic: str, sighting_id: str) -> list[tuple[str, dict]]:
        return [(k, v) for k, v in read_topic(self.settings.kafka_bootstrap, topic) if k == sighting_id]


@pytest.fixture(scope="module")
def delivery(stack, tmp_path_factory):
    """`whaleid serve matcher` over a gallery made by ["model-a"], with short TTLs and a 1 s parked retry."""
    from services.curation.operations.gallery_versions import GalleryStore

    root = tmp_path_factory.mktemp("delivery")
    settings = stack.settings.with_overrides(models_bucket=f"models-{uuid.uuid4().hex[:8]}")
    boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=settings.models_bucket)
    store = GalleryStore.from_settings(settings)
    _publish(store, root, ["model-a"], "test_delivery")
    env = chain_env(stack.state, root / "run", "127.0.0.1:1", models_bucket=settings.models_bucket,
                    matcher_reload_interval_s=3600, matcher_parked_retry_interval_s=1, **TTLS)
    service = ServiceProcess("matcher", env, root / "logs").start()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    client = redis.Redis.from_url(settings.redis_url)
    try:
        service.wait_ready()
        handle = Delivery(settings, store, service, producer, client, root)
        handle.register(BUILD_A, ["model-a"])
        yield handle
    finally:
        producer.close()
        service.stop()


def _stream_entry_ids(client, sighting_id: str) -> list[bytes]:
    return [entry for entry, fields in client.xrange("identifications") if fields[b"sighting_id"] == sighting_id.encode()]


def test_a_redelivery_yields_one_result_one_stream_entry_and_identical_topic_duplicates(delivery):
    client = delivery.redis
    sighting = delivery.send(near(1, 1))
    wait_announced(client, [sighting], 60)
    first = identification(client, sighting)
    assert first["candidates"][0]["individual_id"] == "ind-1"
    for key, bound in (("identification", TTLS["redis_result_ttl_s"]), ("announced", TTLS["redis_marker_ttl_s"]),
                       ("embedding", TTLS["redis_embedding_ttl_s"])):
        assert bound - 600 < client.ttl(f"{key}:{sighting}") <= bound, key

    # the state a crash leaves between producing to the topics and the announcement: result stored, topics
    # produced, no `announced:` marker and (the marker and the entry are one atomic script) no stream entry
    client.delete(keys.announced_key(sighting))
    client.xdel("identifications", *_stream_entry_ids(client, sighting))
    delivery.send(near(2, 2), sighting_id=sighting)  # re-delivered (even with another embedding)
    wait_announced(client, [sighting], 60)
    assert identification(client, sighting) == first
    assert stream_counts(client).get(sighting) == 1
    entries = delivery.topic_entries(topics.IDENTIFICATIONS, sighting)
    assert len(entries) >= 2, "the re-delivery did not re-produce the result"
    assert all(entry == entries[0] for entry in entries), "a topic duplicate differs: consumers could not dedupe"
    assert entries[0][1]["sighting_id"] == sighting and entries[0][1] == first

    # once announced, a re-delivery changes nothing anywhere (a later record of the same partition shows it ran)
    delivery.send(near(3, 3), sighting_id=sighting)
    later = delivery.send(near(0, 4), partition_key=sighting)
    wait_announced(client, [later], 60)
    assert identification(client, sighting) == first
    assert stream_counts(client).get(sighting) == 1
    assert len(delivery.topic_entries(topics.IDENTIFICATIONS, sighting)) == len(entries)


def test_an_unknown_model_version_is_parked_then_identified_once_it_is_known(delivery):
    client = delivery.redis
    version = f"ensemble:1:unregistered-{uuid.uuid4().hex[:6]}"
    sighting = delivery.send(near(0, 10), model_version=version)
    wait_until(lambda: parked(client, sighting), 60, "the sighting parked")
    entry = json.loads(client.hget(keys.PARKED_RECORDS, sighting))
    assert entry["reason"] == "unknown_model_version" and entry["record"]["model_version"] == version
    assert identification(client, sighting) is None and failure(client, sighting) is None
    assert "parked" in delivery.service.log_text(since_start=True)

    delivery.register(version, ["model-a"])  # the worker saw that build: it blends the gallery's model
    wait_announced(client, [sighting], 60, "the parked sighting retried by the timer")
    result = identification(client, sighting)
    assert result["candidates"][0]["individual_id"] == "ind-0" and result["model_version"] == version
    assert not parked(client, sighting)
    assert sighting not in {v.get("sighting_id") for _, v in read_topic(delivery.settings.kafka_bootstrap,
                                                                        topics.DEAD_LETTER) if v}


def test_another_models_embedding_waits_for_a_gallery_of_that_model(delivery):
    client = delivery.redis
    delivery.register("ensemble:1:build-b", ["model-b"])
    other = delivery.send(near(3, 20), model_version="ensemble:1:build-b")
    wait_until(lambda: parked(client, other), 60, "the other model's sighting parked")
    assert json.loads(client.hget(keys.PARKED_RECORDS, other))["reason"] == "model_mismatch"
    same = delivery.send(near(2, 21))  # the gallery's own model still flows
    wait_announced(client, [same], 60)
    assert identification(client, other) is None and failure(client, other) is None

    version = _publish(delivery.store, delivery.root, ["model-b"], "test_delivery: model-b")
    assert delivery.reload() == {"swapped": True, "version": version}
    wait_announced(client, [other], 60, "the parked sighting identified after the swap")
    result = identification(client, other)
    assert result["gallery_version"] == version and result["candidates"][0]["individual_id"] == "ind-3"
    assert not parked(client, other)


# ============================================================================ bounded state
def test_the_stream_is_trimmed_to_about_maxlen(stack):
    """results.announce, as the matcher calls it with `redis_stream_maxlen`, on a stream of the test's own."""
    from services.chain import results

    client = redis.Redis.from_url(stack.settings.redis_url)
    stream = f"delivery-trim-{uuid.uuid4().hex[:6]}"
    ids = [f"{stream}-{i}" for i in range(300)]
    try:
        for sighting_id in ids:
            record = topics.Identification(sighting_id=sighting_id, candidates=[], new_individual=False,
                                           model_version="m", gallery_version="v")
            assert results.announce(client, record, marker_ttl_s=120, maxlen=50, stream=stream)
        assert not results.announce(client, record, marker_ttl_s=120, maxlen=50, stream=stream)  # once only
        # MAXLEN ~ removes whole stream nodes (up to 100 entries each): about maxlen, never the 300 added
        assert 50 <= client.xlen(stream) < 50 + 100
        assert 0 < client.ttl(keys.announced_key(ids[0])) <= 120
    finally:
        client.delete(stream, *[keys.announced_key(s) for s in ids])
        client.close()


# ============================================================================ re-indexing checks versions
def test_reindex_adds_only_embeddings_of_the_gallerys_models(stack, tmp_path):
    from services.core import model_versions as versions
    from services.core.identification import Tuning, build_gallery
    from services.curation.operations.confirmations import ConfirmationService
    from services.curation.operations.gallery_versions import GalleryStore
    from services.curation.operations.known import CurrentGalleryIndividuals
    from services.curation.operations.publish import publish_gallery
    from services.curation.operations.reindex import reindex
    from support.operations import seed_sighting

    settings = stack.settings.with_overrides(gallery_prefix=f"galleries-{uuid.uuid4().hex[:6]}",
                                             redis_url=stack.settings.redis_url.rsplit("/", 1)[0] + "/9")
    client = redis.Redis.from_url(settings.redis_url)
    client.flushdb()
    store = GalleryStore.from_settings(settings)
    labels = [f"ind-{i}" for i in range(KNOWN)]
    gallery = build_gallery(CENTRES, labels, ["beluga"] * KNOWN, [f"g{i}.jpg" for i in range(KNOWN)],
                            model_ids=["model-a"])
    v1 = publish_gallery(store, gallery, Tuning(threshold=0.5).save(tmp_path / "tuning.json"), reason="test")
    versions.register(client, BUILD_A, ["model-a"], 3600)
    versions.register(client, "ensemble:1:build-b", ["model-b"], 3600)
    service = ConfirmationService(client, CurrentGalleryIndividuals(store))

    def confirmed(model_version: str | None) -> str:
        embedding = near(1, hash(model_version) % 1000)
        sighting = seed_sighting(client, embedding, [("ind-1", 0.9)])
        stored = ({"sighting_id": sighting, "model_version": model_version, "embedding": [float(x) for x in embedding]}
                  if model_version is not None else [float(x) for x in embedding])  # None: a bare list (legacy)
        client.set(keys.embedding_key(sighting), json.dumps(stored))
        service.submit(sighting, {"action": "confirm", "individual_id": "ind-1", "researcher": "dr-fluke"})
        return sighting

    same, other, unknown, legacy = (confirmed(BUILD_A), confirmed("ensemble:1:build-b"),
                                    confirmed("ensemble:1:never-seen"), confirmed(None))
    report = reindex(store, client)
    try:
        assert report.added == [same]
        assert "model_mismatch" in report.skipped[other] and "model-b" in report.skipped[other]
        assert "unknown_model_version" in report.skipped[unknown]
        assert "unknown_model_version" in report.skipped[legacy]
        assert report.new_version and store.version_info(report.new_version)["added_sightings"] == [same]
        assert store.version_info(report.new_version)["parent"] == v1
    finally:
        client.flushdb()
        client.close()
