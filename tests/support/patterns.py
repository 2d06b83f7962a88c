"""Generated pictures with plenty of SIFT corners, for the local-feature re-ranking tests: a blotchy texture
(one per seed, like one animal's markings) and the same picture under a rotation, scale and shift."""

from __future__ import annotations

import numpy as np
import pytest


def texture(seed: int, size: int = 256) -> np.ndarray:
    """A blotchy grey pattern (smoothed noise, thresholded), RGB uint8."""
    rng = np.random.default_rng(seed)
    big = np.kron(rng.random((size // 8, size // 8)), np.ones((8, 8)))
    blur = (big + np.roll(big, 3, 0) + np.roll(big, 3, 1) + np.roll(big, -3, 0) + np.roll(big, -3, 1)) / 5
    return np.repeat(np.where(blur > 0.5, 220, 40).astype(np.uint8)[:, :, None], 3, axis=2)


def warped(image: np.ndarray, angle_deg: float, scale: float, shift=(10, -6)) -> np.ndarray:
    """`image` rotated by `angle_deg` and scaled about its centre, then shifted (edges reflected)."""
    cv2 = pytest.importorskip("cv2")
    h, w = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((w / 2, h / 2), angle_deg, scale)
    matrix[:, 2] += shift
    return cv2.warpAffine(image, matrix, (w, h), borderMode=cv2.BORDER_REFLECT)
