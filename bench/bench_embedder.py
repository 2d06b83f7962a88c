"""`make bench` entry of `whaleid bench embedder`: fp32, bf16 and int8 embedders side by side in one run
(training.precision_bench): ms per image at batch 1 and 8, the ratio to this machine's measured SGEMM limit and
MAP@5 on a held-out synthetic look, for Lite0@224 and EfficientNetB5@456 (`--no-b5` skips the slow B5 export).
Writes bench/results/embedder.json and embedder.png; exports are cached in bench/results/embedder_work.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from training.precision_bench import benchmark

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="bench embedder")
    parser.add_argument("--no-b5", dest="b5", action="store_false")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-queries", type=int, default=400)
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    result = benchmark(RESULTS / "embedder_work", b5=args.b5, rounds=args.rounds, max_queries=args.max_queries,
                       plot_path=RESULTS / "embedder.png")
    (RESULTS / "embedder.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
