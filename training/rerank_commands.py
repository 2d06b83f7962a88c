"""Local-feature re-ranking in `whaleid evaluate --rerank sift` and `whaleid predict` (issue #21 item 6).

evaluate: SIFT keypoints of every training image (the eval crop of the served model, services.core.keypoints),
then the weight and the threshold on the fused scores tuned out of fold (local_features_tuning); the served tuning
gets `rerank` and the fused threshold (per-species thresholds, tuned on unfused scores, are dropped).
predict: with a tuning that has `rerank`, the test images' candidates are re-ranked before `new_individual`.
"""

from __future__ import annotations

import logging
import time
from typing import Sequence

import numpy as np

log = logging.getLogger(__name__)


def local_features(data, images: Sequence[str], box_source: str | None) -> list:
    """SIFT keypoints of data set images, each cropped as the model's eval crop."""
    from services.core.imaging import crop
    from services.core.keypoints import extract

    started = time.process_time()
    out = [extract(crop(data.load_image(image), data.eval_box(image, box_source))) for image in images]
    log.info("SIFT keypoints of %d images: %.1f CPU ms each", len(images),
             1000 * (time.process_time() - started) / max(len(images), 1))
    return out


def tune_for_evaluate(data, images: Sequence[str], labelled, folds, embeddings: dict, served, embedders,
                      k: int, references: str, validation: str) -> dict:
    """Tunes re-ranking for the served blend and records it in `served.tuning`; returns the report entry."""
    from services.core.identification.local_features import RerankConfig
    from services.core.identification.local_features_tuning import rerank_out_of_fold

    weights = served.tuning.served_weights()
    missing = sorted(set(weights) - set(embeddings))
    if missing:
        note = f"not tuned: the served model(s) {', '.join(missing)} were not embedded here (evaluate them with --run)"
        return {"method": "sift", "note": note}
    source = next(e.eval_box_source for e in embedders if e.model_id in weights)
    config = RerankConfig()
    result = rerank_out_of_fold(embeddings, weights, labelled, folds, local_features(data, images, source),
                                config, k, references, validation)
    tuning = served.tuning
    tuning.rerank = {key: result[key] for key in ("method", "weight", "cap", "k", "ratio", "tolerance_px",
                                                  "iterations", "photos")}
    tuning.threshold, tuning.per_species = float(result["threshold"]), {}
    tuning.validation["rerank"] = {key: value for key, value in result.items() if key.startswith(("map5", "known"))}
    return result


def identify_reranked(identifier, test_emb: np.ndarray, data, train_images, test_images,
                      box_source: str | None, new_share: float | None):
    """`Identifier.identify` with the candidates re-ranked by the tuning's `rerank` (predict)."""
    from services.core.identification.local_features import rerank
    from services.core.identification.local_features_tuning import served_config
    from services.core.identification.ranking import insert_new_individual, threshold_for_new_share

    config = served_config(identifier.tuning.rerank)
    train_features = local_features(data, train_images, box_source)
    by_individual: dict[str, list] = {}
    for row, features in zip(data.train, train_features, strict=True):
        by_individual.setdefault(row.individual_id, []).append(features)
    fused = rerank(identifier.candidates(test_emb), local_features(data, test_images, box_source),
                   by_individual.__getitem__, config)
    thresholds = (threshold_for_new_share(fused.scores[:, 0], new_share) if new_share is not None
                  else np.full(len(fused), identifier.tuning.threshold, np.float32))
    return insert_new_individual(fused, np.broadcast_to(np.asarray(thresholds, np.float32), (len(fused),)))
