"""The detector network: the identification model's pretrained backbone (EfficientNet-Lite0 with its shipped
ImageNet weights, training/backbones) -> its last feature map (stride 32) -> 1x1 conv -> flatten -> dense ->
one box and one score. Simple on purpose: one box per photo, the main (largest) animal; the flattened map keeps
where things are, which global pooling would lose.

Box decoding keeps the box valid by construction (no clipping, so no dead gradients at the frame's edges):
x0 = sigmoid(a), x1 = x0 + (1 - x0) * sigmoid(b) (and the same for y): 0 <= x0 <= x1 <= 1.

Inputs: float32 NHWC RGB in [0, 255] (the backbone normalises inside), S x S. Outputs: `box` (N, 4) normalised
x0 y0 x1 y1 and `score` (N, 1), the probability that the photo shows an animal.
"""

from __future__ import annotations

import keras
from keras import ops

from training.detector.config import DetectorConfig  # noqa: F401 - re-exported

BOX_OUTPUT, SCORE_OUTPUT, INPUT = "box", "score", "image"


class BoxDecode(keras.layers.Layer):
    """(N, 5) raw -> {"box": (N, 4) ordered in [0, 1], "score": (N, 1) sigmoid}."""

    def call(self, raw):
        start = ops.sigmoid(raw[:, 0:2])
        extent = ops.sigmoid(raw[:, 2:4])
        end = start + (1.0 - start) * extent
        box = ops.concatenate([start, end], axis=-1)
        return box, ops.sigmoid(raw[:, 4:5])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 4), (input_shape[0], 1)


def stride16_layer(backbone: str) -> str:
    """The name of the last layer of the backbone at stride 16 (the end of its stride-16 stage)."""
    from training.backbones.efficientnet_lite import blocks

    stride, name = 2, ""
    for block in blocks(backbone):
        stride *= block.stride
        if stride == 16:
            name = f"blocks_{block.index}_add" if block.residual else f"blocks_{block.index}_bn2"
    return name


def build_backbone(config: DetectorConfig) -> keras.Model:
    """The frozen pretrained network, image -> [stride-16 map, stride-32 map (the 1280-channel head)]."""
    from training.backbones.efficientnet_lite import efficientnet_lite

    weights = None if config.weights in ("", "none", None) else config.weights
    network = efficientnet_lite(config.backbone, (config.image_size, config.image_size, 3), weights=weights)
    network.trainable = False
    fine = network.get_layer(stride16_layer(config.backbone)).output
    return keras.Model(network.input, [fine, network.output], name="detector_backbone")


def build_head(feature_shapes, config: DetectorConfig) -> keras.Model:
    """[stride-16 map, stride-32 map] -> (N, 5) raw box and score logits (BoxDecode turns them into the outputs).
    Each map: 1x1 conv -> flatten (where things are); both -> dense -> 5."""
    layers = keras.layers
    fine_shape, coarse_shape = feature_shapes
    fine = keras.Input(fine_shape, name="features16")
    coarse = keras.Input(coarse_shape, name="features32")
    normal = layers.BatchNormalization(momentum=0.9, name="det_norm16")(fine)  # block outputs are not bounded
    a = layers.Conv2D(max(8, config.head_channels // 2), 1, activation="relu", name="det_reduce16")(normal)
    b = layers.Conv2D(config.head_channels, 1, activation="relu", name="det_reduce32")(coarse)
    x = layers.Concatenate(name="det_concat")([layers.Flatten(name="det_flatten16")(a),
                                               layers.Flatten(name="det_flatten32")(b)])
    x = layers.Dropout(config.dropout, name="det_dropout")(x)
    x = layers.Dense(config.hidden, activation="relu", name="det_hidden")(x)
    # small initial outputs: every box starts mid-frame, away from the sigmoids' flat ends
    raw = layers.Dense(5, kernel_initializer=keras.initializers.RandomNormal(stddev=0.01), name="det_raw")(x)
    return keras.Model([fine, coarse], raw, name="detector_head")


def serving_model(backbone: keras.Model, head: keras.Model) -> keras.Model:
    """image -> {"box", "score"}: what is exported."""
    image = keras.Input(backbone.input_shape[1:], name=INPUT)
    box, score = BoxDecode(name="decode")(head(backbone(image)))
    box = keras.layers.Identity(name=BOX_OUTPUT)(box)
    score = keras.layers.Identity(name=SCORE_OUTPUT)(score)
    return keras.Model(image, {BOX_OUTPUT: box, SCORE_OUTPUT: score}, name="detector")


def detection_loss(y_true, raw):
    """y_true (N, 5) = box (normalised) + presence; raw (N, 5) head logits. L1 + (1 - GIoU) on the box where an
    animal is present, binary cross-entropy on presence."""
    box_true, present = y_true[:, :4], y_true[:, 4]
    start = ops.sigmoid(raw[:, 0:2])
    box = ops.concatenate([start, start + (1.0 - start) * ops.sigmoid(raw[:, 2:4])], axis=-1)
    l1 = ops.sum(ops.abs(box - box_true), axis=-1)
    ix = ops.maximum(ops.minimum(box[:, 2], box_true[:, 2]) - ops.maximum(box[:, 0], box_true[:, 0]), 0.0)
    iy = ops.maximum(ops.minimum(box[:, 3], box_true[:, 3]) - ops.maximum(box[:, 1], box_true[:, 1]), 0.0)
    inter = ix * iy
    area_p = (box[:, 2] - box[:, 0]) * (box[:, 3] - box[:, 1])
    area_t = (box_true[:, 2] - box_true[:, 0]) * (box_true[:, 3] - box_true[:, 1])
    union = area_p + area_t - inter + 1e-7
    hull = ((ops.maximum(box[:, 2], box_true[:, 2]) - ops.minimum(box[:, 0], box_true[:, 0]))
            * (ops.maximum(box[:, 3], box_true[:, 3]) - ops.minimum(box[:, 1], box_true[:, 1])) + 1e-7)
    giou = inter / union - (hull - union) / hull
    box_loss = ops.sum(present * (l1 + 1.0 - giou)) / (ops.sum(present) + 1e-6)
    presence = ops.mean(ops.binary_crossentropy(present[:, None], raw[:, 4:5], from_logits=True))
    return box_loss + 0.5 * presence
