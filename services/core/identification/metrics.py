"""MAP@5 exactly as the Happywhale Kaggle competition computes it.

For one query, the correct label at rank k (1-based, among the first five predictions) scores 1/k; only the
first occurrence of a label counts, so repeating the right label later cannot add to the score; fewer than
five predictions are allowed (missing ranks score nothing). MAP@5 is the mean over all queries.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

from services.core.errors import DataError

TOP_K = 5


def average_precision_at_5(predictions: Sequence[str], truth: str) -> float:
    """1/rank of the first occurrence of `truth` among the first five predictions, else 0."""
    for rank, label in enumerate(list(predictions)[:TOP_K], start=1):
        if label == truth:
            return 1.0 / rank
    return 0.0


def _check_lengths(predictions: Sequence, truths: Sequence) -> None:
    if len(predictions) != len(truths):
        raise DataError(f"MAP@5: {len(predictions)} prediction rows but {len(truths)} truths")
    if len(truths) == 0:
        raise DataError("MAP@5: no rows to score (MAP@5 of nothing is undefined)")
    for row, preds in enumerate(predictions):
        if isinstance(preds, str):
            raise DataError(f"MAP@5: predictions of row {row} is a string, expected a sequence of labels")


def map_at_5(predictions: Sequence[Sequence[str]], truths: Sequence[str]) -> float:
    """Mean over all rows of `average_precision_at_5`."""
    _check_lengths(predictions, truths)
    return sum(average_precision_at_5(p, t) for p, t in zip(predictions, truths, strict=True)) / len(truths)


def map_at_5_per_group(
    predictions: Sequence[Sequence[str]], truths: Sequence[str], groups: Sequence[str]
) -> dict[str, float]:
    """MAP@5 of each group (e.g. species or fold), keys sorted."""
    _check_lengths(predictions, truths)
    if len(groups) != len(truths):
        raise DataError(f"MAP@5: {len(groups)} group labels but {len(truths)} truths")
    scores: dict[str, list[float]] = defaultdict(list)
    for preds, truth, group in zip(predictions, truths, groups, strict=True):
        scores[str(group)].append(average_precision_at_5(preds, truth))
    return {group: sum(values) / len(values) for group, values in sorted(scores.items())}
