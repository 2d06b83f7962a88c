"""The 1st-place ArcFace variants behind config keys: sub-centres (the best of k weight vectors per class) and
per-class dynamic margins (rare classes get larger margins)."""

from __future__ import annotations

import numpy as np

from training.arcface import ElasticArcFace, dynamic_margins


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_a_class_cosine_is_the_best_of_its_subcentres():
    rng = np.random.default_rng(0)
    layer = ElasticArcFace(3, s=1.0, m=0.0, subcenters=2)
    embeddings = _unit(rng.normal(size=(4, 8))).astype(np.float32)
    layer.build([(None, 8), (None,)])
    weights = rng.normal(size=(8, 6)).astype(np.float32)
    layer.class_weights.assign(weights)
    expected = (_unit(embeddings) @ _unit(weights.T).T).reshape(4, 3, 2).max(axis=-1)
    assert np.allclose(np.asarray(layer.cosines(embeddings)), expected, atol=1e-6)


def test_dynamic_margins_grow_as_classes_get_rarer():
    margins = dynamic_margins([1, 2, 5, 40], m_max=0.4, m_min=0.1)
    assert margins[0] == 0.4 and margins[-1] == 0.1
    assert margins == sorted(margins, reverse=True)
    assert dynamic_margins([3, 3], 0.4, 0.1) == [0.4, 0.4]


def test_the_true_class_logit_takes_its_own_class_margin():
    layer = ElasticArcFace(2, s=10.0, m=0.3, sigma=0.0, class_margins=[0.1, 0.5])
    layer.build([(None, 4), (None,)])
    layer.class_weights.assign(np.eye(4, 2, dtype=np.float32))  # class 0 along x, class 1 along y
    embeddings = _unit(np.array([[1.0, 0.3, 0.2, 0.0], [0.2, 1.0, 0.0, 0.3]], dtype=np.float32))
    labels = np.array([0, 1], dtype=np.int32)
    logits = np.asarray(layer([embeddings, labels], training=True))
    cos = np.asarray(layer.cosines(embeddings))
    for row, (label, margin) in enumerate(((0, 0.1), (1, 0.5))):
        theta = np.arccos(cos[row, label])  # small angles: theta + margin < pi, no fallback
        assert np.isclose(logits[row, label], 10.0 * np.cos(theta + margin), atol=1e-4)
        assert np.isclose(logits[row, 1 - label], 10.0 * cos[row, 1 - label], atol=1e-5)
