"""The matcher on real servers (session stack: Kafka, S3, Redis): `whaleid serve matcher` ranks
sightings.embedded events against the gallery in the model store; no Triton needed (embeddings are given)."""

from __future__ import annotations

import json
import re
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

from services.core import keys, topics
from services.devtools.stack.ports import free_port
from support.chain import (
    ServiceProcess,
    chain_env,
    failure,
    identification,
    read_topic,
    stream_counts,
    wait_announced,
    wait_until,
)

DIM = 512
KNOWN = 8
PER_SPECIES = {"beluga": 0.1, "killer_whale": 0.99}  # tuned per-species thresholds (the global one: 0.6)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


CENTRES = unit(np.random.default_rng(3).normal(size=(KNOWN + 4, DIM)))


def publish(store, root, labels: list[str], threshold: float = 0.6) -> str:
    from services.core.identification import Tuning, build_gallery

    gallery = build_gallery(CENTRES[:KNOWN], labels, ["beluga"] * KNOWN, [f"g{i}.jpg" for i in range(KNOWN)])
    folder = root / f"gallery-{uuid.uuid4().hex[:6]}"
    gallery.save(folder)
    Tuning(threshold=threshold, per_species=PER_SPECIES).save(folder / "tuning.json")
    version = store.publish(folder, parent=store.current_version(), added_sightings=[], individuals=labels,
                            size=KNOWN)
    store.set_current(version, "test_matcher")
    return version


@pytest.fixture(scope="module")
def matcher(stack, tmp_path_factory):
    from services.curation.operations.gallery_versions import GalleryStore

    root = tmp_path_factory.mktemp("chain-matcher")
    settings = stack.settings.with_overrides(models_bucket=f"models-{uuid.uuid4().hex[:8]}")
    s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=settings.models_bucket)
    store = GalleryStore.from_settings(settings)
    first = publish(store, root, [f"beluga-{i}" for i in range(KNOWN)])
    env = chain_env(stack.state, root / "run", "127.0.0.1:1", models_bucket=settings.models_bucket,
                    matcher_reload_interval_s=3600)
    metrics_port = free_port()
    service = ServiceProcess("matcher", env, root / "logs", metrics_port=metrics_port).start()
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    try:
        service.wait_ready()
        yield Matcher(settings, store, service, producer, redis.Redis.from_url(settings.redis_url), root, first,
                      metrics_port, env)
    finally:
        producer.close()
        service.stop()


class Matcher:
    def __init__(self, settings, store, service, producer, redis_client, root, first_version, metrics_port, env):
        self.settings, self.store, self.service, self.producer = settings, store, service, producer
        self.redis, self.root, self.first_version, self.metrics_port, self.env = (
            redis_client, root, first_version, metrics_port, env)

    def send(self, embedding, metadata=None, sighting_id=None, partition_key=None, species_scores=None) -> str:
        """Produce a sightings.embedded record keyed by its sighting id (or by `partition_key`, to queue it behind
        another record of the same partition)."""
        sighting_id = sighting_id or uuid.uuid4().hex
        record = topics.SightingEmbedded(sighting_id=sighting_id, embedding=[float(v) for v in embedding],
                                         model_version="test-model", metadata=metadata, uploaded_at=time.time(),
                                         embedded_at=time.time(), species_scores=species_scores)
        self.send_raw(record.to_json(), partition_key or sighting_id)
        return sighting_id

    def send_raw(self, value: bytes, key: str) -> None:
        self.producer.send(topics.SIGHTINGS_EMBEDDED, key=key.encode(), value=value)
        self.producer.flush()

    def web(self, method: str) -> dict:
        request = urllib.request.Request(f"http://127.0.0.1:{self.service.web_port}/gallery/reload/", method=method,
                                         data=b"" if method == "POST" else None, headers={"Authorization": "Bearer local-admin-token"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())


def near(index: int, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(size=DIM) * 0.02
    return unit(CENTRES[index] + noise)


def test_results_in_redis_stream_and_topics(matcher):
    known = [matcher.send(near(i, 100 + i)) for i in range(3)]
    unseen = matcher.send(CENTRES[KNOWN + 1])
    wait_announced(matcher.redis, known + [unseen], 30)
    for i, sighting_id in enumerate(known):
        result = identification(matcher.redis, sighting_id)
        assert [c["individual_id"] for c in result["candidates"]][0] == f"beluga-{i}"
        assert result["candidates"][0]["score"] > 0.9 and len(result["candidates"]) == 5
        assert result["candidates"][0]["image"] == f"g{i}.jpg"  # the gallery image it matched
        assert all("image" in c for c in result["candidates"] if c["individual_id"] != "new_individual")
        assert result["new_individual"] is False
        assert result["model_version"] == "test-model"
        assert result["gallery_version"] == matcher.first_version
        assert result["uploaded_at"] <= result["identified_at"]
        stored = topics.SightingEmbedded.from_json(matcher.redis.get(keys.embedding_key(sighting_id)))
        assert np.allclose(stored.embedding, near(i, 100 + i), atol=1e-6)
    new = identification(matcher.redis, unseen)
    assert new["new_individual"] is True and new["candidates"][0]["individual_id"] == "new_individual"
    assert "image" not in new["candidates"][0]
    assert all(stream_counts(matcher.redis)[s] == 1 for s in known + [unseen])
    announced = {k: v for k, v in read_topic(matcher.settings.kafka_bootstrap, topics.IDENTIFICATIONS)}
    assert set(known + [unseen]) <= set(announced)
    new_individuals = dict(read_topic(matcher.settings.kafka_bootstrap, topics.NEW_INDIVIDUALS))
    assert unseen in new_individuals and not set(known) & set(new_individuals)
    assert new_individuals[unseen]["best_known_id"].startswith("beluga-")


def test_threshold_of_the_hinted_or_the_models_species_is_used_and_recorded(matcher):
    """The same photo (~0.91 to a known whale): the model says killer_whale (threshold 0.99: new individual); the
    app's hint beluga wins over the model (0.1: known); neither: the global 0.6 (known)."""
    scores = {"killer_whale": 0.8, "beluga": 0.2}
    by_model = matcher.send(near(3, 77), species_scores=scores)
    by_app = matcher.send(near(3, 77), metadata={"species_hint": "beluga"}, species_scores=scores)
    neither = matcher.send(near(3, 77), species_scores={"killer_whale": 0.4, "beluga": 0.35, "orca": 0.25})
    wait_announced(matcher.redis, [by_model, by_app, neither], 30)
    results = {key: identification(matcher.redis, key) for key in (by_model, by_app, neither)}
    assert [(r["species"], r["species_source"], r["threshold"]) for r in results.values()] == [
        ("killer_whale", "model", 0.99), ("beluga", "app", 0.1), ("", "none", 0.6)]
    assert [r["new_individual"] for r in results.values()] == [True, False, False]
    bad = matcher.send(near(3, 78), species_scores={"beluga": "very"})
    wait_until(lambda: failure(matcher.redis, bad), 30, "the malformed species scores dead-lettered")
    assert failure(matcher.redis, bad)["reason"] == "malformed_event"


def test_redelivered_events_keep_the_first_result(matcher):
    sighting_id = matcher.send(near(4, 7))
    wait_announced(matcher.redis, [sighting_id], 30, "the first result")
    first = identification(matcher.redis, sighting_id)
    for _ in range(3):
        matcher.send(near(4, 8), sighting_id=sighting_id)
    later = matcher.send(near(5, 9), partition_key=sighting_id)  # handled after the re-deliveries
    wait_announced(matcher.redis, [later], 30, "a later result")
    assert identification(matcher.redis, sighting_id) == first
    assert stream_counts(matcher.redis)[sighting_id] == 1


def test_bad_events_are_dead_lettered_and_good_ones_still_identified(matcher):
    good = matcher.send(near(6, 1))
    short = matcher.send(np.ones(16) / 4.0)
    matcher.send_raw(b"\x00\x01 not json", "garbage")
    wait_until(lambda: identification(matcher.redis, good) and failure(matcher.redis, short), 30, "results")
    assert failure(matcher.redis, short)["reason"] == "embedding_mismatch"
    assert failure(matcher.redis, short)["stage"] == "matcher"
    assert identification(matcher.redis, short) is None
    letters = [v for _, v in read_topic(matcher.settings.kafka_bootstrap, topics.DEAD_LETTER) if v]
    assert any(v["stage"] == "matcher" and v["reason"] == "malformed_event" for v in letters)
    assert any(v["sighting_id"] == short and v["reason"] == "embedding_mismatch" for v in letters)


def test_records_of_an_unknown_version_or_malformed_are_dead_lettered_and_version_1_is_still_read(matcher):
    """One partition, produced together: a version 1 record (float list, as written before #23), one of a
    version the matcher does not know, one whose embedding_f32 is not base64, and a version 2 one. The unknown
    and malformed ones are dead-lettered with their reasons, the others identified, in one batch."""
    partition_key = uuid.uuid4().hex
    old, future, broken, good = (uuid.uuid4().hex for _ in range(4))
    v1 = {"sighting_id": old, "embedding": [float(v) for v in near(2, 7)], "model_version": "test-model"}
    v2 = topics.SightingEmbedded(sighting_id=good, embedding=near(3, 8), model_version="test-model").to_data()
    for value in (v1, {**v2, "sighting_id": future, "record_version": 99},
                  {**v2, "sighting_id": broken, "embedding_f32": "not base64!"}, v2):
        matcher.producer.send(topics.SIGHTINGS_EMBEDDED, key=partition_key.encode(), value=json.dumps(value).encode())
    matcher.producer.flush()
    wait_until(lambda: all(identification(matcher.redis, s) for s in (old, good))
               and all(failure(matcher.redis, s) for s in (future, broken)), 30, "results and dead letters")
    assert identification(matcher.redis, old)["candidates"][0]["individual_id"] == "beluga-2"
    assert identification(matcher.redis, good)["candidates"][0]["individual_id"] == "beluga-3"
    assert failure(matcher.redis, future)["reason"] == "unsupported_record_version"
    assert "99" in failure(matcher.redis, future)["detail"]
    assert failure(matcher.redis, broken)["reason"] == "malformed_event"
    assert identification(matcher.redis, future) is None and identification(matcher.redis, broken) is None
    letters = {v["sighting_id"]: v for _, v in read_topic(matcher.settings.kafka_bootstrap, topics.DEAD_LETTER)
               if v and v.get("stage") == "matcher"}
    assert letters[future]["reason"] == "unsupported_record_version"
    assert letters[future]["original"]["record_version"] == 99  # the event as it came
    assert letters[broken]["reason"] == "malformed_event"


def test_reload_page_hot_swaps_the_gallery(matcher):
    assert matcher.web("GET") == {"version": matcher.first_version}
    assert matcher.web("POST") == {"swapped": False, "version": matcher.first_version}
    second = publish(matcher.store, matcher.root, [f"renamed-{i}" for i in range(KNOWN)])
    assert matcher.web("POST") == {"swapped": True, "version": second}
    sighting_id = matcher.send(near(2, 42))
    wait_until(lambda: identification(matcher.redis, sighting_id), 30, "a result from the new gallery")
    result = identification(matcher.redis, sighting_id)
    assert result["gallery_version"] == second
    assert result["candidates"][0]["individual_id"] == "renamed-2"


def test_reload_page_needs_an_admin_token(matcher):
    """Issue 22: POST /gallery/reload/ was open to anyone who reached the Faust web port."""
    for headers, status in (({}, 401), ({"Authorization": "Bearer wrong-token"}, 401),
                            ({"Authorization": "Bearer local-researcher-token"}, 403)):
        request = urllib.request.Request(f"http://127.0.0.1:{matcher.service.web_port}/gallery/reload/",
                                         method="POST", data=b"", headers=headers)
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert refused.value.code == status, headers
        assert "admin" in json.loads(refused.value.read())["error"]


def test_metrics_are_exposed(matcher):
    with urllib.request.urlopen(f"http://127.0.0.1:{matcher.metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert f"whaleid_gallery_size {float(KNOWN)}" in text
    assert 'whaleid_identifications_total{result="known"}' in text
    assert "whaleid_search_latency_seconds_count" in text
    assert 'whaleid_dead_letters_total{reason="embedding_mismatch",stage="matcher"}' in text


def test_committed_offsets_are_exposed(matcher):
    """The dashboard's consumer progress panels plot whaleid_consumer_committed_offset: after the identifications
    above, the matcher reports a committed offset of at least 1 on its input topic (within its 5 s report timer
    and Faust's commit interval)."""
    pattern = re.compile(r'whaleid_consumer_committed_offset\{partition="\d+",stage="matcher",topic="'
                         + re.escape(topics.SIGHTINGS_EMBEDDED) + r'"\} (\S+)')
    deadline, values = time.monotonic() + 60, []
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{matcher.metrics_port}/metrics", timeout=10) as response:
            values = [float(v) for v in pattern.findall(response.read().decode())]
        if values and max(values) >= 1:
            break
        time.sleep(1)
    assert values and max(values) >= 1, values


def test_serve_matcher_without_a_gallery_says_so(matcher):
    bucket = f"empty-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=matcher.settings.s3_endpoint, region_name="us-east-1", aws_access_key_id="testing",
                 aws_secret_access_key="testing").create_bucket(Bucket=bucket)
    env = {**matcher.env, "WHALEID_MODELS_BUCKET": bucket}
    done = subprocess.run([sys.executable, "-m", "services.cli.main", "serve", "matcher", "--metrics-port", "0",
                           "--web-port", str(free_port())], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no gallery in the model store" in done.stderr


def test_an_unexpected_exception_is_retried_then_dead_lettered_and_the_rest_of_the_batch_goes_on(matcher):
    """No silent acknowledgement (see the worker's test of the same name): metadata that is not an object makes
    the ranking raise AttributeError for the whole batch. The batch is retried, then each record alone: the one
    that still raises is dead-lettered `internal_error` with the exception type, the others are identified once,
    and later records flow."""
    partition_key = uuid.uuid4().hex  # one partition, produced together: one batch
    good = [uuid.uuid4().hex for _ in range(3)]
    bad = uuid.uuid4().hex
    log_start = matcher.service.log_path.stat().st_size
    for sighting_id in [good[0], bad, good[1], good[2]]:
        record = topics.SightingEmbedded(
            sighting_id=sighting_id, embedding=[float(v) for v in near(1, len(sighting_id))],
            model_version="test-model", metadata=["not", "an", "object"] if sighting_id == bad else None,
            uploaded_at=time.time(), embedded_at=time.time())
        matcher.producer.send(topics.SIGHTINGS_EMBEDDED, key=partition_key.encode(), value=record.to_json())
    matcher.producer.flush()
    wait_announced(matcher.redis, good, 60, "the good records of the batch")
    wait_until(lambda: failure(matcher.redis, bad), 60, "the dead letter of the record that raised")
    failed = failure(matcher.redis, bad)
    assert failed["stage"] == "matcher" and failed["reason"] == "internal_error"
    assert failed["detail"].startswith("AttributeError:")
    assert identification(matcher.redis, bad) is None
    counts = stream_counts(matcher.redis)
    assert [counts.get(s) for s in good] == [1, 1, 1] and bad not in counts
    assert all(identification(matcher.redis, s)["candidates"][0]["individual_id"].endswith("-1") for s in good)
    letters = [v for k, v in read_topic(matcher.settings.kafka_bootstrap, topics.DEAD_LETTER) if k == bad]
    assert [(v["stage"], v["reason"]) for v in letters] == [("matcher", "internal_error")]
    log = matcher.service.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert log.count("unexpected AttributeError") >= 3
    later = matcher.send(near(3, 77))
    wait_announced(matcher.redis, [later], 30, "a later record")
