"""Simulated detectors: boxes of different tightness around the animal's true extent.

`fullbody` hugs the animal (small jitter, never missing); `yolov5` is looser, shifted and misses some images,
like the box sources of the Happywhale competition (image, source, x0, y0, x1, y1 in pixels).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Detector:
    source: str
    expand: tuple[float, float]  # extra margin per side, as a share of the box size
    jitter: float  # per-side noise (standard deviation), share of the box size
    shift: float  # whole-box displacement, +- share of the box size
    miss_rate: float  # share of images without a box from this detector


DETECTORS: tuple[Detector, ...] = (
    Detector("fullbody", expand=(0.0, 0.03), jitter=0.015, shift=0.0, miss_rate=0.0),
    Detector("yolov5", expand=(0.08, 0.25), jitter=0.04, shift=0.08, miss_rate=0.15),
)


def detect(rng: np.random.Generator, detector: Detector, tight_box, width: int, height: int):
    """The detector's box for one image as integer (x0, y0, x1, y1) inside the image, or None (missed)."""
    missed = rng.random() < detector.miss_rate
    x0, y0, x1, y1 = (float(v) for v in tight_box)
    w, h = x1 - x0, y1 - y0
    margins = rng.uniform(*detector.expand, 4) + rng.normal(0, detector.jitter, 4)
    dx, dy = rng.uniform(-detector.shift, detector.shift, 2)
    box = np.array([x0 - margins[0] * w + dx * w, y0 - margins[1] * h + dy * h,
                    x1 + margins[2] * w + dx * w, y1 + margins[3] * h + dy * h])
    box = np.clip(np.round(box), 0, [width, height, width, height]).astype(int)
    if missed or box[2] - box[0] < 4 or box[3] - box[1] < 4:
        return None
    return tuple(int(v) for v in box)
