"""Validation and combination of embedding matrices (L2 normalisation, flip TTA, model blends)."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from services.errors import DataError

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
    """Weighted sum of each model's normalised embeddings, renormalised (what the Triton blend model computes).

    Models without a weight are refused; a weight of 0 drops the model.
    """
    if not embeddings_by_model:
        raise DataError("blend: no models given")
    missing = sorted(set(embeddings_by_model) - set(weights))
    if missing:
        raise DataError(f"blend: no weight for model(s) {', '.join(missing)}")
    total = None
    for model_id, values in embeddings_by_model.items():
        weight = float(weights[model_id])
        if weight < 0 or not np.isfinite(weight):
            raise DataError(f"blend: weight of {model_id} must be finite and >= 0, got {weight}")
        part = l2_normalise(values, f"embeddings of {model_id}") * np.float32(weight)
        if total is not None and part.shape != total.shape:
            raise DataError(f"blend: {model_id} has shape {part.shape}, others {total.shape}")
        total = part if total is None else total + part
    if not any(float(weights[m]) > 0 for m in embeddings_by_model):
        raise DataError("blend: all weights are zero")
    return l2_normalise(total, "blended embeddings")


def _rows(indices: np.ndarray, limit: int = 10) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return shown + (f" ... ({indices.size} in all)" if indices.size > limit else "")
