"""`whaleid train --config NAME --data DIR --out RUN [--fold K] [--epochs E] [--set k=v ...] [--resume]`."""

from __future__ import annotations

import json
import logging


def register(subparsers) -> None:
    """Add the sub-commands to `whaleid`."""
    from training.config import available_configs

    parser = subparsers.add_parser(
        "train", help="train an embedder (EfficientNet + Elastic ArcFace) on a Happywhale-layout data set",
        description="Train one fold; writes RUN/config.yaml, folds.csv, lr_schedule.png, history.csv, state.json "
                    "and checkpoints/epoch_NNN.weights.h5. Configs: " + ", ".join(available_configs()) + " (or a "
                    "YAML path), merged over default.yaml.")
    parser.add_argument("--config", default="lite0", help="config name or YAML file (default: lite0, the pretrained CPU model)")
    parser.add_argument("--data", required=True, help="data set directory (train.csv, train_images/, boxes*.csv)")
    parser.add_argument("--out", required=True, help="run directory to create (or continue with --resume)")
    parser.add_argument("--fold", type=int, help="validation fold (-1: train on all individuals)")
    parser.add_argument("--epochs", type=int, help="number of epochs (with --resume: the new total)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key, e.g. --set image_size=96 (repeatable)")
    parser.add_argument("--resume", action="store_true", help="continue RUN from its last snapshot")
    parser.add_argument("--progress", choices=("bar", "epoch", "none"), default="bar",
                        help="Keras progress display: a bar per epoch, one line per epoch, or none")
    parser.set_defaults(func=run)


def run(args) -> int:
    from training.config import load_config, parse_set_options
    from training.train import train

    overrides = parse_set_options(args.overrides)
    if args.fold is not None:
        overrides["fold"] = args.fold
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    config = load_config(args.config, overrides)
    verbose = {"bar": 1, "epoch": 2, "none": 0}[args.progress]
    result = train(config, args.data, args.out, resume=args.resume, verbose=verbose)
    logging.getLogger("whaleid.train").info("done: %s", json.dumps(result))
    print(json.dumps(result, indent=2))
    print(next_step(args.data, args.out, int(config.get("fold", 0))), flush=True)
    return 0


def next_step(data, out, fold: int) -> str:
    """Where the run stands against the general identifier: not measured here (it embeds every training photo
    with both models and tunes a blend, about as long again as a short CPU training), so the exact command that
    measures it and records what to serve."""
    if fold < 0:
        return ("this run trained on every individual (fold -1): nothing is held out to compare it with the general "
                "identifier; a run holding a fold out does (`whaleid evaluate --run FOLD_RUN --data ...`)")
    return (f"not yet compared with the general identifier (no training at all): `whaleid evaluate --run {out} "
            f"--data {data}` scores this run, the general identifier and their blend on held-out fold {fold}, "
            f"recommends one and records it in {out}/tuning.json for predict, gallery build and model-repo build")
