"""The full fault-injection suite (`whaleid chaos`, every scenario, 300 sightings each, 1,000 hostile inputs) on
its own embedded stack: per scenario uploaded, identified, dead-lettered by reason, lost, duplicated, redelivered
and the time to recover, plus a PNG of the recovery times next to the JSON result."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def plot(results: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    names = [r["name"] for r in results]
    seconds = [r.get("recover_s") or 0.0 for r in results]
    colours = ["tab:green" if r["passed"] else "tab:red" for r in results]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(names) + 1.2))
    ax.barh(names, seconds, color=colours)
    ax.invert_yaxis()
    ax.set_xlabel("seconds from the end of the fault until every sighting settled")
    ax.set_title("whaleid chaos: recovery per scenario (green: nothing lost or duplicated)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str]) -> dict:
    from services.devtools.chaos.report import table
    from services.devtools.chaos.scenarios import ALL
    from services.devtools.chaos.suite import SuiteOptions, run_suite

    parser = argparse.ArgumentParser(prog="python -m bench chaos")
    parser.add_argument("--sightings", type=int, default=300)
    parser.add_argument("--hostile", type=int, default=1000)
    args = parser.parse_args(argv)
    started = time.monotonic()
    report = run_suite(SuiteOptions(scenarios=list(ALL), sightings=args.sightings, hostile=args.hostile,
                                    workdir=Path(".whaleid/bench-chaos")),
                       lambda message: print(f"[chaos {time.monotonic() - started:6.1f}s] {message}", flush=True))
    print(table(report["scenarios"]), flush=True)
    RESULTS.mkdir(exist_ok=True)
    png = plot(report["scenarios"], RESULTS / "chaos.png")
    return {**report, "plot": str(png) if png else None}
