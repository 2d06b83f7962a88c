"""Procedural sea textures (style `textured`): multi-scale noise swell, wave streaks, sun glitter and a cloudy sky.

Fractal noise here is a sum of random fields resized (bicubic) to the image, each octave with twice the cells
and `persistence` times the amplitude of the one before: a cheap Perlin-like texture, numpy + Pillow only.
Streaks are ridges of that noise (1 - |n|, sharpened) on fields much wider than tall, with the rows squeezed
towards the horizon for perspective; glitter is sparse bright speckles in a blob under the sun.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter


def fractal_noise(rng: np.random.Generator, width: int, height: int, cells: tuple[int, int] = (3, 2),
                  octaves: int = 5, persistence: float = 0.55) -> np.ndarray:
    """(height, width) noise of zero mean and unit standard deviation; cells = (columns, rows) of the coarsest field."""
    total = np.zeros((height, width), dtype=np.float64)
    amplitude = 1.0
    for octave in range(octaves):
        columns = max(2, min(width, cells[0] * 2 ** octave))
        rows = max(2, min(height, cells[1] * 2 ** octave))
        field = Image.fromarray(rng.normal(0, 1, (rows, columns)).astype(np.float32))
        total += amplitude * np.asarray(field.resize((width, height), Image.BICUBIC), dtype=np.float64)
        amplitude *= persistence
    return (total - total.mean()) / (total.std() + 1e-9)


def _perspective(field: np.ndarray, height: int) -> np.ndarray:
    """Rows of a taller field squeezed towards the top (far away) and spread at the bottom (near)."""
    source = np.sqrt(np.linspace(0, 1, height)) * (field.shape[0] - 1)
    return field[np.round(source).astype(int)]


def _streaks(rng, width: int, height: int) -> np.ndarray:
    ridges = 1 - np.abs(fractal_noise(rng, width, 2 * height, cells=(2, 10), octaves=4, persistence=0.5)) / 2.5
    return _perspective(np.clip(ridges, 0, 1) ** 6, height)


def _glitter(rng, width: int, height: int) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.0, 0.6) * height
    sx, sy = rng.uniform(0.15, 0.35) * width, rng.uniform(0.1, 0.3) * height
    sun = np.exp(-((xx - cx) ** 2 / (2 * sx ** 2) + (yy - cy) ** 2 / (2 * sy ** 2)))
    speckles = (rng.random((height, width)) < 0.08 * sun).astype(np.float32) * rng.uniform(0.6, 1.0, (height, width))
    soft = Image.fromarray((speckles * 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(0.5))
    return np.maximum(speckles, np.asarray(soft, dtype=np.float64) / 255 * 2.5).clip(0, 1) * sun


def _sky(rng, width: int, horizon: int, colour) -> np.ndarray:
    top = np.asarray(colour, dtype=np.float64) + rng.uniform(-20, 20, 3)
    ramp = np.linspace(0, 1, horizon)[:, None, None]
    sky = (1 - ramp) * top + ramp * (top + 0.5 * (235 - top)) + np.zeros((1, width, 1))
    clouds = np.clip(fractal_noise(rng, width, horizon, cells=(4, 2), octaves=4), 0, None)
    return sky + clouds[:, :, None] * rng.uniform(15, 45)


def textured_sea(rng: np.random.Generator, width: int, height: int, palette, sky_colour, sky_share: float,
                 streaks: float, glitter_share: float) -> np.ndarray:
    """(height, width, 3) uint8: a sea with swell, streaks and glitter, sometimes under a strip of cloudy sky."""
    picks = rng.choice(len(palette), size=2)
    far = np.asarray(palette[picks[0]], dtype=np.float64) + rng.uniform(-15, 15, 3)
    near = np.asarray(palette[picks[1]], dtype=np.float64) + rng.uniform(-15, 15, 3)
    far = far + 0.25 * (np.asarray(sky_colour) - far)  # the far sea reflects the sky
    ramp = np.linspace(0, 1, height)[:, None, None]
    sea = (1 - ramp) * far + ramp * near + np.zeros((1, width, 1))
    swell = _perspective(fractal_noise(rng, width, 2 * height, cells=(2, 3), octaves=5), height)
    sea *= 1 + swell[:, :, None] * rng.uniform(0.08, 0.2)
    crest = np.asarray((225, 232, 235), dtype=np.float64)
    lines = _streaks(rng, width, height)[:, :, None] * streaks * rng.uniform(0.25, 0.6)
    sea += (crest - sea) * lines
    if rng.random() < glitter_share:
        sea += (255 - sea) * _glitter(rng, width, height)[:, :, None]
    if rng.random() < sky_share:
        horizon = max(2, int(rng.uniform(0.05, 0.25) * height))
        sea[:horizon] = _sky(rng, width, horizon, sky_colour)
    return np.clip(sea, 0, 255).astype(np.uint8)
