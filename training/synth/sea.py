"""The sea behind the animal: today's sea (gradient, blotches, wave crests, a strip of sky) and a style's sea.

`plain_sea` with its defaults is the `photo` style's sea, drawn from the photo's own random generator; other
styles draw their sea (their palette and sky, or a textured one) from the style's generator instead.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from training.synth.styles import SKY, Style
from training.synth.textures import textured_sea

SEA_COLOURS = ((20, 55, 90), (28, 82, 92), (70, 92, 86), (98, 110, 116), (16, 32, 48), (44, 70, 110))


def plain_sea(rng: np.random.Generator, width: int, height: int, sky_share: float, palette=SEA_COLOURS,
              sky_colour=SKY) -> np.ndarray:
    picks = rng.choice(len(palette), size=2)
    top = np.asarray(palette[picks[0]], dtype=np.float64) + rng.uniform(-18, 18, 3)
    bottom = np.asarray(palette[picks[1]], dtype=np.float64) + rng.uniform(-18, 18, 3)
    ramp = np.linspace(0, 1, height)[:, None, None]
    sea = (1 - ramp) * top + ramp * bottom + np.zeros((1, width, 1))
    coarse = rng.normal(0, 1, (max(2, height // 12), max(2, width // 12)))
    blotches = Image.fromarray(((coarse - coarse.min()) / (np.ptp(coarse) + 1e-9) * 255).astype(np.uint8))
    blotches = np.asarray(blotches.resize((width, height), Image.BICUBIC), dtype=np.float64) / 255 - 0.5
    sea += blotches[:, :, None] * rng.uniform(15, 40)
    if rng.random() < sky_share:
        horizon = int(rng.uniform(0.05, 0.25) * height)
        sky = np.asarray(sky_colour, dtype=np.float64) + rng.uniform(-30, 30, 3)
        sea[:horizon] = sky
    image = Image.fromarray(np.clip(sea, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 18))):  # wave crests
        y0, amplitude, period = rng.uniform(0, height), rng.uniform(1, 4), rng.uniform(12, 40)
        xs = np.arange(0, width + 8, 4)
        ys = y0 + amplitude * np.sin(xs / period * 2 * np.pi + rng.uniform(0, 6.3))
        light = int(rng.uniform(25, 70))
        crest = tuple(int(min(255, c + light)) for c in bottom.astype(int))
        draw.line(list(zip(xs.tolist(), ys.tolist(), strict=True)), fill=crest, width=int(rng.integers(1, 3)))
    return np.asarray(image)


def style_sea(rng: np.random.Generator, style: Style, width: int, height: int, sky_share: float) -> np.ndarray:
    """The sea of a style whose `sea` is not "photo", drawn from the style's generator."""
    palette = style.palette or SEA_COLOURS
    sky_share = sky_share if style.sky_share is None else style.sky_share
    if style.sea == "plain":
        return plain_sea(rng, width, height, sky_share, palette, style.sky)
    if style.sea == "textured":
        return textured_sea(rng, width, height, palette, style.sky, sky_share, style.streaks, style.glitter_share)
    raise ValueError(f"unknown sea {style.sea!r}")
