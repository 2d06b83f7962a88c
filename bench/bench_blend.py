"""Fine-tuning that only helps: a trained run, the general identifier and their score-level blend side by side, on
the run's own held-out fold and on sets its training did not shape (docs/identification.md, "Fine-tuning that only
helps").

Per `RUN=TRAIN_DATA` pair (a run directory and the Happywhale-layout data it trained on):
  - `oof`: the run's held-out fold of TRAIN_DATA, as `whaleid evaluate` compares (evaluation.evaluate_out_of_fold):
    `run`, `general`, `blend` (run weight w tuned out of fold) held-out (cross-fitted) and in-sample MAP@5,
    `gain_se` (evaluation.gain_standard_error of run and blend over general), `recommend` (evaluation.recommend)
    and `w`, the blend's run weight chosen there;
  - `sets`: every configuration (`run`, `general`, `blend@w`, `blend@0.25`, `blend@0.5`, `blend@0.75`: the blend of
    vectors.blend at that run weight) on
      - `nyala-test` / `nyala-train` (bench/real_sets.py: an open set split by encounter, held-out individuals as
        `new_individual`; `map5_cross_fitted`, `map5_calibrated_default`, `known_top1`); a split the run trained on
        (TRAIN_DATA's photos lie in it, e.g. linked by `real_sets.nyala_happywhale_layout`) is skipped;
      - `fins` (the real-photos check: `map5` with `new_individual` never answered, `rank_of_truth`);
      - each `--looks DIR` (a Happywhale-layout set no model trained on, e.g. `whaleid synth --style random`): every
        fold held out (training.general.general_folds), `map5_held_out` and `map5_in_sample` per configuration.
The real sets skip cleanly when ../shared/data is absent (`skipped`). Embeddings are cached as
`<cache>/<model_id>-<digest of the run folder>--<set>.npy` (sets: `<nyala split>-g`/`-q`, `fins-g`/`-q`, a data
set's folder name and a digest of its path for all its training images), so a rerun costs little CPU and two runs
with the same model id (e.g. lite0 and lite0-preserve, both `lite0-f0-e004`) never share an entry; delete the
folder after retraining a run in place.

`python -m bench blend RUN=TRAIN_DATA ... [--general RUN] [--looks DIR ...] [--cache DIR] [--json]` writes
bench/results/blend.json and prints the table (`--json`: the JSON only).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import numpy as np

from bench import real_sets

RESULTS = Path(__file__).parent / "results"
DEFAULT_CACHE = RESULTS / "cache" / "blend"
FIXED_WEIGHTS = (0.25, 0.5, 0.75)
K = 50
HEADLINE = {"nyala": "map5_cross_fitted", "fins": "map5", "look": "map5_held_out"}  # the table's figure per set


def run_and_data(spec: str) -> tuple[str, Path]:
    run, sep, data = spec.partition("=")
    if not sep or not run or not data:
        raise argparse.ArgumentTypeError(f"{spec!r}: expected RUN=TRAIN_DATA (a run directory and its training data)")
    return run, Path(data)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench blend", description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", nargs="*", type=run_and_data, metavar="RUN=TRAIN_DATA")
    parser.add_argument("--general", default="general", help="the general identifier's run (default: general)")
    parser.add_argument("--looks", nargs="*", type=Path, default=[], metavar="DIR",
                        help="Happywhale-layout sets no model trained on, every fold held out")
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="embedding cache folder")
    parser.add_argument("--json", action="store_true", help="print the JSON only, no table")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- embeddings, cached
class Models:
    """Embedders by run directory, loaded once; embeddings cached as `<cache>/<model_id>-<run digest>--<set>.npy`."""

    def __init__(self, cache: Path):
        self.cache = cache
        self._embedders: dict[str, object] = {}

    def embedder(self, run: str):
        from training.embed import Embedder

        if run not in self._embedders:
            self._embedders[run] = Embedder.from_run(run)
        return self._embedders[run]

    def cached(self, run: str, set_name: str, compute: Callable[[object], np.ndarray]) -> np.ndarray:
        embedder = self.embedder(run)
        path = self.cache / f"{embedder.model_id}-{_digest(run)}--{set_name}.npy"
        if path.exists():
            return np.load(path)
        values = np.asarray(compute(embedder), np.float32)
        self.cache.mkdir(parents=True, exist_ok=True)
        np.save(path, values)
        return values

    def paths(self, run: str, set_name: str, paths) -> np.ndarray:
        from services.core.identification.vectors import l2_normalise

        return self.cached(run, set_name, lambda e: l2_normalise(e.embed_files([str(p) for p in paths])))

    def dataset(self, run: str, data_dir: Path):
        """(the data set, (N, D) embeddings of its training images in order)."""
        from training.data import load_dataset
        from training.identification_commands import embed_images

        data = load_dataset(data_dir)
        images = [r.image for r in data.train]
        return data, self.cached(run, f"{Path(data_dir).name}-{_digest(data_dir)}",
                                 lambda e: embed_images(e, data, images, False))


def _digest(path) -> str:
    """A short digest of a folder's resolved path (cache keys of runs and data sets that share a name)."""
    import hashlib

    return hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------- scoring
def labelled(data, folds: dict[str, int]):
    from services.core.identification.evaluation import LabelledImages

    rows = data.train
    return LabelledImages([r.image for r in rows], [r.individual_id for r in rows], [r.species for r in rows],
                          np.array([folds[r.individual_id] for r in rows]))


def own_fold(models: Models, run: str, general: str, train_data: Path) -> dict:
    """The run's held-out fold of its training data: run / general / blend, as `whaleid evaluate` compares them."""
    from services.core.identification.evaluation import evaluate_out_of_fold, gain_standard_error, recommend
    from training.folds import read_folds

    data, x_run = models.dataset(run, train_data)
    _, x_general = models.dataset(general, train_data)
    held = int(models.embedder(run).info["fold"])
    rows = labelled(data, read_folds(Path(run) / "folds.csv"))
    run_id, general_id = models.embedder(run).model_id, models.embedder(general).model_id
    out, evaluations = {}, {}
    for name, members in (("run", {run_id: x_run}), ("general", {general_id: x_general}),
                          ("blend", {run_id: x_run, general_id: x_general})):
        evaluations[name] = evaluate_out_of_fold(members, rows, [held], k=K, default_quantile=None)
        report = evaluations[name].report
        out[name] = {"map5_held_out": report["map5_held_out"], "map5_in_sample": round(report["map5_in_sample"], 4),
                     "weights": report["weights"]}
    out["gain_se"] = {name: round(gain_standard_error(evaluations[name], evaluations["general"]), 4)
                      for name in ("run", "blend")}
    out["recommend"] = recommend({name: out[name]["map5_held_out"] for name in ("run", "general", "blend")},
                                 out["gain_se"])
    weights = out["blend"]["weights"]
    out["w"] = round(float(weights.get(run_id, 0.0)) / float(sum(weights.values())), 4)
    return out


def configurations(x_run: np.ndarray, x_general: np.ndarray, run_id: str, general_id: str,
                   w: float) -> dict[str, np.ndarray]:
    """`run`, `general`, `blend@w` (the OOF weight) and the fixed-weight blends, each (N, D) rows."""
    from services.core.identification.vectors import blend

    out = {"run": x_run, "general": x_general}
    for label, weight in (("blend@w", w), *((f"blend@{v}", v) for v in FIXED_WEIGHTS)):
        out[label] = blend({run_id: x_run, general_id: x_general}, {run_id: weight, general_id: 1 - weight})
    return out


def look(data, x: np.ndarray) -> dict:
    """A set no model trained on: every fold held out, one configuration's rows."""
    from services.core.identification.evaluation import evaluate_out_of_fold
    from training.general import general_folds

    folds = general_folds([r.individual_id for r in data.train])
    report = evaluate_out_of_fold({"m": x}, labelled(data, folds), sorted(set(folds.values())), k=K).report
    return {"map5_held_out": report["map5_held_out"], "map5_in_sample": round(report["map5_in_sample"], 4)}


def trained_on_split(train_data: Path, split_name: str) -> bool:
    """Whether TRAIN_DATA's images lie in a nyala split (its folder, e.g. linked into the Happywhale layout)."""
    split_dir = os.path.realpath(real_sets.NYALA / split_name.split("-", 1)[1])
    images = Path(train_data) / "train_images"
    if not images.is_dir():
        return False
    return any(os.path.realpath(p).startswith(split_dir + os.sep) for p in images.iterdir())


def measure(run: str, train_data: Path, general: str, looks: list[Path], models: Models) -> dict:
    run_id, general_id = models.embedder(run).model_id, models.embedder(general).model_id
    oof = own_fold(models, run, general, train_data)
    w = oof["w"]
    sets: dict[str, dict] = {}
    for split_name, split in real_sets.nyala_splits().items():
        if trained_on_split(train_data, split_name):
            continue
        gallery = configurations(models.paths(run, f"{split_name}-g", split.gallery),
                                 models.paths(general, f"{split_name}-g", split.gallery), run_id, general_id, w)
        queries = configurations(models.paths(run, f"{split_name}-q", split.queries),
                                 models.paths(general, f"{split_name}-q", split.queries), run_id, general_id, w)
        sets[split_name] = {"kind": "nyala", "configurations": {
            label: {key: figures[key] for key in ("map5_cross_fitted", "map5_calibrated_default", "known_top1")}
            for label in gallery for figures in [real_sets.score_open_set(split, gallery[label], queries[label])]}}
    fins = real_sets.fin_check()
    if fins is not None:
        gallery = configurations(models.paths(run, "fins-g", fins.gallery), models.paths(general, "fins-g", fins.gallery),
                                 run_id, general_id, w)
        queries = configurations(models.paths(run, "fins-q", fins.queries), models.paths(general, "fins-q", fins.queries),
                                 run_id, general_id, w)
        sets["fins"] = {"kind": "fins", "configurations": {
            label: real_sets.score_closed(fins, gallery[label], queries[label]) for label in gallery}}
    for other in looks:
        if Path(other).resolve() == Path(train_data).resolve():
            continue
        data, x_run = models.dataset(run, other)
        _, x_general = models.dataset(general, other)
        sets[Path(other).name] = {"kind": "look", "configurations": {
            label: look(data, x) for label, x in configurations(x_run, x_general, run_id, general_id, w).items()}}
    return {"run": str(run), "model_id": run_id, "train_data": str(train_data), "oof": oof, "sets": sets}


# ----------------------------------------------------------------------------- report
def table(result: dict) -> str:
    """The readable table of `main`'s result: per run, its OOF comparison, then one row per set."""
    lines = []
    if result.get("skipped"):
        lines.append(f"skipped: {result['skipped']}")
    if not result.get("runs"):
        return "\n".join(lines or ["no RUN=TRAIN_DATA given"])
    labels = ["run", "general", "blend@w", *(f"blend@{v}" for v in FIXED_WEIGHTS)]

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    for name, entry in result["runs"].items():
        oof = entry["oof"]
        lines.append(f"== {name} ({entry['model_id']}, trained on {entry['train_data']}) vs general "
                     f"({result['general_model_id']})")
        lines.append(f"own held-out fold: run {fmt(oof['run']['map5_held_out'])} / general "
                     f"{fmt(oof['general']['map5_held_out'])} / blend {fmt(oof['blend']['map5_held_out'])} "
                     f"(OOF w = {oof['w']:.2f}); gain SE run {oof['gain_se']['run']:.3f}, blend "
                     f"{oof['gain_se']['blend']:.3f}; recommends {oof['recommend']}")
        lines.append(f"{'set (figure)':<36}" + "".join(f"{label:>12}" for label in labels))
        for set_name, figures in entry["sets"].items():
            key = HEADLINE[figures["kind"]]
            lines.append(f"{f'{set_name} ({key})':<36}"
                         + "".join(f"{fmt(figures['configurations'].get(label, {}).get(key)):>12}" for label in labels))
    return "\n".join(lines)


def real_sets_skipped() -> str | None:
    """Which real sets are skipped, and why (None: all present)."""
    absent = [] if real_sets.nyala_splits() else ["nyala"]
    absent += [] if real_sets.fin_check() is not None else ["fins"]
    return f"{' and '.join(absent)}: ../shared/data absent" if absent else None


def main(argv: list[str]) -> dict:
    args = parse_args(argv)
    skipped = [s for s in (real_sets_skipped(), None if args.pairs else "no RUN=TRAIN_DATA given") if s]
    result: dict = {"runs": {}, **({"skipped": "; ".join(skipped)} if skipped else {})}
    if not args.pairs:
        if not args.json:
            print(table(result), flush=True)
        return result
    from training.general import resolve_run

    general = resolve_run(args.general)
    models = Models(args.cache)
    result.update(general=str(general), general_model_id=models.embedder(general).model_id, cache=str(args.cache),
                  looks=[str(p) for p in args.looks])
    names = [Path(run).name for run, _ in args.pairs]
    if len(set(names)) < len(names):
        raise SystemExit(f"bench blend: run folder names must differ: {names}")
    ids = [models.embedder(run).model_id for run, _ in args.pairs]
    if result["general_model_id"] in ids:
        raise SystemExit(f"bench blend: a run has the general identifier's model id {result['general_model_id']}: "
                         "a blend needs two models")
    for (run, train_data), name in zip(args.pairs, names, strict=True):
        print(f"measuring {name} ...", file=sys.stderr, flush=True)
        result["runs"][name] = measure(run, train_data, general, args.looks, models)
    if not args.json:
        print(table(result), flush=True)
    return result
