"""Drawing: an individual in its canonical frame, then one photo of it at sea under random nuisance.

The nuisance (pose, scale, position, foreshortening, sea background, waves, waterline and foam occlusion,
lighting, colour cast, blur, sensor noise) is drawn fresh for every photo from the photo's own random generator;
the identity (outline notches, patches, scars) comes unchanged from the individual. A style (styles.py) swaps the
sea (sea.py) and adds colour and camera effects (camera.py) from a generator of its own.

Mirroring is off by default (`flip_share=0`): a mirrored photo would show the notches of the trailing edge
on the other side of the fin, which a small model trained without flip augmentation cannot match from one or
two examples. Raise `flip_share` to simulate photos of both sides of the animal (the notched outline is then
seen mirrored; patches too, as if both flanks carried the same pattern).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

from training.synth import shapes
from training.synth.camera import camera, tone
from training.synth.individuals import Individual
from training.synth.sea import plain_sea, style_sea
from training.synth.styles import PHOTO, Style

SUPERSAMPLE = 3


@dataclass(frozen=True)
class Nuisance:
    """Ranges of the per-photo variation (configuration as data; `generate(..., nuisance=Nuisance(...))`)."""

    animal_width: tuple[float, float] = (0.45, 0.85)  # fraction of the image width
    rotation_deg: float = 20.0  # +- degrees
    shear: float = 0.25  # +- horizontal shear (x shifts by shear * y): oblique views
    foreshortening: tuple[float, float] = (0.78, 1.0)  # horizontal squash (viewing angle)
    flip_share: float = 0.0  # share of mirrored photos (see the module docstring)
    brightness: tuple[float, float] = (0.65, 1.3)
    colour_cast: float = 0.14  # +- per channel gain
    light_gradient: float = 0.3  # +- illumination change across the image
    blur_radius: tuple[float, float] = (0.0, 1.1)
    noise_sigma: tuple[float, float] = (2.0, 7.0)
    body_visibility: float = 1.0  # 0: the whole frame in view; 1: the waterline and sides vary over the
    # full ranges of the body shape (shapes.Outline.waterline_rows / side_cut)
    foam_blobs: tuple[int, int] = (0, 7)
    sky_share: float = 0.3  # share of photos with a strip of sky at the top


NUISANCE_PRESETS: dict[str, Nuisance] = {
    # milder pose and light, the same sea and markings (the pixel baseline scores about twice as high)
    "easy": Nuisance(animal_width=(0.55, 0.85), rotation_deg=8.0, shear=0.1, brightness=(0.8, 1.15), colour_cast=0.08,
                     light_gradient=0.15, blur_radius=(0.0, 0.6), noise_sigma=(1.0, 4.0), body_visibility=0.5),
    "normal": Nuisance(),
    "hard": Nuisance(animal_width=(0.35, 0.85), rotation_deg=30.0, shear=0.35, brightness=(0.5, 1.4), colour_cast=0.2,
                     light_gradient=0.45, blur_radius=(0.0, 1.5), noise_sigma=(3.0, 10.0), flip_share=0.5),
}


def nuisance_preset(name: str) -> Nuisance:
    from services.core.errors import DataError

    if name not in NUISANCE_PRESETS:
        raise DataError(f"unknown nuisance preset {name!r}; expected one of {', '.join(NUISANCE_PRESETS)}")
    return NUISANCE_PRESETS[name]


def _polygon(draw: ImageDraw.ImageDraw, points, fill) -> None:
    draw.polygon([(float(x) * SUPERSAMPLE, float(y) * SUPERSAMPLE) for x, y in points], fill=fill)


def _ellipse_points(centre, radii, angle, n: int = 36) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    x, y = radii[0] * np.cos(t), radii[1] * np.sin(t)
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([centre[0] + c * x - s * y, centre[1] + s * x + c * y], 1)


def _turn(points, centre, radius: float, angle: float) -> np.ndarray:
    """Unit-square points (x, y in [-1, 1]) scaled by radius, rotated by angle, moved to centre."""
    points = np.asarray(points, dtype=np.float64) * radius
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([centre[0] + c * points[:, 0] - s * points[:, 1], centre[1] + s * points[:, 0] + c * points[:, 1]], 1)


def _draw_patch(draw: ImageDraw.ImageDraw, patch, background) -> None:
    """A blotch (ellipse) or a symbol: filled shapes in the patch colour, holes in the body colour."""
    centre, angle, colour = patch.centre, patch.angle, patch.colour
    r = patch.radii[0]
    if patch.kind == "blotch":
        _polygon(draw, _ellipse_points(centre, patch.radii, angle), colour)
    elif patch.kind in ("ring", "crescent"):
        _polygon(draw, _ellipse_points(centre, (r, r), 0.0), colour)
        shift = (0.0, 0.0) if patch.kind == "ring" else (0.45 * r * np.cos(angle), 0.45 * r * np.sin(angle))
        hole = 0.5 if patch.kind == "ring" else 0.8
        _polygon(draw, _ellipse_points((centre[0] + shift[0], centre[1] + shift[1]), (hole * r, hole * r), 0.0),
                 tuple(background))
    elif patch.kind == "cross":
        for bar in ([(-1, -0.3), (1, -0.3), (1, 0.3), (-1, 0.3)], [(-0.3, -1), (0.3, -1), (0.3, 1), (-0.3, 1)]):
            _polygon(draw, _turn(bar, centre, r, angle), colour)
    elif patch.kind == "bar":
        _polygon(draw, _turn([(-1, -0.32), (1, -0.32), (1, 0.32), (-1, 0.32)], centre, r, angle), colour)
    elif patch.kind == "triangle":
        _polygon(draw, _turn([(0, -1), (0.9, 0.7), (-0.9, 0.7)], centre, r, angle), colour)
    elif patch.kind == "chevron":
        _polygon(draw, _turn([(-1, -0.8), (0, 0.2), (1, -0.8), (1, -0.2), (0, 0.8), (-1, -0.2)], centre, r, angle),
                 colour)
    elif patch.kind == "dots":
        for dx, dy in ((0, -0.65), (0.6, 0.45), (-0.6, 0.45)):
            (x, y), = _turn([(dx, dy)], centre, r, angle)
            _polygon(draw, _ellipse_points((x, y), (0.33 * r, 0.33 * r), 0.0), colour)
    elif patch.kind == "square":
        _polygon(draw, _turn([(-0.75, -0.75), (0.75, -0.75), (0.75, 0.75), (-0.75, 0.75)], centre, r, angle), colour)
    else:
        raise ValueError(f"unknown patch kind {patch.kind!r}")


def canonical_rgba(individual: Individual) -> Image.Image:
    """The animal with its markings, RGBA in the canonical frame (transparent outside the body)."""
    size = (shapes.FRAME_W * SUPERSAMPLE, shapes.FRAME_H * SUPERSAMPLE)
    mask = Image.new("L", size, 0)
    draw_mask = ImageDraw.Draw(mask)
    for polygon in shapes.polygons(individual.outline(), individual.notches):
        _polygon(draw_mask, polygon, 255)
    shade = np.linspace(1.15, 0.8, size[1])[:, None, None]  # lit from above
    column = np.clip(np.asarray(individual.species.body, dtype=np.float64) * shade, 0, 255).astype(np.uint8)
    colour = Image.fromarray(column, "RGB").resize(size, Image.NEAREST)
    draw = ImageDraw.Draw(colour)
    for patch in individual.patches:
        _draw_patch(draw, patch, individual.species.body)
    for scar in individual.scars:
        draw.line([(x * SUPERSAMPLE, y * SUPERSAMPLE) for x, y in scar.points], fill=scar.colour,
                  width=scar.width * SUPERSAMPLE, joint="curve")
    animal = colour.convert("RGBA")
    animal.putalpha(mask)
    return animal.resize((shapes.FRAME_W, shapes.FRAME_H), Image.LANCZOS)


def _place_animal(rng, animal: Image.Image, width: int, height: int, nuisance: Nuisance):
    if rng.random() < nuisance.flip_share:
        animal = ImageOps.mirror(animal)
    target_w = rng.uniform(*nuisance.animal_width) * width
    scale = target_w / shapes.FRAME_W
    squash = rng.uniform(*nuisance.foreshortening)
    layer = animal.resize((max(4, int(round(shapes.FRAME_W * scale * squash))),
                           max(4, int(round(shapes.FRAME_H * scale)))), Image.BILINEAR)
    shear = float(rng.uniform(-nuisance.shear, nuisance.shear))
    offset = shear * layer.height if shear > 0 else 0.0
    layer = layer.transform((layer.width + int(np.ceil(abs(shear) * layer.height)), layer.height), Image.AFFINE,
                            (1.0, shear, -offset, 0.0, 1.0, 0.0), resample=Image.BILINEAR)
    layer = layer.rotate(float(rng.uniform(-nuisance.rotation_deg, nuisance.rotation_deg)),
                         resample=Image.BICUBIC, expand=True)
    layer = layer.crop(layer.getchannel("A").getbbox())
    if layer.width > width or layer.height > height:
        shrink = min(width / layer.width, height / layer.height)
        layer = layer.resize((max(4, int(layer.width * shrink)), max(4, int(layer.height * shrink))), Image.BILINEAR)
    x = int(rng.integers(0, width - layer.width + 1))
    y = int(rng.integers(0, height - layer.height + 1))
    return layer, (x, y)


def _visible_part(rng, animal: Image.Image, outline: shapes.Outline, nuisance: Nuisance) -> Image.Image:
    """Hide what the sea covers (below a wavy waterline) and what is out of view at the sides."""
    low, high = outline.waterline_rows
    level = shapes.FRAME_H - (shapes.FRAME_H - rng.uniform(low, high)) * nuisance.body_visibility
    left = rng.uniform(0, outline.side_cut * nuisance.body_visibility)
    right = shapes.FRAME_W - rng.uniform(0, outline.side_cut * nuisance.body_visibility)
    xs = np.linspace(left, right, 32)
    ys = level + rng.uniform(1, 4) * np.sin(xs / rng.uniform(6, 16) + rng.uniform(0, 6.3))
    view = Image.new("L", animal.size, 0)
    ImageDraw.Draw(view).polygon([(left, -1.0)] + list(zip(xs.tolist(), ys.tolist(), strict=True)) + [(right, -1.0)], fill=255)
    alpha = np.minimum(np.asarray(animal.getchannel("A")), np.asarray(view))
    visible = animal.copy()
    visible.putalpha(Image.fromarray(alpha))
    return visible


def _foam(rng, image: Image.Image, box, nuisance: Nuisance) -> Image.Image:
    x0, y0, x1, y1 = box
    layer = Image.new("RGBA", image.size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    for _ in range(int(rng.integers(*nuisance.foam_blobs))):
        cx, cy = rng.uniform(x0, x1), rng.uniform(y1 - 0.3 * (y1 - y0), y1 + 4)
        rx, ry = rng.uniform(3, 12), rng.uniform(1.5, 5)
        grey = int(rng.uniform(200, 250))
        draw.ellipse((cx - rx, cy - ry, cx + rx, cy + ry), fill=(grey, grey, grey, int(rng.uniform(110, 230))))
    layer = layer.filter(ImageFilter.GaussianBlur(1.0))
    return Image.alpha_composite(image.convert("RGBA"), layer).convert("RGB")


def _light(rng, pixels: np.ndarray, nuisance: Nuisance) -> np.ndarray:
    height, width = pixels.shape[:2]
    gain = rng.uniform(*nuisance.brightness) * (1 + rng.uniform(-nuisance.colour_cast, nuisance.colour_cast, 3))
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:height, 0:width]
    ramp = (np.cos(angle) * (xx / width - 0.5) + np.sin(angle) * (yy / height - 0.5))
    gradient = 1 + rng.uniform(-nuisance.light_gradient, nuisance.light_gradient) * ramp
    return pixels.astype(np.float64) * gain * gradient[:, :, None]


def render_photo(rng: np.random.Generator, animal: Image.Image, outline: shapes.Outline, width: int, height: int,
                 nuisance: Nuisance = Nuisance(), style: Style = PHOTO,
                 style_rng: np.random.Generator | None = None) -> tuple[Image.Image, tuple[int, int, int, int]]:
    """One photo of the animal (canonical_rgba, its outline) and the tight box (x0, y0, x1, y1) of the visible part.

    `rng` draws the nuisance (pose, waterline, foam, light, blur, noise) exactly as for the `photo` style, so
    every style shows the animal in the same pose with the same box; `style_rng` draws the style's own sea, tone
    and camera effects (required unless the style is `photo`).
    """
    if style != PHOTO and style_rng is None:
        raise ValueError(f"style {style.name!r} needs its own random generator (style_rng)")
    sea = plain_sea(rng, width, height, nuisance.sky_share)  # drawn for every style: keeps the pose draws
    if style.sea != "photo":
        sea = style_sea(style_rng, style, width, height, nuisance.sky_share)
    sea = Image.fromarray(sea)
    layer, (x, y) = _place_animal(rng, _visible_part(rng, animal, outline, nuisance), width, height, nuisance)
    box = (x, y, x + layer.width, y + layer.height)
    photo = sea.copy()
    photo.paste(layer, (x, y), layer)
    photo = _foam(rng, photo, box, nuisance)
    pixels = _light(rng, np.asarray(photo), nuisance)
    if style != PHOTO:
        pixels = tone(style_rng, pixels, style)
    photo = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    photo = photo.filter(ImageFilter.GaussianBlur(float(rng.uniform(*nuisance.blur_radius))))
    noisy = np.asarray(photo, dtype=np.float64) + rng.normal(0, rng.uniform(*nuisance.noise_sigma), (height, width, 3))
    photo = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB")
    return (photo if style == PHOTO else camera(style_rng, photo, style)), box
