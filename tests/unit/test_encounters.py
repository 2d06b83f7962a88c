"""Encounters: an encounter's photos pooled (best score per individual over the photos), then new_individual."""

from __future__ import annotations

import numpy as np
import pytest

from services.core.errors import DataError
from services.core.identification import NEW_INDIVIDUAL, build_gallery, map_at_5, rank_candidates
from services.core.identification.encounters import pool_candidates, pool_predictions
from services.core.identification.ranking import insert_new_individual


def test_pool_predictions_takes_each_individuals_best_score():
    first = [("A", 0.9), ("B", 0.5), (NEW_INDIVIDUAL, 0.4), ("C", 0.3), ("D", 0.2)]
    second = [("B", 0.95), ("E", 0.6), ("A", 0.55), (NEW_INDIVIDUAL, 0.4), ("F", 0.1)]
    pooled = pool_predictions([first, second], threshold=0.58)
    assert pooled == [("B", pytest.approx(0.95)), ("A", pytest.approx(0.9)), ("E", pytest.approx(0.6)),
                      (NEW_INDIVIDUAL, pytest.approx(0.58)), ("C", pytest.approx(0.3))]


def test_pool_predictions_of_unknown_photos_answers_new():
    photos = [[(NEW_INDIVIDUAL, 0.5), ("A", 0.2)], [(NEW_INDIVIDUAL, 0.5), ("B", 0.3)]]
    pooled = pool_predictions(photos, threshold=0.5)
    assert pooled[0][0] == NEW_INDIVIDUAL and [i for i, _ in pooled[1:3]] == ["B", "A"]
    with pytest.raises(DataError):
        pool_predictions([], threshold=0.5)


def _clustered(rng, individuals: int, dim: int = 32):
    centres = rng.normal(size=(individuals, dim)).astype(np.float32)
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


def _noisy(rng, centres, rows, noise):
    x = centres[rows] + noise * rng.normal(size=(len(rows), centres.shape[1])).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_a_single_photo_encounter_is_the_photo():
    rng = np.random.default_rng(0)
    centres = _clustered(rng, 20)
    gallery = build_gallery(_noisy(rng, centres, np.arange(20), 0.3), [f"I{i}" for i in range(20)], ["s"] * 20,
                            [f"g{i}" for i in range(20)])
    candidates = rank_candidates(gallery, _noisy(rng, centres, np.arange(20), 0.5), k=20)
    order, pooled = pool_candidates(candidates, list(range(20)))
    assert order == list(range(20))
    np.testing.assert_array_equal(pooled.ids, candidates.ids)
    np.testing.assert_allclose(pooled.scores, candidates.scores)


def test_pooling_an_encounters_photos_identifies_better_than_each_photo():
    """Three noisy photos per encounter: the encounter's MAP@5 beats the photos' (measured, not assumed)."""
    rng = np.random.default_rng(1)
    individuals, per_encounter = 60, 3
    centres = _clustered(rng, individuals)
    names = [f"I{i}" for i in range(individuals)]
    gallery = build_gallery(_noisy(rng, centres, np.arange(individuals), 0.08), names, ["s"] * individuals,
                            [f"g{i}" for i in range(individuals)])
    rows = np.repeat(np.arange(individuals), per_encounter)
    candidates = rank_candidates(gallery, _noisy(rng, centres, rows, 0.3), k=30)
    photo_map5 = map_at_5([[i for i, _ in p] for p in insert_new_individual(candidates, 0.0)],
                          [names[r] for r in rows])
    order, pooled = pool_candidates(candidates, [f"E{r}" for r in rows])
    assert order == [f"E{i}" for i in range(individuals)]
    encounter_map5 = map_at_5([[i for i, _ in p] for p in insert_new_individual(pooled, 0.0)], names)
    assert photo_map5 < 0.9, "the photos alone should be hard enough to leave room"
    assert encounter_map5 > photo_map5 + 0.05, (photo_map5, encounter_map5)
