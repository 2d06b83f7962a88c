"""`whaleid export --run RUN [--snapshots epoch_003 ...] --out DIR`."""

from __future__ import annotations

from pathlib import Path


def register(subparsers) -> None:
    """Add the sub-commands to `whaleid`."""
    parser = subparsers.add_parser(
        "export", help="export training snapshots to SavedModel + ONNX with a manifest (parity-checked)",
        description="Per snapshot, write OUT/<model_id>/{saved_model/, model.onnx, manifest.json}. The ONNX "
                    "embeddings must match Keras within --tolerance on a batch, else the export is refused.",
    )
    parser.add_argument("--run", required=True, type=Path, help="training run directory (whaleid train --out)")
    parser.add_argument("--snapshots", nargs="+", metavar="NAME",
                        help="snapshots to export, e.g. epoch_003 epoch_005, or 'all' (default: the last one)")
    parser.add_argument("--out", required=True, type=Path, help="exports directory")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    parser.add_argument("--tolerance", type=float, default=1e-4,
                        help="largest accepted |onnx - keras| embedding difference (default 1e-4)")
    parser.set_defaults(func=_export)


def _export(args) -> int:
    from training.export import export_run

    exported = export_run(args.run, args.out, args.snapshots, opset=args.opset, tolerance=args.tolerance)
    for path in exported:
        print(path)
    return 0
