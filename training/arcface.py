"""Elastic ArcFace: an additive angular margin drawn per sample from N(m, sigma) (sigma = 0: plain ArcFace).

logits_ij = s * cos(theta_ij + m_i) for the true class j = y_i, s * cos(theta_ij) otherwise, where cos(theta_ij)
is the cosine between the embedding and the (normalised) weight of class j. When theta + m would pass pi the
usual fallback keeps the logit monotonic: cos(theta) - sin(pi - m) * m (or, with easy_margin, no margin where
cos(theta) <= 0). At inference (training=False) the margin is its mean m, so validation losses are deterministic.

Two variants of the Happywhale 1st-place solution, both off by default:
- sub-centres (`subcenters` k > 1): each class has k weight vectors and its cosine is the best of them, so a class
  with two looks (left and right flank, two cameras) need not squeeze them into one direction;
- per-class margins (`class_margins`, one value per class, e.g. from `dynamic_margins`): the mean margin of each
  class instead of one m (rare classes get larger margins); sigma still spreads it per sample.
"""

from __future__ import annotations

import math

import keras
from keras import ops


def dynamic_margins(class_counts, m_max: float, m_min: float, power: float = 0.25) -> list[float]:
    """Per-class margins from the photos per class: n^-power rescaled to [m_min, m_max] over the classes (the
    rarest class gets m_max, the most photographed m_min)."""
    import numpy as np

    x = np.asarray(class_counts, dtype=np.float64) ** -power
    spread = x.max() - x.min()
    scaled = (x - x.min()) / spread if spread > 0 else np.ones_like(x)
    return (m_min + (m_max - m_min) * scaled).round(6).tolist()


class ElasticArcFace(keras.layers.Layer):
    def __init__(self, num_classes: int, s: float = 30.0, m: float = 0.3, sigma: float = 0.0,
                 easy_margin: bool = False, seed: int | None = None, subcenters: int = 1,
                 class_margins=None, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.subcenters = int(subcenters)
        self.class_margins = None if class_margins is None else [float(v) for v in class_margins]
        if self.class_margins is not None and len(self.class_margins) != self.num_classes:
            raise ValueError(f"{len(self.class_margins)} class margins for {self.num_classes} classes")
        self.s = float(s)
        self.m = float(m)
        self.sigma = float(sigma)
        self.easy_margin = bool(easy_margin)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def build(self, input_shape):
        embedding_shape = input_shape[0]
        self.class_weights = self.add_weight(
            name="class_weights", shape=(int(embedding_shape[-1]), self.num_classes * self.subcenters),
            initializer="glorot_uniform", trainable=True,
        )

    def sample_margins(self, batch_size, training: bool = True, labels=None):
        """The per-sample margins m_i ~ N(m_{y_i}, sigma) (the mean when not training or sigma is 0); m_{y_i} is
        the class's margin when per-class margins are set, else m."""
        if self.class_margins is not None and labels is not None:
            means = ops.take(ops.convert_to_tensor(self.class_margins, "float32"),
                             ops.cast(ops.reshape(labels, (-1,)), "int32"))
        else:
            means = ops.full((batch_size,), self.m)
        if training and self.sigma > 0:
            return means + self.sigma * keras.random.normal((batch_size,), seed=self.seed_generator)
        return means

    def cosines(self, embeddings):
        """Cosine to each class: the best of its sub-centres."""
        x = ops.normalize(ops.cast(embeddings, "float32"), axis=-1)
        w = ops.normalize(ops.cast(self.class_weights, "float32"), axis=0)
        cos = ops.matmul(x, w)
        if self.subcenters > 1:
            cos = ops.max(ops.reshape(cos, (-1, self.num_classes, self.subcenters)), axis=-1)
        return ops.clip(cos, -1.0 + 1e-7, 1.0 - 1e-7)

    def call(self, inputs, training=None):
        embeddings, labels = inputs
        cos = self.cosines(embeddings)
        margins = ops.expand_dims(self.sample_margins(ops.shape(cos)[0], bool(training), labels), -1)
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
                "sigma": self.sigma, "easy_margin": self.easy_margin, "seed": self.seed,
                "subcenters": self.subcenters, "class_margins": self.class_margins}
