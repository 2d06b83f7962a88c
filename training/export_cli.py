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
    parser.add_argument("--precision", choices=("fp32", "bf16", "int8"), default="fp32",
                        help="fp32 (default); int8: onnxruntime static QDQ quantisation, per-channel, calibrated on "
                             "--data's training crops; bf16: bf16-rounded weights, fp32 compute (onnxruntime's CPU "
                             "provider has no bf16 kernels). Both are refused unless MAP@5 on --data stays within "
                             "--map5-tolerance of fp32")
    parser.add_argument("--data", type=Path, help="labelled data set for calibration and the MAP@5 parity "
                                                  "(needed for bf16/int8)")
    parser.add_argument("--calibration-images", type=int, default=64, help="int8 calibration crops (default 64)")
    parser.add_argument("--int8-fp32-convs", type=int, default=None, metavar="N",
                        help="int8: keep the first N Convs (the sensitive high-resolution blocks) in fp32 "
                             "(default 0: every Conv in int8; 12 when a model's all-int8 MAP@5 is refused)")
    parser.add_argument("--map5-tolerance", type=float, default=0.005,
                        help="largest accepted MAP@5 loss against fp32 (default 0.005)")
    parser.add_argument("--fp32-exports", type=Path, default=None, metavar="DIR",
                        help="bf16/int8: an exports directory holding these snapshots' fp32 exports (a former "
                             "`whaleid export`): their SavedModel and ONNX are reused, checksums checked, instead of "
                             "converted again; parity with the snapshot is still checked")
    parser.set_defaults(func=_export)


def _export(args) -> int:
    from training.export import export_run

    exported = export_run(args.run, args.out, args.snapshots, opset=args.opset, tolerance=args.tolerance,
                          precision=args.precision, data=args.data, calibration_images=args.calibration_images,
                          map5_tolerance=args.map5_tolerance, fp32_leading_convs=args.int8_fp32_convs,
                          fp32_exports=args.fp32_exports)
    for path in exported:
        print(path)
    return 0
