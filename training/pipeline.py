"""tf.data input pipelines.

- `train_dataset`: parallel decode (AUTOTUNE; the EXIF orientation applied, as the server does), a random crop among the image's boxes (the whole image when it has
  none) grown by a random expansion and shifted by a small jitter, resized with antialiased bilinear (as Pillow's
  bilinear does when shrinking), hue / saturation / contrast / brightness jitter, random grayscale, optional flip.
- `eval_dataset`: deterministic, and literally the server's preprocessing: services.core.imaging.load_image_file then
  services.core.imaging.preprocess (crop to the eval box, Pillow bilinear resize, float32 0..255), run in parallel
  tf.numpy_function calls.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf

from services.core import imaging

Box = Sequence[float]


@dataclass
class Samples:
    """Parallel lists describing images: file path, class index, species index, candidate training boxes, and the
    eval box (None: whole image)."""

    paths: list[str]
    labels: list[int]
    species: list[int]
    train_boxes: list[list[Box]]
    eval_boxes: list[Box | None]

    def __len__(self) -> int:
        return len(self.paths)


def _padded_boxes(train_boxes: list[list[Box]]) -> tuple[np.ndarray, np.ndarray]:
    width = max([len(b) for b in train_boxes] + [1])
    boxes = np.zeros((len(train_boxes), width, 4), dtype=np.float32)
    counts = np.zeros(len(train_boxes), dtype=np.int32)
    for i, candidates in enumerate(train_boxes):
        counts[i] = len(candidates)
        if candidates:
            boxes[i, : len(candidates)] = np.asarray(candidates, dtype=np.float32)
    return boxes, counts


def upright(image: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
    """The image turned as its EXIF orientation (1..8) says, as services.core.imaging.decode_image does with Pillow."""
    def transpose(x):
        return tf.transpose(x, (1, 0, 2))

    turns = [
        lambda: image,                                               # 1: as stored
        lambda: tf.image.flip_left_right(image),                     # 2
        lambda: tf.image.rot90(image, 2),                            # 3
        lambda: tf.image.flip_up_down(image),                        # 4
        lambda: transpose(image),                                    # 5: transpose
        lambda: tf.image.rot90(image, 3),                            # 6: 90 degrees clockwise
        lambda: tf.image.rot90(transpose(image), 2),                 # 7: transverse
        lambda: tf.image.rot90(image, 1),                            # 8: 90 degrees counter-clockwise
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    return tf.switch_case(index, turns)


def decode(path: tf.Tensor, orientation: tf.Tensor | int = 1) -> tf.Tensor:
    """uint8 RGB (H, W, 3), upright: `orientation` is the file's EXIF orientation (imaging.file_orientation),
    read once per file when the dataset is built, since tf.io.decode_image ignores it."""
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    image = upright(image, tf.convert_to_tensor(orientation, tf.int32))
    image.set_shape([None, None, 3])
    return image


def random_crop_box(boxes, count, height, width, expand: float, jitter: float):
    """Pixel box [y0, x0, y1, x1] (int32): a random candidate (or the whole image), expanded, shifted, clamped."""
    h, w = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
    index = tf.random.uniform((), 0, tf.maximum(count, 1), dtype=tf.int32)
    box = tf.cond(count > 0, lambda: boxes[index], lambda: tf.stack([0.0, 0.0, w, h]))
    bw, bh = box[2] - box[0], box[3] - box[1]
    grow = tf.random.uniform((4,), 0.0, expand + 1e-9) * tf.stack([bw, bh, bw, bh])
    shift = tf.random.uniform((2,), -jitter, jitter + 1e-9) * tf.stack([bw, bh])
    x0 = tf.clip_by_value(box[0] - grow[0] + shift[0], 0.0, w - 2.0)
    y0 = tf.clip_by_value(box[1] - grow[1] + shift[1], 0.0, h - 2.0)
    x1 = tf.clip_by_value(box[2] + grow[2] + shift[0], x0 + 2.0, w)
    y1 = tf.clip_by_value(box[3] + grow[3] + shift[1], y0 + 2.0, h)
    return tf.cast(tf.stack([tf.floor(y0), tf.floor(x0), tf.math.ceil(y1), tf.math.ceil(x1)]), tf.int32)


def color_jitter(image01: tf.Tensor, config: Mapping[str, Any]) -> tf.Tensor:
    """Hue, saturation, contrast, brightness jitter and random grayscale on an image in [0, 1]."""
    x = image01
    if config["aug_hue"] > 0:
        x = tf.image.random_hue(x, config["aug_hue"])
    if config["aug_saturation"] > 0:
        x = tf.image.random_saturation(x, 1 - config["aug_saturation"], 1 + config["aug_saturation"])
    if config["aug_contrast"] > 0:
        x = tf.image.random_contrast(x, 1 - config["aug_contrast"], 1 + config["aug_contrast"])
    if config["aug_brightness"] > 0:
        x = tf.image.random_brightness(x, config["aug_brightness"])
    x = tf.clip_by_value(x, 0.0, 1.0)
    if config["aug_grayscale"] > 0:
        gray = tf.image.grayscale_to_rgb(tf.image.rgb_to_grayscale(x))
        x = tf.cond(tf.random.uniform(()) < config["aug_grayscale"], lambda: gray, lambda: x)
    return x


def augment(path, boxes, count, config: Mapping[str, Any], orientation: tf.Tensor | int = 1) -> tf.Tensor:
    """One training image: float32 (size, size, 3) in [0, 255]."""
    size = config["image_size"]
    image = decode(path, orientation)
    shape = tf.shape(image)
    y0, x0, y1, x1 = tf.unstack(random_crop_box(boxes, count, shape[0], shape[1], config["aug_box_expand"],
                                                config["aug_crop_jitter"]))
    crop = image[y0:y1, x0:x1]
    resized = tf.image.resize(tf.cast(crop, tf.float32), (size, size), method="bilinear", antialias=True)
    resized = color_jitter(tf.clip_by_value(resized, 0.0, 255.0) / 255.0, config)
    if config["aug_flip"]:
        resized = tf.image.random_flip_left_right(resized)
    resized = tf.reshape(resized * 255.0, (size, size, 3))
    return resized


def train_dataset(samples: Samples, config: Mapping[str, Any], batch_size: int, with_species: bool,
                  seed: int | None = None) -> tf.data.Dataset:
    """Shuffled, augmented, batched (drop_remainder: static shapes for TPU) ({image, label}, {arcface[, species]})."""
    boxes, counts = _padded_boxes(samples.train_boxes)
    orientations = np.asarray([imaging.file_orientation(p) for p in samples.paths], np.int32)
    ds = tf.data.Dataset.from_tensor_slices((
        np.asarray(samples.paths), np.asarray(samples.labels, np.int32), np.asarray(samples.species, np.int32),
        boxes, counts, orientations))
    ds = ds.shuffle(min(len(samples), config["shuffle_buffer"]), seed=seed, reshuffle_each_iteration=True)

    def to_example(path, label, species, image_boxes, count, orientation):
        image = augment(path, image_boxes, count, config, orientation)
        targets = {"arcface": label, "species": species} if with_species else {"arcface": label}
        return {"image": image, "label": label}, targets

    ds = ds.map(to_example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=False)
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)


def eval_arrays(path: str, box: Box | None, size: int) -> np.ndarray:
    """The server's preprocessing of one image file (services.core.imaging)."""
    return imaging.preprocess(imaging.load_image_file(path), size, box)


def eval_dataset(paths: Sequence[str], boxes: Sequence[Box | None], size: int, batch_size: int) -> tf.data.Dataset:
    """Deterministic eval images in order: float32 (size, size, 3) batches, identical to services.core.imaging."""
    table = [(str(p), None if b is None else [float(v) for v in b]) for p, b in zip(paths, boxes, strict=True)]

    def load(index):
        path, box = table[int(index)]
        return eval_arrays(path, box, size)

    ds = tf.data.Dataset.range(len(table))
    ds = ds.map(lambda i: tf.ensure_shape(tf.numpy_function(load, [i], tf.float32), (size, size, 3)),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
