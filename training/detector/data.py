"""Scenes -> detector inputs (float32 S x S x 3 in [0, 255], services.core.imaging's resize, as served) and targets
(normalised main box x0 y0 x1 y1 and presence: 1 when the scene shows an animal); IoU of normalised boxes.

The photo is resized to S x S without keeping its aspect ratio (services.core.imaging.resize_for_model, the resize
the served model applies), so a box normalised by the photo's width and height is the same in both frames.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from services.core.imaging import resize_for_model


def normalised(box, width: int, height: int) -> np.ndarray:
    x0, y0, x1, y1 = (float(v) for v in box)
    return np.asarray([x0 / width, y0 / height, x1 / width, y1 / height], dtype=np.float32)


def scene_arrays(scenes: Iterable, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(images (N, S, S, 3) float32, boxes (N, 4) normalised (zeros when empty), present (N,) float32)."""
    images, boxes, present = [], [], []
    for scene in scenes:
        pixels = np.asarray(scene.image.convert("RGB"), dtype=np.uint8)
        height, width = pixels.shape[:2]
        images.append(resize_for_model(pixels, image_size))
        main = scene.main_box
        boxes.append(normalised(main, width, height) if main is not None else np.zeros(4, np.float32))
        present.append(1.0 if main is not None else 0.0)
    return np.stack(images), np.stack(boxes), np.asarray(present, dtype=np.float32)


def mirrored(images: np.ndarray, boxes: np.ndarray, present: np.ndarray):
    """Left-right mirrored copies (x0' = 1 - x1, x1' = 1 - x0)."""
    flipped = boxes.copy()
    flipped[:, 0], flipped[:, 2] = 1.0 - boxes[:, 2], 1.0 - boxes[:, 0]
    flipped[present == 0] = 0.0
    return np.ascontiguousarray(images[:, :, ::-1]), flipped, present.copy()


def jittered(images: np.ndarray, seed: int) -> np.ndarray:
    """Photometric jitter (per image: channel gains, contrast, brightness, sometimes grey, sensor noise), so the
    head does not learn one look's colours; boxes are unchanged."""
    rng = np.random.default_rng([seed, 31])
    out = np.empty_like(images)
    for i, image in enumerate(images):
        x = image * rng.uniform(0.75, 1.25, 3)
        mean = x.mean()
        x = mean + (x - mean) * rng.uniform(0.5, 1.5) + rng.uniform(-30, 30)
        if rng.random() < 0.3:
            x = np.repeat(x.mean(axis=2, keepdims=True), 3, axis=2)
        x = x + rng.normal(0, rng.uniform(0, 10), x.shape)
        out[i] = np.clip(x, 0, 255)
    return out


def iou(a, b) -> np.ndarray:
    """Element-wise IoU of (N, 4) boxes (any consistent unit)."""
    a, b = np.atleast_2d(np.asarray(a, np.float64)), np.atleast_2d(np.asarray(b, np.float64))
    ix = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda z: np.clip(z[:, 2] - z[:, 0], 0, None) * np.clip(z[:, 3] - z[:, 1], 0, None)  # noqa: E731
    union = area(a) + area(b) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def box_report(predicted: np.ndarray, scores: np.ndarray, truth: np.ndarray, present: np.ndarray,
               min_score: float = 0.5) -> dict:
    """Mean IoU over scenes with an animal (the detector's box vs the main box; the whole frame for reference),
    share with IoU >= 0.5, and the presence score's accuracy."""
    mask = present > 0
    ious = iou(predicted[mask], truth[mask])
    whole = iou(np.tile([[0.0, 0.0, 1.0, 1.0]], (int(mask.sum()), 1)), truth[mask])
    scores = np.asarray(scores).reshape(-1)
    used = np.where(scores[mask] >= min_score, ious, whole)  # what the worker crops: the box, else the whole photo
    return {"scenes": int(len(present)), "with_animal": int(mask.sum()),
            "mean_iou": round(float(ious.mean()), 4) if mask.any() else None,
            "iou_at_0_5": round(float((ious >= 0.5).mean()), 4) if mask.any() else None,
            "whole_frame_mean_iou": round(float(whole.mean()), 4) if mask.any() else None,
            "served_mean_iou": round(float(used.mean()), 4) if mask.any() else None,
            "presence_accuracy": round(float(((scores >= min_score) == mask).mean()), 4)}


def stack_scenes(parts: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]):
    return tuple(np.concatenate([p[i] for p in parts]) for i in range(3))
