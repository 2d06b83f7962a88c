"""The next gallery version's local features at re-indexing (issue #21 item 6, docs/identification.md
"Local-feature re-ranking"): when the parent version has a bank (local_features.BANK_FILE), the new version's bank
is the parent's plus the keypoints of the confirmed sightings the re-index adds.

- Each added sighting's keypoints are those of the crop the worker embedded: its photo in S3 cropped by the
  `crop_box` stored with its embedding (services.curation.operations.sighting_photos), reduced by the one
  extraction (services.core.keypoints.extract_file), as the worker's.
- Which photos are kept, at most `per_individual` (RerankConfig.photos, 8: what the matcher compares) per
  individual: the parent's photos first (the catalogue's, in their order), then the added sightings in the order
  they are added, while there is room; a sighting beyond the cap (or whose photo cannot be read) enters the
  gallery by its embedding but not the bank, and the report says which and why.
- Merges and renames: each bank entry moves to the live id of its individual (as the gallery's rows do), the
  merged photos after the target's own, within the cap; an entry whose individual is no longer in the gallery
  (e.g. a rename undone) is dropped and reported, so the bank always matches the gallery's individuals.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from services.core.identification.local_features import FeatureBank, LocalFeatures, RerankConfig
from services.curation.operations.aliases import resolve_in
from services.curation.operations.sighting_photos import sighting_photo

log = logging.getLogger(__name__)


@dataclass
class BankUpdate:
    bank: FeatureBank
    added: list[str] = field(default_factory=list)  # sighting ids whose keypoints entered the bank
    skipped: dict[str, str] = field(default_factory=dict)  # sighting id -> why its keypoints did not
    dropped: list[str] = field(default_factory=list)  # the parent's individuals no longer in the gallery

    def report(self) -> dict:
        """What the reports (`reindex`'s `local_features`, `gallery build --re-embed`'s) say about the bank."""
        return {"photos": len(self.bank), "added": self.added, "skipped": self.skipped, "dropped": self.dropped}


def relabelled_bank(bank: FeatureBank, aliases: Mapping[str, str], individuals: set[str],
                    per_individual: int) -> tuple[dict[str, list[LocalFeatures]], list[str]]:
    """The bank's photos under their live ids (only individuals in `individuals`), at most `per_individual` each;
    and the ids dropped."""
    out: dict[str, list[LocalFeatures]] = {}
    dropped = []
    entries = sorted(bank.by_individual.items(), key=lambda e: resolve_in(aliases, e[0]) != e[0])  # own first
    for individual, photos in entries:
        live = resolve_in(aliases, individual)
        if live not in individuals:
            dropped.append(individual)
            continue
        kept = out.setdefault(live, [])
        kept += photos[:max(0, per_individual - len(kept))]
    return out, dropped


def add_features(by_individual: dict[str, list[LocalFeatures]], entries, per_individual: int,
                 update: BankUpdate) -> None:
    """Append each entry's keypoints ((sighting id, individual, make: () -> LocalFeatures), in order) to its
    individual's photos while it has fewer than `per_individual`; `update` records what entered and why not."""
    for sighting_id, individual, make in entries:
        kept = by_individual.setdefault(individual, [])
        if len(kept) >= per_individual:
            update.skipped[sighting_id] = f"{individual} already has {per_individual} photos' local features"
            continue
        try:
            features = make()
        except Exception as exc:  # noqa: BLE001 - an optional enhancement: the row enters all the same
            update.skipped[sighting_id] = f"no local features: {exc}"
            log.error("sighting %s enters the gallery without local features: %s", sighting_id, exc)
            continue
        kept.append(features)
        update.added.append(sighting_id)


def updated_bank(bank: FeatureBank, aliases: Mapping[str, str], individuals: set[str], entries,
                 per_individual: int) -> BankUpdate:
    """`bank` under the live ids of a gallery of `individuals` (`relabelled_bank`) plus the keypoints of `entries`
    ((sighting id, live individual id, make: () -> LocalFeatures), in order; `add_features`), within
    `per_individual` photos each; individuals left without a photo are not in the result."""
    by_individual, dropped = relabelled_bank(bank, aliases, individuals, per_individual)
    update = BankUpdate(FeatureBank(), dropped=dropped)
    add_features(by_individual, entries, per_individual, update)
    update.bank = FeatureBank({i: photos for i, photos in by_individual.items() if photos})
    return update


def next_bank(bank: FeatureBank, sightings: Sequence[tuple[str, str]], individuals: set[str], redis, s3,
              sightings_bucket: str, aliases: Mapping[str, str] | None = None,
              per_individual: int = RerankConfig.photos) -> BankUpdate:
    """The parent's `bank` plus the keypoints of `sightings` ((sighting id, live individual id), in the order the
    re-index adds them) for a gallery of `individuals` (module docstring)."""
    from services.core.keypoints import extract_file

    with tempfile.TemporaryDirectory(prefix="whaleid-reindex-photos-") as tmp:
        def make(sighting_id: str):
            def extract() -> LocalFeatures:
                path, box = sighting_photo(redis, s3, sighting_id, sightings_bucket, Path(tmp))
                try:
                    return extract_file(path, box)
                finally:
                    path.unlink()
            return extract

        return updated_bank(bank, aliases or {}, individuals, [(s, i, make(s)) for s, i in sightings],
                            per_individual)
