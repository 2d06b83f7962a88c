"""Validation and combination of embedding matrices (L2 normalisation, flip TTA, model blends)."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from services.core.errors import DataError

NORM_TOLERANCE = 1e-3


def as_embeddings(values, dimension: int | None = None, what: str = "embeddings") -> np.ndarray:
    """A C-contiguous float32 (N, D) matrix with finite values, or a DataError naming the bad rows."""
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{what}: not a numeric matrix ({exc})") from None
    if array.ndim == 1 and dimension is not None and array.shape[0] == dimension:
        array = array[None, :]
    if array.ndim != 2:
        raise DataError(f"{what}: expected a 2-D (N, D) matrix, got shape {array.shape}")
    if dimension is not None and array.shape[1] != dimension:
        raise DataError(f"{what}: dimension {array.shape[1]} does not match the expected {dimension}")
    if array.shape[1] == 0:
        raise DataError(f"{what}: zero-dimensional vectors")
    bad = np.flatnonzero(~np.isfinite(array).all(axis=1))
    if bad.size:
        raise DataError(f"{what}: NaN or infinite values in rows {_rows(bad)}")
    return np.ascontiguousarray(array)


def l2_normalise(values, what: str = "embeddings") -> np.ndarray:
    """Rows scaled to unit L2 norm (rows already of unit norm are kept as they are); zero rows are refused."""
    array = as_embeddings(values, what=what)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] < 1e-12)
    if zero.size:
        raise DataError(f"{what}: zero vectors in rows {_rows(zero)}")
    norms = np.where(np.abs(norms - 1.0) < 1e-6, 1.0, norms)  # idempotent: normalised rows stay bit-identical
    return np.ascontiguousarray(array / norms, dtype=np.float32)


def check_normalised(array: np.ndarray, what: str = "embeddings") -> None:
    norms = np.linalg.norm(array, axis=1)
    bad = np.flatnonzero(np.abs(norms - 1.0) > NORM_TOLERANCE)
    if bad.size:
        raise DataError(f"{what}: rows {_rows(bad)} are not L2-normalised (norms e.g. {norms[bad[0]]:.4f})")


def combine_flip(embeddings, flipped_embeddings) -> np.ndarray:
    """Horizontal-flip TTA: the renormalised mean of an image's embedding and its mirror image's embedding."""
    a = l2_normalise(embeddings, "embeddings")
    b = l2_normalise(flipped_embeddings, "flipped embeddings")
    if a.shape != b.shape:
        raise DataError(f"flip TTA: shapes differ: {a.shape} vs {b.shape}")
    return l2_normalise(a + b, "flip-averaged embeddings")


def blend(embeddings_by_model: Mapping[str, np.ndarray], weights: Mapping[str, float]) -> np.ndarray:
    """Score-level blend (what the Triton blend model computes): the concatenation, in model-id order (so that a
    gallery blended offline and queries blended by Triton line up whatever order they were given in), of each
    model's L2-normalised embeddings scaled by sqrt(w_i / sum w), so that the inner product of two blended rows is
    exactly sum_i w_i cos_i / sum w, the weighted mean of the models' cosines, and every blended row has unit norm.
    Models may have different sizes (the blend has the sum of the sizes of the models with weight > 0); a weight of
    0 drops the model; models without a weight are refused. One model with weight > 0: its normalised embeddings,
    bit-identical.
    """
    if not embeddings_by_model:
        raise DataError("blend: no models given")
    missing = sorted(set(embeddings_by_model) - set(weights))
    if missing:
        raise DataError(f"blend: no weight for model(s) {', '.join(missing)}")
    for model_id in embeddings_by_model:
        weight = float(weights[model_id])
        if weight < 0 or not np.isfinite(weight):
            raise DataError(f"blend: weight of {model_id} must be finite and >= 0, got {weight}")
    total = sum(float(weights[m]) for m in embeddings_by_model)
    if not total > 0:
        raise DataError("blend: all weights are zero")
    parts, rows = [], None
    for model_id in sorted(embeddings_by_model):
        part = l2_normalise(embeddings_by_model[model_id], f"embeddings of {model_id}")
        if rows is not None and part.shape[0] != rows:
            raise DataError(f"blend: {model_id} has {part.shape[0]} rows, others {rows}")
        rows = part.shape[0]
        weight = float(weights[model_id])
        if weight > 0:
            parts.append(part if weight == total else part * np.float32(np.sqrt(weight / total)))
    return parts[0] if len(parts) == 1 else l2_normalise(np.concatenate(parts, axis=1), "blended embeddings")


def blended_size(sizes: Mapping[str, int], weights: Mapping[str, float]) -> int:
    """The size of `blend`'s rows: the sum of the sizes of the models with weight > 0."""
    return int(sum(int(sizes[m]) for m in sizes if float(weights.get(m, 0.0)) > 0))


def blend_probabilities(parts: Sequence[tuple[object, Sequence[str], float]], names: Sequence[str]) -> np.ndarray:
    """Weighted average of class probabilities given by several models (or views of one image): each part is
    (probabilities (N, K_part), its K_part class names, weight), mapped onto `names` by name (a class a part does
    not know counts 0 there); the weights are renormalised over the parts. (N, len(names)) float32. What the
    Triton blend computes for the species output; flip TTA = the two views of a model at half its weight each."""
    if not parts:
        raise DataError("probability blend: no parts given")
    column = {str(n): i for i, n in enumerate(names)}
    total_weight = sum(float(w) for _, _, w in parts)
    if not all(float(w) >= 0 and np.isfinite(float(w)) for _, _, w in parts) or not total_weight > 0:
        raise DataError(f"probability blend: weights must be finite, >= 0 and not all 0, got {[w for *_, w in parts]}")
    total = None
    for values, part_names, weight in parts:
        array = as_embeddings(values, dimension=len(part_names), what="class probabilities")
        missing = [str(n) for n in part_names if str(n) not in column]
        if missing:
            raise DataError(f"probability blend: classes {', '.join(missing)} are not among {list(names)}")
        if total is None:
            total = np.zeros((array.shape[0], len(column)), dtype=np.float64)
        elif array.shape[0] != total.shape[0]:
            raise DataError(f"probability blend: {array.shape[0]} rows, other parts {total.shape[0]}")
        for k, name in enumerate(part_names):
            total[:, column[str(name)]] += float(weight) / total_weight * array[:, k]
    return total.astype(np.float32)


def _rows(indices: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return shown + (f" ... ({indices.size} in all)" if indices.size > limit else "")
