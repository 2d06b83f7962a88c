"""`localiser: cam` in the embedder (training.embed.Embedder): photos without a box are cropped where the CAM
localiser says (its box from score 0.5, else the whole frame); a given box always wins. The real localiser
(Lite0 at 160 px, pretrained weights); a tiny pooling model stands in for the embedding network, whose output
shows which pixels it was given."""

import numpy as np
import pytest

from services.core import imaging

SIZE = 32


@pytest.fixture(scope="module")
def embedder():
    import keras

    from training.embed import Embedder
    from training.localiser import CamLocaliser

    image = keras.Input((SIZE, SIZE, 3))
    pooled = keras.layers.Flatten()(keras.layers.AveragePooling2D(8)(image))  # a 4 x 4 x 3 thumbnail
    info = {"model_id": "thumbnail", "image_size": SIZE, "embedding_size": 48}
    return Embedder(keras.Model(image, pooled), info, CamLocaliser("EfficientNetLite0", 160))


def _photo(seed=0, height=150, width=240):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = np.exp(-(((xx - 0.7 * width) / 25) ** 2 + ((yy - 0.4 * height) / 20) ** 2) / 2)[..., None]
    background = 60 + rng.normal(0, 10, (height, width, 3))
    return np.clip(background * (1 - blob) + 230 * blob, 0, 255).astype(np.uint8)


def test_photos_without_a_box_get_the_localisers_crop_and_a_given_box_wins(embedder):
    photos = [_photo(0), _photo(1)]
    given = [10, 20, 120, 140]
    out = embedder.embed_images(photos, [None, given])
    (box, score), = embedder.localiser.boxes(photos[:1])
    assert score >= 0.5
    height, width = photos[0].shape[:2]
    cam_crop = imaging.preprocess(photos[0], SIZE, box.astype(np.float64) * [width, height, width, height])
    expected = np.asarray(embedder.model(np.stack([cam_crop, imaging.preprocess(photos[1], SIZE, given)])))
    np.testing.assert_allclose(out, expected, atol=1e-4)
    whole = np.asarray(embedder.model(imaging.preprocess(photos[0], SIZE)[None]))[0]
    assert not np.allclose(out[0], whole, atol=1e-2)  # the crop is not the whole frame


def test_a_score_below_the_minimum_keeps_the_whole_frame(embedder):
    photo = _photo(2)
    localiser = embedder.localiser
    (_, score), = localiser.boxes([photo])
    saved = localiser.min_score
    localiser.min_score = score + 0.01  # this photo's map now counts as weak
    try:
        assert localiser.crop_boxes([photo]) == [None]
        out = embedder.embed_images([photo])
    finally:
        localiser.min_score = saved
    np.testing.assert_allclose(out[0], np.asarray(embedder.model(imaging.preprocess(photo, SIZE)[None]))[0],
                               atol=1e-5)


def test_no_localiser_setting_means_none():
    from services.core.errors import ConfigError
    from training.localiser import localiser_for

    assert localiser_for({}) is None and localiser_for({"localiser": "none"}) is None
    with pytest.raises(ConfigError):
        localiser_for({"localiser": "yolo"})
