"""`whaleid evaluate` and `whaleid predict`: training's Embedder and data loader + the identification core
(services.core.identification: numpy and faiss only, which never imports training).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from services.core.errors import ConfigError, DataError
from services.core.identification.gallery import build_reference_gallery
from services.core.identification.identifier import Identifier
from services.core.identification.metrics import map_at_5, map_at_5_per_group
from services.core.identification.submission import format_scores, write_submission
from services.core.identification.threshold_choice import (
    catalogue_threshold,
    configured_quantile,
    describe_choice,
)
from services.core.identification.tuning import TUNING_FILE, Tuning
from services.core.identification.vectors import blend, combine_flip
from training.folds import FOLDS_FILE, read_folds
from training.general import general_folds, resolve_runs
from training.plots import plot_threshold_curve

log = logging.getLogger(__name__)

CURVE_FILE = "threshold_curve.png"
PROGRESS_CHUNK = 256


# ----------------------------------------------------------------------------- shared steps
def load_embedders(runs: Sequence[str], snapshot: str | None) -> list:
    from training.embed import Embedder

    embedders = [Embedder.from_run(run, snapshot) for run in runs]
    ids = [e.model_id for e in embedders]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"runs give the same model id twice ({', '.join(ids)}); blend different models")
    return embedders


def embed_images(embedder, data, images: Sequence[str], flip_tta: bool) -> np.ndarray:
    """(N, D) normalised embeddings of data set images with the eval crop; with flip TTA, averaged with the
    embeddings of the mirrored images (boxes mirrored too). Shows a progress bar on stderr."""
    from services.core.progress import ProgressBar

    source = embedder.eval_box_source
    out = []
    bar = ProgressBar(f"embedding {len(images)} images with {embedder.model_id}", len(images))
    for begin in range(0, len(images), PROGRESS_CHUNK):
        chunk = images[begin:begin + PROGRESS_CHUNK]
        boxes = [data.eval_box(image, source) for image in chunk]
        pixels = [data.load_image(image) for image in chunk]
        emb = embedder.embed_images(pixels, boxes)
        if flip_tta:
            mirrored = [np.ascontiguousarray(p[:, ::-1]) for p in pixels]
            mirrored_boxes = [None if b is None else mirror_box(b, p.shape[1]) for b, p in zip(boxes, pixels, strict=True)]
            emb = combine_flip(emb, embedder.embed_images(mirrored, mirrored_boxes))
        out.append(emb)
        bar.update(len(chunk))
    if not out:
        return np.zeros((0, embedder.embedding_size), dtype=np.float32)
    return np.concatenate(out)


def mirror_box(box, width: int):
    x0, y0, x1, y1 = box
    return (width - x1, y0, width - x0, y1)


def read_run_folds(runs: Sequence[str], individual_ids: Sequence[str] = ()) -> dict[str, int]:
    """The runs' common folds.csv; runs of the general identifier have none (they trained on no fold): with only
    those, the data's individuals in training.general.general_folds."""
    from training.config import is_general, read_saved_config

    trained = [run for run in runs if not ((Path(run) / "config.yaml").is_file()
                                           and is_general(read_saved_config(Path(run) / "config.yaml")))]
    if not trained:
        count = len(set(individual_ids))
        if count < 2:
            raise DataError(f"evaluation needs at least 2 individuals, the data has {count}")
        return general_folds(individual_ids)
    folds = None
    for run in trained:
        path = Path(run) / FOLDS_FILE
        if not path.is_file():
            raise ConfigError(f"run {run} has no {FOLDS_FILE}; is it a `whaleid train` run?")
        these = read_folds(path)
        if folds is not None and these != folds:
            raise ConfigError(f"runs {runs[0]} and {run} use different folds ({FOLDS_FILE} differ)")
        folds = these
    return folds


# ----------------------------------------------------------------------------- evaluate


def held_out_folds(runs: Sequence[str], embedders: Sequence) -> list[tuple[str, int | None]]:
    """(run, the fold its training held out; -1: none; None: every fold, the general identifier trained on no
    individual) per blended run: `whaleid train` trains on every individual of folds.csv but those of the
    config's `fold`."""
    return [(str(run), int(e.info["fold"]) if e.info.get("trained", True) else None)
            for run, e in zip(runs, embedders, strict=True)]


def folds_to_evaluate(run_folds: Sequence[tuple[str, int | None]], requested: Sequence[int] | None,
                      allow_in_fold: bool = False, all_folds: Sequence[int] = ()) -> tuple[list[int], list[int]]:
    """(folds to evaluate, those of them some run trained on). A fold is clean for a blend only if EVERY run held
    it out (a run that trained on nothing holds out `all_folds`); asked-for folds that a run trained on are
    refused unless `allow_in_fold`; by default the folds every run held out."""
    def clean(held):
        return set(all_folds) if held is None else ({held} if held >= 0 else set())

    common = set.intersection(*(clean(held) for _, held in run_folds))
    if requested:
        folds = sorted(set(requested))
        trained = [(run, held, fold) for fold in folds for run, held in run_folds
                   if held is not None and (fold != held or held < 0)]
        if trained and not allow_in_fold:
            by_run: dict[tuple[str, int], list[str]] = {}
            for run, held, fold in trained:
                by_run.setdefault((run, held), []).append(str(fold))
            named = "; ".join(f"run {run} was trained on fold {', '.join(f)} (it held out {describe_fold(held)})"
                              for (run, held), f in by_run.items())
            clean = f"fold {min(common)}" if common else "none here"
            raise ConfigError(f"{named}: those queries would be scored by a model trained on them (leakage, an "
                              f"optimistic MAP@5); evaluate a fold every run held out ({clean}), or pass "
                              "--allow-in-fold for an in-fold figure")
        return folds, sorted({fold for _, _, fold in trained})
    if common:
        return sorted(common), []
    if len(run_folds) == 1:
        raise ConfigError(f"run {run_folds[0][0]} was trained on every fold (fold -1): nothing is held out to "
                          "validate it on; pass --folds F --allow-in-fold for an optimistic in-fold figure")
    names = [f"{run} ({describe_fold(held)})" for run, held in run_folds]
    raise ConfigError(f"runs {', '.join(names[:-1])} and {names[-1]} share no held-out fold: a blend of them cannot "
                      "be validated without leakage; train them on the same fold or evaluate one run at a time")


def describe_fold(held: int) -> str:
    return f"fold {held}" if held >= 0 else "no fold: fold -1, trained on every fold"


def evaluate_command(args: argparse.Namespace) -> int:
    from services.core.identification.evaluation import LabelledImages, evaluate_out_of_fold
    from training.data import load_dataset

    data = load_dataset(args.data)
    args.runs = resolve_runs(args.runs)
    folds = read_run_folds(args.runs, [r.individual_id for r in data.train])
    missing = sorted({r.individual_id for r in data.train} - set(folds))
    if missing:
        raise DataError(f"{len(missing)} individual(s) of {args.data} are not in the run's {FOLDS_FILE} "
                        f"(another data set?): {', '.join(missing[:10])}")
    embedders = load_embedders(args.runs, args.snapshot)
    eval_folds, in_fold = folds_to_evaluate(held_out_folds(args.runs, embedders), args.folds,
                                            args.allow_in_fold, sorted(set(folds.values())))
    if in_fold:
        log.warning("folds %s were trained on by the model(s): their MAP@5 is optimistic (in-fold)", in_fold)
    images = [r.image for r in data.train]
    embeddings = {e.model_id: embed_images(e, data, images, args.flip_tta) for e in embedders}
    labelled = LabelledImages(images, [r.individual_id for r in data.train], [r.species for r in data.train],
                              np.array([folds[r.individual_id] for r in data.train]),
                              [r.viewpoint for r in data.train])
    def evaluate(by_model: dict, quantile: float):
        return evaluate_out_of_fold(by_model, labelled, eval_folds, k=args.k, per_species=not args.no_per_species,
                                    flip_tta=args.flip_tta, references=getattr(args, "references", "photos"),
                                    validation=getattr(args, "validation", "fold"), default_quantile=quantile)

    evaluation = evaluate(embeddings, default_quantile(embedders[0]))
    report = {**evaluation.report, "in_fold": in_fold, "runs": [str(r) for r in args.runs]}
    served = evaluation
    if getattr(args, "compare", "general") == "general" and any(e.info.get("trained", True) for e in embedders):
        report["comparison"], served = compare_with_general(report, data, images, args.flip_tta, evaluate,
                                                            embeddings, evaluation)
    served.tuning.validation["in_fold"] = in_fold
    if getattr(args, "rerank", "none") == "sift":
        from training.rerank_commands import tune_for_evaluate

        report["rerank"] = tune_for_evaluate(data, images, labelled, eval_folds, embeddings, served, embedders,
                                             args.k, getattr(args, "references", "photos"),
                                             getattr(args, "validation", "fold"))
    out_dir = tuning_dir(args.runs[0], embedders, args.data)
    tuning_path = served.tuning.save(out_dir / TUNING_FILE)
    curve = plot_threshold_curve(served.sweep, out_dir / CURVE_FILE,
                                 title="out-of-fold MAP@5 vs new_individual threshold "
                                       f"({', '.join(served.tuning.served_weights())})",
                                 extra=served.fold_sweeps)
    report.update(tuning_file=str(tuning_path), threshold_curve=str(curve),
                  serves={"weights": served.tuning.served_weights(), "members": served.tuning.members,
                          "threshold": served.tuning.threshold})
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_evaluation(report))
    return 0


def compare_with_general(report: dict, data, images: Sequence[str], flip_tta: bool, evaluate,
                         embeddings: dict | None = None, evaluation=None) -> tuple[dict, object]:
    """The general identifier (training/general.py) alone and blended with the trained run(s) (score-level blend,
    vectors.blend, weights tuned out of fold on a grid from 0 = the run(s) alone to 1 = the general identifier
    alone), on the same folds, queries and settings as the run(s); which of run / general / blend to serve: the
    highest held-out (cross-fitted) MAP@5 (evaluation.recommend: a tie goes to the general identifier, then the
    run). Returns (the comparison, the Evaluation to serve: its tuning names the general member in `members`)."""
    from services.core.identification.evaluation import NOISE_Z, gain_standard_error, recommend
    from training.embed import Embedder

    general = Embedder.from_run(resolve_runs(["general"])[0])
    general_embeddings = embed_images(general, data, images, flip_tta)
    alone = evaluate({general.model_id: general_embeddings}, default_quantile(general))
    other = alone.report
    evaluations = {"run": evaluation, "general": alone}
    held_out = {"run": float(report["map5_held_out"]), "general": float(other["map5_held_out"])}
    comparison = {"general_model_id": general.model_id, "general_run": str(general.info["run"])}
    if embeddings is not None and general.model_id not in embeddings:
        blended = evaluate({**embeddings, general.model_id: general_embeddings}, default_quantile(general))
        evaluations["blend"] = blended
        held_out["blend"] = float(blended.report["map5_held_out"])
        comparison.update(blend_weights=blended.report["weights"],
                          blend_weights_held_out=blended.report["held_out"].get("weights"),
                          blend_threshold=blended.report["threshold"])
    errors = {name: round(gain_standard_error(e, alone), 4) for name, e in evaluations.items()
              if name != "general" and e is not None}
    choice = recommend(held_out, errors)
    comparison.update({
        "map5_held_out": held_out,
        "gain_standard_error": errors, "noise_z": NOISE_Z,
        "map5_in_sample": {"run": report["map5_in_sample"], "general": other["map5_in_sample"],
                           **({"blend": evaluations["blend"].report["map5_in_sample"]} if "blend" in evaluations
                              else {})},
        "known_top1_right": {"run": report.get("known_top1_right"), "general": other.get("known_top1_right")},
        "general_threshold": other["threshold"], "general_threshold_choice": other["threshold_choice"],
        "recommend": choice,
    })
    served = evaluations.get(choice) or evaluation
    if served is not None and choice != "run":
        served.tuning.members = {general.model_id: GENERAL_MEMBER}
        served.tuning.weights = {**{m: 0.0 for m in embeddings or {}}, **served.tuning.weights}  # run(s) 0: dropped
    if served is not None:
        served.tuning.validation["comparison"] = {"recommend": choice, "map5_held_out": held_out,
                                                  "gain_standard_error": errors}
    return comparison, served


GENERAL_MEMBER = "general"  # tuning.members: the general identifier, resolved by training.general.resolve_runs


def default_quantile(embedder) -> float:
    return configured_quantile(embedder.info.get("config", {}))


def format_evaluation(report: dict) -> str:
    tuned = "threshold/weights" if len(report["weights"]) > 1 else "threshold"
    choice = report.get("threshold_choice") or {}
    lines = []
    if choice:  # the run's own threshold; the last lines say what tuning.json serves when evaluate recommends other
        serves = report.get("serves")
        other = serves is not None and serves["weights"] != {m: w for m, w in report["weights"].items() if w > 0}
        lines.append(f"{'this run' if other else 'served'}: {describe_choice(choice)}")
    lines += [
        f"out-of-fold MAP@5 (held out: {tuned} tuned on one half of the queries, split by individual, scored on "
        f"the other): {report['map5_held_out']:.4f}",
        f"out-of-fold MAP@5 (in-sample: {tuned} tuned on these queries): {report['map5_in_sample']:.4f} "
        f"at threshold {report['threshold']:.2f} "
        f"({report['queries']} queries, {100 * report['new_individual_share']:.0f}% new individuals)",
        f"  with per-species thresholds (in-sample): {report['map5_per_species_thresholds']:.4f}",
        f"  never new_individual first (threshold 0): {report['map5_threshold_0']:.4f}; "
        f"always (threshold 1): {report['map5_threshold_1']:.4f}",
        "  per fold (in-sample threshold): " + ", ".join(f"{f}: {v:.4f}" for f, v in report["per_fold"].items())
        + (f" (in-fold, trained on: {report['in_fold']})" if report.get("in_fold") else ""),
    ]
    if len(report["weights"]) > 1:
        lines.append("  blend weights (tuned on these queries): " + ", ".join(f"{m}={w:.2f}" for m, w in report["weights"].items()))
    if report["per_species"]:
        width = max(len(name) for name in report["per_species"])
        lines.append("  per species (in-sample threshold):")
        lines += [f"    {name:<{width}}  {value:.4f}" for name, value in report["per_species"].items()]
    comparison = report.get("comparison")
    if comparison:
        held = comparison["map5_held_out"]
        blended = (f", {held['blend']:.4f} (blend of both, weights tuned out of fold: "
                   + ", ".join(f"{m}={w:.2f}" for m, w in comparison["blend_weights"].items()) + ")"
                   if "blend" in held else "")
        advice = {"run": "serve this run",
                  "general": f"serve the general identifier ({comparison['general_run']}): fine-tuning did not beat "
                             "it here",
                  "blend": "serve the blend of this run and the general identifier"}[comparison["recommend"]]
        errors = comparison.get("gain_standard_error") or {}
        noise = ("; standard error of the gains over the general identifier: "
                 + ", ".join(f"{name} {value:.4f}" for name, value in errors.items())
                 + f" (a gain under {comparison.get('noise_z', 1.0):g} of them is a tie, which the general identifier "
                 "wins)") if errors else ""
        lines.append(f"compared with the general identifier {comparison['general_model_id']} on the same folds: "
                     f"MAP@5 held out {held['run']:.4f} (this run) vs {held['general']:.4f} (general){blended}"
                     f"{noise}: {advice}")
    serves = report.get("serves")
    if serves:
        lines.append(f"{report['tuning_file']} serves {describe_served(serves['weights'])} at threshold "
                     f"{serves['threshold']:.3f}; `predict`, `gallery build` and `model-repo build` with this run "
                     "serve it" + (" (the general identifier loaded automatically)" if serves["members"] else ""))
    lines += [f"tuning: {report['tuning_file']}", f"threshold curve: {report['threshold_curve']}"]
    return "\n".join(lines)


def describe_served(weights: dict[str, float]) -> str:
    """`lite0-f0-e012 alone` or `the blend lite0-f0-e012 0.30 + general-lite2-384 0.70`."""
    if len(weights) == 1:
        return f"{next(iter(weights))} alone"
    total = sum(weights.values())
    return "the blend " + " + ".join(f"{m} {w / total:.2f}" for m, w in weights.items())


# ----------------------------------------------------------------------------- predict
def predict_command(args: argparse.Namespace) -> int:
    from training.data import load_dataset

    data = load_dataset(args.data)
    if not data.test_images:
        raise DataError(f"{args.data}: no test images to predict")
    args.runs = resolve_runs(args.runs)
    embedders = load_embedders(args.runs, args.snapshot)
    tuning, origin = tuning_for(args, embedders)
    embedders = served_embedders(embedders, tuning)
    model_ids = [e.model_id for e in embedders]
    weights = tuning.served_weights() if tuning is not None and len(embedders) > 1 else {model_ids[0]: 1.0}
    print(f"serving {describe_served(weights)}", flush=True)
    flip_tta = tuning.flip_tta if tuning is not None else False
    unknown = sorted(set(model_ids) - set(weights))
    if unknown:
        raise ConfigError(f"the tuning file has no blend weight for {', '.join(unknown)} "
                          f"(it has {', '.join(weights) or 'none'}): run `whaleid evaluate` with these runs")
    train_images = [r.image for r in data.train]
    gallery_emb = blend({e.model_id: embed_images(e, data, train_images, flip_tta) for e in embedders}, weights)
    test_emb = blend({e.model_id: embed_images(e, data, data.test_images, flip_tta) for e in embedders}, weights)
    references = (getattr(args, "references", None) or (tuning.validation.get("references") if tuning else None)
                  or "photos")
    if tuning is None:
        threshold = catalogue_threshold(gallery_emb, [r.individual_id for r in data.train],
                                        default_quantile(embedders[0]), references,
                                        [r.viewpoint for r in data.train])
        tuning = Tuning(threshold=threshold if threshold is not None else 0.5)
        origin = f"threshold {tuning.threshold:.3f}, {origin}"
    print(f"{', '.join(model_ids)}: {origin}", flush=True)
    gallery = build_reference_gallery(gallery_emb, [r.individual_id for r in data.train],
                                      [r.species for r in data.train], train_images, references, model_ids=model_ids,
                                      viewpoints=[r.viewpoint for r in data.train])
    if tuning.rerank:
        from training.rerank_commands import identify_reranked

        print(f"re-ranking by SIFT inliers: weight {tuning.rerank['weight']}, top {tuning.rerank['k']} individuals "
              "(tuning.json `rerank`)", flush=True)
        predictions = identify_reranked(Identifier(gallery, tuning), test_emb, data, train_images, data.test_images,
                                        embedders[0].eval_box_source, args.new_share)
    else:
        predictions = Identifier(gallery, tuning).identify(test_emb, new_share=args.new_share)
    labels = [[label for label, _ in p] for p in predictions]
    path = write_submission(args.out, data.test_images, labels)
    new_first = np.mean([p[0] == "new_individual" for p in labels])
    print(f"wrote {path}: {len(labels)} images, new_individual first for {100 * new_first:.0f}%")
    truth = truth_of(args, data)
    if truth is not None:
        ids, species = truth
        per_species = map_at_5_per_group(labels, ids, species)
        print(format_scores(map_at_5(labels, ids), per_species, len(ids)))
    return 0


def served_embedders(embedders: list, tuning: Tuning | None) -> list:
    """The embedders a tuning serves: the given ones with weight > 0, plus the members it names that were not given
    (tuning.members, e.g. the general identifier that `evaluate` recommended alone or blended with the run)."""
    if tuning is None or not tuning.weights:
        return embedders
    from training.embed import Embedder

    weights = tuning.served_weights()
    given = {e.model_id: e for e in embedders}
    missing = [m for m in weights if m not in given and m not in tuning.members]
    if missing or not weights:
        return embedders  # predict_command names the missing weights
    served = []
    for model_id in weights:
        embedder = given.get(model_id) or Embedder.from_run(resolve_runs([tuning.members[model_id]])[0])
        if embedder.model_id != model_id:
            raise ConfigError(f"the tuning file's member {tuning.members[model_id]} is model {embedder.model_id}, "
                              f"not {model_id}: run `whaleid evaluate` again")
        served.append(embedder)
    return served


def tuning_dir(run: str | Path, embedders, data_dir: str | Path) -> Path:
    """Where `evaluate` writes, and `predict` reads, the tuning (tuning.json, the threshold curve) of `run`: a
    trained run's own folder (it belongs to the catalogue it was trained on); for the general identifier first,
    which serves every catalogue, a folder per catalogue, RUN/catalogues/<data folder's name>-<hash of its absolute
    path>, so that evaluating two catalogues does not overwrite one threshold with the other."""
    if embedders[0].info.get("trained", True):
        return Path(run)
    data = Path(data_dir).resolve()
    return Path(run) / "catalogues" / f"{data.name}-{hashlib.sha256(str(data).encode()).hexdigest()[:10]}"


def tuning_for(args: argparse.Namespace, embedders) -> tuple[Tuning | None, str]:
    """(the tuning predict serves, a line saying which threshold and where it came from): --tuning, else the first
    run's tuning.json; a run of the general identifier without one: (None, ...), the calibrated default on the
    gallery."""
    path = Path(args.tuning) if args.tuning else tuning_dir(args.runs[0], embedders, args.data) / TUNING_FILE
    if args.tuning or path.is_file() or embedders[0].info.get("trained", True) or len(embedders) > 1:
        tuning = Tuning.load(path)
        choice = tuning.validation.get("threshold_choice")
        how = describe_choice(choice) if choice else f"threshold {tuning.threshold:.3f}"
        return tuning, f"{how}, from {path}"
    return None, (f"the calibrated default threshold (no {TUNING_FILE} for this catalogue in {path.parent}: the "
                  f"{default_quantile(embedders[0])} quantile of the gallery's impostor scores; `whaleid evaluate "
                  "--run general` tunes one on your catalogue)")


def truth_of(args: argparse.Namespace, data):
    """(individual_ids, species) of the test images from --truth, else from the data set's test_truth.csv."""
    if args.truth:
        from services.core.identification.submission import read_truth

        truth = read_truth(args.truth)
        by_image = dict(zip(truth.images, zip(truth.individual_ids, truth.species or [""] * len(truth.images),
                                               strict=True), strict=True))
    elif data.truth is not None:
        by_image = {row.image: (row.individual_id, row.species) for row in data.truth}
    else:
        return None
    missing = [image for image in data.test_images if image not in by_image]
    if missing:
        raise DataError(f"the truth has no row for {len(missing)} test image(s): {', '.join(missing[:10])}")
    rows = [by_image[image] for image in data.test_images]
    return [r[0] for r in rows], [r[1] for r in rows]
