"""Encounters: several photos of one animal from one sighting event, identified together.

Happywhale and Wildbook identify an encounter, not a photo: a fluke shot and a dorsal shot of the same dive
support each other. Here an encounter's candidates are pooled from its photos' candidates the way a photo's
candidates are pooled from its neighbours (ranking.py, step 2): **per individual, its best score over the
photos**, individuals ranked by it, then `new_individual` inserted at the threshold as for a single photo. A
photo that shows the animal badly then costs nothing, and one clear photo identifies the encounter.

The one implementation serves offline evaluation (`pool_candidates` over `Candidates` arrays) and the live
matcher (`pool_predictions` over the stored five predictions of each photo).
"""

from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np

from services.core.errors import DataError
from services.core.identification.ranking import (
    DEPTH,
    NEW_INDIVIDUAL,
    Candidates,
    Prediction,
    insert_new_individual,
)


def pool_candidates(candidates: Candidates, groups: Sequence[Hashable]) -> tuple[list[Hashable], Candidates]:
    """(the groups in first-seen order, their pooled Candidates): per group, each individual's best score over
    the group's queries, the `DEPTH` best individuals ranked by it."""
    if len(groups) != len(candidates):
        raise DataError(f"encounters: {len(candidates)} queries but {len(groups)} group labels")
    order: list[Hashable] = []
    best: dict[Hashable, dict[str, float]] = {}
    for row, group in enumerate(groups):
        if group not in best:
            order.append(group)
            best[group] = {}
        pooled = best[group]
        for individual, score in zip(candidates.ids[row], candidates.scores[row], strict=True):
            if individual == "" or individual == NEW_INDIVIDUAL or not np.isfinite(score):
                continue
            if score > pooled.get(individual, -np.inf):
                pooled[individual] = float(score)
    ids = np.full((len(order), DEPTH), "", dtype=object)
    scores = np.full((len(order), DEPTH), -np.inf, dtype=np.float32)
    for position, group in enumerate(order):
        ranked = sorted(best[group].items(), key=lambda item: (-item[1], item[0]))[:DEPTH]
        for slot, (individual, score) in enumerate(ranked):
            ids[position, slot] = individual
            scores[position, slot] = score
    return order, Candidates(ids, scores)


def pool_predictions(predictions: Sequence[Prediction], threshold: float) -> Prediction:
    """One encounter's five (individual_id, score) from its photos' five predictions each (as the matcher
    stores them), `new_individual` at `threshold` (the encounter's species' threshold, or the global one)."""
    if not predictions:
        raise DataError("an encounter needs at least one photo's predictions")
    ids = np.full((len(predictions), DEPTH), "", dtype=object)
    scores = np.full((len(predictions), DEPTH), -np.inf, dtype=np.float32)
    for row, prediction in enumerate(predictions):
        known = [(str(i), float(s)) for i, s in prediction if i != NEW_INDIVIDUAL][:DEPTH]
        for slot, (individual, score) in enumerate(known):
            ids[row, slot] = individual
            scores[row, slot] = score
    _, pooled = pool_candidates(Candidates(ids, scores), [0] * len(predictions))
    return insert_new_individual(pooled, threshold)[0]
