"""An individual = a species plus persistent markings, all in the canonical frame of shapes.py.

Markings are deliberately coarse and high-contrast so a small CNN can learn them from one or two photos at
64-96 px: one to three deep notches in the marked edge, one or two large pigment blotches and two or three
pigment symbols of distinct shapes (ring, cross, bar, ...: local patterns a CNN finds whatever the pose, a pixel
template does not) at fixed places on the fin/fluke/back, up to two pale scars, and a small shift of the fin tip. Everything that varies between
photos of the same animal (pose, scale, light, sea, occlusion) lives in render.py instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from training.synth import shapes
from training.synth.species import RGB, Species


@dataclass(frozen=True)
class Notch:
    position: float  # along the marked edge, 0..1
    half_width: float  # canonical pixels along the edge
    depth: float  # canonical pixels into the body
    profile: str  # "v" or "u"


SYMBOLS = ("ring", "cross", "bar", "triangle", "chevron", "dots", "crescent", "square")


@dataclass(frozen=True)
class Patch:
    centre: tuple[float, float]
    radii: tuple[float, float]
    angle: float  # radians
    colour: RGB
    kind: str = "blotch"  # "blotch" (an ellipse) or one of SYMBOLS (a pigment pattern with a shape)


@dataclass(frozen=True)
class Scar:
    points: tuple[tuple[float, float], ...]
    width: int
    colour: RGB


@dataclass(frozen=True)
class Individual:
    individual_id: str
    species: Species
    notches: tuple[Notch, ...]
    patches: tuple[Patch, ...]
    scars: tuple[Scar, ...]
    tip_offset: tuple[float, float]

    def outline(self) -> shapes.Outline:
        return shapes.outline(self.species, self.tip_offset)


def _body_mask(outline: shapes.Outline) -> np.ndarray:
    mask = Image.new("L", (shapes.FRAME_W, shapes.FRAME_H), 0)
    draw = ImageDraw.Draw(mask)
    for polygon in shapes.polygons(outline, notches=()):
        draw.polygon([tuple(p) for p in polygon], fill=255)
    return np.asarray(mask) > 0


def _notches(rng: np.random.Generator, outline: shapes.Outline) -> tuple[Notch, ...]:
    count = int(rng.integers(1, 4))
    length = float(np.sum(np.linalg.norm(np.diff(outline.edge, axis=0), axis=1)))
    notches: list[Notch] = []
    for _ in range(50):
        if len(notches) == count:
            break
        low, high = outline.notch_range[int(rng.integers(len(outline.notch_range)))]
        candidate = Notch(
            position=float(rng.uniform(low, high)),
            half_width=float(rng.uniform(6.0, 11.0)),
            depth=float(rng.uniform(8.0, 17.0)),
            profile=str(rng.choice(["v", "u"])),
        )
        gap = min((abs(candidate.position - n.position) * length for n in notches), default=np.inf)
        if gap > 2.2 * 11.0:
            notches.append(candidate)
    return tuple(sorted(notches, key=lambda n: n.position))


def _random_point(rng: np.random.Generator, candidates: np.ndarray) -> tuple[float, float]:
    y, x = candidates[int(rng.integers(len(candidates)))]
    return float(x), float(y)


def make_individual(rng: np.random.Generator, individual_id: str, species: Species) -> Individual:
    tip_offset = (float(rng.uniform(-7, 7)), float(rng.uniform(-6, 6))) if species.shape == "dorsal_fin" else (0.0, 0.0)
    outline = shapes.outline(species, tip_offset)
    mask = _body_mask(outline)
    top, bottom = outline.marking_rows
    mask[:top] = False
    mask[bottom:] = False
    candidates = np.argwhere(mask)
    blotches = [
        Patch(
            centre=_random_point(rng, candidates),
            radii=(float(rng.uniform(8, 16)), float(rng.uniform(6, 12))),
            angle=float(rng.uniform(0, np.pi)),
            colour=species.marks[int(rng.integers(len(species.marks)))],
        )
        for _ in range(int(rng.integers(1, 3)))
    ]
    kinds = rng.choice(len(SYMBOLS), size=int(rng.integers(2, 4)), replace=False)
    symbols: list[Patch] = []
    for kind in kinds:
        radius = float(rng.uniform(12, 16))
        for _ in range(30):  # keep symbols apart so that each stays recognisable
            centre = _random_point(rng, candidates)
            if all(np.hypot(centre[0] - p.centre[0], centre[1] - p.centre[1]) > radius + p.radii[0] + 2 for p in symbols):
                break
        symbols.append(Patch(centre=centre, radii=(radius, radius), angle=float(rng.uniform(0, 2 * np.pi)),
                             colour=species.marks[0], kind=SYMBOLS[int(kind)]))
    patches = tuple(blotches + symbols)
    scars = []
    for _ in range(int(rng.integers(0, 3))):
        start = _random_point(rng, candidates)
        angle, length = rng.uniform(0, 2 * np.pi), rng.uniform(18, 40)
        bend = rng.uniform(-6, 6)
        mid = (start[0] + np.cos(angle) * length / 2 - np.sin(angle) * bend,
               start[1] + np.sin(angle) * length / 2 + np.cos(angle) * bend)
        end = (start[0] + np.cos(angle) * length, start[1] + np.sin(angle) * length)
        scars.append(Scar(points=(start, (float(mid[0]), float(mid[1])), (float(end[0]), float(end[1]))),
                          width=int(rng.integers(2, 4)), colour=species.marks[0]))
    return Individual(individual_id, species, _notches(rng, outline), patches, tuple(scars), tip_offset)
