"""`whaleid evaluate --rerank sift`: the re-ranking weight and the threshold on the fused scores, tuned on the same
out-of-fold validation queries as the threshold alone (evaluation.py), recorded in tuning.json's `rerank`."""

from __future__ import annotations

from dataclasses import asdict
from typing import Mapping, Sequence

import numpy as np

from services.core.errors import ConfigError
from services.core.identification.evaluation import (
    HELD_OUT_PARTS,
    LabelledImages,
    query_groups,
    split_fold,
    split_gallery,
)
from services.core.identification.local_features import (
    LocalFeatures,
    RerankConfig,
    candidate_inliers,
    cross_fitted_rerank,
    tune_rerank,
)
from services.core.identification.ranking import Candidates, rank_candidates
from services.core.identification.vectors import blend

METHOD = "sift"


def rerank_out_of_fold(embeddings_by_model: Mapping[str, np.ndarray], weights: Mapping[str, float],
                       data: LabelledImages, folds: Sequence[int], features: Sequence[LocalFeatures],
                       config: RerankConfig, k: int = 50, references: str = "photos",
                       validation: str = "fold") -> dict:
    """Each fold's queries ranked as evaluation.py ranks them (blend `weights`), their top-k individuals' photos
    in that fold's gallery matched (`features`: one per data row), then the weight and the threshold tuned on the
    fused scores (in sample: what is served) and cross-fitted (held out: what to expect). Also the held-out MAP@5
    of the same queries without re-ranking, for comparison."""
    if validation != "fold":
        raise ConfigError("re-ranking is tuned with --validation fold only")
    embeddings = blend(embeddings_by_model, weights)
    parts, counts, truths, groups = [], [], [], []
    for fold in folds:
        split = split_fold(data, fold)
        gallery = split_gallery(embeddings, data, split.gallery_rows, references)
        candidates = rank_candidates(gallery, embeddings[split.query_rows], k)
        by_individual: dict[str, list[LocalFeatures]] = {}
        for row in split.gallery_rows:
            by_individual.setdefault(data.individual_ids[row], []).append(features[row])
        counts.append(candidate_inliers(candidates, [features[r] for r in split.query_rows],
                                        by_individual.__getitem__, config))
        parts.append(candidates)
        truths += split.truths
        groups += query_groups(data, split)
    candidates = Candidates(np.concatenate([p.ids for p in parts]), np.concatenate([p.scores for p in parts]))
    counts = np.concatenate(counts)
    tuned = tune_rerank(candidates, counts, truths, config.cap)
    fitted = cross_fitted_rerank(candidates, counts, truths, groups, config.cap, parts=HELD_OUT_PARTS)
    without = cross_fitted_rerank(candidates, counts, truths, groups, config.cap, weights=(0.0,),
                                  parts=HELD_OUT_PARTS)
    served = config.with_weight(tuned["weight"])
    return {"method": METHOD, **asdict(served), "threshold": tuned["threshold"],
            "map5_in_sample": tuned["map5"], "map5_by_weight": tuned["map5_by_weight"],
            "map5_held_out": fitted["map5"], "map5_held_out_without_rerank": without["map5"],
            "held_out_choices": fitted["chosen"], "known_top1_held_out": fitted["known_top1"],
            "known_top1_without_rerank": without["known_top1"], "queries": int(len(truths))}


def served_config(rerank: Mapping) -> RerankConfig | None:
    """The RerankConfig a tuning's `rerank` entry serves (None: off)."""
    if not rerank:
        return None
    if rerank.get("method") != METHOD:
        raise ConfigError(f"tuning: re-ranking method {rerank.get('method')!r} unknown (known: {METHOD})")
    fields = RerankConfig.__dataclass_fields__
    return RerankConfig(**{key: value for key, value in rerank.items() if key in fields})
