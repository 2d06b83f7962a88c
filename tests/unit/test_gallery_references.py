"""Gallery references (one row per photo or one mean per individual) and the `live` validation that tunes the
threshold on queries like a deployment's: trained individuals' held-out photos, the fold's untrained ones, and
new individuals, each weighted to its share."""

import numpy as np
import pytest

from services.core.errors import DataError
from services.core.identification import NEW_INDIVIDUAL, Gallery, Identifier, map_at_5, rank_candidates
from services.core.identification.evaluation import (
    LabelledImages,
    build_tuned_gallery,
    evaluate_out_of_fold,
    live_splits,
    live_weights,
    split_fold,
)
from services.core.identification.gallery import MEAN_IMAGE_PREFIX, build_reference_gallery, individual_means
from services.core.identification.tuning import cross_fitted_map5, sweep_threshold
from support.identification import centres, noisy, unit

DIM = 32


def labels(predictions):
    return [[label for label, _ in p] for p in predictions]


# ----------------------------------------------------------------------------- references
def test_means_are_one_renormalised_mean_per_individual(tmp_path):
    rng = np.random.default_rng(0)
    rows = np.array([0, 0, 0, 1, 2, 2])
    embeddings = noisy(centres(3, DIM, rng)[rows], 1.0, rng)
    ids = [f"i{r}" for r in rows]
    species = ["orca", "orca", "beluga", "beluga", "humpback_whale", "humpback_whale"]
    gallery = build_reference_gallery(embeddings, ids, species, [f"{n}.jpg" for n in range(6)], "means",
                                      model_ids=["m"])
    assert gallery.individual_ids == ["i0", "i1", "i2"] and len(gallery) == 3
    assert gallery.images == [MEAN_IMAGE_PREFIX + i for i in ("i0", "i1", "i2")]
    assert gallery.species == ["orca", "beluga", "humpback_whale"]  # the most frequent species of its photos
    expected = unit(embeddings[:3].mean(axis=0, keepdims=True))[0]
    np.testing.assert_allclose(gallery.embeddings[0], expected, atol=1e-6)
    np.testing.assert_array_equal(gallery.embeddings[1], embeddings[3])  # a single photo is its own mean
    assert [m["photos"] for m in gallery.metadata] == [3, 1, 2]
    assert gallery.metadata[0]["reference"] == "mean"
    # the norm before renormalising: the photos' sum can be rebuilt exactly (to fold later photos into it)
    rebuilt = gallery.embeddings[0] * gallery.metadata[0]["norm"] * 3
    np.testing.assert_allclose(rebuilt, embeddings[:3].sum(axis=0), atol=1e-5)
    loaded = Gallery.load(gallery.save(tmp_path / "g"))
    assert loaded.individual_ids == gallery.individual_ids and loaded.metadata == gallery.metadata
    photos = build_reference_gallery(embeddings, ids, species, [f"{n}.jpg" for n in range(6)], "photos")
    assert len(photos) == 6 and photos.images[0] == "0.jpg"


def test_reference_and_validation_names_are_checked():
    embeddings = unit(np.eye(4, DIM))
    with pytest.raises(DataError, match="references 'centres' unknown"):
        build_reference_gallery(embeddings, list("abcd"), ["s"] * 4, list("1234"), "centres")
    with pytest.raises(DataError, match="2 ids but 1 images"):
        build_reference_gallery(embeddings[:2], ["a", "b"], ["s", "s"], ["1"], "means")
    with pytest.raises(DataError, match="cancel out"):
        individual_means(np.stack([embeddings[0], -embeddings[0]]), ["a", "a"], ["s", "s"])
    data = LabelledImages(list("1234"), list("aabb"), ["s"] * 4, [0, 0, 1, 1])
    with pytest.raises(DataError, match="validation 'test' unknown"):
        evaluate_out_of_fold({"m": embeddings}, data, [0], validation="test")


def test_means_rank_fresh_photos_better_than_the_best_photo():
    """Averaging an animal's looks cancels each photo's own noise: a fresh photo is nearer the mean of its
    animal's photos than the best of them is reliable (the demo's model: 59 % vs 52 % right first)."""
    rng = np.random.default_rng(3)
    c = centres(150, DIM, rng)
    rows = np.repeat(np.arange(150), 4)
    gallery_x = noisy(c[rows], 2.0, rng)
    queries = noisy(c, 2.0, rng)
    ids = [f"i{r}" for r in rows]
    truths = np.array([f"i{r}" for r in range(150)], dtype=object)
    right = {}
    for references in ("photos", "means"):
        gallery = build_reference_gallery(gallery_x, ids, ["s"] * len(ids), [f"{n}" for n in range(len(ids))],
                                          references)
        right[references] = float(np.mean(rank_candidates(gallery, queries, 50).ids[:, 0] == truths))
    print(right)
    assert right["means"] > right["photos"] + 0.05


# ----------------------------------------------------------------------------- live validation
def deployment(seed: int = 0, individuals: int = 200, folds: int = 5):
    """Labelled photos of a trained model's catalogue: the individuals of folds 1.. were trained on, so their
    photos sit tight around their centre (in-sample) while a fresh photo of them is looser; fold 0's were not
    (loose photos). Also a live stream: fresh photos of catalogued individuals and photos of new ones."""
    rng = np.random.default_rng(seed)
    c = centres(individuals + 60, DIM, rng)
    counts = rng.choice([1, 1, 1, 2, 2, 3, 4, 6, 10], size=individuals)
    rows = np.repeat(np.arange(individuals), counts)
    fold_of = np.arange(individuals) % folds
    trained = fold_of[rows] != 0
    noise = np.where(trained, 1.0, 2.6)
    embeddings = noisy(c[rows], noise, rng)
    data = LabelledImages([f"{n:05d}.jpg" for n in range(len(rows))], [f"i{r:04d}" for r in rows],
                          ["orca" if r % 2 else "beluga" for r in rows], fold_of[rows])
    seen = np.repeat(np.arange(individuals), np.maximum(1, counts // 2))
    new = np.arange(individuals, individuals + 60)
    stream_rows = np.concatenate([seen, new])
    stream_noise = np.where(stream_rows < individuals, np.where(fold_of[np.minimum(stream_rows, individuals - 1)] != 0,
                                                                1.9, 2.6), 2.6)
    stream = {"embeddings": noisy(c[stream_rows], stream_noise, rng),
              "truths": [f"i{r:04d}" if r < individuals else NEW_INDIVIDUAL for r in stream_rows]}
    return data, embeddings, stream


def test_live_splits_are_honest():
    data, _, _ = deployment()
    splits = live_splits(data, 0)
    assert [s.kind for s in splits][0] == "fold" and {s.kind for s in splits} == {"fold", "trained", "new"}
    base = split_fold(data, 0)
    np.testing.assert_array_equal(splits[0].query_rows, base.query_rows)  # the fold's split, unchanged
    ids = np.asarray(data.individual_ids, dtype=object)
    for split in splits:
        gallery = set(split.gallery_rows.tolist())
        gallery_ids = set(ids[split.gallery_rows].tolist())
        assert len(split.groups) == len(split.query_rows)
        for row, truth, group in zip(split.query_rows, split.truths, split.groups, strict=True):
            assert row not in gallery  # a query's own photo is never in its gallery
            assert group == ids[row]  # cross-fitting keeps an individual's queries together
            if truth == NEW_INDIVIDUAL:
                assert ids[row] not in gallery_ids and data.folds[row] == 0  # never trained, not catalogued
            else:
                assert truth == ids[row] and truth in gallery_ids
        if split.kind == "trained":
            assert (data.folds[split.query_rows] != 0).all()
    trained_queries = sum(len(s.query_rows) for s in splits if s.kind == "trained")
    assert trained_queries > len(base.query_rows)


def test_live_weights_give_each_kind_its_share():
    data, _, _ = deployment()
    splits = live_splits(data, 0)
    weights = live_weights(data, splits)
    truths = np.concatenate([np.asarray(s.truths, dtype=object) for s in splits])
    kinds = np.concatenate([[s.kind] * len(s.query_rows) for s in splits])
    assert weights.shape == truths.shape and weights.sum() == pytest.approx(len(truths))
    base = np.asarray(splits[0].truths, dtype=object)
    new_share = np.mean(base == NEW_INDIVIDUAL)
    trained_share = np.mean(data.folds != 0)
    share = lambda mask: weights[mask].sum() / weights.sum()  # noqa: E731
    assert share(truths == NEW_INDIVIDUAL) == pytest.approx(new_share)
    assert share(kinds == "trained") == pytest.approx((1 - new_share) * trained_share)
    assert share((kinds == "fold") & (truths != NEW_INDIVIDUAL)) == pytest.approx((1 - new_share) * (1 - trained_share))


def test_weighted_sweep_equals_repeating_queries():
    rng = np.random.default_rng(5)
    c = centres(30, DIM, rng)
    gallery = build_reference_gallery(noisy(c[:20], 1.5, rng), [f"i{i}" for i in range(20)], ["s"] * 20,
                                      [str(i) for i in range(20)])
    queries = noisy(c, 1.5, rng)
    truths = [f"i{i}" if i < 20 else NEW_INDIVIDUAL for i in range(30)]
    candidates = rank_candidates(gallery, queries, 10)
    repeat = rng.integers(1, 4, size=30)
    rows = np.repeat(np.arange(30), repeat)
    weighted = sweep_threshold(candidates, truths, weights=repeat)
    repeated = sweep_threshold(candidates.subset(rows), [truths[r] for r in rows])
    np.testing.assert_allclose(weighted.map5, repeated.map5, atol=1e-12)
    assert weighted.best == repeated.best
    np.testing.assert_array_equal(sweep_threshold(candidates, truths, weights=np.full(30, 2.0)).map5,
                                  sweep_threshold(candidates, truths).map5)
    groups = [str(i) for i in range(30)]
    assert cross_fitted_map5(candidates, truths, groups, weights=np.ones(30)) == cross_fitted_map5(candidates, truths,
                                                                                                   groups)
    with pytest.raises(DataError, match="weights"):
        sweep_threshold(candidates, truths, weights=np.zeros(30))


def test_fold_validation_is_unchanged_by_default():
    data, embeddings, _ = deployment(seed=1)
    default = evaluate_out_of_fold({"m": embeddings}, data, [0]).report
    explicit = evaluate_out_of_fold({"m": embeddings}, data, [0], references="photos", validation="fold").report
    assert default == explicit and default["validation"] == "fold" and default["references"] == "photos"
    assert default["queries"] == len(split_fold(data, 0).query_rows)


def test_live_validation_tunes_a_threshold_that_serves_the_live_stream_better():
    """The fold's known queries (untrained animals, one reference photo) rank badly, so `fold` validation
    answers new_individual for nearly everything; the live stream is mostly fresh photos of trained animals,
    which `live` validation includes."""
    results = {}
    for seed in (0, 1, 2):
        data, embeddings, stream = deployment(seed=seed)
        for validation in ("fold", "live"):
            for references in ("photos", "means"):
                gallery, evaluation = build_tuned_gallery({"m": embeddings}, data, [0], references=references,
                                                          validation=validation)
                predicted = labels(Identifier(gallery, evaluation.tuning).identify(stream["embeddings"]))
                key = (validation, references)
                results.setdefault(key, []).append(map_at_5(predicted, stream["truths"]))
                if validation == "live":
                    report = evaluation.report
                    assert report["validation"] == "live" and report["query_kinds"]["trained"] > 0
                    assert evaluation.tuning.validation["references"] == references
    mean = {key: float(np.mean(v)) for key, v in results.items()}
    print(mean)
    assert mean[("live", "photos")] > mean[("fold", "photos")] + 0.02
    assert mean[("live", "means")] > mean[("fold", "photos")] + 0.04  # what a deployment gets now vs before


def test_build_tuned_gallery_serves_every_labelled_individual():
    data, embeddings, stream = deployment(seed=4, individuals=60)
    gallery, evaluation = build_tuned_gallery({"m": embeddings}, data, [0])
    assert gallery.individual_ids == sorted(set(data.individual_ids)) and gallery.model_ids == ["m"]
    assert evaluation.report["references"] == "means" and evaluation.report["validation"] == "live"
    assert -0.2 <= evaluation.tuning.threshold <= 1.0
    ranked = Identifier(gallery, evaluation.tuning).identify(stream["embeddings"][:5])
    assert all(len(p) == 5 for p in ranked)
