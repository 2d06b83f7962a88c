"""Out-of-fold evaluation on embeddings (no TensorFlow here): split, rank, tune, report.

Split of one validation fold f (folds are assigned by individual, as in training):
  - gallery: every image of the individuals of the other folds, plus the first image (by name) of each fold-f
    individual that has several images;
  - queries: the other images of those fold-f individuals (truth: their id; known to the gallery but never trained
    on, like an animal added to the gallery after training) and every image of fold-f individuals with a single
    image (truth: `new_individual`).
The threshold(s) and blend weights are tuned on all out-of-fold queries together.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Mapping, Sequence

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
    map5_with_thresholds,
    optimise_blend_weights,
    sweep_threshold,
    tune_per_species,
)
from services.identification.vectors import blend

log = logging.getLogger(__name__)


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


def rank_out_of_fold(embeddings: np.ndarray, data: LabelledImages, splits: Sequence[FoldSplit], k: int,
                     index_config: IndexConfig | None = None) -> OutOfFold:
    parts, truths, species, folds = [], [], [], []
    for split in splits:
        rows = split.gallery_rows
        gallery = build_gallery(embeddings[rows], [data.individual_ids[r] for r in rows],
                                [data.species[r] for r in rows], [data.images[r] for r in rows],
                                index_config=index_config)
        parts.append(rank_candidates(gallery, embeddings[split.query_rows], k))
        truths += split.truths
        species += [data.species[r] for r in split.query_rows]
        folds += [split.fold] * len(split.query_rows)
    candidates = Candidates(np.concatenate([p.ids for p in parts]), np.concatenate([p.scores for p in parts]))
    return OutOfFold(candidates, np.asarray(truths, dtype=object), np.asarray(species, dtype=object),
                     np.asarray(folds))


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
    """Out-of-fold MAP@5 (overall, per fold, per species), tuned threshold(s) and, for several models, blend
    weights. Embeddings are (N, D) per model, rows aligned with `data`."""
    if not folds:
        raise DataError("evaluation: no folds to evaluate")
    splits = [split_fold(data, f) for f in folds]
    model_ids = list(embeddings_by_model)

    def rank(weights: Mapping[str, float]) -> OutOfFold:
        return rank_out_of_fold(blend(embeddings_by_model, weights), data, splits, k, index_config)

    def objective(weights: Mapping[str, float]) -> float:
        oof = rank(weights)
        return sweep_threshold(oof.candidates, oof.truths, grid).best_map5

    if len(model_ids) > 1:
        weights, _ = optimise_blend_weights(model_ids, objective, steps=blend_steps)
    else:
        weights = {model_ids[0]: 1.0}
    oof = rank(weights)
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
        "map5": float(ap.mean()),
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
                    validation={key: report[key] for key in ("map5", "map5_per_species_thresholds", "map5_threshold_0",
                                                             "map5_threshold_1", "per_fold", "per_species", "queries",
                                                             "new_individual_share", "folds")})
    return Evaluation(tuning, sweep, fold_sweeps, report)


def sweep_at(oof: OutOfFold, threshold: float) -> float:
    return float(average_precisions(oof.candidates, oof.truths, np.asarray([threshold], np.float32)).mean())
