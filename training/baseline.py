"""Nearest-neighbour baselines without learning: raw pixels and colour histograms of the eval crops.

They show how hard a data set is: on `whaleid synth` data they should score low, a trained embedder high.
Gallery = train images, queries = test images (needs test_truth.csv); each crop is the image's box of
`box_source` when it has one, else the whole image (the eval path). Features are centred on the gallery mean and
compared by cosine similarity; ranking and MAP@5 come from the identification core:
  - `map5`: `new_individual` never predicted (threshold -inf), so new animals always score 0;
  - `map5_tuned`: the best `new_individual` threshold of a sweep over the test queries themselves, an optimistic
    upper bound for the baseline (a fair tuning would use a validation split).
"""

from __future__ import annotations

import logging
import time

import numpy as np

from services.core.errors import DataError
from services.core.identification import build_gallery, map_at_5, rank_candidates
from services.core.identification.ranking import NEW_INDIVIDUAL, insert_new_individual
from services.core.identification.tuning import sweep_threshold
from services.core.imaging import preprocess
from training.data import HappywhaleData, load_dataset

log = logging.getLogger(__name__)

PIXEL_SIZE = 24  # crops are resized to PIXEL_SIZE x PIXEL_SIZE colour pixels
HISTOGRAM_BINS = 8  # per channel: an 8 x 8 x 8 joint RGB histogram
K_NEIGHBOURS = 50


def pixel_features(crop: np.ndarray) -> np.ndarray:
    """Raw colour pixels of the crop (float32 from services.core.imaging.preprocess), flattened."""
    return crop.reshape(-1) / 255.0


def histogram_features(crop: np.ndarray) -> np.ndarray:
    """Joint RGB histogram of the crop, square-rooted (Hellinger), flattened."""
    bins = np.clip((crop / 256.0 * HISTOGRAM_BINS).astype(int), 0, HISTOGRAM_BINS - 1)
    index = (bins[..., 0] * HISTOGRAM_BINS + bins[..., 1]) * HISTOGRAM_BINS + bins[..., 2]
    counts = np.bincount(index.reshape(-1), minlength=HISTOGRAM_BINS**3).astype(np.float64)
    return np.sqrt(counts / counts.sum())


FEATURES = {"pixel": (pixel_features, PIXEL_SIZE), "histogram": (histogram_features, 48)}


def _features(data: HappywhaleData, images: list[str], box_source: str | None) -> dict[str, np.ndarray]:
    result: dict[str, list[np.ndarray]] = {name: [] for name in FEATURES}
    for image in images:
        pixels = data.load_image(image)
        box = data.eval_box(image, box_source)
        for name, (extract, size) in FEATURES.items():
            result[name].append(extract(preprocess(pixels, size, box)))
    return {name: np.stack(values).astype(np.float32) for name, values in result.items()}


def knn_map5(gallery_features: np.ndarray, query_features: np.ndarray, data: HappywhaleData,
             centre: bool = False) -> dict:
    """MAP@5 of cosine nearest neighbours: gallery = data.train rows, queries = data.truth rows (same order).

    Also used to score a trained embedder on the same split, side by side with the baselines.
    """
    if not data.truth:
        raise DataError(f"{data.root}: scoring needs test_truth.csv (image,individual_id,species)")
    truths = [row.individual_id for row in data.truth]
    gallery_features = np.asarray(gallery_features, dtype=np.float32)
    queries = np.asarray(query_features, dtype=np.float32)
    if len(gallery_features) != len(data.train) or len(queries) != len(truths):
        raise DataError(f"knn_map5: {len(gallery_features)} gallery rows for {len(data.train)} train images, "
                        f"{len(queries)} queries for {len(truths)} truths")
    if centre:
        mean = gallery_features.mean(axis=0, keepdims=True)
        gallery_features, queries = gallery_features - mean, queries - mean
    gallery = build_gallery(gallery_features, [r.individual_id for r in data.train],
                            [r.species for r in data.train], [r.image for r in data.train])
    queries = queries / (np.linalg.norm(queries, axis=1, keepdims=True) + 1e-12)
    candidates = rank_candidates(gallery, queries, K_NEIGHBOURS)
    never_new = [[i for i, _ in p] for p in insert_new_individual(candidates, -np.inf)]
    sweep = sweep_threshold(candidates, truths)
    seen = [i for i, t in enumerate(truths) if t != NEW_INDIVIDUAL]
    return {
        "map5": round(map_at_5(never_new, truths), 4),
        "map5_seen_only": round(map_at_5([never_new[q] for q in seen], [truths[q] for q in seen]), 4) if seen else None,
        "map5_tuned": round(sweep.best_map5, 4),
        "tuned_threshold": sweep.best,
    }


def pixel_baseline_map5(data_dir, box_source: str | None = "fullbody") -> dict:
    """MAP@5 of the raw-pixel and colour-histogram kNN baselines on the test split of a data set."""
    started = time.monotonic()
    data = load_dataset(data_dir)
    if not data.truth:
        raise DataError(f"{data_dir}: the baseline needs test_truth.csv (image,individual_id,species)")
    if not data.train:
        raise DataError(f"{data_dir}: the baseline needs train images for its gallery")
    query_images = [row.image for row in data.truth]
    truths = [row.individual_id for row in data.truth]
    log.info("baseline: %d gallery images, %d queries (crop: %s)", len(data.train), len(query_images),
             box_source or "whole image")
    gallery = _features(data, [row.image for row in data.train], box_source)
    queries = _features(data, query_images, box_source)
    result = {
        "data": str(data_dir), "box_source": box_source, "gallery_images": len(data.train),
        "queries": len(query_images), "new_share": round(truths.count(NEW_INDIVIDUAL) / len(truths), 4),
    }
    for name in FEATURES:
        result[name] = knn_map5(gallery[name], queries[name], data, centre=True)
        log.info("baseline %s: MAP@5 %.4f (tuned new_individual threshold: %.4f)", name, result[name]["map5"],
                 result[name]["map5_tuned"])
    result["seconds"] = round(time.monotonic() - started, 2)
    return result
