"""`whaleid evaluate | predict`: a trained model's out-of-fold MAP@5 and tuning, and a Kaggle submission
(training's embedder + the identification core; TensorFlow is imported only when they run)."""

from __future__ import annotations

import argparse

from services.core.identification.evaluation import VALIDATIONS
from services.core.identification.gallery import REFERENCES


def register(subparsers) -> None:
    """Add `evaluate` and `predict` to `whaleid`."""
    evaluate = subparsers.add_parser(
        "evaluate", help="out-of-fold MAP@5 of trained run(s); tunes the new_individual threshold(s) and weights",
        description="Embeds the training images with each run's model, ranks each validation fold against a gallery "
                    "of the other images, tunes the new_individual threshold (global and per species) and, for "
                    "several runs, the blend weights; writes RUN/tuning.json and RUN/threshold_curve.png "
                    "(the general identifier: RUN/catalogues/<data folder>-<hash>/, one per catalogue).")
    evaluate.add_argument("--data", required=True, help="data set directory (Happywhale layout)")
    evaluate.add_argument("--run", required=True, action="append", dest="runs",
                          help="training run directory, or `general`: the general identifier, no training (repeat to blend "
                               "several models; the first gets the files)")
    evaluate.add_argument("--snapshot", default=None, help="snapshot epoch of every run (default: the last)")
    evaluate.add_argument("--folds", type=int, nargs="+", default=None,
                          help="folds to evaluate (default: the fold every run held out from training; a fold "
                               "some run trained on is refused)")
    evaluate.add_argument("--allow-in-fold", action="store_true",
                          help="evaluate --folds that a run trained on anyway (optimistic, reported as in_fold)")
    evaluate.add_argument("--k", type=int, default=50, help="nearest neighbours per query (default 50)")
    evaluate.add_argument("--no-per-species", action="store_true", help="tune only the global threshold")
    evaluate.add_argument("--flip-tta", action="store_true", help="average each image's and its mirror's embedding")
    evaluate.add_argument("--references", choices=REFERENCES, default="photos",
                          help="gallery rows of every validation gallery: one per photo (the paper's, default) or one "
                               "mean per individual (what `gallery build` serves) or per (individual, viewpoint hint: a `viewpoint` "
                               "column or left/right in the file name); recorded in tuning.json")
    evaluate.add_argument("--validation", choices=VALIDATIONS, default="fold",
                          help="fold: held-out individuals against the other folds (Kaggle's test, default); live: "
                               "also held-out photos of trained individuals, weighted as a live stream "
                               "(what `gallery build` tunes with)")
    evaluate.add_argument("--compare", choices=("general", "none"), default="general",
                          help="general (default): also score the general identifier (`--run general`, no training) on "
                               "the same folds and say which to serve; none: skip it")
    evaluate.add_argument("--rerank", choices=("none", "sift"), default="none",
                          help="sift: also tune local-feature re-ranking (SIFT inliers with the top individuals' "
                               "photos fused with the score, weight and threshold out of fold); served by predict "
                               "from tuning.json `rerank`")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.set_defaults(func=run_evaluate)

    predict = subparsers.add_parser(
        "predict", help="Kaggle submission for every image of test_images/ (gallery: all training images)",
        description="Embeds train and test images with the run(s), identifies every test image with the run's "
                    "tuning.json (threshold(s), blend weights, flip TTA) and writes image,predictions.")
    predict.add_argument("--data", required=True, help="data set directory (Happywhale layout)")
    predict.add_argument("--run", required=True, action="append", dest="runs",
                         help="training run directory, or `general`: the general identifier, no training (repeat for a "
                              "blend; tuning.json is read from the first)")
    predict.add_argument("--snapshot", default=None, help="snapshot epoch of every run (default: the last)")
    predict.add_argument("--out", required=True, help="submission CSV to write")
    predict.add_argument("--tuning", default=None, help="tuning.json to use (default: FIRST_RUN/tuning.json; the general "
                         "identifier: the one `evaluate` wrote for this --data)")
    predict.add_argument("--new-share", type=float, default=None,
                         help="instead of the tuned threshold: one threshold putting new_individual first for "
                              "this share of the test images (binary search)")
    predict.add_argument("--references", choices=REFERENCES, default=None,
                         help="gallery rows: one per photo, one mean per individual or per (individual, viewpoint) "
                              "(default: as the tuning file "
                              "was tuned, else photos)")
    predict.add_argument("--truth", default=None, help="also score the submission against this truth file")
    predict.set_defaults(func=run_predict)


def run_evaluate(args: argparse.Namespace) -> int:
    from training.identification_commands import evaluate_command

    return evaluate_command(args)


def run_predict(args: argparse.Namespace) -> int:
    from training.identification_commands import predict_command

    return predict_command(args)
