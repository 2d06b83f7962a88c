"""The gallery photos' local features for the live chain's re-ranking (issue #21 item 6, docs/identification.md
"Local-feature re-ranking"): made at `whaleid gallery build` when the served tuning has `rerank` or the setting
`rerank_local_features` is on, stored beside the gallery version (local_features.BANK_FILE), read by the matcher.

Each individual keeps its first `photos` catalogue photos (RerankConfig.photos, 8: what the matcher compares at
most), each cropped as the embedder's evaluation crop (the box source the gallery was embedded with) and reduced
to its SIFT keypoints by services.core.keypoints (the one extraction, as in the worker).
"""

from __future__ import annotations

import time
from typing import Callable

from services.core.identification.local_features import FeatureBank, RerankConfig


def wanted(settings, tuning) -> bool:
    """Whether a gallery build stores the photos' local features."""
    return bool(getattr(settings, "rerank_local_features", False) or (tuning is not None and tuning.rerank))


def gallery_features(photos, box_source: str | None, per_individual: int = RerankConfig.photos,
                     progress: Callable[[str], None] | None = None) -> FeatureBank:
    """FeatureBank of at most `per_individual` photos of each individual (catalogue order)."""
    from services.core.keypoints import extract_file

    start, cpu = time.perf_counter(), time.process_time()
    chosen: dict[str, list[int]] = {}
    for row, individual in enumerate(photos.individual_ids):
        rows = chosen.setdefault(str(individual), [])
        if len(rows) < per_individual:
            rows.append(row)
    boxes = photos.box_list(box_source)
    bank = FeatureBank({individual: [extract_file(photos.paths[r], boxes[r]) for r in rows]
                        for individual, rows in chosen.items()})
    if progress is not None:
        count = max(1, len(bank))
        progress(f"local features of {len(bank)} gallery photos ({len(chosen)} individuals, at most "
                 f"{per_individual} each): {len(bank.to_bytes()) / count / 1000:.0f} kB and "
                 f"{1000 * (time.process_time() - cpu) / count:.0f} CPU ms a photo "
                 f"({time.perf_counter() - start:.1f} s)")
    return bank
