"""Tuning on validation queries: the new_individual threshold(s) and the models' blend weights.

`Tuning` is saved as `tuning.json`; the matcher, `predict` and the Triton blend model read it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from services.core.errors import DataError
from services.core.identification.ranking import Candidates, average_precisions

log = logging.getLogger(__name__)

TUNING_FILE = "tuning.json"
TUNING_VERSION = 1
DEFAULT_GRID = tuple(np.round(np.linspace(-0.2, 1.0, 121), 3))
MIN_SPECIES_QUERIES = 20  # fewer validation queries of a species: it keeps the global threshold


@dataclass
class Tuning:
    """Everything the identification needs besides the gallery."""

    threshold: float = 0.5  # new_individual goes before candidates scoring below it
    per_species: dict[str, float] = field(default_factory=dict)  # species -> threshold
    weights: dict[str, float] = field(default_factory=dict)  # model_id -> blend weight (sum 1)
    flip_tta: bool = False  # average the embeddings of an image and of its mirror image
    k: int = 50  # nearest neighbours searched per query
    validation: dict[str, Any] = field(default_factory=dict)  # MAP@5 figures measured when tuning
    # model_id -> run directory (`general`: the general identifier) of blend members that the commands serving
    # this tuning load themselves (`whaleid evaluate` recommending the general identifier or run + general)
    members: dict[str, str] = field(default_factory=dict)
    # local-feature re-ranking served with this tuning ({}: off; `whaleid evaluate --rerank sift`): method, weight,
    # cap, k, ... (local_features.RerankConfig); the threshold then applies to the fused scores
    rerank: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not np.isfinite(self.threshold):
            raise DataError(f"tuning: threshold must be finite, got {self.threshold}")
        if int(self.k) < 1:
            raise DataError(f"tuning: k must be >= 1, got {self.k}")
        self.threshold = float(self.threshold)
        self.k = int(self.k)
        self.per_species = {str(s): float(t) for s, t in self.per_species.items()}
        self.weights = {str(m): float(w) for m, w in self.weights.items()}
        self.members = {str(m): str(r) for m, r in self.members.items()}

    def served_weights(self) -> dict[str, float]:
        """The blend served: the models with weight > 0 (a weight of 0 drops a model, vectors.blend)."""
        return {m: w for m, w in self.weights.items() if w > 0}

    def save(self, path: str | Path) -> Path:
        path = _tuning_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"format_version": TUNING_VERSION, **dataclasses.asdict(self)}, indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Tuning":
        """From a tuning.json file or a directory holding one."""
        path = _tuning_path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError(f"no tuning file at {path} (run `whaleid evaluate` to write one)") from None
        except (OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot read the tuning file {path}: {exc}") from None
        version = data.pop("format_version", None)
        if version != TUNING_VERSION:
            raise DataError(f"tuning file {path}: format version {version} not supported (expected {TUNING_VERSION})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataError(f"tuning file {path}: unknown keys {', '.join(unknown)}")
        return cls(**data)


def _tuning_path(path: str | Path) -> Path:
    path = Path(path)
    return path / TUNING_FILE if path.is_dir() or path.suffix != ".json" else path


@dataclass
class ThresholdSweep:
    """MAP@5 at each threshold of a sweep; `best` is the threshold with the highest MAP@5."""

    thresholds: np.ndarray
    map5: np.ndarray

    @property
    def best_index(self) -> int:
        """The best threshold; among ties (a plateau of equal MAP@5) the middle one, the most robust."""
        tied = np.flatnonzero(self.map5 >= self.map5.max() - 1e-12)
        return int(tied[len(tied) // 2])

    @property
    def best(self) -> float:
        return round(float(self.thresholds[self.best_index]), 6)

    @property
    def best_map5(self) -> float:
        return float(self.map5[self.best_index])

    def at(self, threshold: float) -> float:
        return float(self.map5[int(np.argmin(np.abs(self.thresholds - threshold)))])


def query_weights(weights, count: int) -> np.ndarray:
    """Validation query weights as a (count,) float array: all 1 when None; finite, >= 0 and not all 0."""
    if weights is None:
        return np.ones(count)
    weights = np.asarray(weights, dtype=np.float64)
    if weights.shape != (count,):
        raise DataError(f"{count} validation queries but {weights.shape} weights")
    if not (np.isfinite(weights).all() and (weights >= 0).all() and weights.sum() > 0):
        raise DataError("validation query weights must be finite, >= 0 and not all 0")
    return weights


def weighted_mean(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Mean over the last axis (queries), weighted; the plain mean (bit for bit) when all weights are equal."""
    if weights.size and np.all(weights == weights.flat[0]):
        return values.mean(axis=-1)
    return (values * weights).sum(axis=-1) / weights.sum()


def sweep_threshold(candidates: Candidates, truths: Sequence[str], grid: Sequence[float] = DEFAULT_GRID,
                    weights=None) -> ThresholdSweep:
    """MAP@5 of the validation queries for every threshold of `grid` (a weighted mean with `weights`, one per
    query, e.g. to give the kinds of queries their share of the live stream)."""
    if len(candidates) == 0:
        raise DataError("threshold sweep: no validation queries")
    grid = np.asarray(grid, dtype=np.float32)
    weights = query_weights(weights, len(candidates))
    return ThresholdSweep(grid, weighted_mean(average_precisions(candidates, truths, grid), weights))


def cross_fitted_map5(candidates: Candidates, truths: Sequence[str], groups: Sequence[str], parts: int = 2,
                      grid: Sequence[float] = DEFAULT_GRID, weights=None, per_query: bool = False) -> dict[str, float]:
    """MAP@5 with the `new_individual` threshold tuned out of sample: the queries are split into `parts` by
    `groups` (e.g. the true individual, so one animal's photos stay together), and each part is scored at the
    threshold that is best on the other parts. `in_sample` is the optimistic figure tuned on every query.
    `weights` (one per query): weighted means throughout. `per_query`: also each query's held-out average
    precision (`per_query`, an array, not for JSON)."""
    weights = query_weights(weights, len(candidates))
    truths = np.asarray(truths, dtype=object)
    groups = [str(g) for g in groups]
    if len(groups) != len(candidates) or truths.shape[0] != len(candidates):
        raise DataError(f"cross-fitting: {len(candidates)} queries, {truths.shape[0]} truths, {len(groups)} groups")
    names = sorted(set(groups))
    part_of = {name: i % parts for i, name in enumerate(np.random.default_rng(0).permutation(names).tolist())}
    part = np.array([part_of[g] for g in groups])
    grid_array = np.asarray(grid, dtype=np.float32)
    precisions = average_precisions(candidates, truths, grid_array)  # (T, Q)
    held_out = np.zeros(len(candidates))
    thresholds = []
    for index in range(parts):
        inside, outside = part != index, part == index
        if not outside.any():
            continue
        fits = inside.any() and weights[inside].sum() > 0
        best = int(np.argmax(weighted_mean(precisions[:, inside], weights[inside]))) if fits else 0
        thresholds.append(float(grid_array[best]))
        held_out[outside] = precisions[best, outside]
    result = {"map5": round(float(weighted_mean(held_out, weights)), 4),
              "in_sample": round(float(weighted_mean(precisions, weights).max()), 4),
              "thresholds": [round(t, 3) for t in thresholds]}
    return {**result, "per_query": held_out} if per_query else result


def tune_per_species(candidates: Candidates, truths: Sequence[str], species: Sequence[str], global_threshold: float,
                     grid: Sequence[float] = DEFAULT_GRID,
                     min_queries: int = MIN_SPECIES_QUERIES, weights=None) -> dict[str, float]:
    """A threshold per species with at least `min_queries` validation queries (others keep the global one)."""
    weights = query_weights(weights, len(candidates))
    species = np.asarray(species, dtype=object)
    truths = np.asarray(truths, dtype=object)
    if species.shape[0] != len(candidates):
        raise DataError(f"per-species tuning: {len(candidates)} queries but {species.shape[0]} species")
    result = {}
    for name in sorted(set(species.tolist())):
        rows = np.flatnonzero(species == name)
        if rows.size < min_queries:
            log.info("species %s: %d validation queries < %d, keeps the global threshold", name, rows.size,
                     min_queries)
            continue
        if weights[rows].sum() <= 0:
            continue
        sweep = sweep_threshold(candidates.subset(rows), truths[rows], grid, weights[rows])
        result[str(name)] = sweep.best if sweep.best_map5 > sweep.at(global_threshold) else float(global_threshold)
    return result


def map5_with_thresholds(candidates: Candidates, truths: Sequence[str], thresholds, weights=None) -> float:
    """MAP@5 with one threshold per query (weighted with `weights`)."""
    precisions = average_precisions(candidates, truths, np.asarray(thresholds, np.float32)[None, :])[0]
    return float(weighted_mean(precisions, query_weights(weights, len(candidates))))


def optimise_blend_weights(
    model_ids: Sequence[str],
    objective: Callable[[Mapping[str, float]], float],
    steps: int = 10,
    rounds: int = 2,
) -> tuple[dict[str, float], float]:
    """Coordinate search on the simplex: each model's weight in turn tried at 0, 1/steps, ..., 1 (the others
    rescaled to fill the rest), keeping the best; `objective(weights)` is the validation MAP@5."""
    model_ids = list(model_ids)
    if not model_ids:
        raise DataError("blend weights: no models")
    weights = {m: 1.0 / len(model_ids) for m in model_ids}
    best = objective(weights)
    log.info("blend weights %s: MAP@5 %.4f", _fmt(weights), best)
    if len(model_ids) == 1:
        return weights, best
    for round_ in range(rounds):
        improved = False
        for model in model_ids:
            for value in np.linspace(0.0, 1.0, steps + 1):
                trial = _with_weight(weights, model, float(value))
                if trial is None or all(abs(trial[m] - weights[m]) < 1e-9 for m in model_ids):
                    continue
                score = objective(trial)
                if score > best + 1e-12:
                    weights, best, improved = trial, score, True
                    log.info("blend round %d: weights %s: MAP@5 %.4f", round_ + 1, _fmt(weights), best)
        if not improved:
            break
    return weights, best


def _with_weight(weights: dict[str, float], model: str, value: float) -> dict[str, float] | None:
    others = {m: w for m, w in weights.items() if m != model}
    rest = sum(others.values())
    if rest <= 0:
        if value >= 1.0:
            return None
        others = {m: 1.0 / len(others) for m in others}
        rest = 1.0
    trial = {m: (1.0 - value) * w / rest for m, w in others.items()}
    trial[model] = value
    return {m: round(trial[m], 6) for m in weights}


def _fmt(weights: Mapping[str, float]) -> str:
    return ", ".join(f"{m}={w:.2f}" for m, w in weights.items())
