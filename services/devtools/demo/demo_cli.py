"""`whaleid demo`: the whole story on the embedded stack."""

from __future__ import annotations

import argparse
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from services.devtools.demo.run import DemoOptions, run_demo

    options = DemoOptions(
        individuals=args.individuals, workdir=args.workdir, keep_up=args.keep_up, as_json=args.json,
        config=args.config,
    )
    return run_demo(options)


def register(subparsers) -> None:
    """Add `whaleid demo`."""
    demo = subparsers.add_parser(
        "demo", help="the whole story on the embedded stack: data, a trained lite0 model, gallery, stack, services, uploads",
    )
    demo.add_argument("--json", action="store_true", help="print the summary as JSON (progress goes to stderr)")
    demo.add_argument("--individuals", type=int, default=100, help="individuals in the synthetic data set")
    demo.add_argument("--workdir", type=Path, default=Path(".whaleid/demo"),
                      help="where data, model, cache and logs go (the trained model is cached here)")
    demo.add_argument("--keep-up", action="store_true", help="leave the stack and services running at the end")
    demo.add_argument("--config", help="settings TOML file")
    demo.set_defaults(func=_demo)
