"""The smallest training that learns something on CPU in a few minutes: the synthetic set and the b0-tiny run that
the tests' `tiny_run` fixture and `python -m bench training` both make (config b0-tiny: EfficientNetB0 at 64 px
from scratch)."""

from __future__ import annotations

from typing import Any

# The synthetic set: 36 individuals, ~200 train and ~60 test images (a third of the test images show new animals),
# with a flatter photos-per-individual tail than the generator's default (zipf 1.1): from scratch, a B0 cannot
# learn individuals seen once or twice in the few hundred steps a test can afford.
SYNTH = {"individuals": 36, "seed": 5, "image_size": 128, "zipf_a": 1.1, "max_photos": 12, "preview": False}
TRAIN_CONFIG = "b0-tiny"
# 10 folds: fold 0 (a tenth of the individuals) is validated every 10 epochs; the rest is trained on.
TRAIN_OVERRIDES: dict[str, Any] = {"folds": 10, "fold": 0, "epochs": 40, "snapshot_every": 10, "validate_every": 10}
