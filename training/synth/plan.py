"""Who is photographed how often, and which photos go to train or test (before anything is drawn).

Photos per individual follow a capped Zipf law (many individuals with one or two photos, a few with many).
Seen individuals with two or more photos lend about a fifth of their photos (at least one) to the test split;
new individuals (never in train) are added until they make `test_new_share` of the test images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from training.synth.species import Species

NEW_INDIVIDUAL_MAX_PHOTOS = 2
HEX = "0123456789abcdef"


@dataclass(frozen=True)
class PlannedIndividual:
    index: int
    individual_id: str
    species: Species
    train_photos: int
    test_photos: int

    @property
    def is_new(self) -> bool:
        return self.train_photos == 0


def hex_ids(rng: np.random.Generator, count: int, digits: int) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    while len(ids) < count:
        value = "".join(HEX[d] for d in rng.integers(0, 16, size=digits))
        if value not in seen:
            seen.add(value)
            ids.append(value)
    return ids


def _held_out(photos: int) -> int:
    return max(1, int(round(photos * 0.2))) if photos >= 2 else 0


def plan(rng: np.random.Generator, individuals: int, species: tuple[Species, ...], max_photos: int,
         test_new_share: float, zipf_a: float) -> list[PlannedIndividual]:
    weights = 1.0 / np.sqrt(np.arange(1, len(species) + 1))
    species_index = rng.choice(len(species), size=individuals, p=weights / weights.sum())
    photos = np.minimum(rng.zipf(zipf_a, size=individuals), max_photos)
    ids = hex_ids(rng, individuals, 12)

    new = np.zeros(individuals, dtype=bool)
    seen_test = sum(_held_out(int(n)) for n in photos)
    new_test = 0
    for i in rng.permutation(individuals):
        if new_test >= test_new_share * max(1, new_test + seen_test) or new.sum() >= individuals - 1:
            break
        new[i] = True
        seen_test -= _held_out(int(photos[i]))
        new_test += min(int(photos[i]), NEW_INDIVIDUAL_MAX_PHOTOS)

    planned = []
    for i in range(individuals):
        n = int(photos[i])
        if new[i]:
            train, test = 0, min(n, NEW_INDIVIDUAL_MAX_PHOTOS)
        else:
            test = _held_out(n)
            train = n - test
        planned.append(PlannedIndividual(i, ids[i], species[int(species_index[i])], train, test))
    return planned
