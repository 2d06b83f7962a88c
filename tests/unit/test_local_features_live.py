"""Local-feature re-ranking in the live chain: the gallery's FeatureBank file, the SightingEmbedded field
`local_features` (absent unless the worker re-ranks; old records still parse), the Identification's `rerank`
entry, and the matcher's fusion with the served tuning (services.chain.matcher.matching) on a real Gallery."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from services.core import topics
from services.core.errors import DataError
from services.core.identification.local_features import BANK_FILE, FeatureBank, LocalFeatures
from support.patterns import texture, warped


def random_features(count: int, seed: int) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(rng.random((count, 2)) * 300, rng.integers(0, 60, (count, 128)))


def test_bank_round_trips_through_its_file_and_refuses_damage(tmp_path):
    bank = FeatureBank({"whale-1": [random_features(30, 1), random_features(5, 2)], "dolphin é": [],
                        "whale-2": [LocalFeatures.empty()]})
    data = bank.to_bytes()
    back = FeatureBank.from_bytes(data)
    assert list(back.by_individual) == ["whale-1", "dolphin é", "whale-2"] and len(back) == 3
    assert np.array_equal(back.photos_of("whale-1")[1].descriptors, random_features(5, 2).descriptors)
    assert np.array_equal(back.photos_of("whale-1")[0].points, random_features(30, 1).points)
    assert back.photos_of("unknown") == []
    assert bank.save(tmp_path).name == BANK_FILE
    assert len(FeatureBank.load(tmp_path).photos_of("whale-1")) == 2
    assert FeatureBank.load(tmp_path / "elsewhere") is None  # a gallery version without local features
    for broken in (data[:-3], data + b"x", b"XXXX" + data[4:], data[:7]):
        with pytest.raises(DataError, match="local features"):
            FeatureBank.from_bytes(broken)


def embedded(**extra) -> topics.SightingEmbedded:
    return topics.SightingEmbedded(sighting_id="s1", embedding=[0.5, 0.75], model_version="m", **extra)


def test_bank_size_is_its_file_size_and_it_must_match_the_gallery():
    bank = FeatureBank({"whale-1": [random_features(30, 1), random_features(5, 2)], "dolphin é": [],
                        "whale-2": [LocalFeatures.empty()]})
    assert bank.size_bytes() == len(bank.to_bytes())
    bank.check_individuals(["whale-1", "dolphin é", "whale-2", "whale-3"])  # whale-3: ranked by its embedding
    with pytest.raises(DataError, match="2 of its 3 individuals are not in the gallery .dolphin é, whale-2."):
        bank.check_individuals(["whale-1"])
    with pytest.raises(DataError, match="holds no photo"):
        FeatureBank({}).check_individuals(["whale-1"])


def test_reindex_bank_follows_merges_and_renames_within_the_cap():
    """reindex_features.relabelled_bank: entries move to their live ids (a merge after the target's own photos,
    at most the cap), an individual no longer in the gallery is dropped and named."""
    from services.curation.operations.reindex_features import relabelled_bank

    photos = {name: [random_features(8, 10 * i + n) for n in range(count)]
              for i, (name, count) in enumerate((("a", 2), ("b", 3), ("c", 1), ("gone", 1)))}
    out, dropped = relabelled_bank(FeatureBank(photos), {"a": "b", "c": "c2"}, {"b", "c2"}, per_individual=4)
    assert dropped == ["gone"] and list(out) == ["b", "c2"]
    assert list(map(id, out["b"])) == list(map(id, photos["b"] + photos["a"][:1]))
    assert list(map(id, out["c2"])) == list(map(id, photos["c"]))


def test_gallery_publish_dir_takes_its_bank_and_refuses_a_wanted_one_that_is_absent(tmp_path):
    from services.core.identification import Tuning
    from services.core.settings import Settings
    from services.curation.operations.gallery_versions import ModelStoreError
    from services.curation.operations.publish import directory_bank

    Tuning(threshold=0.5).save(tmp_path / "tuning.json")
    assert directory_bank(tmp_path, Settings()) is None  # not wanted, none there: published as before
    with pytest.raises(ModelStoreError, match="no local_features.bin"):
        directory_bank(tmp_path, Settings(rerank_local_features=True))
    assert directory_bank(tmp_path, Settings(rerank_local_features=True), without=True) is None
    Tuning(threshold=0.5, rerank={"method": "sift", "weight": 0.3}).save(tmp_path / "tuning.json")
    with pytest.raises(ModelStoreError, match="re-ranking is wanted"):
        directory_bank(tmp_path, Settings())
    path = FeatureBank({"whale-1": [random_features(30, 1)]}).save(tmp_path)
    assert directory_bank(tmp_path, Settings()) == path == directory_bank(tmp_path, Settings(), without=True)


def test_records_without_features_are_as_before_and_with_them_round_trip():
    plain = embedded().to_data()
    assert "local_features" not in plain  # the default chain's records: byte for byte as before the field
    assert list(plain) == ["record_version", "sighting_id", "embedding_f32", "model_version", "crop_box",
                           "crop_source", "metadata", "uploaded_at", "embedded_at", "species_scores"]
    features = random_features(12, 3)
    text = base64.b64encode(features.to_bytes()).decode()
    record = topics.SightingEmbedded.from_json(embedded(local_features=text).to_json())
    assert np.array_equal(LocalFeatures.from_bytes(record.local_features_bytes()).descriptors, features.descriptors)
    assert topics.SightingEmbedded.from_json(json.dumps(plain)).local_features_bytes() is None
    with pytest.raises(topics.RecordError, match="not base64"):
        embedded(local_features="not base64!").local_features_bytes()


def test_identification_json_has_rerank_only_when_re_ranked():
    base = dict(sighting_id="s1", candidates=[{"individual_id": "w", "score": 0.9}], new_individual=False,
                model_version="m", gallery_version="g")
    assert "rerank" not in json.loads(topics.Identification(**base).to_json())
    entry = {"method": "sift", "weight": 0.3, "cap": 20, "k": 5, "inliers": [31]}
    back = topics.Identification.from_json(topics.Identification(**base, rerank=entry).to_json())
    assert back.rerank == entry


def test_matcher_parse_keeps_the_features_out_of_what_redis_stores():
    from services.chain.matcher.agent import _parse

    text = base64.b64encode(random_features(4, 5).to_bytes()).decode()
    record, stored = _parse(embedded(local_features=text).to_json())
    assert record.local_features == text and "local_features" not in json.loads(stored)
    assert topics.SightingEmbedded.from_json(stored).embedding.tolist() == [0.5, 0.75]


def unit(rows) -> np.ndarray:
    rows = np.asarray(rows, np.float32)
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


@pytest.fixture()
def state(tmp_path):
    """A served version of three individuals (one embedding each) whose truth's photo is the query's pattern
    under a rotation and scale; the embedding puts `decoy` first (0.99) and `truth` second (about 0.9)."""
    pytest.importorskip("cv2")
    from services.chain.matcher.matching import load_state
    from services.core.identification import Tuning, build_gallery
    from services.core.keypoints import extract

    rng = np.random.default_rng(0)
    query = unit(rng.normal(size=64))
    decoy = unit(query + 0.1 * unit(rng.normal(size=64)))
    truth = unit(query + 0.45 * unit(rng.normal(size=64)))
    third = unit(rng.normal(size=64))
    gallery = build_gallery(np.stack([decoy, truth, third]), ["decoy", "truth", "third"], ["beluga"] * 3,
                            ["d.jpg", "t.jpg", "x.jpg"])
    gallery.save(tmp_path)
    rerank = {"method": "sift", "weight": 0.3, "cap": 20, "k": 5, "ratio": 0.8, "tolerance_px": 8.0,
              "iterations": 200, "photos": 8}
    Tuning(threshold=0.5, rerank=rerank).save(tmp_path / "tuning.json")
    FeatureBank({"truth": [extract(warped(texture(10), -20, 1.1))], "decoy": [extract(texture(11))],
                 "third": [extract(texture(12))]}).save(tmp_path)
    return load_state(tmp_path, "v1"), query, extract(texture(10))


def test_matcher_fuses_with_the_served_tuning_and_says_so(state):
    from services.chain.matcher.matching import Matcher
    from services.core.settings import Settings

    served, query, features = state
    matcher = Matcher(Settings(), store=None)
    text = base64.b64encode(features.to_bytes()).decode()
    plain, reranked = matcher.identify([
        topics.SightingEmbedded(sighting_id="a", embedding=query, model_version="m"),
        topics.SightingEmbedded(sighting_id="b", embedding=query, model_version="m", local_features=text)], served)
    assert [c["individual_id"] for c in plain.candidates[:2]] == ["decoy", "truth"] and plain.rerank is None
    ids = [c["individual_id"] for c in reranked.candidates]
    assert ids[0] == "truth" and reranked.candidates[0]["image"] == "t.jpg"
    entry = reranked.rerank
    assert entry["method"] == "sift" and entry["weight"] == 0.3
    inliers = dict(zip(ids, entry["inliers"], strict=True))
    assert inliers["truth"] > 20 and inliers["decoy"] <= 8 and inliers["new_individual"] is None
    assert reranked.candidates[0]["score"] > plain.candidates[1]["score"]
    assert reranked.threshold == 0.5


def test_without_a_bank_or_a_tuned_rerank_the_matcher_ranks_as_before(state, tmp_path):
    import dataclasses

    from services.chain.matcher.matching import Matcher, rerank_config
    from services.core.identification import Tuning
    from services.core.settings import Settings

    served, query, features = state
    text = base64.b64encode(features.to_bytes()).decode()
    record = topics.SightingEmbedded(sighting_id="b", embedding=query, model_version="m", local_features=text)
    no_bank = dataclasses.replace(served, features=None)
    result = Matcher(Settings(rerank_local_features=True), store=None).identify([record], no_bank)[0]
    assert result.candidates[0]["individual_id"] == "decoy" and result.rerank is None
    untuned = dataclasses.replace(served, identifier=type(served.identifier)(served.gallery, Tuning(threshold=0.5)))
    assert rerank_config(untuned, enabled=False) is None
    assert Matcher(Settings(), store=None).identify([record], untuned)[0].rerank is None
    on = Matcher(Settings(rerank_local_features=True), store=None).identify([record], untuned)[0]
    assert on.candidates[0]["individual_id"] == "truth" and on.rerank["weight"] == 0.3  # RerankConfig defaults


def test_worker_record_carries_the_crop_features_only_when_given():
    pytest.importorskip("cv2")
    from services.chain.worker.cropping import Crop
    from services.chain.worker.pipeline import PreparedSighting, embedded_record, local_features

    event = topics.SightingUploaded(sighting_id="s9", bucket="b", key="k")
    prepared = PreparedSighting(event, Crop(texture(10), None, "full"))
    text = local_features(prepared)
    assert len(LocalFeatures.from_bytes(base64.b64decode(text))) >= 50
    assert "local_features" not in embedded_record(prepared, [0.5, 0.75], "m").to_data()
    assert embedded_record(prepared, [0.5, 0.75], "m", features=text).to_data()["local_features"] == text


def test_gallery_build_keeps_at_most_n_photos_per_individual_cropped_as_embedded(tmp_path):
    pytest.importorskip("cv2")
    from PIL import Image

    from services.core.identification import Tuning
    from services.core.settings import Settings
    from services.curation.catalogue.gallery_build import Photos
    from services.curation.catalogue.gallery_features import gallery_features, wanted

    paths, ids, boxes = [], [], []
    for n, individual in enumerate(["a", "a", "a", "b"]):
        scene = np.zeros((300, 400, 3), np.uint8)
        scene[20:276, 100:356] = texture(30 + n)
        paths.append(tmp_path / f"{n}.png")
        Image.fromarray(scene).save(paths[-1])
        ids.append(individual)
        boxes.append({"uploader": [100, 20, 356, 276]})
    photos = Photos([p.name for p in paths], ids, ["beluga"] * 4, paths, boxes)
    bank = gallery_features(photos, "uploader", per_individual=2)
    assert [len(bank.photos_of(i)) for i in ("a", "b")] == [2, 1]
    boxed = bank.photos_of("b")[0]
    assert float(boxed.points.max()) < 256  # keypoints of the box (256 px), not of the 400 px scene
    whole = gallery_features(photos, None, per_individual=2).photos_of("b")[0]
    assert float(whole.points[:, 0].max()) > 256
    assert not wanted(Settings(), Tuning()) and wanted(Settings(rerank_local_features=True), Tuning())
    assert wanted(Settings(), Tuning(rerank={"method": "sift"}))


def test_re_embed_bank_follows_a_merge_and_adds_the_sightings_crops_within_the_cap(tmp_path):
    """gallery_features.gallery_bank as `reindex --re-embed` calls it: the catalogue's photos move to the live id
    of a merged individual (the gallery row's metadata keeps the original), and the confirmed sightings' crops
    join after them while there is room."""
    pytest.importorskip("cv2")
    from PIL import Image

    from services.core.identification import build_gallery
    from services.core.keypoints import extract
    from services.curation.catalogue.gallery_build import Photos
    from services.curation.catalogue.gallery_features import gallery_bank
    from services.curation.catalogue.re_embed import CROP, SightingPhotos
    from services.curation.operations.aliases import ORIGINAL_KEY

    def saved(name: str, image) -> object:
        Image.fromarray(image).save(tmp_path / name)
        return tmp_path / name

    catalogue = Photos(["c0", "c1", "c2"], ["a", "a", "b"], ["beluga"] * 3,
                       [saved(f"c{n}.png", texture(50 + n)) for n in range(3)])
    scene = np.zeros((300, 400, 3), np.uint8)
    scene[20:276, 100:356] = texture(60)
    sightings = SightingPhotos(["sighting/s1", "sighting/s2"], ["a", "b"], ["beluga"] * 2,
                               [saved("s1.png", scene), saved("s2.png", scene)],
                               [{CROP: [100, 20, 356, 276]}, {CROP: [100, 20, 356, 276]}])
    gallery = build_gallery(np.eye(3, 8, dtype=np.float32), ["b", "b", "b"], ["beluga"] * 3, ["c0", "c2", "x"],
                            [{ORIGINAL_KEY: "a"}, {}, {ORIGINAL_KEY: "a"}])  # a merged into b
    path, report = gallery_bank(catalogue, None, gallery, tmp_path, sightings, per_individual=3)
    bank = FeatureBank.load(tmp_path)
    assert path == tmp_path / BANK_FILE and list(bank.by_individual) == ["b"]
    assert [p.to_bytes() for p in bank.photos_of("b")] == [
        extract(texture(52)).to_bytes(), extract(texture(50)).to_bytes(), extract(texture(51)).to_bytes()]
    assert report["added"] == [] and set(report["skipped"]) == {"s1", "s2"}  # b is full: 3 catalogue photos
    path, report = gallery_bank(catalogue, None, gallery, tmp_path, sightings, per_individual=5)
    assert report["added"] == ["s1", "s2"] and report["photos"] == 5
    assert FeatureBank.load(tmp_path).photos_of("b")[3].to_bytes() == extract(texture(60)).to_bytes()


def test_a_crop_sift_cannot_read_is_sent_without_features():
    from services.chain.worker.cropping import Crop
    from services.chain.worker.pipeline import PreparedSighting, local_features

    event = topics.SightingUploaded(sighting_id="s9", bucket="b", key="k")
    assert local_features(PreparedSighting(event, Crop(np.zeros((0, 5, 3), np.uint8), None, "full"))) is None
