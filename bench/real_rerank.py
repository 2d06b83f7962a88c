"""Local-feature re-ranking measured on the real development sets (issue #21 item 6), beside the method it
re-ranks: `<method>+sift` in bench/real_sets.py's table.

For each open set (nyala test/train, the synthetic look): the method's candidates, then SIFT inliers
(services.core.keypoints, services.core.identification.local_features) between the query and the gallery photos
of its top-k individuals, fused as score + weight * min(inliers, cap) / cap. `map5_cross_fitted` chooses the
weight AND the threshold on one half of the individuals and scores the other (local_features.cross_fitted_rerank,
the halves of tuning.cross_fitted_map5), `known_top1` likewise at the weight chosen on the other half;
`map5_best_optimistic` is the in-sample best. The fins check (no tuning set) is fused at the configured weight.
Costs: `sift_cpu_ms_per_image` (extraction, each photo once, process CPU), `match_cpu_ms_per_query` (matching and
RANSAC of one query against its candidates' photos).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from services.core.identification.local_features import LocalFeatures, RerankConfig


@dataclass
class Rerank:
    """Re-ranks the candidates of the methods named in `methods` (e.g. ('general',))."""

    methods: tuple[str, ...] = ("general",)
    config: RerankConfig = RerankConfig()
    cache: dict[Path, LocalFeatures] = field(default_factory=dict)
    extract_cpu_s: float = 0.0
    extracted: int = 0
    match_cpu_s: float = 0.0
    matched: int = 0

    def features(self, paths: Sequence[Path]) -> list[LocalFeatures]:
        from services.core.keypoints import extract_file

        todo = [Path(p) for p in paths if Path(p) not in self.cache]
        if todo:
            extract_file(todo[0])  # warm-up (OpenCV's first call)
            started = time.process_time()
            for path in todo:
                self.cache[path] = extract_file(path)
            self.extract_cpu_s += time.process_time() - started
            self.extracted += len(todo)
        return [self.cache[Path(p)] for p in paths]

    def counts(self, candidates, gallery: Sequence[Path], gallery_ids: Sequence[str], queries: Sequence[Path]):
        from services.core.identification.local_features import candidate_inliers

        by_individual: dict[str, list[LocalFeatures]] = {}
        for features, individual in zip(self.features(gallery), gallery_ids, strict=True):
            by_individual.setdefault(str(individual), []).append(features)
        query_features = self.features(queries)
        started = time.process_time()
        counts = candidate_inliers(candidates, query_features, by_individual.__getitem__, self.config)
        self.match_cpu_s += time.process_time() - started
        self.matched += len(queries)
        return counts

    def open_set(self, split, gallery_x: np.ndarray, query_x: np.ndarray) -> dict:
        from bench.real_sets import NEW_INDIVIDUAL, _rank
        from services.core.identification.local_features import cross_fitted_rerank, fuse

        candidates = _rank(gallery_x, split.gallery_ids, query_x)
        counts = self.counts(candidates, split.gallery, split.gallery_ids, split.queries)
        truths = np.asarray(split.truths, dtype=object)
        fitted = cross_fitted_rerank(candidates, counts, truths, split.groups, self.config.cap)
        known = truths != NEW_INDIVIDUAL
        at_default = fuse(candidates, counts, self.config.weight, self.config.cap).ids[:, 0] == truths
        hits = candidates.ids[:, 0] == truths
        return {"map5_cross_fitted": fitted["map5"], "cross_fitted_choices": fitted["chosen"],
                "map5_calibrated_default": None, "calibrated_threshold": None,
                "map5_best_optimistic": fitted["in_sample"], "best_threshold_optimistic": None,
                "known_top1": fitted["known_top1"],
                "known_top1_at_default_weight": round(float(at_default[known].mean()), 4) if known.any() else None,
                "known_top1_embedding_alone": round(float(hits[known].mean()), 4) if known.any() else None,
                "inliers_median_true_vs_other_top": _medians(candidates, counts, truths),
                "viewpoint": {}}

    def closed(self, check, gallery_x: np.ndarray, query_x: np.ndarray) -> dict:
        from bench.real_sets import _rank, score_closed
        from services.core.identification.local_features import fuse

        candidates = _rank(gallery_x, check.gallery_ids, query_x)
        counts = self.counts(candidates, check.gallery, check.gallery_ids, check.queries)
        fused = fuse(candidates, counts, self.config.weight, self.config.cap)
        return {**score_closed(check, gallery_x, query_x, fused), "inliers": counts.tolist(),
                "weight": self.config.weight}

    def cost(self) -> dict:
        return {"sift_images": self.extracted,
                "sift_cpu_ms_per_image": round(1000 * self.extract_cpu_s / max(self.extracted, 1), 2),
                "queries": self.matched,
                "match_cpu_ms_per_query": round(1000 * self.match_cpu_s / max(self.matched, 1), 2),
                "config": asdict(self.config)}


def _medians(candidates, counts: np.ndarray, truths: np.ndarray) -> list[float | None]:
    """Median inliers of the true individual and of the other candidates, among the top k."""
    k = counts.shape[1]
    true = candidates.ids[:, :k] == truths[:, None]
    other = (candidates.ids[:, :k] != "") & ~true
    return [float(np.median(counts[true])) if true.any() else None,
            float(np.median(counts[other])) if other.any() else None]


def look_split(data_dir: Path):
    """A `whaleid synth` data set as an open set of real_sets.OpenSetSplit: gallery = its train photos, queries =
    its test photos (whole frames, as the real sets), groups = the true individual (each new photo its own)."""
    from bench.real_sets import NEW_INDIVIDUAL, OpenSetSplit
    from training.data import load_dataset

    data = load_dataset(data_dir)
    split = OpenSetSplit(gallery=[data.image_path(r.image) for r in data.train],
                         gallery_ids=[r.individual_id for r in data.train],
                         queries=[data.image_path(r.image) for r in data.truth],
                         truths=[r.individual_id for r in data.truth],
                         groups=[r.image if r.individual_id == NEW_INDIVIDUAL else r.individual_id for r in data.truth])
    split.new_individuals = sorted({g for g, t in zip(split.groups, split.truths, strict=True) if t == NEW_INDIVIDUAL})
    return split
