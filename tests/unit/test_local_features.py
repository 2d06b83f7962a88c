"""Local-feature re-ranking (services.core.identification.local_features, services.core.keypoints): the compact
form, RANSAC on known geometry, SIFT on generated textures, and the fusion that moves the right animal up."""

from __future__ import annotations

import numpy as np
import pytest

from services.core.errors import DataError
from services.core.identification.local_features import (
    LocalFeatures,
    RerankConfig,
    candidate_inliers,
    cross_fitted_rerank,
    fuse,
    inliers,
    ransac_affine_inliers,
    rerank,
    rerank_detailed,
    tune_rerank,
)
from services.core.identification.ranking import Candidates
from support.patterns import texture, warped


def random_features(count: int, seed: int) -> LocalFeatures:
    rng = np.random.default_rng(seed)
    return LocalFeatures(rng.random((count, 2)) * 300, rng.integers(0, 60, (count, 128)))


def test_bytes_round_trip_and_refusals():
    features = random_features(37, 0)
    data = features.to_bytes()
    assert len(data) == 6 + 37 * (4 + 128)
    back = LocalFeatures.from_bytes(data)
    assert np.array_equal(back.descriptors, features.descriptors) and np.array_equal(back.points, features.points)
    assert len(LocalFeatures.from_bytes(LocalFeatures.empty().to_bytes())) == 0
    with pytest.raises(DataError, match="do not hold"):
        LocalFeatures.from_bytes(data[:-1])
    with pytest.raises(DataError, match="format"):
        LocalFeatures.from_bytes(bytes([9]) + data[1:])
    with pytest.raises(DataError, match="keypoints but"):
        LocalFeatures(np.zeros((3, 2)), np.zeros((2, 128)))


def test_ransac_counts_the_matches_one_affine_explains():
    rng = np.random.default_rng(1)
    source = rng.random((60, 2)) * 300
    affine = np.array([[0.9, -0.2], [0.25, 1.1]])
    target = source @ affine.T + [15.0, -4.0]
    target[40:] = rng.random((20, 2)) * 300  # 20 outliers
    assert 38 <= ransac_affine_inliers(source, target, 4.0, 200) <= 42
    assert ransac_affine_inliers(source[:3], target[:3], 4.0, 200) == 0  # fewer than MIN_MATCHES
    assert ransac_affine_inliers(source, rng.random((60, 2)) * 300, 4.0, 200) < 10


def test_sift_inliers_find_the_same_pattern_under_a_transform():
    from services.core.keypoints import extract

    pytest.importorskip("cv2")
    pattern = texture(3)
    same = inliers(extract(pattern), extract(warped(pattern, 15, 0.9)))
    other = inliers(extract(pattern), extract(warped(texture(4), 15, 0.9)))
    assert same >= 30 and other <= 8, (same, other)
    big = extract(np.kron(pattern, np.ones((3, 3, 1), np.uint8)), max_keypoints=100)  # 768 px -> 384
    assert len(big) <= 100 and float(big.points.max()) <= 384


def test_fuse_moves_the_verified_candidate_first_and_weight_zero_changes_nothing():
    candidates = Candidates(np.array([["a", "b", "c", "", ""]], dtype=object),
                            np.array([[0.70, 0.65, 0.30, -np.inf, -np.inf]], np.float32),
                            np.array([[4, 7, 9, -1, -1]]))
    counts = np.array([[2, 25, 0]])
    fused = fuse(candidates, counts, 0.3, 20)
    assert fused.ids[0].tolist() == ["b", "a", "c", "", ""]
    assert fused.rows[0].tolist() == [7, 4, 9, -1, -1]
    assert fused.scores[0, 0] == pytest.approx(0.95) and fused.scores[0, 1] == pytest.approx(0.73)
    unchanged = fuse(candidates, counts, 0.0, 20)
    assert unchanged.ids.tolist() == candidates.ids.tolist()


def test_weight_and_threshold_are_tuned_on_the_fused_scores_and_cross_fitted():
    """Two halves of queries: in each the embedding puts a decoy first and the true animal (many inliers) second;
    new individuals' queries have no inliers. Weight 0 scores nothing; the tuned weight moves the truth first."""
    rng = np.random.default_rng(0)
    ids, scores, counts, truths = [], [], [], []
    for q in range(40):
        new = q % 4 == 0
        ids.append([f"d{q}", f"t{q}", f"x{q}", "", ""])
        scores.append([0.7 + 0.05 * rng.random(), 0.65, 0.3, -np.inf, -np.inf])
        counts.append([int(rng.integers(0, 5)), 0 if new else 25, 0])
        truths.append("new_individual" if new else f"t{q}")
    candidates = Candidates(np.array(ids, dtype=object), np.array(scores, np.float32))
    counts = np.array(counts)
    tuned = tune_rerank(candidates, counts, truths, 20)
    assert tuned["weight"] > 0.1 and tuned["map5"] == 1.0 and 0.75 < tuned["threshold"] <= 0.65 + tuned["weight"]
    assert tuned["map5_by_weight"]["0.0"] <= 0.7
    groups = [f"animal{q}" for q in range(40)]  # each query its own animal
    fitted = cross_fitted_rerank(candidates, counts, truths, groups, 20)
    assert fitted["map5"] >= 0.95 and len(fitted["chosen"]) == 2 and all(c["weight"] > 0.1 for c in fitted["chosen"])
    assert cross_fitted_rerank(candidates, counts * 0, truths, groups, 20)["map5"] <= 0.7


def test_rerank_moves_the_true_animal_from_second_to_first():
    """Embedding ranks the query's animal second; its photo is the query's pattern under a transform."""
    from services.core.keypoints import extract

    pytest.importorskip("cv2")
    photos = {"truth": [extract(warped(texture(10), -20, 1.1))], "decoy": [extract(texture(11))],
              "third": [extract(texture(12))]}
    query = extract(texture(10))
    candidates = Candidates(np.array([["decoy", "truth", "third", "", ""]], dtype=object),
                            np.array([[0.8, 0.75, 0.5, -np.inf, -np.inf]], np.float32))
    config = RerankConfig(weight=0.3, cap=20, k=3)
    counts = candidate_inliers(candidates, [query], photos.__getitem__, config)
    assert counts[0, 1] > 20 and counts[0, 0] <= 8
    assert rerank(candidates, [query], photos.__getitem__, config).ids[0, 0] == "truth"
    assert rerank(candidates, [None], photos.__getitem__, config).ids[0, 0] == "decoy"  # no features: unchanged


def test_threads_match_the_candidates_with_exactly_the_sequential_result():
    """candidate_inliers / rerank_detailed with a pool of threads (the matcher's `rerank_workers`) count every
    (query, photo) pair as the sequential path does: the same inliers, the same fused scores and order, bit for
    bit; the counts vary (some queries match their own animal, others nothing) so equality is not trivial."""
    from services.core.keypoints import extract

    pytest.importorskip("cv2")
    names = [f"animal{i}" for i in range(5)]
    photos = {name: [extract(warped(texture(40 + i), 10 * j - 15, 0.9 + 0.1 * j)) for j in range(3)]
              for i, name in enumerate(names)}
    queries = [extract(texture(40 + q % 5)) if q % 4 else extract(texture(90 + q)) for q in range(7)]
    queries[3] = None  # a sighting without keypoints keeps zeros
    rng = np.random.default_rng(3)
    ids = np.array([list(rng.permutation(names)) + [""] for _ in queries], dtype=object)
    scores = np.sort(rng.random((len(queries), 6)).astype(np.float32), axis=1)[:, ::-1].copy()
    scores[:, -1] = -np.inf
    candidates = Candidates(ids, scores)
    config = RerankConfig(k=4, photos=2)
    sequential = candidate_inliers(candidates, queries, photos.__getitem__, config, workers=1)
    assert sequential.max() > 20 and (sequential == 0).any() and len(set(sequential.ravel().tolist())) > 3
    assert not sequential[3].any()
    fused, inliers_by_id = rerank_detailed(candidates, queries, photos.__getitem__, config, workers=1)
    for workers in (2, 3):
        assert np.array_equal(candidate_inliers(candidates, queries, photos.__getitem__, config, workers=workers),
                              sequential)
        threaded, threaded_inliers = rerank_detailed(candidates, queries, photos.__getitem__, config, workers=workers)
        assert np.array_equal(threaded.ids, fused.ids) and np.array_equal(threaded.scores, fused.scores)
        assert threaded_inliers == inliers_by_id


def test_evaluate_tunes_rerank_out_of_fold_where_the_embedding_ranks_the_truth_second():
    """services.core.identification.local_features_tuning (what `whaleid evaluate --rerank sift` runs): two folds
    of three animals with two photos each; every query's embedding is closer to another animal, its keypoints
    match its own animal's gallery photo. Re-ranking must win held out; the tuned weight is recorded."""
    from services.core.identification.evaluation import LabelledImages
    from services.core.identification.local_features_tuning import rerank_out_of_fold, served_config
    from services.core.keypoints import extract

    pytest.importorskip("cv2")
    rng = np.random.default_rng(5)
    basis = np.linalg.qr(rng.normal(size=(16, 6)))[0].T  # six orthonormal directions
    images, ids, rows, features = [], [], [], []
    for i in range(6):
        decoy = (i + 1) % 6
        images += [f"a{i}_1.jpg", f"a{i}_2.jpg"]
        ids += [f"animal{i}"] * 2
        rows += [basis[i], 0.8 * basis[decoy] + 0.6 * basis[i]]
        features += [extract(warped(texture(20 + i), 12, 0.9)), extract(texture(20 + i))]
    data = LabelledImages(images, ids, ["s"] * 12, np.repeat([0, 1], 6))
    result = rerank_out_of_fold({"m": np.asarray(rows, np.float32)}, {"m": 1.0}, data, [0, 1], features,
                                RerankConfig(k=3))
    assert result["queries"] == 6 and result["known_top1_without_rerank"] == 0.0
    assert result["known_top1_held_out"] == 1.0 and result["map5_held_out"] > result["map5_held_out_without_rerank"]
    assert result["weight"] > 0 and served_config(result).weight == result["weight"]
    assert served_config({}) is None
