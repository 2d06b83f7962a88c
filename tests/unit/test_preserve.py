"""Feature-preserving fine-tuning (training/preserve.py): the L2-SP penalty and the similarity distillation."""

from __future__ import annotations

import numpy as np
import pytest

from services.core.errors import ConfigError
from training.config import load_config


def _dense(seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    return model


def test_l2sp_is_zero_at_the_pretrained_weights_and_grows_as_they_move():
    from training.preserve import attach_l2sp, l2sp_penalty

    model = _dense()
    assert attach_l2sp(model, 0.0) == 0 and float(l2sp_penalty(model)) == 0.0
    assert attach_l2sp(model, 0.5) == 4  # two kernels, two biases
    assert float(l2sp_penalty(model)) == 0.0
    kernel = model.layers[0].kernel
    start = np.asarray(kernel).copy()
    penalties = []
    for step in (0.01, 0.1, 1.0):
        kernel.assign(start + step)
        penalties.append(float(l2sp_penalty(model)))
    assert penalties[0] == pytest.approx(0.5 * start.size * 0.01 ** 2, rel=1e-3)
    assert penalties[0] < penalties[1] < penalties[2]
    assert penalties[2] == pytest.approx(0.5 * start.size, rel=1e-5)
    kernel.assign(start)
    assert float(l2sp_penalty(model)) == 0.0


def test_distillation_is_zero_when_the_embedding_ranks_like_the_teacher():
    from training.preserve import similarity_distillation

    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(8, 16)).astype("float32")
    assert float(similarity_distillation(teacher, teacher)) == pytest.approx(0.0, abs=1e-7)
    # widths may differ: a rotated, rescaled copy in a wider space keeps every cosine
    rotation, _ = np.linalg.qr(rng.normal(size=(24, 24)))
    wider = (np.concatenate([teacher, np.zeros((8, 8), "float32")], axis=1) @ rotation * 3.0).astype("float32")
    assert float(similarity_distillation(wider, teacher)) == pytest.approx(0.0, abs=1e-6)
    # blind to the level and spread of the similarities (pooled ReLU features: every cosine high): a constant
    # extra coordinate on unit rows maps every cosine c to (c + k^2) / (1 + k^2)
    unit = teacher / np.linalg.norm(teacher, axis=1, keepdims=True)
    shifted = np.concatenate([unit, np.full((8, 1), 3.0, "float32")], axis=1)
    assert float(similarity_distillation(shifted, teacher)) == pytest.approx(0.0, abs=1e-5)
    close = teacher + 0.1 * rng.normal(size=teacher.shape).astype("float32")
    far = rng.normal(size=(8, 16)).astype("float32")
    assert 0 < float(similarity_distillation(close, teacher)) < float(similarity_distillation(far, teacher))


def test_config_keys_default_off_and_refuse_negative_values():
    config = load_config("lite0")
    assert config["preserve_l2sp"] == 0.0 and config["preserve_distill"] == 0.0
    with pytest.raises(ConfigError, match="preserve_l2sp must be >= 0"):
        load_config("lite0", {"preserve_l2sp": "-1"})


def test_models_carry_the_penalty_and_the_teacher_on_the_training_path_only():
    import keras

    from training.model import build_models
    from training.preserve import l2sp_penalty

    config = load_config("lite0", {"image_size": 32, "freeze_layers": "blocks_12", "preserve_l2sp": 0.01,
                                   "preserve_distill": 1.0, "species_head": False})
    train_model, embedder = build_models(config, num_classes=3)
    backbone = next(layer for layer in train_model.layers if layer.name.startswith("efficientnet"))
    teacher = train_model.get_layer("teacher")
    assert backbone.trainable_variables and not teacher.trainable_variables
    assert all(v.regularizer is not None for v in backbone.trainable_variables)
    assert all(v.regularizer is None for v in backbone.non_trainable_variables)
    assert not any(layer.name == "teacher" for layer in embedder.layers)
    assert float(l2sp_penalty(backbone)) == 0.0

    x = np.random.default_rng(2).uniform(0, 255, size=(4, 32, 32, 3)).astype("float32")
    labels = np.array([0, 1, 2, 0])
    train_model({"image": x, "label": labels}, training=True)
    distillation = train_model.get_layer("distillation").losses
    assert len(distillation) == 1 and float(distillation[0]) > 0

    teacher_before = [np.asarray(v).copy() for v in teacher.weights]
    train_model.compile(optimizer=keras.optimizers.SGD(0.5),
                        loss={"arcface": keras.losses.SparseCategoricalCrossentropy(from_logits=True)})
    train_model.fit({"image": x, "label": labels}, {"arcface": labels}, epochs=1, batch_size=4, verbose=0)
    assert float(l2sp_penalty(backbone)) > 0
    for before, after in zip(teacher_before, teacher.weights, strict=True):
        np.testing.assert_array_equal(before, np.asarray(after))
