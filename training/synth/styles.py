"""Rendering styles ("looks"): which sea, sky, colour and camera a data set is photographed with.

A style changes the sea, the light, the colours, the camera effects and the texture of a photo, never the
individual's shape or markings, nor its pose, so the boxes are the same whatever the style
(`generate(..., style=NAME)`, `whaleid synth --style NAME`):

    photo      today's rendering (byte-identical files)
    grey       grey-scale, a slate sea and strong contrast and gamma changes, like an older camera
    overcast   washed-out low-contrast colours, greenish/brownish water, haze, a white sky, heavy noise and
               JPEG-like blur
    textured   a procedural sea (multi-scale noise swell, wave streaks, sun glitter) with camera effects
               (vignetting, a chromatic shift of a pixel or two, motion blur, sensor noise)
    random     domain randomisation: each photo draws one of the styles above, grey or colour, and random
               strengths of the camera effects (`Randomisation`)

Ranges are (low, high) of a per-photo uniform draw; a neutral range (1, 1) or (0, 0) leaves the photo untouched.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from training.synth.species import RGB

SKY: RGB = (175, 190, 205)  # today's sky colour


@dataclass(frozen=True)
class Style:
    name: str
    # the sea: "photo" (today's sea, from the photo's own draws), "plain" (today's gradient, blotches and wave
    # crests with this style's palette and sky) or "textured" (textures.py)
    sea: str = "photo"
    palette: tuple[RGB, ...] = ()  # sea colours; empty: today's (sea.SEA_COLOURS)
    sky: RGB = SKY
    sky_share: float | None = None  # share of photos with sky; None: the nuisance's
    streaks: float = 0.0  # textured sea: strength of the wave streaks
    glitter_share: float = 0.0  # textured sea: share of photos with sun glitter
    # tone, applied before the photo's blur and noise
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # per-channel gain
    saturation: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)
    gamma: tuple[float, float] = (1.0, 1.0)
    haze: tuple[float, float] = (0.0, 0.0)  # blend towards haze_colour (full at the top, half at the bottom)
    haze_colour: RGB = (190, 192, 186)
    # camera, applied to the finished photo
    chroma_shift: tuple[int, int] = (0, 0)  # pixels the red and blue channels move in opposite directions
    motion_blur: tuple[float, float] = (0.0, 0.0)  # length of the blur streak in pixels
    vignette: tuple[float, float] = (0.0, 0.0)  # darkening in the corners
    sensor_noise: tuple[float, float] = (0.0, 0.0)  # standard deviation (grey levels), mostly luminance
    soften: tuple[float, float] = (0.0, 0.0)  # extra Gaussian blur radius
    jpeg_quality: tuple[int, int] | None = None  # an extra low-quality JPEG round trip (blocks and blur)
    grey: bool = False  # grey-scale photo (R == G == B)


PHOTO = Style("photo")

STYLES: dict[str, Style] = {
    "photo": PHOTO,
    "grey": Style(
        "grey", sea="plain", palette=((24, 26, 28), (58, 62, 64), (92, 94, 96), (128, 130, 130), (40, 46, 52),
                                      (150, 152, 150)),
        sky=(196, 196, 196), contrast=(0.55, 1.8), gamma=(0.65, 1.5), vignette=(0.05, 0.35),
        sensor_noise=(2.0, 6.0), soften=(0.0, 0.6), grey=True),
    "overcast": Style(
        "overcast", sea="plain", palette=((62, 78, 58), (80, 86, 62), (96, 90, 66), (58, 72, 66), (76, 84, 72),
                                          (104, 98, 78)),
        sky=(200, 202, 198), sky_share=0.5, tint=(1.02, 1.03, 0.9), saturation=(0.35, 0.65),
        contrast=(0.5, 0.8), haze=(0.15, 0.4), sensor_noise=(6.0, 12.0), soften=(0.4, 1.0), jpeg_quality=(12, 35)),
    "textured": Style(
        "textured", sea="textured", sky=(150, 178, 210), streaks=1.0, glitter_share=0.5, chroma_shift=(1, 2),
        motion_blur=(0.0, 3.0), vignette=(0.15, 0.5), sensor_noise=(2.0, 6.0)),
}


@dataclass(frozen=True)
class Randomisation:
    """Per-photo draws of style `random`: a base style, grey or colour, and camera effect strengths."""

    styles: tuple[str, ...] = ("photo", "grey", "overcast", "textured")
    grey_share: float = 0.25  # share of colour-style photos turned grey
    chroma_shift: int = 2  # most pixels
    motion_blur: float = 4.0  # longest streak, pixels
    vignette: float = 0.55
    sensor_noise: float = 10.0
    soften: float = 0.8
    jpeg_share: float = 0.3
    jpeg_quality: tuple[int, int] = (15, 60)


RANDOMISATION = Randomisation()
STYLE_NAMES = (*STYLES, "random")


def check_style(name: str) -> None:
    from services.core.errors import DataError

    if name not in STYLE_NAMES:
        raise DataError(f"unknown style {name!r}; expected one of {', '.join(STYLE_NAMES)}")


def style_settings(name: str) -> dict:
    """What dataset.json records about the style."""
    return dataclasses.asdict(RANDOMISATION if name == "random" else STYLES[name])


def pick_style(rng: np.random.Generator, name: str, randomisation: Randomisation = RANDOMISATION) -> Style:
    """The style of one photo: the named one (no draws), or for "random" a base style with random camera strengths."""
    if name != "random":
        return STYLES[name]
    base = STYLES[randomisation.styles[int(rng.integers(len(randomisation.styles)))]]
    shift = int(rng.integers(0, randomisation.chroma_shift + 1))
    blur, vignette, noise, soften = rng.uniform(0, 1, 4) * (randomisation.motion_blur, randomisation.vignette,
                                                            randomisation.sensor_noise, randomisation.soften)
    quality = int(rng.integers(*randomisation.jpeg_quality, endpoint=True))
    recompress = rng.random() < randomisation.jpeg_share
    grey = base.grey or bool(rng.random() < randomisation.grey_share)
    return dataclasses.replace(
        base, chroma_shift=(shift, shift), motion_blur=(blur, blur), vignette=(vignette, vignette),
        sensor_noise=(noise, noise), soften=(soften, soften), grey=grey,
        jpeg_quality=(quality, quality) if recompress else None)
