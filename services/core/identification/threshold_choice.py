"""Which `new_individual` threshold a catalogue gets, and why: tuned on its validation queries when they can
tell, else the model's calibrated default.

A tuned threshold is refused, and the calibrated default used instead, when
  - the validation is too small to tune on: fewer than MIN_QUERIES queries, or fewer than MIN_KIND of either kind
    (known animals, new animals): a threshold tuned in-sample on a handful of queries is noise;
  - it lies above every validation query's best score (new_individual first for everything) or below every one
    (never new), or scores no better than always answering new: the validation could not tell known from new.
The calibrated default adapts to the catalogue without any validation query: `catalogue_threshold` is a
quantile (DEFAULT_QUANTILE) of the catalogue's impostor scores, each photo's best score against a photo of
another individual, which is how a new animal's photo scores against the gallery. Measured on the real and
synthetic development sets (`python -m bench identification_quality`), the 0.95 quantile served within 0.01-0.02
MAP@5 of the best threshold on each, where any one fixed threshold did not (the best fixed ones ran from 0.83 to
0.96 on the general identifier).
The choice carries its uncertainty: the 90% interval of the best threshold over bootstrap resamples of the
queries (by group: an individual's photos resampled together), and the MAP@5 at the threshold served.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from services.core.identification.ranking import NEW_INDIVIDUAL, Candidates, average_precisions
from services.core.identification.tuning import DEFAULT_GRID, query_weights, sweep_threshold, weighted_mean

DEFAULT_QUANTILE = 0.95  # catalogue_threshold's quantile of the impostor scores
IMPOSTOR_SAMPLE = 5000   # at most this many photos' impostor scores (a deterministic sample of a large catalogue)
MIN_QUERIES = 30     # fewer validation queries: the calibrated default
MIN_KIND = 5         # ... or fewer known or fewer new queries than this
BOOTSTRAP_ROUNDS = 200
INTERVAL = (5.0, 95.0)
TUNED, DEFAULT = "tuned", "calibrated_default"


@dataclass
class ThresholdChoice:
    """The served threshold, where it came from (`source`: tuned | calibrated_default) and why."""

    threshold: float
    source: str
    reason: str
    tuned: float | None = None                  # the validation's best threshold (even when refused)
    interval: list[float] | None = None         # its bootstrap interval (INTERVAL percentiles)
    flags: list[str] = field(default_factory=list)
    queries: int = 0
    known_queries: int = 0
    new_queries: int = 0
    map5_at_threshold: float | None = None      # validation MAP@5 at the served threshold (in-sample)

    def as_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        return describe_choice(self.as_dict())


def describe_choice(choice: Mapping[str, Any]) -> str:
    """One line on a threshold and where it came from (a ThresholdChoice as a dict, e.g. from tuning.json)."""
    if choice.get("source") == TUNED:
        interval = choice.get("interval")
        span = f", 90% interval {interval[0]:.2f}-{interval[1]:.2f}" if interval else ""
        return (f"threshold {choice['threshold']:.3f} tuned on {choice.get('queries')} validation queries "
                f"({choice.get('known_queries')} known, {choice.get('new_queries')} new{span})")
    return f"threshold {choice['threshold']:.3f}, the calibrated default ({choice.get('reason')})"


def configured_quantile(config: Mapping[str, Any]) -> float:
    """A model's calibrated-default quantile: its config's new_individual_quantile (DEFAULT_QUANTILE without)."""
    return float(config.get("new_individual_quantile", DEFAULT_QUANTILE))


def choose_threshold(candidates: Candidates, truths: Sequence[str], default: float, groups: Sequence[str] | None = None,
                     weights=None, grid: Sequence[float] = DEFAULT_GRID, rounds: int = BOOTSTRAP_ROUNDS,
                     seed: int = 0) -> ThresholdChoice:
    """The threshold to serve for these validation queries (module docstring); `default` is the model's
    calibrated default."""
    truths = np.asarray(truths, dtype=object)
    count = len(truths)
    is_new = truths == NEW_INDIVIDUAL
    new, known = int(is_new.sum()), int(count - is_new.sum())
    counts = {"queries": count, "known_queries": known, "new_queries": new}
    grid_array = np.asarray(grid, dtype=np.float32)
    if count == 0:
        return ThresholdChoice(float(default), DEFAULT, "no validation queries", **counts)
    weights = query_weights(weights, count)
    precisions = average_precisions(candidates, truths, grid_array)  # (T, Q)
    sweep = sweep_threshold(candidates, truths, grid, weights)
    tuned = sweep.best
    interval = bootstrap_interval(precisions, weights, grid_array, groups, rounds, seed)
    top = candidates.scores[:, 0]
    top = top[np.isfinite(top)]
    flags = []
    if top.size and tuned > float(top.max()):
        flags.append("above_every_score")
    if top.size and tuned <= float(top.min()):
        flags.append("below_every_score")
    always_new = float(weighted_mean(average_precisions(candidates, truths, np.array([np.inf], np.float32))[0],
                                     weights))
    if sweep.best_map5 <= always_new + 1e-9:
        flags.append("no_better_than_always_new")

    def at(threshold: float) -> float:
        return round(float(weighted_mean(average_precisions(candidates, truths, np.array([threshold], np.float32))[0],
                                         weights)), 4)

    if count < MIN_QUERIES or known < MIN_KIND or new < MIN_KIND:
        reason = (f"too few validation queries to tune one ({count}: {known} known, {new} new; needs "
                  f">= {MIN_QUERIES}, and >= {MIN_KIND} of each)")
        return ThresholdChoice(float(default), DEFAULT, reason, tuned, interval, flags, map5_at_threshold=at(default),
                               **counts)
    if flags:
        reason = f"the tuned threshold {tuned:.3f} was refused ({', '.join(flags)})"
        return ThresholdChoice(float(default), DEFAULT, reason, tuned, interval, flags, map5_at_threshold=at(default),
                               **counts)
    return ThresholdChoice(float(tuned), TUNED, "tuned out of fold", tuned, interval, flags,
                           map5_at_threshold=round(sweep.best_map5, 4), **counts)


def bootstrap_interval(precisions: np.ndarray, weights: np.ndarray, grid: np.ndarray, groups, rounds: int,
                       seed: int) -> list[float] | None:
    """INTERVAL percentiles of the best threshold over `rounds` resamples of the query groups (with replacement)."""
    count = precisions.shape[1]
    if count < 2 or rounds < 1:
        return None
    labels = np.asarray([str(g) for g in groups] if groups is not None else [str(i) for i in range(count)])
    names, index = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(index == i) for i in range(len(names))]
    rng = np.random.default_rng(seed)
    best = []
    for _ in range(rounds):
        rows = np.concatenate([members[i] for i in rng.integers(0, len(names), len(names))])
        means = weighted_mean(precisions[:, rows], weights[rows])
        tied = np.flatnonzero(means >= means.max() - 1e-12)
        best.append(float(grid[tied[len(tied) // 2]]))
    low, high = np.percentile(best, INTERVAL)
    return [round(float(low), 3), round(float(high), 3)]


def impostor_scores(embeddings, individual_ids: Sequence[str], references=None, reference_ids=None,
                    sample: int = IMPOSTOR_SAMPLE, chunk: int = 256) -> np.ndarray:
    """Each photo's best cosine score against a reference row of another individual (rows L2-normalised;
    references default to the photos themselves, or e.g. one mean per individual as a `means` gallery serves);
    for a catalogue of more than `sample` photos, those of a deterministic sample of them."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    ids = np.asarray([str(i) for i in individual_ids], dtype=object)
    refs = embeddings if references is None else np.asarray(references, dtype=np.float32)
    ref_ids = ids if reference_ids is None else np.asarray([str(i) for i in reference_ids], dtype=object)
    if embeddings.shape[0] != ids.shape[0] or refs.shape[0] != ref_ids.shape[0]:
        raise ValueError(f"impostor scores: {embeddings.shape[0]} embeddings for {ids.shape[0]} ids, "
                         f"{refs.shape[0]} references for {ref_ids.shape[0]} ids")
    rows = np.arange(len(ids))
    if len(rows) > sample:
        rows = np.sort(np.random.default_rng(0).choice(rows, sample, replace=False))
    out = np.full(len(rows), -np.inf, dtype=np.float32)
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        scores = embeddings[part] @ refs.T
        scores[ids[part][:, None] == ref_ids[None, :]] = -np.inf
        out[start:start + len(part)] = scores.max(axis=1)
    return out[np.isfinite(out)]


def catalogue_threshold(embeddings, individual_ids: Sequence[str], quantile: float = DEFAULT_QUANTILE,
                        references: str = "photos", viewpoints=None) -> float | None:
    """The calibrated default threshold of a catalogue: the `quantile` of its impostor scores against the
    gallery rows it serves (`references`: photos, or means: one renormalised mean per individual), so that a
    share `quantile` of new animals would score below it and be answered new. None for a single individual.
    `viewpoint-means`: one mean per (individual, `viewpoints` hint)."""
    from services.core.identification.gallery import individual_means

    refs = ref_ids = None
    if references in ("means", "viewpoint-means"):
        views = viewpoints if references == "viewpoint-means" else None
        refs, ref_ids, *_ = individual_means(embeddings, individual_ids, ["-"] * len(individual_ids), views)
    scores = impostor_scores(embeddings, individual_ids, refs, ref_ids)
    if scores.size == 0:
        return None
    return round(float(np.quantile(scores, quantile)), 4)
