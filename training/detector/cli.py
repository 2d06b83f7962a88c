"""`whaleid detector train --out RUN [--set key=value ...]` and `whaleid detector export RUN [--out DIR]`."""

from __future__ import annotations

import json


def register(subparsers) -> None:
    from training.detector.config import DetectorConfig

    parser = subparsers.add_parser("detector", help="train and export the fin/fluke crop detector (Triton `detector`)")
    commands = parser.add_subparsers(dest="detector_command", metavar="COMMAND", required=True)
    defaults = DetectorConfig()
    train = commands.add_parser(
        "train", help="train the detector on synthetic scenes (frozen pretrained Lite0 + a small box head)",
        description="Renders scenes (training.synth.scenes) in the training looks, computes the frozen backbone's "
                    "features once, fits the head; writes RUN/detector.json (config, validation IoU), "
                    f"RUN/detector.weights.h5, RUN/history.csv. Settings (--set): {', '.join(defaults.to_dict())}.")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--image-size", type=int, help=f"input size in pixels (default {defaults.image_size})")
    train.add_argument("--scenes", type=int, help=f"training scenes (default {defaults.scenes})")
    train.add_argument("--epochs", type=int, help=f"head epochs (default {defaults.epochs})")
    train.add_argument("--looks", help=f"training looks, comma-separated styles (default {defaults.looks})")
    train.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="any other setting, e.g. --set hidden=128 (repeatable)")
    train.add_argument("--progress", action="store_true", help="Keras progress bars")
    train.set_defaults(func=_train)

    export = commands.add_parser("export", help="export a detector run to ONNX (parity-checked) + detector.json",
                                 description="Writes OUT/model.onnx (image -> box, score) and OUT/detector.json; "
                                             "TensorFlow and tf2onnx output goes to OUT.export.log.")
    export.add_argument("run", help="detector run directory (whaleid detector train --out)")
    export.add_argument("--out", help="export directory (default RUN/export)")
    export.add_argument("--opset", type=int, default=17)
    export.add_argument("--tolerance", type=float, default=1e-4, help="largest accepted |onnx - keras| output")
    export.set_defaults(func=_export)


def _train(args) -> int:
    from training.config import parse_set_options
    from training.detector.train import config_with, train_detector

    overrides = parse_set_options(args.overrides)
    for key in ("image_size", "scenes", "epochs", "looks"):
        if getattr(args, key) is not None:
            overrides[key] = getattr(args, key)
    result = train_detector(args.out, config_with(overrides), verbose=1 if args.progress else 0)
    print(json.dumps({"run": args.out, "validation": result["validation"], "seconds": result["seconds"]}, indent=2))
    return 0


def _export(args) -> int:
    from training.detector.export import export_detector

    print(export_detector(args.run, args.out, opset=args.opset, tolerance=args.tolerance))
    return 0
