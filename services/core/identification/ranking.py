"""From nearest neighbours to five ranked predictions: best score per individual, then `new_individual`.

The one implementation of the decision "which individual is this, or is it new", shared by training's
validation, `whaleid evaluate`/`predict` and the live matcher:
  1. the k nearest gallery embeddings (inner product = cosine similarity);
  2. per individual, its best score; individuals ranked by it (the top `DEPTH` kept);
  3. `new_individual` inserted before the first candidate whose score is below the query's threshold (global,
     per species of the query when known, or one threshold for a batch chosen so that a target share of the
     queries gets `new_individual` first, found by binary search as the Happywhale 1st place did);
  4. padded to five.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from services.core.errors import DataError

if TYPE_CHECKING:
    from services.core.identification.gallery import Gallery

NEW_INDIVIDUAL = "new_individual"
DEPTH = 5
MAX_WIDENED_K = 4096

Prediction = list[tuple[str, float]]


@dataclass
class Candidates:
    """Per query the `DEPTH` best distinct individuals: ids (Q, DEPTH) ('' = none) and scores (-inf = none);
    `rows` (Q, DEPTH): the gallery row of each candidate's best-scoring image (-1 = none), the image it matched."""

    ids: np.ndarray
    scores: np.ndarray
    rows: np.ndarray | None = None

    def __len__(self) -> int:
        return self.scores.shape[0]

    def subset(self, rows) -> "Candidates":
        return Candidates(self.ids[rows], self.scores[rows], None if self.rows is None else self.rows[rows])

    def matched_rows(self) -> list[dict[str, int]]:
        """Per query: individual id -> the gallery row it matched with (its best image)."""
        if self.rows is None:
            return [{} for _ in range(len(self))]
        return [{str(i): int(r) for i, r in zip(ids, rows, strict=True) if i != "" and r >= 0}
                for ids, rows in zip(self.ids, self.rows, strict=True)]


def rank_candidates(gallery: "Gallery", queries, k: int) -> Candidates:
    """Best score per individual among the k nearest neighbours, ranked; k is widened for the queries whose
    neighbours hold fewer than `DEPTH` distinct individuals (up to the gallery size or `MAX_WIDENED_K`)."""
    scores, rows = gallery.search(queries, k)
    n = scores.shape[0]
    ids = np.full((n, DEPTH), "", dtype=object)
    best = np.full((n, DEPTH), -np.inf, dtype=np.float32)
    matched = np.full((n, DEPTH), -1, dtype=np.int64)
    labels = np.asarray(gallery.individual_ids, dtype=object)
    short = _fill(ids, best, matched, range(n), scores, rows, labels)
    widened_k = k
    max_k = min(len(gallery), MAX_WIDENED_K)
    while short and widened_k < max_k:
        widened_k = min(widened_k * 4, max_k)
        more_scores, more_rows = gallery.search(np.asarray(queries, dtype=np.float32)[short], widened_k)
        short = [short[i] for i in _fill(ids, best, matched, short, more_scores, more_rows, labels)]
    return Candidates(ids, best, matched)


def _fill(ids, best, matched, query_rows, scores, rows, labels) -> list[int]:
    """Fill ids/best/matched for `query_rows` from their neighbours (best first: an individual's first neighbour
    is its best image); returns positions (in query_rows) still short."""
    short = []
    for position, query in enumerate(query_rows):
        seen: dict[str, tuple[float, int]] = {}
        for row, score in zip(rows[position], scores[position], strict=True):
            if row < 0:
                break
            label = labels[row]
            if label not in seen:
                seen[label] = (float(score), int(row))
                if len(seen) == DEPTH:
                    break
        for slot, (label, (score, row)) in enumerate(seen.items()):
            ids[query, slot] = label
            best[query, slot] = score
            matched[query, slot] = row
        if len(seen) < DEPTH:
            short.append(position)
    return short


def insert_new_individual(candidates: Candidates, thresholds) -> list[Prediction]:
    """Five (individual_id, score) per query with `new_individual` (scored at the threshold) inserted before
    the first candidate scoring below the threshold; padded to five with `new_individual` when the gallery
    holds fewer than four individuals."""
    thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (len(candidates),))
    predictions = []
    for ids, scores, threshold in zip(candidates.ids, candidates.scores, thresholds, strict=True):
        threshold = float(threshold)
        ranked = [(str(i), float(s)) for i, s in zip(ids, scores, strict=True) if i != ""]
        position = sum(1 for _, s in ranked if s >= threshold)
        ranked.insert(position, (NEW_INDIVIDUAL, threshold))
        ranked = ranked[:DEPTH]
        ranked += [(NEW_INDIVIDUAL, threshold)] * (DEPTH - len(ranked))
        predictions.append(ranked)
    return predictions


def average_precisions(candidates: Candidates, truths: Sequence[str], thresholds) -> np.ndarray:
    """AP@5 of `insert_new_individual(candidates, t)` for every threshold t, vectorised: (T, Q).

    `thresholds` is (T,) (one per sweep point, shared by all queries) or (T, Q). Equal, by construction and by
    test, to scoring the predictions of `insert_new_individual` with `metrics.map_at_5`.
    """
    truths = np.asarray(truths, dtype=object)
    if truths.shape[0] != len(candidates):
        raise DataError(f"{len(candidates)} queries but {truths.shape[0]} truths")
    thresholds = np.asarray(thresholds, dtype=np.float32)
    if thresholds.ndim == 1:
        thresholds = thresholds[:, None]
    match = candidates.ids == truths[:, None]  # (Q, DEPTH)
    truth_rank = np.where(match.any(axis=1), match.argmax(axis=1), DEPTH)  # 0-based, DEPTH = absent
    is_new = truths == NEW_INDIVIDUAL
    position = (candidates.scores[None, :, :] >= thresholds[:, :, None]).sum(axis=2)  # (T, Q)
    new_ap = np.where(position < DEPTH, 1.0 / (position + 1), 0.0)
    known_rank = np.where(truth_rank[None, :] < position, truth_rank[None, :], truth_rank[None, :] + 1)
    known_ap = np.where(known_rank < DEPTH, 1.0 / (known_rank + 1), 0.0)
    return np.where(is_new[None, :], new_ap, known_ap)


def threshold_for_new_share(top_scores, share: float, iterations: int = 60) -> float:
    """The threshold at which `share` of the queries score below it at rank 1 (so get `new_individual` first);
    binary search over the threshold."""
    if not 0.0 <= share <= 1.0:
        raise DataError(f"target share of new individuals must be in [0, 1], got {share}")
    top = np.asarray(top_scores, dtype=np.float64)
    if top.size == 0:
        raise DataError("cannot choose a threshold from no queries")
    low, high = float(np.min(top)) - 1e-6, float(np.max(top)) + 1e-6
    for _ in range(iterations):
        middle = (low + high) / 2
        if np.mean(top < middle) < share:
            low = middle
        else:
            high = middle
    return high
