"""The synthetic species: real Happywhale species names, each with its own body shape and colours.

A species fixes what the camera sees (a dorsal fin on a strip of back, a fluke, or a finless back), the base
colour and the colours its individual markings take. Individuals differ only by their markings (individuals.py).
"""

from __future__ import annotations

from dataclasses import dataclass

RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Species:
    name: str  # the Happywhale label (correct spelling)
    shape: str  # "dorsal_fin" | "fluke" | "back"
    body: RGB  # base colour of the skin
    marks: tuple[RGB, ...]  # colours individual patches and scars are drawn in (high contrast with `body`)
    fin_tip: tuple[float, float] = (120.0, 20.0)  # canonical (x, y) of the fin tip (dorsal_fin only)
    fin_sweep: float = 0.0  # how far the trailing edge bows towards the leading edge (falcate fins)
    misspellings: tuple[str, ...] = ()  # labels of this species as they occur in the Kaggle train.csv


SPECIES: tuple[Species, ...] = (
    Species("humpback_whale", "fluke", body=(38, 38, 44), marks=((232, 232, 228), (200, 200, 196))),
    Species("killer_whale", "dorsal_fin", body=(22, 22, 26), marks=((225, 225, 225), (150, 150, 155)),
            fin_tip=(104.0, 8.0), fin_sweep=4.0, misspellings=("kiler_whale",)),
    Species("bottlenose_dolphin", "dorsal_fin", body=(112, 118, 128), marks=((215, 215, 218), (40, 40, 48)),
            fin_tip=(138.0, 26.0), fin_sweep=26.0, misspellings=("bottlenose_dolpin",)),
    Species("beluga", "back", body=(226, 226, 218), marks=((70, 74, 82), (130, 134, 140))),
    Species("short_finned_pilot_whale", "dorsal_fin", body=(48, 48, 54), marks=((205, 205, 208), (150, 150, 158)),
            fin_tip=(146.0, 48.0), fin_sweep=22.0, misspellings=("globis", "pilot_whale")),
)

SPECIES_NAMES = tuple(s.name for s in SPECIES)


def species_by_name(name: str) -> Species:
    for species in SPECIES:
        if species.name == name:
            return species
    raise KeyError(name)
