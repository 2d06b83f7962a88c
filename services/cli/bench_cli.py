"""`whaleid bench NAME [--json] [OPTIONS]`: one benchmark of `bench/` (the same as `python -m bench NAME [OPTIONS]`;
`make bench` / `python -m bench` runs them all). Each benchmark parses its own OPTIONS (`whaleid bench NAME
--help`) and measures its comparisons side by side in one run; the result is printed as JSON and written to
bench/results/NAME.json. Benchmarks live in the repository (bench/), not in an installed package."""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="run one benchmark of bench/ (as `python -m bench NAME`)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", metavar="NAME", help="a benchmark: " + ", ".join(_names() or ["(bench/ not found)"]))
    p.add_argument("--json", action="store_true", help="print the result as one line of JSON")
    p.add_argument("options", nargs=argparse.REMAINDER, help="the benchmark's own options")
    p.set_defaults(func=run_bench)


def _checkout_on_path() -> None:
    """Make the checkout's bench/ importable (the console script's path does not hold the repository root)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    if (root / "bench" / "__main__.py").is_file() and str(root) not in sys.path:
        sys.path.append(str(root))


def _names() -> list[str]:
    _checkout_on_path()
    try:
        from bench.__main__ import benchmark_names
    except ModuleNotFoundError:
        return []
    return benchmark_names()


def run_bench(args: argparse.Namespace) -> int:
    from services.core.errors import ConfigError

    _checkout_on_path()
    try:
        from bench.__main__ import run_benchmark
    except ModuleNotFoundError:
        raise ConfigError("the benchmarks live in the repository's bench/: run `whaleid bench` from a checkout "
                          "(make install)") from None
    options = [o for o in args.options if o != "--json"]
    as_json = args.json or len(options) != len(args.options)
    result = run_benchmark(args.name, options)
    print(json.dumps(result, indent=None if as_json else 2), flush=True)
    sys.stdout.flush()
    return 0
