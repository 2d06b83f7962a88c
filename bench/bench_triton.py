"""`whaleid bench triton` (= `python -m bench triton`): the ensemble in-process (onnxruntime) vs Triton over gRPC.

Defaults: untrained b0-tiny exports unless --exports or WHALEID_BENCH_EXPORTS points at real ones
(`whaleid export --out DIR`), e.g. `whaleid bench triton --exports runs/exports --requests 200 --json`.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from services.model_repo.bench import benchmark

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str]) -> dict:
    from services.errors import ConfigError

    parser = argparse.ArgumentParser(prog="whaleid bench triton",
                                     description="in-process onnxruntime ensemble vs Triton over gRPC (batch 1 and "
                                                 "concurrent clients), alternating rounds, medians")
    parser.add_argument("--repository", type=Path, help="a built repository (default: build one)")
    parser.add_argument("--exports", type=Path, default=os.environ.get("WHALEID_BENCH_EXPORTS") or None,
                        help="exports to build the repository from (default: untrained tiny models)")
    parser.add_argument("--url", help="a Triton already serving --repository (default: start one)")
    parser.add_argument("--requests", type=int, default=120, help="requests per measurement (default 120)")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; medians reported (default 3)")
    parser.add_argument("--plot", type=Path, default=RESULTS / "triton.png", help="PNG of the comparison")
    parser.add_argument("--layout", choices=("lean", "standard"), default="lean",
                        help="repository layout built when none is given: lean (default: one python hop, one fused "
                             "graph) or standard (preprocess -> embedder_* -> blend)")
    args = parser.parse_args(argv)
    if args.url and not args.repository:
        raise ConfigError("--url needs --repository: the repository that Triton serves (for the direct baseline)")
    if not logging.getLogger().handlers:  # progress lines when run by `python -m bench`
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    return benchmark(args.repository, args.exports and Path(args.exports), args.url, plot_path=args.plot,
                     requests=args.requests, concurrency=args.concurrency, rounds=args.rounds,
                     lean=args.layout == "lean")
