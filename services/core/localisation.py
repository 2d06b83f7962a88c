"""A box from a class activation map, with no box labels (issue 21 item 4): the one implementation of the
box-from-CAM arithmetic, used offline (training.localiser: evaluate, predict, gallery build) and, vendored as
`whaleid_localisation.py`, by the Triton `detector` that `whaleid model-repo build --detector cam` serves.

A class activation map (Zhou et al. 2016) is the pretrained backbone's last feature map weighted by the ImageNet
classifier's weights of one class: a grid (g x g) that is high where that class is seen. `cam_box`:
  - keeps the cells at or above `fraction` of the map's maximum (CAM_FRACTION = 0.2, the CAM paper's value),
  - takes the connected region (4-neighbours) of those cells around the peak and its bounding box in cells,
  - widens it by `margin` of its width and height on each side (CAM_MARGIN), clipped to the frame;
  - its score is the share of the map's mass inside the region's box (before the margin): near 1 when the
    activation is concentrated there, low when the map is flat or has several peaks. A map with no positive
    cell gives the whole frame with score 0. Callers use the box from MIN_SCORE (the worker's
    DETECTOR_MIN_SCORE), else the whole frame.
Boxes are normalised (x0, y0, x1, y1 in 0..1 of the width and height); scaled to a photo's pixels, they crop
through services.core.imaging.validate_box (outward rounding) as the worker's detector boxes do.
Needs numpy only (it is vendored into Triton's python backend).
"""

from __future__ import annotations

import numpy as np

CAM_FRACTION = 0.2
CAM_MARGIN = 0.15
MIN_SCORE = 0.5
WHOLE_FRAME = (0.0, 0.0, 1.0, 1.0)


def peak_region(cam: np.ndarray, fraction: float = CAM_FRACTION) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) in cells (x1, y1 exclusive) of the connected region of cells >= fraction * max around
    the map's peak (the first maximum in row-major order); None when no cell is positive."""
    cam = np.asarray(cam, dtype=np.float64)
    if cam.ndim != 2 or cam.size == 0:
        raise ValueError(f"a class activation map is a 2-d grid, got shape {cam.shape}")
    peak = float(cam.max())
    if not peak > 0:
        return None
    mask = cam >= fraction * peak
    grid_h, grid_w = cam.shape
    start = np.unravel_index(int(np.argmax(cam)), cam.shape)
    seen = np.zeros_like(mask)
    seen[start] = True
    todo = [start]
    while todo:
        y, x = todo.pop()
        for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
            if 0 <= ny < grid_h and 0 <= nx < grid_w and mask[ny, nx] and not seen[ny, nx]:
                seen[ny, nx] = True
                todo.append((ny, nx))
    ys, xs = np.nonzero(seen)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def cam_box(cam: np.ndarray, fraction: float = CAM_FRACTION, margin: float = CAM_MARGIN) -> tuple[np.ndarray, float]:
    """(normalised float32 box x0 y0 x1 y1, score) of one map (module docstring)."""
    cam = np.maximum(np.asarray(cam, dtype=np.float64), 0.0)
    region = peak_region(cam, fraction)
    if region is None:
        return np.asarray(WHOLE_FRAME, dtype=np.float32), 0.0
    x0, y0, x1, y1 = region
    score = float(cam[y0:y1, x0:x1].sum() / cam.sum())
    grid_h, grid_w = cam.shape
    width, height = (x1 - x0) / grid_w, (y1 - y0) / grid_h
    box = np.asarray([x0 / grid_w - margin * width, y0 / grid_h - margin * height,
                      x1 / grid_w + margin * width, y1 / grid_h + margin * height])
    return np.clip(box, 0.0, 1.0).astype(np.float32), score

