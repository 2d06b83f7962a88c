"""The threshold rules (services/core/identification/threshold_choice.py): tuned when the validation can tell, the
calibrated default when it is too small or the tuned threshold lies beyond every score, with an interval; every
validation fold holds new individuals."""

from __future__ import annotations

import numpy as np
import pytest

from services.core.identification.evaluation import LabelledImages, split_fold
from services.core.identification.ranking import NEW_INDIVIDUAL, Candidates
from services.core.identification.threshold_choice import (
    DEFAULT,
    MIN_QUERIES,
    TUNED,
    catalogue_threshold,
    choose_threshold,
    impostor_scores,
)


def candidates(top_scores, right):
    """One candidate list per query: the first id is `right[i]`'s answer ("a" if right, else "b") at top_scores[i]."""
    n = len(top_scores)
    ids = np.array([["a" if r else "b", "c", "d", "e", "f"] for r in right], dtype=object)
    scores = np.stack([np.asarray(top_scores, np.float32)] + [np.full(n, -0.5, np.float32)] * 4, axis=1)
    return Candidates(ids, scores)


def separable(count=60, seed=0):
    """Known queries score ~0.8 and are right; new ones score ~0.3: a threshold near 0.55 is best."""
    rng = np.random.default_rng(seed)
    known = count * 2 // 3
    scores = np.concatenate([rng.uniform(0.7, 0.9, known), rng.uniform(0.2, 0.4, count - known)])
    truths = ["a"] * known + [NEW_INDIVIDUAL] * (count - known)
    return candidates(scores, [True] * count), truths


def test_a_separable_validation_is_tuned_with_an_interval():
    cands, truths = separable()
    choice = choose_threshold(cands, truths, default=0.9, groups=[str(i) for i in range(len(truths))])
    assert choice.source == TUNED and 0.4 <= choice.threshold <= 0.7
    assert choice.interval[0] <= choice.threshold <= choice.interval[1] and choice.interval[1] - choice.interval[0] < 0.4
    assert choice.map5_at_threshold == pytest.approx(1.0) and not choice.flags
    assert "tuned on 60 validation queries (40 known, 20 new" in choice.describe()


def test_too_few_queries_get_the_calibrated_default():
    cands, truths = separable(MIN_QUERIES - 2)
    choice = choose_threshold(cands, truths, default=0.61)
    assert choice.source == DEFAULT and choice.threshold == 0.61 and "too few validation queries" in choice.reason
    assert choice.tuned is not None  # what tuning would have said is still recorded
    # no new_individual query at all (a fold whose animals all have several photos): the default too
    cands, truths = separable(90)
    known_only = [i for i, t in enumerate(truths) if t != NEW_INDIVIDUAL]
    choice = choose_threshold(cands.subset(known_only), [truths[i] for i in known_only], default=0.61)
    assert choice.source == DEFAULT and "0 new" in choice.reason


def test_a_threshold_beyond_every_score_is_refused():
    # known queries answered wrongly: the best tuned threshold puts new first for everything (above every score)
    rng = np.random.default_rng(1)
    scores = rng.uniform(0.3, 0.6, 60)
    truths = ["a"] * 30 + [NEW_INDIVIDUAL] * 30
    choice = choose_threshold(candidates(scores, [False] * 60), truths, default=0.45)
    assert choice.source == DEFAULT and choice.threshold == 0.45
    assert "above_every_score" in choice.flags and "no_better_than_always_new" in choice.flags
    assert "refused" in choice.reason
    # every query known and right: the best threshold never answers new (below every score)
    choice = choose_threshold(candidates(rng.uniform(0.5, 0.9, 40), [True] * 40), ["a"] * 40, default=0.45)
    assert choice.source == DEFAULT and "0 new" in choice.reason


def test_catalogue_threshold_is_a_quantile_of_the_impostor_scores():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(20, 16))
    ids = np.repeat([f"i{k}" for k in range(20)], 3)
    vectors = centres[np.repeat(np.arange(20), 3)] + 0.3 * rng.normal(size=(60, 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    impostors = impostor_scores(vectors, ids)
    brute = [max(float(vectors[i] @ vectors[j]) for j in range(60) if ids[j] != ids[i]) for i in range(60)]
    assert np.allclose(np.sort(impostors), np.sort(brute), atol=1e-5)
    threshold = catalogue_threshold(vectors, ids, 0.9)
    assert np.mean(np.asarray(brute) < threshold) == pytest.approx(0.9, abs=0.03)
    # against one mean per individual (a `means` gallery) the impostor scores are those against the means
    assert catalogue_threshold(vectors, ids, 0.9, "means") != threshold
    assert catalogue_threshold(vectors[:3], ids[:3]) is None  # a single individual has no impostor


def test_every_validation_fold_holds_new_individuals():
    # 10 individuals in fold 0, every one with 3 photos: none would be new without holding some out
    ids = [f"ind{k}" for k in range(10) for _ in range(3)]
    images = [f"{i}_{n}.jpg" for n, i in enumerate(ids)]
    data_other = LabelledImages(images + ["o1.jpg", "o2.jpg"], ids + ["o", "o"], ["x"] * 32, np.array([0] * 30 + [1, 1]))
    split = split_fold(data_other, 0)
    new = [r for r, t in zip(split.query_rows, split.truths, strict=True) if t == NEW_INDIVIDUAL]
    held = {data_other.individual_ids[r] for r in new}
    assert len(held) == 2  # 20% of 10 individuals
    gallery_ids = {data_other.individual_ids[r] for r in split.gallery_rows}
    assert not held & gallery_ids  # held-out animals have no photo in the gallery
    assert len(new) == 2  # one query (their first photo) each
    assert split_fold(data_other, 0).query_rows.tolist() == split.query_rows.tolist()  # deterministic
