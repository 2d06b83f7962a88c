"""The general identifier: a pretrained backbone's pooled features with no training at all.

A researcher with 20 animals cannot train a model; the general identifier works on their catalogue the day it is
imported, and fine-tuning (`whaleid train`) is an improvement on top of it that `whaleid evaluate` compares with
it. It is written as a run directory like any training run (config.yaml with `head: none`, labels.json,
checkpoints/epoch_000.weights.h5 holding the pretrained weights), so evaluate, predict, export, `gallery build`
and `model-repo build` take it where they take a run: `--run general` is this model, written on first use to
`runs/general` (or $WHALEID_GENERAL_RUN), or `whaleid general --out DIR [--set key=value]` writes one.

Its embedding was never trained on any individual, so every fold of a catalogue is held out from it
(`evaluate` scores them all). Like every model, its threshold falls back to the calibrated default (the
config's `new_individual_quantile` of the catalogue's impostor scores, services.core.identification.threshold_choice)
when a catalogue has too few validation queries to tune one.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from services.core.errors import ConfigError
from training.config import general_model_id, is_general, load_config, read_saved_config, save_config

log = logging.getLogger(__name__)

GENERAL = "general"
DEFAULT_DIR = Path("runs") / GENERAL
DIR_ENV = "WHALEID_GENERAL_RUN"
GENERAL_FOLDS = 5  # a catalogue's folds for the general identifier (every one held out)
# settings that change the embedding: a run written with other values is another model
EMBEDDING_KEYS = ("backbone", "image_size", "weights", "pooling", "gem_p", "eval_box_source", "localiser")


def general_config(overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    config = load_config(GENERAL, overrides)
    if not is_general(config):
        raise ConfigError("the general identifier needs head: none")
    return config


def general_folds(individual_ids) -> dict[str, int]:
    """The folds a catalogue is validated on with the general identifier, which trained on none of them: its
    individuals in up to GENERAL_FOLDS folds (training's split by individual, seed 0); a single individual is
    fold 0."""
    from training.data import split_folds

    count = len(set(individual_ids))
    if count < 2:
        return {str(i): 0 for i in individual_ids}
    return split_folds(list(individual_ids), min(GENERAL_FOLDS, count), seed=0)


def default_dir() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def write_general_run(out: str | Path, overrides: Mapping[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write the general identifier as a run directory (kept as it is when `out` already holds the same one)."""
    from training.embed import CHECKPOINT_DIR, LABELS_FILE, checkpoint_name
    from training.model import build_general_model

    out = Path(out)
    config = general_config(overrides)
    checkpoint = out / CHECKPOINT_DIR / checkpoint_name(0)
    if (out / "config.yaml").is_file():
        existing = read_saved_config(out / "config.yaml")
        if not is_general(existing):
            raise ConfigError(f"{out} holds a training run, not the general identifier: pass another --out")
        same = all(existing.get(k) == config.get(k) for k in EMBEDDING_KEYS)
        if same and checkpoint.is_file() and not overwrite:
            return out
        if not same and not overwrite:
            raise ConfigError(f"{out} holds a general identifier with other settings "
                              f"({', '.join(f'{k}={existing.get(k)}' for k in EMBEDDING_KEYS)}): pass --overwrite "
                              "or another --out")
    (out / CHECKPOINT_DIR).mkdir(parents=True, exist_ok=True)
    model = build_general_model(config)
    model.save_weights(checkpoint)
    save_config(config, out / "config.yaml")
    (out / LABELS_FILE).write_text(json.dumps({"classes": [], "species": []}) + "\n")
    log.info("wrote the general identifier %s to %s", general_model_id(config), out)
    return out


def resolve_run(spec: str | Path) -> str:
    """A --run value: `general` is the general identifier in runs/general (or $WHALEID_GENERAL_RUN), written
    there with general.yaml's settings on first use; anything else is a run directory, returned as it is."""
    if str(spec) != GENERAL:
        return str(spec)
    target = default_dir()
    if (target / "config.yaml").is_file():
        if not is_general(read_saved_config(target / "config.yaml")):
            raise ConfigError(f"{target} holds a training run, not the general identifier (${DIR_ENV} or "
                              f"{DEFAULT_DIR} must be the general identifier's directory)")
        return str(target)  # as written, also with `whaleid general --set ...` settings
    print(f"writing the general identifier to {target} (first use)", flush=True)
    return str(write_general_run(target))


def resolve_runs(specs) -> list[str]:
    return [resolve_run(s) for s in specs]


def general_exports(run_dir: str | Path | None = None) -> Path:
    """The exports directory (whaleid export) of the general identifier, exported once into RUN/exports: what
    `model-repo build` serves when no --exports is given."""
    from services.core.model_exports import MANIFEST
    from training.export import export_run

    run = Path(run_dir) if run_dir is not None else Path(resolve_run(GENERAL))
    config = read_saved_config(run / "config.yaml")
    out = run / "exports"
    if not (out / general_model_id(config) / MANIFEST).is_file():
        print(f"exporting the general identifier {general_model_id(config)} to {out} (first use)", flush=True)
        export_run(run, out)
    return out


def member_exports(tuning_file: str | Path | None) -> list[Path]:
    """The export folders of the blend members a tuning file names in `members` (the general identifier that
    `whaleid evaluate` recommended, alone or with the run), exported on first use: `model-repo build --tuning
    RUN/tuning.json` serves them with the run's exports."""
    from services.core.identification.tuning import Tuning

    if tuning_file is None:
        return []
    tuning = Tuning.load(tuning_file)
    folders = []
    for model_id, spec in tuning.members.items():
        if tuning.weights.get(model_id, 0.0) <= 0:
            continue
        if spec != GENERAL:
            raise ConfigError(f"tuning file {tuning_file}: member {model_id} is {spec}; export it with `whaleid "
                              "export` into --exports instead")
        folder = general_exports() / model_id
        if not folder.is_dir():
            raise ConfigError(f"tuning file {tuning_file} names the general identifier {model_id}, but "
                              f"{folder.parent} holds another one: run `whaleid evaluate` again")
        folders.append(folder)
    return folders


def served_runs(run_dir: str | Path) -> tuple[list[tuple[str, str, float]], str]:
    """([(model id, run directory, blend weight)] that a catalogue-embedding command such as `gallery build`
    serves for `run_dir`, a line saying so): the run itself (model id ""), unless RUN/tuning.json (`whaleid
    evaluate`) recommends the general identifier alone, or a blend of the run and the general identifier (the
    members with weight > 0, in model-id order, as `model-repo build --tuning` serves them:
    training.embed.BlendedEmbedder)."""
    from services.core.identification.tuning import TUNING_FILE, Tuning

    path = Path(run_dir) / TUNING_FILE
    if str(run_dir) == GENERAL or not path.is_file():
        return [("", str(run_dir), 1.0)], f"serving {run_dir}"
    tuning = Tuning.load(path)
    served = tuning.served_weights()
    if not tuning.members or not served:
        return [("", str(run_dir), 1.0)], f"serving {run_dir}"
    runs = []
    for model_id in sorted(served):
        spec = tuning.members.get(model_id)
        if spec is not None and spec != GENERAL:
            raise ConfigError(f"{path}: member {model_id} is {spec}; only the general identifier is loaded by itself")
        runs.append((model_id, resolve_run(GENERAL) if spec == GENERAL else str(run_dir), served[model_id]))
    if sum(1 for _, run, _ in runs if run == str(run_dir)) > 1:
        raise ConfigError(f"{path} recommends {', '.join(served)}: more than one model of the run {run_dir}")
    if len(runs) == 1:
        return runs, (f"serving the general identifier {runs[0][0]}: {path} (whaleid evaluate) recommends it over "
                      "the run")
    total = sum(served.values())
    return runs, (f"serving the blend {' + '.join(f'{m} {w / total:.2f}' for m, _, w in runs)}: {path} (whaleid "
                  "evaluate) recommends it")
