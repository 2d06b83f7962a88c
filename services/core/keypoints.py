"""SIFT keypoints of a photo for local-feature re-ranking (issue #21 item 6): the one extraction used by
`whaleid evaluate`/`predict`, the benchmark, the worker and gallery build.

OpenCV (opencv-python-headless) is needed only here, so the identification core (matching, RANSAC, fusion in
services.core.identification.local_features) stays numpy-only and the matcher needs no OpenCV. The image (RGB
uint8, already cropped) is converted to grey and shrunk so that its longer side is at most `max_side` pixels;
at most `max_keypoints` keypoints are kept (the strongest, OpenCV's order).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from services.core.identification.local_features import LocalFeatures

MAX_SIDE = 384
MAX_KEYPOINTS = 800

_sift_by_count: dict[int, object] = {}


def _sift(max_keypoints: int):
    import cv2

    if max_keypoints not in _sift_by_count:
        _sift_by_count[max_keypoints] = cv2.SIFT_create(nfeatures=max_keypoints)
    return _sift_by_count[max_keypoints]


def extract(image: np.ndarray, max_keypoints: int = MAX_KEYPOINTS, max_side: int = MAX_SIDE) -> LocalFeatures:
    """SIFT keypoints and descriptors of an RGB (or grey) uint8 image."""
    import cv2

    pixels = np.asarray(image)
    grey = cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY) if pixels.ndim == 3 else pixels
    grey = np.ascontiguousarray(grey, np.uint8)
    height, width = grey.shape
    scale = max_side / max(height, width)
    if scale < 1:
        grey = cv2.resize(grey, (max(1, round(width * scale)), max(1, round(height * scale))),
                          interpolation=cv2.INTER_AREA)
    keypoints, descriptors = _sift(max_keypoints).detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        return LocalFeatures.empty()
    keypoints, descriptors = keypoints[:max_keypoints], descriptors[:max_keypoints]
    points = np.asarray([k.pt for k in keypoints], np.float32)
    return LocalFeatures(points, np.clip(np.rint(descriptors), 0, 255).astype(np.uint8))


def extract_file(path: str | Path, box=None, max_keypoints: int = MAX_KEYPOINTS,
                 max_side: int = MAX_SIDE) -> LocalFeatures:
    """`extract` of a photo file (EXIF-upright), cropped to `box` (x0, y0, x1, y1 pixels) when given."""
    from services.core.imaging import crop, load_image_file

    return extract(crop(load_image_file(path), box), max_keypoints, max_side)
