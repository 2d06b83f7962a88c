"""Out-of-fold evaluation on embeddings (no TensorFlow here): split, rank, tune, report.

Split of one validation fold f (folds are assigned by individual, as in training):
  - gallery: every image of the individuals of the other folds, plus the first image (by name) of each fold-f
    individual that has several images;
  - queries: the other images of those fold-f individuals (truth: their id; known to the gallery but never trained
    on, like an animal added to the gallery after training) and every image of fold-f individuals with a single
    image (truth: `new_individual`), plus the first photo of each individual held out of the gallery entirely
    (held_out_individuals: at least MIN_NEW_SHARE of a fold's individuals are new, so that every validation
    has new animals to tune the threshold on).
That is `validation="fold"`, the default and training's per-epoch validation. Its known queries are of animals
the model never trained on, with one reference photo each; a deployment's gallery is mostly trained animals with
several photos each, whose new photos score higher against their own animal, so the threshold tuned on it is too
high for the live stream (the demo: known top-1 right 17 of 58). `validation="live"` (`live_splits`) adds what
the live stream holds, each kind weighted to its share of it:
  - known, trained: each photo but the last (by name; up to `LIVE_ROUNDS` per animal) of every trained
    individual with several photos, against every other photo (its own never in its gallery). Its embedding was
    trained on, so these queries are easier than a fresh photo (optimistic);
  - known, not trained: fold f's known queries above;
  - new: fold f's single-photo queries above, and every photo of fold f's individuals against a gallery without
    their individual (the individuals in two halves: each half's photos against the other folds and the other
    half), never trained and never in the gallery, as a new animal is.
  Weights: `new_individual` keeps the share it has in fold f's split; the known share splits between trained and
  not trained as the photos do (folds other than f : fold f). Query groups (cross-fitting) are individuals.
`references` (gallery.REFERENCES) builds every validation gallery as the deployed one is built: one row per photo
or one mean per individual.
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

from services.core.errors import DataError
from services.core.identification.gallery import Gallery, IndexConfig, build_reference_gallery
from services.core.identification.ranking import (
    NEW_INDIVIDUAL,
    Candidates,
    average_precisions,
    rank_candidates,
)
from services.core.identification.threshold_choice import (
    TUNED,
    ThresholdChoice,
    catalogue_threshold,
    choose_threshold,
)
from services.core.identification.tuning import (
    DEFAULT_GRID,
    ThresholdSweep,
    Tuning,
    cross_fitted_map5,
    map5_with_thresholds,
    optimise_blend_weights,
    query_weights,
    sweep_threshold,
    tune_per_species,
    weighted_mean,
)
from services.core.identification.vectors import blend

log = logging.getLogger(__name__)

MIN_NEW_SHARE = 0.2  # at least this share of a validation fold's individuals are new animals (held_out_individuals)
HELD_OUT_PARTS = 2  # halves of the queries for the cross-fitted (held-out) MAP@5
VALIDATIONS = ("fold", "live")
LIVE_ROUNDS = 4  # live validation: at most this many held-out photos per trained individual
NEW_HALVES = 2  # live validation: fold f's individuals in this many parts for the new_individual queries


@dataclass
class LabelledImages:
    """The labelled training images, one row each, with the fold of each row's individual."""

    images: list[str]
    individual_ids: list[str]
    species: list[str]
    folds: np.ndarray
    viewpoints: list[str | None] | None = None  # viewpoint hints (identification.viewpoint), for viewpoint-means

    def __post_init__(self):
        n = len(self.images)
        self.folds = np.asarray(self.folds, dtype=int)
        if self.viewpoints is not None and len(self.viewpoints) != n:
            raise DataError(f"evaluation: {n} images but {len(self.viewpoints)} viewpoints")
        if not (len(self.individual_ids) == len(self.species) == self.folds.shape[0] == n):
            raise DataError(f"evaluation: {n} images, {len(self.individual_ids)} ids, {len(self.species)} species, "
                            f"{self.folds.shape[0]} folds")


@dataclass
class FoldSplit:
    """Queries (rows of the data) with their truth, ranked against a gallery of other rows. `kind`: `fold`
    (split_fold), `trained` or `new` (live_splits); `groups`: the cross-fitting group of each query (None: its
    individual, or its image for new_individual)."""

    fold: int
    gallery_rows: np.ndarray
    query_rows: np.ndarray
    truths: list[str]
    kind: str = "fold"
    groups: list[str] | None = None


def held_out_individuals(rows_by_individual: Mapping[str, Sequence[int]],
                         share: float = MIN_NEW_SHARE) -> set[str]:
    """Individuals of a fold with several photos to hold out of the gallery entirely, so that at least `share` of
    the fold's individuals are new animals (those with a single photo already are): a fold whose animals all have
    several photos would otherwise validate no new_individual at all, and tune a threshold that never answers it.
    Chosen by a hash of the id (stable whatever the other individuals are); none when the fold has fewer than
    4 individuals with several photos."""
    singles = sum(1 for rows in rows_by_individual.values() if len(rows) == 1)
    several = sorted((i for i, rows in rows_by_individual.items() if len(rows) > 1), key=_stable_hash)
    wanted = int(np.ceil(share * len(rows_by_individual))) - singles
    if wanted <= 0 or len(several) < 4:
        return set()
    return set(several[:min(wanted, len(several) // 2)])


def _stable_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(str(text).encode()).hexdigest()


def split_fold(data: LabelledImages, fold: int) -> FoldSplit:
    if fold not in set(data.folds.tolist()):
        raise DataError(f"fold {fold} has no images (folds present: {sorted(set(data.folds.tolist()))})")
    rows_by_individual: dict[str, list[int]] = {}
    for row in np.flatnonzero(data.folds == fold):
        rows_by_individual.setdefault(data.individual_ids[row], []).append(int(row))
    gallery = [int(r) for r in np.flatnonzero(data.folds != fold)]
    queries, truths = [], []
    held_out = held_out_individuals(rows_by_individual)
    for individual, rows in sorted(rows_by_individual.items()):
        rows.sort(key=lambda r: data.images[r])
        if individual in held_out:  # a new animal: its first photo, with no photo of it in the gallery
            queries.append(rows[0])
            truths.append(NEW_INDIVIDUAL)
        elif len(rows) == 1:
            queries.append(rows[0])
            truths.append(NEW_INDIVIDUAL)
        else:
            gallery.append(rows[0])
            queries.extend(rows[1:])
            truths.extend([individual] * (len(rows) - 1))
    if not gallery:
        raise DataError(f"fold {fold}: the gallery would be empty (a single fold?)")
    return FoldSplit(fold, np.asarray(sorted(gallery)), np.asarray(queries, dtype=int), truths)


def live_splits(data: LabelledImages, fold: int, rounds: int = LIVE_ROUNDS) -> list[FoldSplit]:
    """The queries of `validation="live"` for fold f (module docstring): fold f's split, the trained
    individuals' held-out photos (one split per round) and fold f's photos as new_individual (one split per half
    of its individuals). Every query's group is its individual."""
    base = split_fold(data, fold)
    ids = data.individual_ids
    splits = [FoldSplit(fold, base.gallery_rows, base.query_rows, base.truths, "fold",
                        [ids[r] for r in base.query_rows])]
    everything = np.arange(len(data.images))
    trained: dict[str, list[int]] = {}
    for row in np.flatnonzero(data.folds != fold):
        trained.setdefault(ids[row], []).append(int(row))
    for rows in trained.values():
        rows.sort(key=lambda r: data.images[r])
    for round_ in range(max(0, int(rounds))):
        queries = [rows[round_] for _, rows in sorted(trained.items()) if len(rows) > round_ + 1]
        if not queries:
            break
        gallery = np.setdiff1d(everything, queries)
        splits.append(FoldSplit(fold, gallery, np.asarray(queries, dtype=int), [ids[r] for r in queries],
                                "trained", [ids[r] for r in queries]))
    held_out = sorted({ids[r] for r in np.flatnonzero(data.folds == fold)})
    for half in range(NEW_HALVES):
        members = set(held_out[half::NEW_HALVES])
        queries = [r for r in range(len(data.images)) if ids[r] in members]
        gallery = np.asarray([r for r in range(len(data.images)) if ids[r] not in members], dtype=int)
        if queries and gallery.size:
            splits.append(FoldSplit(fold, gallery, np.asarray(queries, dtype=int), [NEW_INDIVIDUAL] * len(queries),
                                    "new", [ids[r] for r in queries]))
    return splits


def live_weights(data: LabelledImages, splits: Sequence[FoldSplit]) -> np.ndarray:
    """Per query of `splits` (in order), its weight in the live validation: per fold, new_individual queries
    share its split's new share, the known ones the rest, between trained and untrained individuals as the photos
    of the other folds and of the fold; each fold's weights sum to its number of queries."""
    weights = []
    for fold in sorted({s.fold for s in splits}, key=[s.fold for s in splits].index):
        parts = [s for s in splits if s.fold == fold]
        base = next((s for s in parts if s.kind == "fold"), None)
        truths = np.asarray(base.truths if base else [], dtype=object)
        new_share = float(np.mean(truths == NEW_INDIVIDUAL)) if truths.size else 0.0
        trained_share = float(np.mean(data.folds != fold))
        target = {"new": new_share, "untrained": (1 - new_share) * (1 - trained_share),
                  "trained": (1 - new_share) * trained_share}
        kinds = [np.where(np.asarray(s.truths, dtype=object) == NEW_INDIVIDUAL, "new",
                          "trained" if s.kind == "trained" else "untrained") for s in parts]
        kind = np.concatenate(kinds) if kinds else np.zeros(0, dtype=object)
        counts = {k: int((kind == k).sum()) for k in target}
        present = sum(t for k, t in target.items() if counts[k])
        if present <= 0:  # e.g. no new and no known shares: equal weights
            weights.append(np.ones(kind.size))
            continue
        scale = {k: (target[k] / present * kind.size / counts[k]) if counts[k] else 0.0 for k in target}
        weights.append(np.array([scale[k] for k in kind], dtype=np.float64))
    return np.concatenate(weights) if weights else np.zeros(0)


@dataclass
class OutOfFold:
    """All folds' validation queries ranked against their galleries."""

    candidates: Candidates
    truths: np.ndarray
    species: np.ndarray
    folds: np.ndarray
    groups: np.ndarray  # cross-fitting group of each query: its individual, or its image for new_individual


def query_groups(data: LabelledImages, split: FoldSplit) -> list[str]:
    if split.groups is not None:
        return list(split.groups)
    return [truth if truth != NEW_INDIVIDUAL else data.images[row]
            for row, truth in zip(split.query_rows, split.truths, strict=True)]


def split_gallery(embeddings: np.ndarray, data: LabelledImages, rows, references: str = "photos",
                  index_config: IndexConfig | None = None, model_ids: Sequence[str] = ()) -> Gallery:
    """The gallery of data rows `rows`, built as `references` (gallery.REFERENCES)."""
    rows = np.asarray(rows, dtype=int)
    views = None if data.viewpoints is None else [data.viewpoints[r] for r in rows]
    return build_reference_gallery(embeddings[rows], [data.individual_ids[r] for r in rows],
                                   [data.species[r] for r in rows], [data.images[r] for r in rows],
                                   references, model_ids=model_ids, index_config=index_config, viewpoints=views)


def rank_out_of_fold(embeddings: np.ndarray, data: LabelledImages, splits: Sequence[FoldSplit], k: int,
                     index_config: IndexConfig | None = None, references: str = "photos") -> OutOfFold:
    parts, truths, species, folds, groups = [], [], [], [], []
    for split in splits:
        gallery = split_gallery(embeddings, data, split.gallery_rows, references, index_config)
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
    held_out_precisions: np.ndarray | None = None  # per query (in query order) its cross-fitted average precision
    query_groups: np.ndarray | None = None  # per query its cross-fitting group (individual, or image for new)
    query_weights: np.ndarray | None = None


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
    references: str = "photos",
    validation: str = "fold",
    default_quantile: float | None = None,
) -> Evaluation:
    """Out-of-fold MAP@5 (in-sample and held out; per fold and per species at the in-sample threshold), tuned
    threshold(s) and, for several models, blend weights. Embeddings are (N, D) per model, rows aligned with
    `data`. `references`: how every validation gallery is built (gallery.REFERENCES); `validation`: `fold` or
    `live` (VALIDATIONS, module docstring: with `live`, every MAP@5 figure is the weighted one).
    `default_quantile`: the calibrated default (threshold_choice.catalogue_threshold: this quantile of the
    catalogue's impostor scores) is served instead of the tuned threshold when the validation cannot tell (None:
    always the tuned one). The choice is in report["threshold_choice"] and tuning.validation."""
    if not folds:
        raise DataError("evaluation: no folds to evaluate")
    if validation not in VALIDATIONS:
        raise DataError(f"evaluation: validation {validation!r} unknown; expected one of {', '.join(VALIDATIONS)}")
    if validation == "live":
        splits = [split for f in folds for split in live_splits(data, f)]
        query_weight = live_weights(data, splits)
    else:
        splits = [split_fold(data, f) for f in folds]
        query_weight = np.ones(sum(len(split.query_rows) for split in splits))
    model_ids = list(embeddings_by_model)

    def rank(weights: Mapping[str, float]) -> OutOfFold:
        return rank_out_of_fold(blend(embeddings_by_model, weights), data, splits, k, index_config, references)

    if len(model_ids) > 1:
        groups = [g for split in splits for g in query_groups(data, split)]
        scores = BlendScores(rank, group_parts(groups, HELD_OUT_PARTS), HELD_OUT_PARTS, grid, query_weight)
        weights, _ = optimise_blend_weights(model_ids, scores.best_map5_of(range(HELD_OUT_PARTS)), steps=blend_steps)
        held_out = cross_fitted_blend_map5(scores, model_ids, blend_steps, per_query=True)
        oof = rank(weights)
    else:
        weights = {model_ids[0]: 1.0}
        oof = rank(weights)
        fitted = cross_fitted_map5(oof.candidates, oof.truths, oof.groups, parts=HELD_OUT_PARTS, grid=grid,
                                   weights=query_weight, per_query=True)
        held_out = {"map5": fitted["map5"], "thresholds": fitted["thresholds"], "per_query": fitted["per_query"]}
    held_out_precisions = held_out.pop("per_query")
    sweep = sweep_threshold(oof.candidates, oof.truths, grid, query_weight)
    default = (catalogue_threshold(blend(embeddings_by_model, weights), data.individual_ids, default_quantile,
                                   references, data.viewpoints)
               if default_quantile is not None else None)
    choice = (choose_threshold(oof.candidates, oof.truths, default, oof.groups, query_weight, grid)
              if default is not None else
              ThresholdChoice(sweep.best, TUNED, "tuned out of fold", sweep.best, queries=int(len(oof.truths))))
    threshold = choice.threshold
    species_thresholds = (tune_per_species(oof.candidates, oof.truths, oof.species, threshold, grid,
                                           weights=query_weight) if per_species and choice.source == TUNED else {})
    query_thresholds = np.array([species_thresholds.get(s, threshold) for s in oof.species], dtype=np.float32)
    fold_sweeps = {}
    for fold in folds:
        rows = np.flatnonzero(oof.folds == fold)
        fold_sweeps[f"fold {fold}"] = sweep_threshold(oof.candidates.subset(rows), oof.truths[rows], grid,
                                                      query_weight[rows])
    ap = average_precisions(oof.candidates, oof.truths, np.asarray([threshold], np.float32))[0]
    is_new = oof.truths == NEW_INDIVIDUAL
    report = {
        "map5": float(weighted_mean(ap, query_weight)),  # = map5_in_sample, kept for compatibility
        "map5_in_sample": float(weighted_mean(ap, query_weight)),
        "map5_held_out": held_out.pop("map5"),
        "held_out": {"parts": HELD_OUT_PARTS, "split": "by individual", **held_out},
        "map5_per_species_thresholds": map5_with_thresholds(oof.candidates, oof.truths, query_thresholds,
                                                            query_weight),
        "map5_threshold_0": sweep_at(oof, 0.0, query_weight),
        "map5_threshold_1": sweep_at(oof, 1.0, query_weight),
        "threshold": threshold,
        "threshold_choice": choice.as_dict(),
        "per_species_thresholds": species_thresholds,
        "per_fold": group_map5(ap, oof.folds, query_weight),
        "per_species": group_map5(ap, oof.species, query_weight),
        "queries": int(len(oof.truths)),
        "new_individual_share": float(weighted_mean(is_new.astype(float), query_weight)),
        "folds": [int(f) for f in folds],
        "weights": weights,
        "flip_tta": flip_tta,
        "k": k,
        "references": references,
        "validation": validation,
    }
    if validation == "live":
        report["query_kinds"] = {split_kind: int(sum(len(s.query_rows) for s in splits if s.kind == split_kind))
                                 for split_kind in ("fold", "trained", "new")}
        known = ~is_new
        report["known_top1_right"] = float(weighted_mean((oof.candidates.ids[known, 0] == oof.truths[known])
                                                         .astype(float), query_weight[known])) if known.any() else None
    tuning = Tuning(threshold=threshold, per_species=species_thresholds, weights=weights, flip_tta=flip_tta, k=k,
                    validation={key: report[key] for key in ("map5", "map5_in_sample", "map5_held_out",
                                                             "map5_per_species_thresholds", "map5_threshold_0",
                                                             "map5_threshold_1", "per_fold", "per_species", "queries",
                                                             "new_individual_share", "folds", "references",
                                                             "validation", "threshold_choice")})
    return Evaluation(tuning, sweep, fold_sweeps, report, np.asarray(held_out_precisions, dtype=np.float64),
                      np.asarray(oof.groups), np.asarray(query_weight, dtype=np.float64))


def build_tuned_gallery(
    embeddings_by_model: Mapping[str, np.ndarray],
    data: LabelledImages,
    folds: Sequence[int],
    references: str = "means",
    validation: str = "live",
    k: int = 50,
    per_species: bool = True,
    flip_tta: bool = False,
    index_config: IndexConfig | None = None,
    default_quantile: float | None = None,
) -> tuple[Gallery, Evaluation]:
    """What a deployment serves: the gallery of every labelled image (blended with the tuned weights, built as
    `references`) and its tuning, tuned out of fold on `folds` with validation galleries built the same way
    (`validation`: VALIDATIONS). The defaults are the ones measured best for a deployment (module docstring)."""
    evaluation = evaluate_out_of_fold(embeddings_by_model, data, folds, k=k, per_species=per_species,
                                      flip_tta=flip_tta, index_config=index_config, references=references,
                                      validation=validation, default_quantile=default_quantile)
    embeddings = blend(embeddings_by_model, evaluation.tuning.weights)
    gallery = split_gallery(embeddings, data, np.arange(len(data.images)), references, index_config,
                            model_ids=list(embeddings_by_model))
    return gallery, evaluation


CANDIDATES = ("general", "run", "blend")  # what `evaluate` may recommend, in order of preference on a tie
NOISE_Z = 1.0  # a gain over the general identifier below this many standard errors counts as a tie


def recommend(map5_held_out: Mapping[str, float | None],
              standard_errors: Mapping[str, float | None] | None = None, z: float = NOISE_Z) -> str:
    """Which configuration to serve: the highest held-out (cross-fitted) MAP@5 among CANDIDATES present; a tie
    goes to the simpler one (the general identifier needs no retraining when the catalogue grows; a run alone
    costs one embedder, a blend two). `standard_errors` (run, blend: of their paired gain over the general
    identifier, `gain_standard_error`): a gain within `z` of them is a tie with the general identifier, which then
    wins: a small validation fold cannot tell, and the general identifier is the safe side on new data."""
    present = [(c, float(map5_held_out[c])) for c in CANDIDATES if map5_held_out.get(c) is not None]
    if not present:
        raise DataError("recommend: no held-out figure")
    general = map5_held_out.get("general")
    if general is not None and standard_errors:
        present = [(c, value) for c, value in present
                   if c == "general" or value - float(general) > z * float(standard_errors.get(c) or 0.0)]
    best = max(value for _, value in present)
    return next(c for c, value in present if value >= best - 1e-9)


def gain_standard_error(candidate: "Evaluation", general: "Evaluation") -> float:
    """Standard error of the held-out MAP@5 gain of `candidate` over `general`, scored on the same queries (same
    data, folds and validation): paired per query, clustered by cross-fitting group (an individual's photos
    together), weighted as the queries are."""
    a, b = candidate.held_out_precisions, general.held_out_precisions
    if a is None or b is None or a.shape != b.shape or a.size < 2:
        return 0.0
    weights = candidate.query_weights if candidate.query_weights is not None else np.ones(a.size)
    total = float(weights.sum())
    gain = float((weights * (a - b)).sum() / total)
    residual = weights * (a - b - gain)
    groups = np.asarray([str(g) for g in candidate.query_groups])
    _, index = np.unique(groups, return_inverse=True)
    sums = np.bincount(index, weights=residual)
    count = sums.size
    if count < 2:
        return 0.0
    return float(np.sqrt(count / (count - 1) * (sums ** 2).sum()) / total)


def group_map5(precisions: np.ndarray, groups, weights: np.ndarray) -> dict[str, float]:
    """MAP@5 (weighted) of each group of queries (e.g. fold or species), keys sorted as strings."""
    groups = np.asarray([str(g) for g in groups], dtype=object)
    result = {}
    for name in sorted(set(groups.tolist())):
        rows = groups == name
        if weights[rows].sum() > 0:
            result[name] = float(weighted_mean(precisions[rows], weights[rows]))
    return result


def sweep_at(oof: OutOfFold, threshold: float, weights=None) -> float:
    precisions = average_precisions(oof.candidates, oof.truths, np.asarray([threshold], np.float32))[0]
    return float(weighted_mean(precisions, query_weights(weights, len(oof.candidates))))


def group_parts(groups: Sequence[str], parts: int) -> np.ndarray:
    """The part of each query, split by group exactly as `cross_fitted_map5` splits them."""
    names = sorted({str(g) for g in groups})
    part_of = {name: i % parts for i, name in enumerate(np.random.default_rng(0).permutation(names).tolist())}
    return np.array([part_of[str(g)] for g in groups])


class BlendScores:
    """Per threshold of the grid, the sum of the queries' average precision in each part, for given blend weights;
    memoised, as the weight searches of the in-sample and of the cross-fitted figures revisit the same weights."""

    def __init__(self, rank: Callable[[Mapping[str, float]], OutOfFold], parts: np.ndarray, part_count: int,
                 grid: Sequence[float] = DEFAULT_GRID, weights=None):
        self.rank, self.parts, self.part_count = rank, np.asarray(parts), part_count
        self.grid = np.asarray(grid, dtype=np.float32)
        self.weights = query_weights(weights, len(self.parts))  # per query; sums and counts are weighted
        self._sums: dict[tuple, np.ndarray] = {}

    def sums(self, weights: Mapping[str, float]) -> np.ndarray:
        """(parts, thresholds) sums of average precision."""
        key = tuple((m, round(float(w), 6)) for m, w in sorted(weights.items()))
        if key not in self._sums:
            oof = self.rank(weights)
            precisions = average_precisions(oof.candidates, oof.truths, self.grid)  # (T, Q)
            precisions = precisions * self.weights[None, :]
            self._sums[key] = np.stack([precisions[:, self.parts == p].sum(axis=1) for p in range(self.part_count)])
        return self._sums[key]

    def map5(self, weights: Mapping[str, float], parts: Sequence[int]) -> np.ndarray:
        """MAP@5 of the queries of `parts` at each threshold of the grid."""
        count = float(self.weights[np.isin(self.parts, list(parts))].sum())
        return self.sums(weights)[list(parts)].sum(axis=0) / (count if count > 0 else 1.0)

    def best_map5_of(self, parts: Sequence[int]) -> Callable[[Mapping[str, float]], float]:
        """The weights' objective: MAP@5 of the queries of `parts` at their best threshold."""
        return lambda weights: float(self.map5(weights, parts).max())


def cross_fitted_blend_map5(scores: BlendScores, model_ids: Sequence[str], steps: int = 10,
                            per_query: bool = False) -> dict:
    """Held-out MAP@5 of a blend: each part of the queries is scored at the blend weights and the threshold tuned
    on the other parts (with one model: `cross_fitted_map5`). `per_query`: also each query's held-out average
    precision (`per_query`, an array, not for JSON)."""
    total, thresholds, weights_used = 0.0, [], []
    precisions = np.zeros(len(scores.parts))
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
        if per_query:
            oof = scores.rank(weights)
            rows = scores.parts == part
            precisions[rows] = average_precisions(oof.candidates.subset(np.flatnonzero(rows)), oof.truths[rows],
                                                  scores.grid[best:best + 1])[0]
    count = float(scores.weights.sum())
    result = {"map5": round(total / (count if count > 0 else 1.0), 4), "thresholds": thresholds,
              "weights": weights_used}
    return {**result, "per_query": precisions} if per_query else result
