"""Pretrained backbones that need no download: EfficientNet-Lite0..2 ported to Keras from the PyPI packages'
legacy .pth files (read with pickle + numpy), loaded bit-exactly, and recognising real fins as cetaceans."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.backbones import efficientnet_lite as lite
from training.backbones.torch_legacy import read_state_dict

REAL_PHOTOS = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-photos"
# ImageNet classes: 2 great white shark, 3 tiger shark, 4 hammerhead, 147 grey whale, 148 killer whale
CETACEAN_OR_SHARK = {2, 3, 4, 147, 148}


@pytest.fixture(scope="module")
def lite0_top():
    return lite.efficientnet_lite("EfficientNetLite0", (224, 224, 3), "imagenet", include_top=True)


def test_the_legacy_pth_reads_without_torch():
    state = read_state_dict(lite.weights_file("EfficientNetLite0"))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert sum(v.size for k, v in state.items() if not k.endswith("num_batches_tracked")) == 4_694_024
    assert len({k.split(".")[1] for k in state if k.startswith("_blocks.")}) == 16


def test_converted_weights_load_bit_exactly(lite0_top):
    state = read_state_dict(lite.weights_file("EfficientNetLite0"))
    stem = lite0_top.get_layer("conv_stem").get_weights()[0]
    assert np.array_equal(stem, np.transpose(state["_conv_stem.weight"], (2, 3, 1, 0)))
    depthwise = lite0_top.get_layer("blocks_5_depthwise_conv").get_weights()[0]
    assert np.array_equal(depthwise, np.transpose(state["_blocks.5._depthwise_conv.weight"], (2, 3, 0, 1)))
    gamma, beta, mean, var = lite0_top.get_layer("blocks_9_bn1").get_weights()
    for got, name in ((gamma, "weight"), (beta, "bias"), (mean, "running_mean"), (var, "running_var")):
        assert np.array_equal(got, state[f"_blocks.9._bn1.{name}"])
    kernel, bias = lite0_top.get_layer("fc").get_weights()
    assert np.array_equal(kernel, state["_fc.weight"].T) and np.array_equal(bias, state["_fc.bias"])
    assert lite0_top.count_params() == 4_694_024


@pytest.mark.parametrize("backbone", ["EfficientNetLite1", "EfficientNetLite2"])
def test_every_variant_builds_and_takes_its_weights(backbone):
    model = lite.efficientnet_lite(backbone, (64, 64, 3), "imagenet")
    assert len(lite.blocks(backbone)) == 21
    assert model.output.shape[-1] == 1280
    features = np.asarray(model(np.full((1, 64, 64, 3), 127.0, np.float32)))
    assert features.shape == (1, 2, 2, 1280) and np.isfinite(features).all()


def test_weights_of_another_variant_are_refused(tmp_path):
    from services.core.errors import ConfigError

    model = lite.build_efficientnet_lite("EfficientNetLite2", (64, 64, 3))
    with pytest.raises(ConfigError, match="another variant"):
        lite.load_lite_weights(model, "EfficientNetLite2", lite.weights_file("EfficientNetLite0"))


@pytest.mark.skipif(not (REAL_PHOTOS / "finfindr-fins").is_dir(), reason="no ../shared/data/real-photos here")
def test_real_fin_photos_are_cetaceans_or_sharks_to_the_port(lite0_top):
    from PIL import Image

    photos = sorted((REAL_PHOTOS / "finfindr-fins").glob("*.jpg"))
    assert photos
    batch = np.stack([np.asarray(Image.open(p).convert("RGB").resize((224, 224), Image.BILINEAR), np.float32)
                      for p in photos])
    top5 = np.argsort(-np.asarray(lite0_top(batch)), axis=1)[:, :5]
    for path, classes in zip(photos, top5, strict=True):
        assert CETACEAN_OR_SHARK & set(classes.tolist()), f"{path.name}: top-5 ImageNet classes {classes}"


def test_the_lite0_config_freezes_the_stem_and_first_blocks():
    from training.config import load_config
    from training.model import build_backbone

    backbone = build_backbone(load_config("lite0", {"image_size": 64}))
    frozen = {layer.name for layer in backbone.layers if not layer.trainable}
    assert {"conv_stem", "bn0", "blocks_3_project_conv"} <= frozen
    assert not frozen & {"blocks_4_expand_conv", "conv_head", "bn1"}


def test_the_backbone_learns_at_its_scaled_rate():
    import keras

    from training.optimizer import LayerwiseAdam

    slow, fast = keras.Variable(np.zeros(4, np.float32)), keras.Variable(np.zeros(4, np.float32))
    optimizer = LayerwiseAdam(learning_rate=0.01, scaled_variables=[slow], scale=0.1)
    optimizer.apply([np.ones(4, np.float32), np.ones(4, np.float32)], [slow, fast])
    assert np.allclose(np.asarray(fast), -0.01, rtol=1e-3)
    assert np.allclose(np.asarray(slow), -0.001, rtol=1e-3)
