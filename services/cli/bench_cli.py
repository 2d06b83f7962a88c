"""`whaleid bench NAME [--json] [OPTIONS]`: one benchmark of `bench/` (the same as `python -m bench NAME [OPTIONS]`;
`make bench` / `python -m bench` runs them all). Each benchmark parses its own OPTIONS (`whaleid bench NAME
--help`) and measures its comparisons side by side in one run; the result is printed as JSON and written to
bench/results/NAME.json. `bench` is a package of the project (pyproject.toml); its results land in the checkout's
bench/results/ with the editable install (`make install`)."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run one benchmark of bench/ (as `python -m bench NAME`)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="a benchmark: " + ", ".join(_names()))
    p.add_argument("--json", action="store_true", help="print the result as one line of JSON")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(func=run_bench)


def _names() -> list[str]:
    from bench.__main__ import benchmark_names

    return benchmark_names()


def run_bench(args: argparse.Namespace) -> int:
    from bench.__main__ import run_benchmark

    options = [o for o in args.options if o != "--json"]
    as_json = args.json or len(options) != len(args.options)
    result = run_benchmark(args.name, options)
    print(json.dumps(result, indent=None if as_json else 2), flush=True)
    sys.stdout.flush()
    return 0
