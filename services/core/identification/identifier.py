"""`Identifier(gallery, tuning).identify(embeddings)`: the ranking (ranking.py) with a tuning's thresholds.

What the matcher, `whaleid predict` and the demo call; its own module so that ranking (used by tuning) does not
need tuning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from services.core.errors import DataError
from services.core.identification.ranking import (
    Candidates,
    Prediction,
    insert_new_individual,
    rank_candidates,
    threshold_for_new_share,
)
from services.core.identification.tuning import Tuning

if TYPE_CHECKING:
    from services.core.identification.gallery import Gallery


class Identifier:
    """`Identifier(gallery, tuning).identify(embeddings, species=None)` -> five (individual_id, score) per query."""

    def __init__(self, gallery: "Gallery", tuning: Tuning | None = None):
        self.gallery = gallery
        self.tuning = tuning or Tuning()

    def candidates(self, embeddings) -> Candidates:
        return rank_candidates(self.gallery, embeddings, self.tuning.k)

    def thresholds(self, count: int, species: Sequence[str | None] | None = None) -> np.ndarray:
        """Per query: its species' threshold when the species is known and tuned, else the global one."""
        if species is None:
            return np.full(count, self.tuning.threshold, dtype=np.float32)
        if len(species) != count:
            raise DataError(f"identify: {count} embeddings but {len(species)} species")
        per_species = self.tuning.per_species
        return np.array([per_species.get(s, self.tuning.threshold) if s else self.tuning.threshold
                         for s in species], dtype=np.float32)

    def identify(self, embeddings, species: Sequence[str | None] | None = None,
                 new_share: float | None = None) -> list[Prediction]:
        """Five ranked (individual_id, score) per query. `new_share` (batches only): one threshold for the
        batch such that this share of the queries gets `new_individual` first (overrides the tuned ones)."""
        return self.identify_detailed(embeddings, species, new_share).predictions

    def identify_detailed(self, embeddings, species: Sequence[str | None] | None = None,
                          new_share: float | None = None) -> "Identified":
        """`identify`, with each query's threshold and the gallery row each candidate matched (its best image)."""
        candidates = self.candidates(embeddings)
        if new_share is not None:
            thresholds = threshold_for_new_share(candidates.scores[:, 0], new_share)
        else:
            thresholds = self.thresholds(len(candidates), species)
        thresholds = np.broadcast_to(np.asarray(thresholds, dtype=np.float32), (len(candidates),))
        return Identified(insert_new_individual(candidates, thresholds), thresholds, candidates.matched_rows())


@dataclass(frozen=True)
class Identified:
    predictions: list[Prediction]  # five ranked (individual_id, score) per query
    thresholds: np.ndarray  # (Q,) the threshold each query was decided with
    matched_rows: list[dict[str, int]]  # per query: individual_id -> gallery row of its best-scoring image
