"""Adam with a learning-rate multiplier for a subset of the variables (a pretrained backbone fine-tuned slower
than the freshly initialised head, as the Happywhale 1st-place solution does with 10x the head's rate)."""

from __future__ import annotations

import keras
from keras import ops


class LayerwiseAdam(keras.optimizers.Adam):
    def __init__(self, scaled_variables=(), scale: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self._scaled_keys = {self._var_key(v) for v in scaled_variables}

    def update_step(self, gradient, variable, learning_rate):
        if self.scale != 1.0 and self._var_key(variable) in self._scaled_keys:
            learning_rate = ops.multiply(ops.cast(learning_rate, variable.dtype), self.scale)
        return super().update_step(gradient, variable, learning_rate)
