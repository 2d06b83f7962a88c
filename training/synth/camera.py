"""A style's colour and camera effects on the whole photo (animal and sea alike, as a real camera would).

`tone` runs on the lit float pixels before the photo's own blur and noise; `camera` on the finished uint8 photo.
Each effect draws its strength from the style's random generator and is skipped when its range is neutral, so
the `photo` style leaves the pixels (and the draws) untouched.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageFilter

from training.synth.styles import Style

LUMA = np.asarray((0.299, 0.587, 0.114))


def _draw(rng: np.random.Generator, bounds) -> float:
    return float(rng.uniform(*bounds))


def tone(rng: np.random.Generator, pixels: np.ndarray, style: Style) -> np.ndarray:
    """Tint, saturation, contrast, gamma and haze of (height, width, 3) float pixels in 0..255."""
    if style.tint != (1.0, 1.0, 1.0):
        pixels = pixels * (np.asarray(style.tint) * (1 + rng.uniform(-0.03, 0.03, 3)))
    if style.saturation != (1.0, 1.0):
        luma = (pixels @ LUMA)[:, :, None]
        pixels = luma + (pixels - luma) * _draw(rng, style.saturation)
    if style.contrast != (1.0, 1.0):
        mean = float(np.clip(pixels, 0, 255).mean())
        pixels = mean + (pixels - mean) * _draw(rng, style.contrast)
    if style.gamma != (1.0, 1.0):
        pixels = 255 * (np.clip(pixels, 0, 255) / 255) ** _draw(rng, style.gamma)
    if style.haze != (0.0, 0.0):
        amount = _draw(rng, style.haze) * np.linspace(1.0, 0.5, pixels.shape[0])[:, None, None]
        pixels = pixels * (1 - amount) + np.asarray(style.haze_colour, dtype=np.float64) * amount
    return pixels


def _shifted(channel: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The channel moved by (dx, dy) pixels, edges repeated."""
    pad = max(abs(dx), abs(dy))
    padded = np.pad(channel, pad, mode="edge")
    height, width = channel.shape
    return padded[pad - dy:pad - dy + height, pad - dx:pad - dx + width]


def _chromatic_shift(rng, pixels: np.ndarray, bounds) -> np.ndarray:
    shift = int(rng.integers(bounds[0], bounds[1] + 1))
    dx, dy = (int(v) for v in rng.choice([-1, 0, 1], size=2))
    if shift == 0 or (dx, dy) == (0, 0):
        return pixels
    out = pixels.copy()
    out[:, :, 0] = _shifted(pixels[:, :, 0], dx * shift, dy * shift)
    out[:, :, 2] = _shifted(pixels[:, :, 2], -dx * shift, -dy * shift)
    return out


def _motion_blur(rng, pixels: np.ndarray, bounds) -> np.ndarray:
    length, angle = _draw(rng, bounds), rng.uniform(0, np.pi)
    if length < 0.75:
        return pixels
    steps = np.linspace(-length / 2, length / 2, int(np.ceil(length)) + 1)
    offsets = [(int(round(t * np.cos(angle))), int(round(t * np.sin(angle)))) for t in steps]
    return np.mean([np.stack([_shifted(pixels[:, :, c], dx, dy) for c in range(3)], 2) for dx, dy in offsets], 0)


def _vignette(rng, pixels: np.ndarray, bounds) -> np.ndarray:
    height, width = pixels.shape[:2]
    cx, cy = (0.5 + rng.uniform(-0.1, 0.1, 2)) * (width, height)
    yy, xx = np.mgrid[0:height, 0:width]
    radius = ((xx - cx) / (width / 2)) ** 2 + ((yy - cy) / (height / 2)) ** 2
    return pixels * np.clip(1 - _draw(rng, bounds) * radius / 2, 0, 1)[:, :, None]


def _sensor_noise(rng, pixels: np.ndarray, bounds) -> np.ndarray:
    sigma = _draw(rng, bounds)
    height, width = pixels.shape[:2]
    return pixels + rng.normal(0, sigma, (height, width, 1)) + rng.normal(0, 0.35 * sigma, (height, width, 3))


def _uint8(pixels: np.ndarray) -> np.ndarray:
    return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _soften_and_recompress(rng, pixels: np.ndarray, style: Style) -> np.ndarray:
    image = Image.fromarray(_uint8(pixels), "RGB")
    if style.soften != (0.0, 0.0):
        image = image.filter(ImageFilter.GaussianBlur(_draw(rng, style.soften)))
    if style.jpeg_quality is not None:
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=int(rng.integers(style.jpeg_quality[0], style.jpeg_quality[1] + 1)))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return np.asarray(image, dtype=np.float64)


def camera(rng: np.random.Generator, photo: Image.Image, style: Style) -> Image.Image:
    """Chromatic shift, motion blur, vignetting, sensor noise, softening / JPEG round trip, grey-scale."""
    pixels = np.asarray(photo, dtype=np.float64)
    if style.chroma_shift != (0, 0):
        pixels = _chromatic_shift(rng, pixels, style.chroma_shift)
    if style.motion_blur != (0.0, 0.0):
        pixels = _motion_blur(rng, pixels, style.motion_blur)
    if style.vignette != (0.0, 0.0):
        pixels = _vignette(rng, pixels, style.vignette)
    if style.sensor_noise != (0.0, 0.0):
        pixels = _sensor_noise(rng, pixels, style.sensor_noise)
    if style.soften != (0.0, 0.0) or style.jpeg_quality is not None:
        pixels = _soften_and_recompress(rng, pixels, style)
    if style.grey:
        pixels = np.repeat((np.clip(pixels, 0, 255) @ LUMA)[:, :, None], 3, axis=2)
    return Image.fromarray(_uint8(pixels), "RGB")
