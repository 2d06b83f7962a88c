"""`whaleid general [--out runs/general] [--set key=value] [--overwrite]`: write the general identifier as a run."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "general", help="write the general identifier (pretrained features, no training) as a run directory",
        description="Writes the general identifier (training/configs/general.yaml: EfficientNet-Lite ImageNet "
                    "features, GeM-pooled, never trained) as a run that evaluate, predict, export, `gallery build` "
                    "and `model-repo build` take like a training run. `--run general` anywhere writes it to "
                    "runs/general on first use.")
    parser.add_argument("--out", type=Path, default=None, help="run directory (default: runs/general, or "
                                                               "$WHALEID_GENERAL_RUN)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set backbone=EfficientNetLite0 --set image_size=224")
    parser.add_argument("--overwrite", action="store_true", help="replace a general identifier with other settings")
    parser.set_defaults(func=_general)


def _general(args) -> int:
    from training.config import general_model_id, parse_set_options
    from training.general import default_dir, general_config, write_general_run

    overrides = parse_set_options(args.set)
    out = write_general_run(args.out or default_dir(), overrides, overwrite=args.overwrite)
    config = general_config(overrides)
    print(f"{general_model_id(config)} ({config['backbone']} @ {config['image_size']} px, {config['pooling']} pooling, "
          f"calibrated default threshold: the {config['new_individual_quantile']} quantile of a catalogue's impostor "
          f"scores): {out}")
    return 0
