"""A trained tiny run shared by every test that needs a real model (training, export, Triton parity, demo).

    from tests.fixtures_training import tiny_run

    @pytest.fixture(scope="session")
    def trained(tmp_path_factory):
        return tiny_run(tmp_path_factory)   # TinyRun(data_dir, run_dir, summary, config)

The data set and the training run are made once per pytest session (cached here, whatever the caller) with
`training.synth.generate` and `training.train.train` (config b0-tiny: EfficientNetB0 at 64 px from scratch).
Treat both directories as read-only: copy the run before changing it (e.g. to resume it).
"""

from __future__ import annotations

import logging
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


_CACHE: dict[str, TinyRun] = {}


def tiny_data(tmp_path_factory) -> Path:
    """The synthetic data set alone (generated once per session)."""
    if "data" not in _CACHE:
        from training.synth import generate

        root = tmp_path_factory.mktemp("tiny_synth") / "data"
        generate(root, **SYNTH)
        _CACHE["data"] = TinyRun(root, Path(), {}, {})
    return _CACHE["data"].data_dir


def tiny_run(tmp_path_factory) -> TinyRun:
    """The synthetic data set and a b0-tiny run trained on it (once per session)."""
    if "run" not in _CACHE:
        from training.config import load_config
        from training.train import train

        logging.getLogger("training").setLevel(logging.INFO)
        data_dir = tiny_data(tmp_path_factory)
        run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
        config = load_config(TRAIN_CONFIG, TRAIN_OVERRIDES)
        summary = train(config, data_dir, run_dir, verbose=0)
        _CACHE["run"] = TinyRun(data_dir, run_dir, summary, config)
    return _CACHE["run"]
