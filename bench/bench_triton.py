"""`make bench` entry of `whaleid bench triton`: the ensemble in-process (onnxruntime) vs Triton over gRPC.

`python -m bench triton` runs it with the defaults: untrained b0-tiny exports unless WHALEID_BENCH_EXPORTS
points at real ones (`whaleid export --out DIR`). Options as for `whaleid bench triton`, e.g.
`main(["--exports", "runs/exports", "--requests", "200"])`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from services.model_repo.bench import benchmark

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="bench triton")
    parser.add_argument("--repository", type=Path)
    parser.add_argument("--exports", type=Path, default=os.environ.get("WHALEID_BENCH_EXPORTS") or None)
    parser.add_argument("--requests", type=int, default=120)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layout", choices=("lean", "standard"), default="lean")
    args = parser.parse_args(argv)
    if not logging.getLogger().handlers:  # progress lines when run by `python -m bench`
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return benchmark(args.repository, args.exports and Path(args.exports), plot_path=RESULTS / "triton.png",
                     requests=args.requests, concurrency=args.concurrency, rounds=args.rounds,
                     lean=args.layout == "lean")
