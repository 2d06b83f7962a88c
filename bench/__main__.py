"""Run every benchmark module (`bench/bench_*.py`) in turn and write one JSON report per benchmark.

`python -m bench [NAME ...]` runs only the named ones (e.g. `identification`); `python -m bench NAME --opt ...`
(= `whaleid bench NAME --opt ...`) runs one with its own options. Each module measures its comparisons side by
side in one run and reports ratios; results go to `bench/results/<name>.json`. The one registry of benchmarks:
the `bench_<name>.py` modules here, each with `main(argv) -> dict`.
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


def benchmark_names() -> list[str]:
    return sorted(m.name[len("bench_"):] for m in pkgutil.iter_modules(bench.__path__) if m.name.startswith("bench_"))


def quiet_tensorflow() -> None:
    """TensorFlow's start-up chatter (CPU features, no CUDA driver) goes to the log file, not the console, for the
    benchmarks that build or export models; nothing when TensorFlow is not installed (a core install)."""
    import importlib.util
    import os

    if "tensorflow" in sys.modules or importlib.util.find_spec("tensorflow") is None:
        return
    from services.cli.main import TENSORFLOW_LOG, import_tensorflow_quietly

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import_tensorflow_quietly(TENSORFLOW_LOG)


def run_benchmark(name: str, options: list[str]) -> dict:
    """Run benchmark `name` with its own options; its result (with `bench` and `seconds`) is also written to
    bench/results/<name>.json."""
    from services.core.errors import ConfigError

    if name not in benchmark_names():
        raise ConfigError(f"unknown benchmark {name!r}; known: {', '.join(benchmark_names())}")
    RESULTS.mkdir(exist_ok=True)
    quiet_tensorflow()
    start = time.perf_counter()
    result = importlib.import_module(f"bench.bench_{name}").main(list(options))
    result = {"bench": name, "seconds": round(time.perf_counter() - start, 1), **(result or {})}
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    return result


def main(argv: list[str]) -> int:
    names = benchmark_names()
    if argv and any(a.startswith("-") or "=" in a for a in argv):  # one benchmark with its own options
        if argv[0].startswith("-"):
            print("usage: python -m bench [NAME ...] | python -m bench NAME --option ...", file=sys.stderr)
            return 2
        print(json.dumps(run_benchmark(argv[0], argv[1:]), indent=2), flush=True)
        return 0
    wanted = argv or names
    unknown = sorted(set(wanted) - set(names))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(names)}", file=sys.stderr)
        return 2
    RESULTS.mkdir(exist_ok=True)
    failed = []
    for name in wanted:
        print(f"== bench {name}", flush=True)
        try:
            result = run_benchmark(name, [])
        except Exception as exc:  # report and go on with the other benchmarks
            print(f"bench {name} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            failed.append(name)
            continue
        print(json.dumps(result, indent=2), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
