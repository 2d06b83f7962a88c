"""The gallery photos' local features for the live chain's re-ranking (issue #21 item 6, docs/identification.md
"Local-feature re-ranking"): made at `whaleid gallery build` when the served tuning has `rerank` or the setting
`rerank_local_features` is on, stored beside the gallery version (local_features.BANK_FILE), read by the matcher.

Each individual keeps its first `photos` catalogue photos (RerankConfig.photos, 8: what the matcher compares at
most), each cropped as the embedder's evaluation crop (the box source the gallery was embedded with) and reduced
to its SIFT keypoints by services.core.keypoints (the one extraction, as in the worker). `gallery_bank` writes the
version's file; for `reindex --re-embed` it also follows the gallery's merges and renames and adds the confirmed
sightings' keypoints while there is room (as a plain re-index does: services.curation.operations.reindex_features).
"""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path
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
                 f"{per_individual} each): {bank.size_bytes() / count / 1000:.0f} kB and "
                 f"{1000 * (time.process_time() - cpu) / count:.0f} CPU ms a photo "
                 f"({time.perf_counter() - start:.1f} s)")
    return bank


def gallery_bank(photos, box_source: str | None, gallery, directory: Path, sightings=None,
                 per_individual: int = RerankConfig.photos,
                 progress: Callable[[str], None] | None = None) -> tuple[Path, dict | None]:
    """(local_features.bin of a gallery version saved in `directory`, what happened to the sightings or None): the
    catalogue `photos`' bank (`gallery_features`); when the gallery's rows were relabelled (merges and renames:
    their metadata keeps the original id) its entries move to the live ids; `sightings` (Photos of confirmed
    sightings, cropped by their own box: `reindex --re-embed`) add their keypoints after the catalogue's, within
    `per_individual`."""
    from services.core.keypoints import extract_file
    from services.curation.operations.aliases import ORIGINAL_KEY
    from services.curation.operations.reindex_features import updated_bank

    bank = gallery_features(photos, box_source, per_individual, progress)
    live = {str(meta[ORIGINAL_KEY]): str(individual) for individual, meta in
            zip(gallery.individual_ids, gallery.metadata, strict=True) if meta and meta.get(ORIGINAL_KEY)}
    if sightings is None and not live:
        return bank.save(directory), None
    entries = [] if sightings is None else [
        (image.removeprefix("sighting/"), live.get(str(individual), str(individual)), partial(extract_file, path, box))
        for image, individual, path, box in zip(sightings.images, sightings.individual_ids, sightings.paths,
                                                sightings.box_list(None), strict=True)]
    update = updated_bank(bank, live, set(map(str, gallery.individual_ids)), entries, per_individual)
    report = update.report()
    if progress is not None and sightings is not None:
        progress(f"local features of {len(update.added)} confirmed sighting(s) added, {len(update.skipped)} not "
                 f"(at most {per_individual} photos per individual, the catalogue's first)")
    return update.bank.save(directory), report
