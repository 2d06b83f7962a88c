"""Model pieces of training/: config as data, Elastic ArcFace margins, multi-sample dropout, GeM, schedule,
strategy, and the paper-size backbone. No data set needed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from services.core.errors import ConfigError
from training.config import load_config, parse_set_options, read_saved_config, save_config


# ----------------------------------------------------------------------------- config
def test_named_configs_are_small_overrides_of_default():
    default = load_config("default")
    tiny = load_config("b0-tiny")
    paper = load_config("b5-paper")
    assert set(tiny) == set(default) == set(paper)
    assert (tiny["backbone"], tiny["image_size"], tiny["weights"]) == ("EfficientNetB0", 64, "none")
    assert tiny["bn_momentum"] == pytest.approx(0.9)
    assert (paper["backbone"], paper["image_size"]) == ("EfficientNetB5", 380)
    assert default["embedding_size"] == tiny["embedding_size"] == 512
    assert tiny["batch_per_replica"] == 16


def test_set_overrides_are_typed_by_the_default():
    config = load_config("b0-tiny", parse_set_options(
        ["image_size=96", "arcface_m=0.25", "species_head=false", "box_sources=[fullbody,yolov5]",
         "weights=/tmp/x.h5", "lr_peak=1e-3"]))
    assert config["image_size"] == 96 and isinstance(config["image_size"], int)
    assert config["arcface_m"] == 0.25 and config["species_head"] is False
    assert config["box_sources"] == ["fullbody", "yolov5"]
    assert config["lr_peak"] == pytest.approx(1e-3) and isinstance(config["lr_peak"], float)
    assert config["weights"] == "/tmp/x.h5"


@pytest.mark.parametrize("items, message", [
    (["nonsense=1"], "unknown config key 'nonsense'"),
    (["image_size=big"], "image_size: expected int"),
    (["species_head=maybe"], "species_head: expected true/false"),
    (["pooling=max"], "pooling: 'max' is not one of avg, gem"),
    (["fold=7"], "fold must be -1"),
    (["backbone=ResNet50"], "backbone"),
])
def test_bad_overrides_name_the_key(items, message):
    with pytest.raises(ConfigError, match=message):
        load_config("b0-tiny", parse_set_options(items))


def test_set_syntax_and_unknown_config_name():
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_options(["image_size"])
    with pytest.raises(ConfigError, match="unknown training config 'b9'"):
        load_config("b9")


def test_saved_config_round_trips(tmp_path):
    config = load_config("b0-tiny", {"epochs": 3})
    save_config(config, tmp_path / "config.yaml")
    assert read_saved_config(tmp_path / "config.yaml") == config


# ----------------------------------------------------------------------------- Elastic ArcFace
def test_elastic_margins_have_the_configured_mean_and_spread():
    from training.arcface import ElasticArcFace

    head = ElasticArcFace(10, s=30.0, m=0.3, sigma=0.05, seed=1)
    margins = np.asarray(head.sample_margins(20000, training=True))
    assert margins.mean() == pytest.approx(0.3, abs=0.003)
    assert margins.std() == pytest.approx(0.05, rel=0.05)
    assert np.all(np.asarray(head.sample_margins(100, training=False)) == pytest.approx(0.3))
    plain = ElasticArcFace(10, s=30.0, m=0.3, sigma=0.0, seed=1)
    assert np.asarray(plain.sample_margins(1000, training=True)).std() == 0.0


def test_arcface_logits_add_the_margin_to_the_true_class_only():
    from training.arcface import ElasticArcFace

    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(6, 8)).astype("float32")
    labels = np.array([0, 1, 2, 3, 4, 0])
    head = ElasticArcFace(5, s=10.0, m=0.4, sigma=0.0)
    logits = np.asarray(head([embeddings, labels], training=True))
    cos = np.asarray(head.cosines(embeddings))
    theta = np.arccos(cos)
    expected = 10.0 * cos
    for i, y in enumerate(labels):
        if cos[i, y] > math.cos(math.pi - 0.4):
            expected[i, y] = 10.0 * math.cos(theta[i, y] + 0.4)
        else:
            expected[i, y] = 10.0 * (cos[i, y] - math.sin(math.pi - 0.4) * 0.4)
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    # elastic: per-sample margins differ, so the true-class logits differ between two training calls
    elastic = ElasticArcFace(5, s=10.0, m=0.4, sigma=0.1, seed=3)
    elastic.build([(None, 8), (None,)])
    elastic.class_weights.assign(head.class_weights)
    a = np.asarray(elastic([embeddings, labels], training=True))
    b = np.asarray(elastic([embeddings, labels], training=True))
    rows = np.arange(6)
    assert not np.allclose(a[rows, labels], b[rows, labels])
    mask = np.ones_like(a, bool)
    mask[rows, labels] = False
    np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)  # other classes carry no margin


# ----------------------------------------------------------------------------- multi-sample dropout, GeM, model
def test_multi_sample_dropout_is_identity_at_inference():
    from training.model import MultiSampleDropout

    x = np.random.default_rng(1).normal(size=(4, 32)).astype("float32")
    layer = MultiSampleDropout(16, rate=0.5, samples=4, seed=0)
    inference = np.asarray(layer(x, training=False))
    plain = np.asarray(layer.dense(x))
    np.testing.assert_allclose(inference, plain, atol=1e-6)
    training = np.asarray(layer(x, training=True))
    assert not np.allclose(training, plain, atol=1e-3)
    # averaged over many masks, the training output approaches the inference output (dropout rescales by 1/(1-p))
    many = np.mean([np.asarray(layer(x, training=True)) for _ in range(300)], axis=0)
    assert np.abs(many - plain).mean() < 0.1 * np.abs(plain).mean()


def test_gem_pooling_between_average_and_max():
    from training.model import GeMPooling

    x = np.random.default_rng(2).uniform(0.1, 2.0, size=(2, 5, 5, 3)).astype("float32")
    gem = np.asarray(GeMPooling(p=3.0)(x))
    assert np.all(gem >= x.mean(axis=(1, 2)) - 1e-5) and np.all(gem <= x.max(axis=(1, 2)) + 1e-5)
    np.testing.assert_allclose(np.asarray(GeMPooling(p=1.0)(x)), x.mean(axis=(1, 2)), rtol=1e-5)


def test_tiny_model_embeds_normalised_and_deterministically():
    from training.model import build_models

    config = load_config("b0-tiny", {"pooling": "gem", "bn_momentum": 0.8})
    train_model, embedder = build_models(config, num_classes=7, num_species=3)
    batchnorms = [layer for layer in train_model._flatten_layers() if type(layer).__name__ == "BatchNormalization"]
    assert batchnorms and all(layer.momentum == pytest.approx(0.8) for layer in batchnorms)
    x = np.random.default_rng(3).uniform(0, 255, size=(3, 64, 64, 3)).astype("float32")
    a, b = np.asarray(embedder(x, training=False)), np.asarray(embedder(x, training=False))
    assert a.shape == (3, 512)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(a, b)
    outputs = train_model({"image": x, "label": np.array([0, 1, 6])}, training=True)
    assert outputs["arcface"].shape == (3, 7) and outputs["species"].shape == (3, 3)


def test_weights_errors_are_clear(tmp_path):
    from training.model import build_backbone

    with pytest.raises(ConfigError, match="not none, imagenet or an existing weights file"):
        build_backbone(load_config("b0-tiny", {"weights": str(tmp_path / "missing.h5")}))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not an h5 file")
    with pytest.raises(ConfigError, match="cannot build EfficientNetB0 with weights="):
        build_backbone(load_config("b0-tiny", {"weights": str(bad)}))


def test_b5_at_456_builds_and_runs_one_forward_pass():
    from training.model import build_models

    config = load_config("b5-paper", {"image_size": 456, "weights": "none"})
    _, embedder = build_models(config, num_classes=4, num_species=2)
    out = np.asarray(embedder(np.full((1, 456, 456, 3), 127.0, "float32"), training=False))
    assert out.shape == (1, 512) and np.isfinite(out).all()
    assert np.linalg.norm(out) == pytest.approx(1.0, abs=1e-5)


# ----------------------------------------------------------------------------- schedule, strategy
def test_schedule_warms_up_peaks_then_decays(tmp_path):
    from training.schedule import WarmupPeakDecay, plot_schedule

    schedule = WarmupPeakDecay(1e-5, 1e-3, 1e-6, warmup_steps=10, total_steps=100)
    values = [schedule.value_at(step) for step in range(101)]
    assert values[0] == pytest.approx(1e-5)
    assert int(np.argmax(values)) == 10 and values[10] == pytest.approx(1e-3)
    assert all(a <= b + 1e-12 for a, b in zip(values[:10], values[1:11], strict=True))
    assert all(a >= b - 1e-12 for a, b in zip(values[10:], values[11:], strict=False))
    assert values[100] == pytest.approx(1e-6, rel=1e-3)
    png = plot_schedule(schedule, 10, tmp_path / "lr.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_strategy_falls_back_to_the_default_on_cpu():
    import tensorflow as tf

    from training.strategy import choose_strategy, global_batch_size

    strategy = choose_strategy("auto")
    assert not isinstance(strategy, (tf.distribute.TPUStrategy, tf.distribute.MirroredStrategy))
    assert strategy.num_replicas_in_sync == 1
    config = load_config("b0-tiny")
    assert global_batch_size(config, strategy) == 16
    assert global_batch_size({**config, "global_batch": 48}, strategy) == 48
    with pytest.raises(ConfigError, match="no TPU"):
        choose_strategy("tpu")
