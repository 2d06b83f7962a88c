"""Out-of-fold evaluation on embeddings (no TensorFlow here): split, rank, tune, report.

Split of one validation fold f (folds are assigned by individual, as in training):
  - gallery: every image of the individuals of the other folds, plus the first image (by name) of each fold-f
    individual that has several images;
  - queries: the other images of those fold-f individuals (truth: their id; known to the gallery but never trained
    on, like an animal added to the gallery after training) and every image of fold-f individuals with a single
    image (truth: `new_individual`).
The threshold(s) and blend weights are tuned on all out-of-fold queries together, so the MAP@5 at them is
in-sample (optimistic; `map5` = `map5_in_sample`). `map5_held_out` is cross-fitted: the queries are split in two
halves by individual (a new_individual query by its image), the threshold (and, for a blend, the weights) are
tuned on one half and scored on the other, and the other way round.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np

from services.errors import DataError
from services.identification.gallery import IndexConfig, build_gallery
from services.identification.metrics import map_at_5_per_group
from services.identification.ranking import (
    NEW_INDIVIDUAL,
    Candidates,
    average_precisions,
    insert_new_individual,
    rank_candidates,
)
from services.identification.tuning import (
    DEFAULT_GRID,
    ThresholdSweep,
    Tuning,
    cross_fitted_map5,
    map5_with_thresholds,
    optimise_blend_weights,
    sweep_threshold,
    tune_per_species,
)
from services.identification.vectors import blend

log = logging.getLogger(__name__)

HELD_OUT_PARTS = 2  # halves of the queries for the cross-fitted (held-out) MAP@5


@dataclass
class LabelledImages:
    """The labelled training images, one row each, with the fold of each row's individual."""

    images: list[str]
    individual_ids: list[str]
    species: list[str]
    folds: np.ndarray

    def __post_init__(self):
        n = len(self.images)
        self.folds = np.asarray(self.folds, dtype=int)
        if not (len(self.individual_ids) == len(self.species) == self.folds.shape[0] == n):
            raise DataError(f"evaluation: {n} images, {len(self.individual_ids)} ids, {len(self.species)} species, "
                            f"{self.folds.shape[0]} folds")


@dataclass
class FoldSplit:
    fold: int
    gallery_rows: np.ndarray
    query_rows: np.ndarray
    truths: list[str]


def split_fold(data: LabelledImages, fold: int) -> FoldSplit:
    if fold not in set(data.folds.tolist()):
        raise DataError(f"fold {fold} has no images (folds present: {sorted(set(data.folds.tolist()))})")
    rows_by_individual: dict[str, list[int]] = {}
    for row in np.flatnonzero(data.folds == fold):
        rows_by_individual.setdefault(data.individual_ids[row], []).append(int(row))
    gallery = [int(r) for r in np.flatnonzero(data.folds != fold)]
    queries, truths = [], []
    for individual, rows in sorted(rows_by_individual.items()):
        rows.sort(key=lambda r: data.images[r])
        if len(rows) == 1:
            queries.append(rows[0])
            truths.append(NEW_INDIVIDUAL)
        else:
            gallery.append(rows[0])
            queries.extend(rows[1:])
            truths.extend([individual] * (len(rows) - 1))
    if not gallery:
        raise DataError(f"fold {fold}: the gallery would be empty (a single fold?)")
    return FoldSplit(fold, np.asarray(sorted(gallery)), np.asarray(queries), truths)


@dataclass
class OutOfFold:
    """All folds' validation queries ranked against their galleries."""

    candidates: Candidates
    truths: np.ndarray
    species: np.ndarray
    folds: np.ndarray
    groups: np.ndarray  # cross-fitting group of each query: its individual, or its image for new_individual


def query_groups(data: LabelledImages, split: FoldSplit) -> list[str]:
    return [truth if truth != NEW_INDIVIDUAL else data.images[row]
            for row, truth in zip(split.query_rows, split.truths, strict=True)]


def rank_out_of_fold(embeddings: np.ndarray, data: LabelledImages, splits: Sequence[FoldSplit], k: int,
                     index_config: IndexConfig | None = None) -> OutOfFold:
    parts, truths, species, folds, groups = [], [], [], [], []
    for split in splits:
        rows = split.gallery_rows
        gallery = build_gallery(embeddings[rows], [data.individual_ids[r] for r in rows],
                                [data.species[r] for r in rows], [data.images[r] for r in rows],
                                index_config=index_config)
        parts.append(rank_candidates(gallery, embeddings[split.query_rows], k))
        truths += split.truths
        species += [data.species[r] for r in split.query_rows]
        folds += [split.fold] * len(split.query_rows)
        groups += query_groups(data, split)
    candidates = Candidates(np.concatenate([p.ids for p in parts]), np.concatenate([p.scores for p in parts]))
    return OutOfFold(candidates, np.asarray(truths, dtype=object), np.asarray(species, dtype=object),
                     np.asarray(folds), np.asarray(groups, dtype=object))


@dataclass
class Evaluation:
    tuning: Tuning
    sweep: ThresholdSweep
    fold_sweeps: dict[str, ThresholdSweep]
    report: dict = field(default_factory=dict)


def evaluate_out_of_fold(
    embeddings_by_model: Mapping[str, np.ndarray],
    data: LabelledImages,
    folds: Sequence[int],
    k: int = 50,
    per_species: bool = True,
    grid: Sequence[float] = DEFAULT_GRID,
    flip_tta: bool = False,
    index_config: IndexConfig | None = None,
    blend_steps: int = 10,
) -> Evaluation:
    """Out-of-fold MAP@5 (in-sample and held out; per fold and per species at the in-sample threshold), tuned
    threshold(s) and, for several models, blend weights. Embeddings are (N, D) per model, rows aligned with
    `data`."""
    if not folds:
        raise DataError("evaluation: no folds to evaluate")
    splits = [split_fold(data, f) for f in folds]
    model_ids = list(embeddings_by_model)

    def rank(weights: Mapping[str, float]) -> OutOfFold:
        return rank_out_of_fold(blend(embeddings_by_model, weights), data, splits, k, index_config)

    if len(model_ids) > 1:
        groups = [g for split in splits for g in query_groups(data, split)]
        scores = BlendScores(rank, group_parts(groups, HELD_OUT_PARTS), HELD_OUT_PARTS, grid)
        weights, _ = optimise_blend_weights(model_ids, scores.best_map5_of(range(HELD_OUT_PARTS)), steps=blend_steps)
        held_out = cross_fitted_blend_map5(scores, model_ids, blend_steps)
        oof = rank(weights)
    else:
        weights = {model_ids[0]: 1.0}
        oof = rank(weights)
        fitted = cross_fitted_map5(oof.candidates, oof.truths, oof.groups, parts=HELD_OUT_PARTS, grid=grid)
        held_out = {"map5": fitted["map5"], "thresholds": fitted["thresholds"]}
    sweep = sweep_threshold(oof.candidates, oof.truths, grid)
    threshold = sweep.best
    species_thresholds = (tune_per_species(oof.candidates, oof.truths, oof.species, threshold, grid)
                          if per_species else {})
    query_thresholds = np.array([species_thresholds.get(s, threshold) for s in oof.species], dtype=np.float32)
    predictions = [[label for label, _ in p] for p in insert_new_individual(oof.candidates, threshold)]
    fold_sweeps = {}
    for fold in folds:
        rows = np.flatnonzero(oof.folds == fold)
        fold_sweeps[f"fold {fold}"] = sweep_threshold(oof.candidates.subset(rows), oof.truths[rows], grid)
    ap = average_precisions(oof.candidates, oof.truths, np.asarray([threshold], np.float32))[0]
    report = {
        "map5": float(ap.mean()),  # = map5_in_sample, kept for compatibility
        "map5_in_sample": float(ap.mean()),
        "map5_held_out": held_out.pop("map5"),
        "held_out": {"parts": HELD_OUT_PARTS, "split": "by individual", **held_out},
        "map5_per_species_thresholds": map5_with_thresholds(oof.candidates, oof.truths, query_thresholds),
        "map5_threshold_0": sweep_at(oof, 0.0),
        "map5_threshold_1": sweep_at(oof, 1.0),
        "threshold": threshold,
        "per_species_thresholds": species_thresholds,
        "per_fold": {str(f): float(ap[oof.folds == f].mean()) for f in folds},
        "per_species": map_at_5_per_group(predictions, list(oof.truths), list(oof.species)),
        "queries": int(len(oof.truths)),
        "new_individual_share": float(np.mean(oof.truths == NEW_INDIVIDUAL)),
        "folds": [int(f) for f in folds],
        "weights": weights,
        "flip_tta": flip_tta,
        "k": k,
    }
    tuning = Tuning(threshold=threshold, per_species=species_thresholds, weights=weights, flip_tta=flip_tta, k=k,
                    validation={key: report[key] for key in ("map5", "map5_in_sample", "map5_held_out",
                                                             "map5_per_species_thresholds", "map5_threshold_0",
                                                             "map5_threshold_1", "per_fold", "per_species", "queries",
                                                             "new_individual_share", "folds")})
    return Evaluation(tuning, sweep, fold_sweeps, report)


def sweep_at(oof: OutOfFold, threshold: float) -> float:
    return float(average_precisions(oof.candidates, oof.truths, np.asarray([threshold], np.float32)).mean())


def group_parts(groups: Sequence[str], parts: int) -> np.ndarray:
    """The part of each query, split by group exactly as `cross_fitted_map5` splits them."""
    names = sorted({str(g) for g in groups})
    part_of = {name: i % parts for i, name in enumerate(np.random.default_rng(0).permutation(names).tolist())}
    return np.array([part_of[str(g)] for g in groups])


class BlendScores:
    """Per threshold of the grid, the sum of the queries' average precision in each part, for given blend weights;
    memoised, as the weight searches of the in-sample and of the cross-fitted figures revisit the same weights."""

    def __init__(self, rank: Callable[[Mapping[str, float]], OutOfFold], parts: np.ndarray, part_count: int,
                 grid: Sequence[float] = DEFAULT_GRID):
        self.rank, self.parts, self.part_count = rank, np.asarray(parts), part_count
        self.grid = np.asarray(grid, dtype=np.float32)
        self._sums: dict[tuple, np.ndarray] = {}

    def sums(self, weights: Mapping[str, float]) -> np.ndarray:
        """(parts, thresholds) sums of average precision."""
        key = tuple((m, round(float(w), 6)) for m, w in sorted(weights.items()))
        if key not in self._sums:
            oof = self.rank(weights)
            precisions = average_precisions(oof.candidates, oof.truths, self.grid)  # (T, Q)
            self._sums[key] = np.stack([precisions[:, self.parts == p].sum(axis=1) for p in range(self.part_count)])
        return self._sums[key]

    def map5(self, weights: Mapping[str, float], parts: Sequence[int]) -> np.ndarray:
        """MAP@5 of the queries of `parts` at each threshold of the grid."""
        count = int(np.isin(self.parts, list(parts)).sum())
        return self.sums(weights)[list(parts)].sum(axis=0) / max(count, 1)

    def best_map5_of(self, parts: Sequence[int]) -> Callable[[Mapping[str, float]], float]:
        """The weights' objective: MAP@5 of the queries of `parts` at their best threshold."""
        return lambda weights: float(self.map5(weights, parts).max())


def cross_fitted_blend_map5(scores: BlendScores, model_ids: Sequence[str], steps: int = 10) -> dict:
    """Held-out MAP@5 of a blend: each part of the queries is scored at the blend weights and the threshold tuned
    on the other parts (with one model: `cross_fitted_map5`)."""
    total, thresholds, weights_used = 0.0, [], []
    for part in range(scores.part_count):
        others = [p for p in range(scores.part_count) if p != part]
        if not (scores.parts == part).any():
            continue
        if np.isin(scores.parts, others).any():
            weights, _ = optimise_blend_weights(model_ids, scores.best_map5_of(others), steps=steps)
            best = int(np.argmax(scores.map5(weights, others)))
        else:
            weights, best = {m: 1.0 / len(model_ids) for m in model_ids}, 0
        total += float(scores.sums(weights)[part, best])
        thresholds.append(round(float(scores.grid[best]), 3))
        weights_used.append(weights)
    return {"map5": round(total / max(len(scores.parts), 1), 4), "thresholds": thresholds, "weights": weights_used}
