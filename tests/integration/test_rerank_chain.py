"""Local-feature re-ranking in the live chain on real servers (session stack: Kafka, S3, Redis; a dedicated Triton
with the toy ensemble): `whaleid serve worker` with `rerank_local_features` sends the crop's SIFT keypoints in
the sightings.embedded record, the gallery version carries its photos' keypoints (gallery build's
services.curation.catalogue.gallery_features, published with the version), and `whaleid serve matcher` fuses the
inliers with the embedding score by the served tuning's `rerank`.

The query is a generated texture; the gallery holds three individuals whose embeddings put `decoy` first (the
query's own embedding) and `truth` second (about 0.96), while truth's gallery photo is the query's pattern under a
rotation and scale, which only the keypoints see. With the worker re-ranking, truth is answered first; with the
setting off (the default), the record carries no keypoints and the answer is the embedding's, unchanged."""

from __future__ import annotations

import base64
import json
import uuid

import boto3
import numpy as np
import pytest
import redis
from kafka import KafkaProducer

from services.core import topics
from support.chain import (
    TOY_MODEL_IDS,
    ServiceProcess,
    chain_env,
    identification,
    png_bytes,
    read_topic,
    uploaded_event,
    wait_announced,
)
from support.patterns import texture, warped

cv2 = pytest.importorskip("cv2")

RERANK = {"method": "sift", "weight": 0.3, "cap": 20, "k": 5, "ratio": 0.8, "tolerance_px": 8.0, "iterations": 200,
          "photos": 8}


def unit(vector) -> np.ndarray:
    vector = np.asarray(vector, np.float32)
    return vector / np.linalg.norm(vector)


QUERY = texture(10)


@pytest.fixture(scope="module")
def chain(stack, tmp_path_factory):
    from services.core.identification import Tuning, build_gallery
    from services.curation.catalogue.gallery_build import Photos
    from services.curation.catalogue.gallery_features import gallery_features
    from services.curation.operations.gallery_versions import GalleryStore
    from services.curation.operations.publish import publish_gallery
    from services.devtools.stack.triton import launch_triton
    from services.serving.triton_client import EmbeddingClient
    from support.chain import write_toy_repository

    root = tmp_path_factory.mktemp("rerank-chain")
    triton = launch_triton(write_toy_repository(root / "repo"), root / "triton")
    services: list[ServiceProcess] = []
    try:
        triton.wait_healthy(90)
        settings = stack.settings.with_overrides(models_bucket=f"models-{uuid.uuid4().hex[:8]}",
                                                 triton_grpc_url=triton.grpc)
        s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=settings.models_bucket)
        with EmbeddingClient(triton.grpc) as client:
            client.wait_ready(60)
            query = unit(client.embed([png_bytes(QUERY)])[0])
        noise = np.random.default_rng(1).normal(size=query.size)
        noise = unit(noise - (noise @ query) * query)
        embeddings = np.stack([query, unit(query + 0.3 * noise), unit(np.random.default_rng(2).normal(size=query.size))])
        folder = root / "gallery"
        build_gallery(embeddings, ["decoy", "truth", "third"], ["beluga"] * 3, ["d.png", "t.png", "x.png"],
                      model_ids=list(TOY_MODEL_IDS)).save(folder)
        Tuning(threshold=0.5, rerank=dict(RERANK)).save(folder / "tuning.json")
        paths = []
        for name, image in (("t", warped(QUERY, -20, 1.1)), ("d", texture(11)), ("x", texture(12))):
            paths.append(root / f"{name}.png")
            paths[-1].write_bytes(png_bytes(image))
        bank = gallery_features(Photos(["t.png", "d.png", "x.png"], ["truth", "decoy", "third"], ["beluga"] * 3,
                                       paths), None)
        from services.core.identification import Gallery

        store = GalleryStore.from_settings(settings)
        publish_gallery(store, Gallery.load(folder), folder / "tuning.json", reason="test_rerank_chain",
                        extra_files=[bank.save(root)])

        env = chain_env(stack.state, root / "run", triton.grpc, models_bucket=settings.models_bucket)
        worker = ServiceProcess("worker", {**env, "WHALEID_RERANK_LOCAL_FEATURES": "true"}, root / "logs").start()
        # the matcher matches on 2 threads (rerank_workers): the live path of the pool whose counts the unit tests
        # compare with one thread's
        matcher = ServiceProcess("matcher", {**env, "WHALEID_RERANK_WORKERS": "2"}, root / "logs").start()
        services += [worker, matcher]
        worker.wait_ready()
        matcher.wait_ready()
        producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
        handle = Chain(settings, s3, producer, redis.Redis.from_url(settings.redis_url), env, root, services)
        yield handle
        producer.close()
    finally:
        for service in services:
            service.stop()
        triton.stop()


class Chain:
    def __init__(self, settings, s3, producer, redis_client, env, root, services):
        self.settings, self.s3, self.producer, self.redis = settings, s3, producer, redis_client
        self.env, self.root, self.services = env, root, services

    def upload(self, data: bytes) -> str:
        sighting_id = uuid.uuid4().hex
        key = f"uploads/{sighting_id}.png"
        self.s3.put_object(Bucket=self.settings.sightings_bucket, Key=key, Body=data, ContentType="image/png")
        self.producer.send(topics.SIGHTINGS_UPLOADED, key=sighting_id.encode(),
                           value=uploaded_event(sighting_id, self.settings.sightings_bucket, key))
        self.producer.flush()
        return sighting_id

    def embedded_record(self, sighting_id: str) -> dict:
        records = [value for key, value in read_topic(self.settings.kafka_bootstrap, topics.SIGHTINGS_EMBEDDED)
                   if key == sighting_id and isinstance(value, dict)]
        assert len(records) == 1, f"{len(records)} sightings.embedded records for {sighting_id}"
        return records[0]


def test_the_worker_sends_keypoints_and_the_matcher_moves_the_true_animal_first(chain):
    from services.core.identification.local_features import LocalFeatures

    sighting_id = chain.upload(png_bytes(QUERY))
    wait_announced(chain.redis, [sighting_id], 60, "the re-ranked identification")
    result = identification(chain.redis, sighting_id)
    ids = [c["individual_id"] for c in result["candidates"]]
    assert ids[0] == "truth" and result["new_individual"] is False, result
    assert result["candidates"][0]["image"] == "t.png"
    rerank = result["rerank"]
    assert rerank["method"] == "sift" and rerank["weight"] == RERANK["weight"]
    inliers = dict(zip(ids, rerank["inliers"], strict=True))
    assert inliers["truth"] >= 20 and inliers["decoy"] <= 8, inliers
    assert result["candidates"][0]["score"] > 1.0  # the fused score: embedding + weight * min(inliers, cap) / cap
    record = chain.embedded_record(sighting_id)
    features = LocalFeatures.from_bytes(base64.b64decode(record["local_features"]))
    assert len(features) >= 50
    stored = topics.loads(chain.redis.get(f"embedding:{sighting_id}"))  # Redis keeps the record without them
    assert "local_features" not in stored and stored["embedding_f32"] == record["embedding_f32"]


def test_with_the_setting_off_the_record_carries_no_keypoints_and_the_embedding_decides(chain):
    worker = chain.services[0]
    worker.stop()
    plain = ServiceProcess("worker", chain.env, chain.root / "logs", name="worker-plain").start()
    chain.services[0] = plain
    plain.wait_ready()
    sighting_id = chain.upload(png_bytes(QUERY))
    wait_announced(chain.redis, [sighting_id], 90, "the identification without re-ranking")
    result = identification(chain.redis, sighting_id)
    assert [c["individual_id"] for c in result["candidates"]][:2] == ["decoy", "truth"], result
    assert "rerank" not in result
    assert result["candidates"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    assert "local_features" not in chain.embedded_record(sighting_id)


def test_reindex_adds_the_confirmed_sightings_keypoints_within_the_cap(stack, monkeypatch, tmp_path):
    """The parent version's bank: ind-0 with one photo, ind-1 at the cap of 8. Three confirmed sightings enter the
    gallery; their keypoints (the photo in S3 cropped by the box stored with the worker's embedding) enter the next
    bank only where there is room and the photo is readable: `crop` after ind-0's own photo, `full` (ind-1) not,
    `gone` (no photo) not; the report names both with the reason."""
    from services.core import keys
    from services.core.identification import Tuning, build_gallery
    from services.core.identification.local_features import BANK_FILE, FeatureBank
    from services.core.keypoints import extract
    from services.curation.operations.confirmations import ConfirmationService
    from services.curation.operations.known import CurrentGalleryIndividuals
    from services.curation.operations.publish import publish_gallery
    from services.curation.operations.reindex import reindex
    from support.operations import Clusters, isolated_catalogue, seed_sighting

    with isolated_catalogue(stack.settings, monkeypatch, 5, "galleries-rerank", "rerank-app-token",
                            "rerank-researcher-token") as (settings, store, client):
        clusters, names = Clusters(), ["ind-0", "ind-1"]
        gallery = build_gallery(np.stack([clusters.sample(n) for n in names]), names, ["beluga"] * 2,
                                ["a.jpg", "b.jpg"])
        tuning = Tuning(threshold=0.5, rerank=dict(RERANK)).save(tmp_path / "tuning.json")
        bank = FeatureBank({"ind-0": [extract(texture(20))], "ind-1": [extract(texture(21 + n)) for n in range(8)]})
        first = publish_gallery(store, gallery, tuning, reason="test_rerank_chain", extra_files=[bank.save(tmp_path)])
        s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.s3_region,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        photo = np.full((300, 420, 3), 128, np.uint8)
        photo[30:286, 50:306] = texture(30)
        box = [50, 30, 306, 286]  # the worker's crop: the texture alone
        sightings = {}
        for name, individual in (("crop", "ind-0"), ("full", "ind-1"), ("gone", "ind-0")):
            sighting = seed_sighting(client, clusters.sample(individual), [(individual, 0.9)])
            key = f"uploads/{sighting}.png"
            client.hset(keys.sighting_key(sighting), mapping={"bucket": settings.sightings_bucket, "key": key})
            stored = json.loads(client.get(keys.embedding_key(sighting)))
            client.set(keys.embedding_key(sighting), json.dumps({**stored, "crop_box": box}))
            if name != "gone":
                s3.put_object(Bucket=settings.sightings_bucket, Key=key, Body=png_bytes(photo))
            ConfirmationService(client, CurrentGalleryIndividuals(store)).submit(
                sighting, {"action": "confirm", "individual_id": individual, "researcher": "dr-fluke"})
            sightings[name] = sighting
        report = reindex(store, client, s3=s3, sightings_bucket=settings.sightings_bucket)
        assert report.new_version not in (None, first) and sorted(report.added) == sorted(sightings.values())
        features = report.local_features
        assert features["added"] == [sightings["crop"]] and features["photos"] == 10, features
        assert "already has 8" in features["skipped"][sightings["full"]], features
        assert "gone" in features["skipped"][sightings["gone"]], features
        assert BANK_FILE in store.version_info(report.new_version)["files"]
        carried = FeatureBank.load(store.download(report.new_version, tmp_path / "next"))
        assert [p.to_bytes() for p in carried.photos_of("ind-1")] == [p.to_bytes() for p in bank.photos_of("ind-1")]
        own, added = carried.photos_of("ind-0")
        assert own.to_bytes() == bank.photos_of("ind-0")[0].to_bytes()
        assert added.to_bytes() == extract(texture(30)).to_bytes() != extract(photo).to_bytes()  # the crop's


def test_publishing_a_bank_of_another_gallery_is_refused_and_nothing_is_uploaded(stack, monkeypatch, tmp_path):
    """publish_gallery (every publisher: gallery build, reindex, `gallery publish DIR`) checks a bank against the
    gallery's individuals before uploading anything."""
    from services.core.identification import Tuning, build_gallery
    from services.core.identification.local_features import FeatureBank
    from services.core.keypoints import extract
    from services.curation.operations.gallery_versions import ModelStoreError
    from services.curation.operations.publish import publish_gallery
    from support.operations import Clusters, isolated_catalogue

    with isolated_catalogue(stack.settings, monkeypatch, 5, "galleries-rerank", "rerank-app-token",
                            "rerank-researcher-token") as (settings, store, _client):
        clusters = Clusters()
        gallery = build_gallery(np.stack([clusters.sample("ind-0")]), ["ind-0"], ["beluga"], ["a.jpg"])
        tuning = Tuning(threshold=0.5).save(tmp_path / "tuning.json")
        stray = FeatureBank({"ind-0": [extract(texture(20))], "elsewhere": [extract(texture(21))]}).save(tmp_path)
        with pytest.raises(ModelStoreError, match="1 of its 2 individuals are not in the gallery"):
            publish_gallery(store, gallery, tuning, reason="test", extra_files=[stray])
        listed = store.client.list_objects_v2(Bucket=store.bucket, Prefix=settings.gallery_prefix + "/")
        assert listed.get("KeyCount", 0) == 0 and store.current_version() is None


def test_gallery_publish_dir_carries_its_bank_and_refuses_when_one_is_wanted_but_absent(stack, monkeypatch,
                                                                                         tmp_path, capsys):
    """`whaleid gallery publish DIR`: DIR's local_features.bin goes with the version (the matcher loads it); a
    DIR without one whose tuning has `rerank` is refused (exit 2, nothing published) unless
    --without-local-features."""
    from services.chain.matcher.matching import Matcher
    from services.cli.main import main as whaleid
    from services.core.identification import Tuning, build_gallery
    from services.core.identification.local_features import BANK_FILE, FeatureBank
    from services.core.keypoints import extract
    from support.operations import Clusters, isolated_catalogue

    with isolated_catalogue(stack.settings, monkeypatch, 5, "galleries-rerank", "rerank-app-token",
                            "rerank-researcher-token") as (settings, store, _client):
        clusters, names = Clusters(), ["ind-0", "ind-1"]
        folder = tmp_path / "gallery"
        build_gallery(np.stack([clusters.sample(n) for n in names]), names, ["beluga"] * 2,
                      ["a.jpg", "b.jpg"]).save(folder)
        Tuning(threshold=0.5, rerank=dict(RERANK)).save(folder / "tuning.json")
        assert whaleid(["gallery", "publish", str(folder)]) == 2
        assert f"has no {BANK_FILE}" in capsys.readouterr().err and store.current_version() is None
        assert whaleid(["gallery", "publish", str(folder), "--without-local-features"]) == 0
        plain = store.current_version()
        assert plain and BANK_FILE not in store.version_info(plain)["files"]
        bank = FeatureBank({"ind-1": [extract(texture(20)), extract(texture(21))]})
        bank.save(folder)
        assert whaleid(["gallery", "publish", str(folder)]) == 0
        assert "with its local features" in capsys.readouterr().out
        version = store.current_version()
        assert version != plain and BANK_FILE in store.version_info(version)["files"]
        matcher = Matcher(settings, store)
        assert matcher.reload() and matcher.state.version == version
        assert [p.to_bytes() for p in matcher.state.features.photos_of("ind-1")] == [
            p.to_bytes() for p in bank.photos_of("ind-1")]


def test_gallery_build_stores_the_photos_keypoints_only_when_asked(tmp_path, stack, catalogue, small_run):
    """`whaleid gallery build`'s code (publish_catalogue_gallery) on the real S3 catalogue: with
    rerank_local_features the version carries local_features.bin (at most 8 photos of each individual) and the
    matcher loads it; without (the default, and a tuning without `rerank`) the version has no such file."""
    import dataclasses

    from PIL import Image

    from services.chain.matcher.matching import Matcher
    from services.core.identification.local_features import BANK_FILE
    from services.curation.catalogue.gallery_build import publish_catalogue_gallery
    from services.curation.catalogue.importer import import_catalogue
    from services.curation.operations.gallery_versions import GalleryStore

    src = tmp_path / "folders"
    counts = {"ind00": 10, "ind01": 2, "ind02": 3, "ind03": 2, "ind04": 2}
    for index, (individual, count) in enumerate(counts.items()):
        (src / individual).mkdir(parents=True)
        for n in range(count):
            Image.fromarray(texture(100 * index + n)).save(src / individual / f"{n}.jpg", quality=92)
    import_catalogue(src, catalogue, progress=False)
    (small_run / "folds.csv").write_text("individual_id,fold\n" + "".join(
        f"{ind},{i % 5}\n" for i, ind in enumerate(counts)))
    prefix = f"test-galleries-rerank-{uuid.uuid4().hex[:8]}"
    for on in (False, True):
        settings = dataclasses.replace(stack.settings, gallery_prefix=prefix, rerank_local_features=on)
        store = GalleryStore.from_settings(settings)
        messages = []
        version = publish_catalogue_gallery(settings, small_run, progress=messages.append, progress_bar=False,
                                            catalogue=catalogue, store=store)["version"]
        files = store.version_info(version)["files"]
        matcher = Matcher(settings, store)
        assert matcher.reload() and matcher.state.version == version
        if not on:
            assert BANK_FILE not in files and matcher.state.features is None
            assert not any("local features" in m for m in messages)
            continue
        assert BANK_FILE in files and any("local features of 17 gallery photos" in m for m in messages), messages
        bank = matcher.state.features
        assert {i: len(bank.photos_of(i)) for i in counts} == {**counts, "ind00": 8}
        assert all(len(features) >= 50 for i in counts for features in bank.photos_of(i))
