"""Feature-preserving fine-tuning: two losses that keep a fine-tuned model near what ImageNet taught it, so that
training on a small or synthetic catalogue cannot erode the features that carry real photos.

- **L2-SP** (Li et al. 2018, "Explicit inductive bias for transfer learning"): `alpha * ||w - w_pretrained||^2`
  summed over the backbone's trainable weights, attached as each variable's Keras regulariser (config
  `preserve_l2sp` = alpha), so `fit` adds it to the loss and frozen layers (not trainable) carry none;
- **similarity distillation** (config `preserve_distill` = its weight): how differently the model's embedding and
  the frozen pretrained backbone's pooled features (the teacher, `training.model.build_teacher`) see the batch:
  per photo, its cosine similarities to the other photos under each, standardised per row and compared
  (`similarity_distillation`: 1 - their mean correlation). It compares B x B matrices, so the 512-d embedding
  and the 1280-d teacher features need no projection, and it only asks the model to keep which photos look
  alike, not the teacher's coordinates.

Both are zero at the start of training (the weights are the pretrained ones; the embedding of a model that is
the teacher has the teacher's similarities) and grow as the model moves away.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


class L2SP(keras.regularizers.Regularizer):
    """alpha * sum((w - reference)^2), the reference being the variable's pretrained value."""

    def __init__(self, reference, alpha: float):
        self.reference = ops.convert_to_tensor(np.asarray(reference), dtype="float32")
        self.alpha = float(alpha)

    def __call__(self, x):
        return self.alpha * ops.sum(ops.square(ops.cast(x, "float32") - self.reference))

    def get_config(self):
        return {"alpha": self.alpha}


def attach_l2sp(model: keras.Model, alpha: float) -> int:
    """Give every trainable variable of `model` (the pretrained backbone, just built) an L2-SP regulariser toward
    its current value; returns how many variables. alpha <= 0 attaches nothing."""
    if alpha <= 0:
        return 0
    variables = list(model.trainable_variables)
    for variable in variables:
        variable.regularizer = L2SP(np.asarray(variable), alpha)
    return len(variables)


def l2sp_penalty(model: keras.Model):
    """The summed L2-SP penalty of `model`'s variables now (0.0 when none is attached)."""
    terms = [v.regularizer(v) for v in model.trainable_variables if isinstance(v.regularizer, L2SP)]
    return ops.sum(ops.stack(terms)) if terms else ops.convert_to_tensor(0.0)


def cosine_similarities(x):
    normalised = ops.normalize(ops.cast(x, "float32"), axis=-1)
    return ops.matmul(normalised, ops.transpose(normalised))


def _row_standardised(similarities, off_diagonal):
    """Each row's similarities to the other photos of the batch as z-scores (the diagonal zeroed)."""
    count = ops.sum(off_diagonal, axis=1, keepdims=True)
    mean = ops.sum(similarities * off_diagonal, axis=1, keepdims=True) / count
    centred = (similarities - mean) * off_diagonal
    std = ops.sqrt(ops.sum(ops.square(centred), axis=1, keepdims=True) / count + 1e-8)
    return centred / std


def similarity_distillation(student, teacher):
    """1 - the mean (over the batch's photos) Pearson correlation between a photo's cosine similarities to the
    other photos under `student` and under `teacher` (rows of any widths), in [0, 2]: 0 when the student orders
    and spaces the batch's similarities as the teacher does. Per-row standardisation makes it blind to the
    level and spread of the similarities: the teacher's pooled ReLU features have all cosines high, an ArcFace
    embedding is centred, and only which photos look more alike is asked for."""
    batch = ops.shape(student)[0]
    off_diagonal = 1.0 - ops.eye(batch, dtype="float32")
    z_student = _row_standardised(cosine_similarities(student), off_diagonal)
    z_teacher = _row_standardised(cosine_similarities(teacher), off_diagonal)
    count = ops.cast(batch, "float32") - 1.0
    return ops.mean(ops.sum(ops.square(z_student - z_teacher), axis=1) / count) / 2.0


class SimilarityDistillation(keras.layers.Layer):
    """Adds `weight * similarity_distillation(student, teacher)` to the model's losses in training and passes
    `passthrough` on unchanged (so the layer sits on the training path of the graph)."""

    def __init__(self, weight: float, **kwargs):
        super().__init__(**kwargs)
        self.weight = float(weight)

    def call(self, inputs, training=None):
        passthrough, student, teacher = inputs
        if training:
            self.add_loss(self.weight * similarity_distillation(student, ops.stop_gradient(teacher)))
        return passthrough

    def compute_output_shape(self, input_shapes):
        return input_shapes[0]

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}
