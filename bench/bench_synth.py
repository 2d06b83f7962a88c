"""The synthetic data set as a yardstick: generation speed and the no-learning baselines, per nuisance preset.

For each preset (easy, normal, hard) one data set of the same individuals and seed is generated and scored side by
side: photos/s of `training.synth.generate`, and MAP@5 of the raw-pixel and colour-histogram nearest-neighbour
baselines (`training.baseline`); ratios are relative to the `normal` preset.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from training.baseline import pixel_baseline_map5
from training.synth import generate
from training.synth.render import NUISANCE_PRESETS


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench synth")
    parser.add_argument("--individuals", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    result: dict = {"individuals": args.individuals, "seed": args.seed, "presets": {}}
    with tempfile.TemporaryDirectory(prefix="bench-synth-") as tmp:
        for preset in NUISANCE_PRESETS:
            out = Path(tmp) / preset
            started = time.perf_counter()
            summary = generate(out, individuals=args.individuals, seed=args.seed, nuisance=preset, preview=False)
            seconds = time.perf_counter() - started
            baseline = pixel_baseline_map5(out)
            photos = summary["train_images"] + summary["test_images"]
            result["presets"][preset] = {
                "train_images": summary["train_images"], "test_images": summary["test_images"],
                "test_new_share": baseline["new_share"], "photos_per_s": round(photos / seconds, 1),
                "pixel_map5": baseline["pixel"]["map5"], "pixel_map5_seen_only": baseline["pixel"]["map5_seen_only"],
                "histogram_map5": baseline["histogram"]["map5"],
                "histogram_map5_seen_only": baseline["histogram"]["map5_seen_only"],
            }
    normal = result["presets"]["normal"]
    for figures in result["presets"].values():
        figures["pixel_map5_vs_normal"] = round(figures["pixel_map5"] / max(normal["pixel_map5"], 1e-9), 2)
    return result
