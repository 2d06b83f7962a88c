"""Training's tf.data decoder sees a photo the way the server does: the EXIF orientation applied.

The server (services.core.imaging.decode_image) turns a phone's portrait photo upright; tf.io.decode_image does not.
Without training.pipeline.upright, a model would train on sideways photos and boxes drawn on the upright photo
would not fit them.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from services.core import imaging

ORIENTATION_TAG = 0x0112


def _photo_with_orientation(path, orientation: int, fmt: str = "PNG"):
    rng = np.random.default_rng(orientation)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)  # not square: a turn changes the shape
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    image.save(path, format=fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_training_decode_matches_the_server_for_every_orientation(tmp_path, orientation):
    tf = pytest.importorskip("tensorflow")
    from training.pipeline import decode

    path = _photo_with_orientation(tmp_path / f"o{orientation}.png", orientation)
    assert imaging.file_orientation(path) == orientation
    server = imaging.load_image_file(path)
    trained = decode(tf.constant(str(path)), imaging.file_orientation(path)).numpy()
    assert trained.shape == server.shape
    np.testing.assert_array_equal(trained, server)
    if orientation in imaging.SWAPS_SIDES:
        assert server.shape[:2] == (20, 12)
    assert imaging.oriented_size(path) == (server.shape[1], server.shape[0])


def test_train_dataset_turns_rotated_jpegs_upright(tmp_path):
    pytest.importorskip("tensorflow")
    from training.pipeline import Samples, train_dataset

    path = _photo_with_orientation(tmp_path / "portrait.jpg", 6, fmt="JPEG")
    samples = Samples(paths=[str(path)] * 2, labels=[0, 0], species=[0, 0], train_boxes=[[], []],
                      eval_boxes=[None, None])
    config = {"image_size": 16, "shuffle_buffer": 2, "aug_box_expand": 0.0, "aug_crop_jitter": 0.0,
              "aug_hue": 0.0, "aug_saturation": 0.0, "aug_contrast": 0.0, "aug_brightness": 0.0,
              "aug_grayscale": 0.0, "aug_flip": False}
    batch, _ = next(iter(train_dataset(samples, config, batch_size=2, with_species=False, seed=0)))
    server = imaging.preprocess(imaging.load_image_file(path), 16, None)
    # JPEG decoders differ by a level or two; a sideways image would differ by far more.
    assert float(np.abs(batch["image"].numpy()[0] - server).mean()) < 6.0
    sideways = imaging.preprocess(np.asarray(Image.open(path).convert("RGB")), 16, None)
    assert float(np.abs(sideways - server).mean()) > 20.0


def test_unreadable_file_has_no_orientation(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"not an image")
    assert imaging.file_orientation(path) == 1
    assert imaging.oriented_size(path) is None
