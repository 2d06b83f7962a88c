"""The recipe of the trained tiny run shared by every test that needs a real model: the session fixtures `tiny_data`
(the data set alone) and `tiny_run` (a `TinyRun`: data_dir, run_dir, summary, config) of tests/conftest.py.

The data set and the training run are made once per pytest session with `training.synth.generate` and
`training.train.train` (config b0-tiny: EfficientNetB0 at 64 px from scratch). The recipe itself is training/tiny_recipe.py (bench/bench_training.py uses it too).
Treat both directories as read-only: copy the run before changing it (e.g. to resume it).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.tiny_recipe import SYNTH, TRAIN_CONFIG, TRAIN_OVERRIDES  # noqa: F401 - the recipe, re-exported


@dataclass(frozen=True)
class TinyRun:
    data_dir: Path
    run_dir: Path
    summary: dict[str, Any]
    config: dict[str, Any]
