"""Run every benchmark module (`bench/bench_*.py`) in turn and write one JSON report.

`python -m bench [NAME ...]` runs only the named ones (e.g. `identification`). Each module measures its
comparisons side by side in one run and reports ratios; results go to `bench/results/<name>.json`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

import bench

RESULTS = Path(__file__).parent / "results"


def main(argv: list[str]) -> int:
    names = sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))
    wanted = argv or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in wanted:
        print(f"== bench {name}", flush=True)
        start = time.perf_counter()
        try:
            result = importlib.import_module(f"bench.bench_{name}").main([])
        except Exception as exc:  # report and go on with the other benchmarks
            print(f"bench {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        result = {"bench": name, "seconds": round(time.perf_counter() - start, 1), **(result or {})}
        (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(json.dumps(result, indent=2), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
