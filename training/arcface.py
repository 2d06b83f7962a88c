"""Elastic ArcFace: an additive angular margin drawn per sample from N(m, sigma) (sigma = 0: plain ArcFace).

logits_ij = s * cos(theta_ij + m_i) for the true class j = y_i, s * cos(theta_ij) otherwise, where cos(theta_ij)
is the cosine between the embedding and the (normalised) weight of class j. When theta + m would pass pi the
usual fallback keeps the logit monotonic: cos(theta) - sin(pi - m) * m (or, with easy_margin, no margin where
cos(theta) <= 0). At inference (training=False) the margin is its mean m, so validation losses are deterministic.
"""

from __future__ import annotations

import math

import keras
from keras import ops


class ElasticArcFace(keras.layers.Layer):
    def __init__(self, num_classes: int, s: float = 30.0, m: float = 0.3, sigma: float = 0.0,
                 easy_margin: bool = False, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.s = float(s)
        self.m = float(m)
        self.sigma = float(sigma)
        self.easy_margin = bool(easy_margin)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        embedding_shape = input_shape[0]
        self.class_weights = self.add_weight(
            name="class_weights", shape=(int(embedding_shape[-1]), self.num_classes),
            initializer="glorot_uniform", trainable=True,
        )

    def sample_margins(self, batch_size, training: bool = True):
        """The per-sample margins m_i ~ N(m, sigma) (all m when not training or sigma is 0)."""
        if training and self.sigma > 0:
            return self.m + self.sigma * keras.random.normal((batch_size,), seed=self.seed_generator)
        return ops.full((batch_size,), self.m)

    def cosines(self, embeddings):
        x = ops.normalize(ops.cast(embeddings, "float32"), axis=-1)
        w = ops.normalize(ops.cast(self.class_weights, "float32"), axis=0)
        return ops.clip(ops.matmul(x, w), -1.0 + 1e-7, 1.0 - 1e-7)

    def call(self, inputs, training=None):
        embeddings, labels = inputs
        cos = self.cosines(embeddings)
        margins = ops.expand_dims(self.sample_margins(ops.shape(cos)[0], bool(training)), -1)
        sin = ops.sqrt(ops.maximum(1.0 - cos * cos, 0.0))
        phi = cos * ops.cos(margins) - sin * ops.sin(margins)  # cos(theta + m_i)
        if self.easy_margin:
            phi = ops.where(cos > 0.0, phi, cos)
        else:
            threshold = ops.cos(math.pi - margins)
            fallback = cos - ops.sin(math.pi - margins) * margins
            phi = ops.where(cos > threshold, phi, fallback)
        one_hot = ops.one_hot(ops.cast(ops.reshape(labels, (-1,)), "int32"), self.num_classes)
        return self.s * (one_hot * phi + (1.0 - one_hot) * cos)

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "s": self.s, "m": self.m,
                "sigma": self.sigma, "easy_margin": self.easy_margin, "seed": self.seed}
