"""Full scenes for the crop detector (`whaleid synth OUT --scenes N`): one or more animals at sea, some only partly
in the frame, some scenes with water only, and every animal's true box.

A scene reuses the photo renderer's pieces (render.py: the animal's visible part above a wavy waterline, its
pose, foam, light, blur, noise; sea.py / camera.py: a style's sea, tone and camera), but the animals are smaller
(`animal_width`), there may be several (`animals`), and an animal may stand partly outside the frame
(`out_of_frame_share`): its box is the part inside the frame. The box of each animal is the bounding box of its
own visible pixels in the frame (before later animals are drawn over it), so it is exact whatever the pose.

The *main* animal of a scene, the one the detector must find, is the one with the largest box; a scene without
an animal (`empty_share`) has no main box.

`look`: the styles the scenes are drawn in (styles.py), one per scene, drawn at random among those given, so a
detector trained on some looks can be measured on a look it never saw (the default held-out look is
`textured`).

    OUT/scenes/*.jpg
    OUT/scene_boxes.csv   image,animal,species,individual_id,x0,y0,x1,y1,main   (pixels; one row per animal)
    OUT/scenes.json       parameters and counts

Same arguments and seed -> the same files (every scene has its own generators, derived from (seed, index)).
"""

from __future__ import annotations

import csv
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image, ImageFilter

from services.core.errors import DataError
from training.synth import render
from training.synth.camera import camera, tone
from training.synth.individuals import Individual, make_individual
from training.synth.plan import hex_ids
from training.synth.sea import plain_sea, style_sea
from training.synth.species import SPECIES
from training.synth.styles import PHOTO, check_style, pick_style

log = logging.getLogger(__name__)

TRAIN_LOOKS = ("photo", "grey", "overcast")
HELD_OUT_LOOK = "textured"
SCENES_DIR, BOXES_FILE, SUMMARY_FILE = "scenes", "scene_boxes.csv", "scenes.json"
DEFAULT_NUISANCE = render.Nuisance()
BOX_HEADER = ["image", "animal", "species", "individual_id", "x0", "y0", "x1", "y1", "main"]


@dataclass(frozen=True)
class SceneConfig:
    """What varies between scenes (configuration as data)."""

    animals: tuple[int, int] = (1, 3)  # animals per scene (inclusive); the first is the largest, the main one
    extra_animal_share: float = 0.35  # share of scenes with more than one animal
    empty_share: float = 0.08  # share of scenes with water only
    animal_width: tuple[float, float] = (0.18, 0.7)  # main animal's width as a share of the frame width
    extra_width: tuple[float, float] = (0.4, 0.8)  # other animals' width relative to the main one's
    out_of_frame_share: float = 0.3  # share of animals placed partly outside the frame
    out_of_frame: tuple[float, float] = (0.15, 0.5)  # how much of such an animal's width/height is outside
    aspect: tuple[float, float] = (0.6, 0.8)  # frame height / width


@dataclass(frozen=True)
class Animal:
    individual_id: str
    species: str
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inside the frame


@dataclass(frozen=True)
class Scene:
    image: Image.Image
    animals: tuple[Animal, ...]  # main animal first
    look: str

    @property
    def main_box(self) -> tuple[int, int, int, int] | None:
        return self.animals[0].box if self.animals else None


def parse_looks(looks: str | Sequence[str]) -> tuple[str, ...]:
    """"photo,grey" or ["photo", "grey"] -> the validated style names."""
    names = tuple(s.strip() for s in (looks.split(",") if isinstance(looks, str) else looks) if s.strip())
    if not names:
        raise DataError("scenes: at least one look (style) is needed")
    for name in names:
        check_style(name)
    return names


def _placed(rng, layer: Image.Image, width: int, height: int, outside: float | None):
    """Top-left corner of the layer: inside the frame, or (outside = share) partly beyond one or two edges."""
    w, h = layer.size
    if outside is None or w >= width or h >= height:
        return int(rng.integers(0, max(1, width - w + 1))), int(rng.integers(0, max(1, height - h + 1)))
    x = int(rng.integers(0, width - w + 1))
    y = int(rng.integers(0, height - h + 1))
    side = int(rng.integers(0, 4))  # left, right, top, bottom (the sea hides the bottom anyway: rarer)
    if side == 0:
        x = -int(round(outside * w))
    elif side == 1:
        x = width - w + int(round(outside * w))
    elif side == 2:
        y = -int(round(outside * h))
    else:
        y = height - h + int(round(outside * h * 0.5))
    return x, y


def _visible_box(layer: Image.Image, x: int, y: int, width: int, height: int):
    """The bounding box, in the frame, of the layer's opaque pixels that fall inside the frame (None: none do)."""
    canvas = Image.new("L", (width, height), 0)
    canvas.paste(layer.getchannel("A"), (x, y))
    bbox = canvas.point(lambda v: 255 if v > 24 else 0).getbbox()
    if bbox is None or bbox[2] - bbox[0] < 3 or bbox[3] - bbox[1] < 3:
        return None
    return tuple(int(v) for v in bbox)


def render_scene(rng: np.random.Generator, style_rng: np.random.Generator, individuals: Sequence[Individual],
                 canonical: dict[str, Image.Image], width: int, look_name: str,
                 config: SceneConfig = SceneConfig(), nuisance: render.Nuisance = DEFAULT_NUISANCE) -> Scene:
    """One scene of the given look: sea, 0..n animals drawn from `individuals`, light, camera."""
    height = int(round(width * rng.uniform(*config.aspect)))
    style = pick_style(style_rng, look_name)
    sea = plain_sea(rng, width, height, nuisance.sky_share)
    if style.sea != "photo":
        sea = style_sea(style_rng, style, width, height, nuisance.sky_share)
    picture = Image.fromarray(sea)
    if rng.random() < config.empty_share:
        count = 0
    elif rng.random() < config.extra_animal_share:
        count = int(rng.integers(max(2, config.animals[0]), config.animals[1] + 1))
    else:
        count = 1
    main_width = rng.uniform(*config.animal_width)
    animals: list[Animal] = []
    layers = []
    for k in range(count):
        individual = individuals[int(rng.integers(len(individuals)))]
        share = main_width if k == 0 else main_width * rng.uniform(*config.extra_width)
        local = render.Nuisance(**{**asdict(nuisance), "animal_width": (share, share)})
        visible = render._visible_part(rng, canonical[individual.individual_id], individual.outline(), local)
        layer, _ = render._place_animal(rng, visible, width, height, local)
        outside = rng.uniform(*config.out_of_frame) if rng.random() < config.out_of_frame_share else None
        x, y = _placed(rng, layer, width, height, outside)
        box = _visible_box(layer, x, y, width, height)
        if box is None:
            continue
        layers.append((layer, x, y))
        animals.append(Animal(individual.individual_id, individual.species.name, box))
    for layer, x, y in reversed(layers):  # the main (largest) animal in front
        picture.paste(layer, (x, y), layer)
    for animal in animals:
        picture = render._foam(rng, picture, animal.box, nuisance)
    pixels = render._light(rng, np.asarray(picture), nuisance)
    if style != PHOTO:
        pixels = tone(style_rng, pixels, style)
    picture = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    picture = picture.filter(ImageFilter.GaussianBlur(float(rng.uniform(*nuisance.blur_radius))))
    noisy = np.asarray(picture, dtype=np.float64) + rng.normal(0, rng.uniform(*nuisance.noise_sigma), (height, width, 3))
    picture = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    if style != PHOTO:
        picture = camera(style_rng, picture, style)
    area = [(a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) for a in animals]
    ordered = tuple(a for _, a in sorted(zip(area, animals, strict=True), key=lambda t: -t[0]))
    return Scene(picture, ordered, look_name)


def population(seed: int, individuals: int, species: int = len(SPECIES)):
    """The animals scenes are drawn from: (individuals, their canonical RGBA pictures by id)."""
    ids = hex_ids(np.random.default_rng([seed, 11]), individuals, 12)
    pool = [make_individual(np.random.default_rng([seed, 12, i]), ids[i], SPECIES[i % species])
            for i in range(individuals)]
    return pool, {ind.individual_id: render.canonical_rgba(ind) for ind in pool}


def iter_scenes(count: int, seed: int, image_size: int = 224, looks: str | Sequence[str] = TRAIN_LOOKS,
                individuals: int = 24, config: SceneConfig = SceneConfig(), start: int = 0):
    """Scenes `start .. start+count-1` of (seed, looks): deterministic per index."""
    names = parse_looks(looks)
    if not 32 <= image_size <= 2048:
        raise DataError(f"scenes: image_size must be 32..2048 pixels (got {image_size})")
    pool, canonical = population(seed, max(1, individuals))
    for index in range(start, start + count):
        rng = np.random.default_rng([seed, 13, index])
        style_rng = np.random.default_rng([seed, 14, index])
        look = names[int(rng.integers(len(names)))]
        yield render_scene(rng, style_rng, pool, canonical, image_size, look, config)


def generate_scenes(out_dir, count: int, seed: int = 0, image_size: int = 224,
                    looks: str | Sequence[str] = TRAIN_LOOKS, individuals: int = 24,
                    config: SceneConfig = SceneConfig(), jpeg_quality: int = 90, overwrite: bool = False) -> dict:
    """Write `count` scenes and their boxes to out_dir; returns the summary (also in scenes.json)."""
    if count < 1:
        raise DataError(f"scenes: count must be >= 1 (got {count})")
    names = parse_looks(looks)
    out = Path(out_dir)
    if (out / BOXES_FILE).exists() and not overwrite:
        raise DataError(f"{out} already holds scenes ({BOXES_FILE}); pass overwrite=True (--overwrite)")
    (out / SCENES_DIR).mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    rows, per_look, animals, empty = [], {}, 0, 0
    for index, scene in enumerate(iter_scenes(count, seed, image_size, names, individuals, config)):
        image = f"scene_{index:06d}.jpg"
        scene.image.save(out / SCENES_DIR / image, format="JPEG", quality=jpeg_quality)
        per_look[scene.look] = per_look.get(scene.look, 0) + 1
        animals += len(scene.animals)
        empty += not scene.animals
        for k, animal in enumerate(scene.animals):
            rows.append((image, k, animal.species, animal.individual_id, *animal.box, int(k == 0)))
    with open(out / BOXES_FILE, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(BOX_HEADER)
        writer.writerows(rows)
    summary = {"scenes": count, "animals": animals, "empty_scenes": empty, "looks": dict(sorted(per_look.items())),
               "parameters": {"seed": seed, "image_size": image_size, "looks": list(names),
                              "individuals": individuals, "config": asdict(config), "jpeg_quality": jpeg_quality}}
    (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    log.info("scenes: wrote %d scenes (%d animals) in %.1f s -> %s", count, animals, time.monotonic() - started, out)
    return summary


def read_scene_boxes(out_dir) -> dict[str, list[tuple[int, int, int, int]]]:
    """image -> its animals' boxes, main first ([] for a scene with water only), from scene_boxes.csv."""
    out = Path(out_dir)
    boxes: dict[str, list] = {p.name: [] for p in sorted((out / SCENES_DIR).glob("*.jpg"))}
    with open(out / BOXES_FILE, newline="") as fh:
        for row in sorted(csv.DictReader(fh), key=lambda r: (r["image"], int(r["animal"]))):
            boxes.setdefault(row["image"], []).append(tuple(int(row[k]) for k in ("x0", "y0", "x1", "y1")))
    return boxes
