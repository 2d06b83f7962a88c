"""`whaleid bench embedder` (= `python -m bench embedder`): fp32, bf16 and int8 embedders side by side in one run
(bench/precision.py): ms per image at batch 1 and 8, the ratio to this machine's measured SGEMM limit and
MAP@5 on a held-out synthetic look, for Lite0@224, the general identifier's Lite2@384 when present (`--no-lite2`
skips it) and EfficientNetB5@456 (`--no-b5` skips the slow B5 export).
Writes bench/results/embedder.json and embedder.png; exports are cached in bench/results/embedder_work.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from bench.precision import benchmark

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="whaleid bench embedder",
                                     description="fp32 / bf16 / int8 embedders side by side: ms per image, ratio to "
                                                 "the SGEMM limit, MAP@5")
    parser.add_argument("--work", type=Path, default=RESULTS / "embedder_work",
                        help="cache of exports and converted models (default bench/results/embedder_work)")
    parser.add_argument("--run", type=Path, help="trained lite0 run (default: bench identification_quality's "
                                                 "lite0 run on synth-photo when present, else pretrained Lite0)")
    parser.add_argument("--train-data", type=Path, help="training data: int8 calibration crops")
    parser.add_argument("--heldout", type=Path, help="held-out labelled set of another look (MAP@5)")
    parser.add_argument("--no-b5", dest="b5", action="store_false", help="skip EfficientNetB5 (slow to export)")
    parser.add_argument("--no-lite2", dest="lite2", action="store_false",
                        help="skip the general identifier's Lite2@384 (bench identification_quality's general run)")
    parser.add_argument("--b5-size", type=int, default=456)
    parser.add_argument("--b5-map5", action="store_true", help="also MAP@5 of the (untrained) B5: slow")
    parser.add_argument("--rounds", type=int, default=5,
                        help="interleaved timing rounds (default 5; B5 one fewer): medians of a shared machine")
    parser.add_argument("--calibration-images", type=int, default=64)
    parser.add_argument("--max-queries", type=int, default=400, help="held-out queries for MAP@5 (default 400)")
    parser.add_argument("--plot", type=Path, default=RESULTS / "embedder.png")
    parser.add_argument("--out", type=Path, default=RESULTS / "embedder.json", help="JSON result file")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = benchmark(args.work, args.run, args.train_data, args.heldout, b5=args.b5, b5_size=args.b5_size,
                       rounds=args.rounds, calibration_images=args.calibration_images, b5_map5=args.b5_map5,
                       max_queries=args.max_queries, plot_path=args.plot, lite2=args.lite2)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result
