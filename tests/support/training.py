"""The recipe of the trained tiny run shared by every test that needs a real model: the session fixtures `tiny_data`
(the data set alone) and `tiny_run` (a `TinyRun`: data_dir, run_dir, summary, config) of tests/conftest.py.

The data set and the training run are made once per pytest session with `training.synth.generate` and
`training.train.train` (config b0-tiny: EfficientNetB0 at 64 px from scratch). bench/bench_training.py uses the same recipe.
Treat both directories as read-only: copy the run before changing it (e.g. to resume it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The synthetic set: 36 individuals, ~200 train and ~60 test images (a third of the test images show new animals),
# with a flatter photos-per-individual tail than the generator's default (zipf 1.1): from scratch, a B0 cannot
# learn individuals seen once or twice in the few hundred steps a test can afford.
SYNTH = {"individuals": 36, "seed": 5, "image_size": 128, "zipf_a": 1.1, "max_photos": 12, "preview": False}
TRAIN_CONFIG = "b0-tiny"
# 10 folds: fold 0 (a tenth of the individuals) is validated every 10 epochs; the rest is trained on.
TRAIN_OVERRIDES: dict[str, Any] = {"folds": 10, "fold": 0, "epochs": 40, "snapshot_every": 10, "validate_every": 10}


@dataclass(frozen=True)
class TinyRun:
    data_dir: Path
    run_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
