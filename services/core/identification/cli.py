"""`whaleid score`: MAP@5 of a submission (`evaluate` and `predict` need a trained model: training/identification_cli.py)."""

from __future__ import annotations

import argparse
import json


def register(subparsers) -> None:
    """Add this stage's sub-commands to `whaleid`."""
    score = subparsers.add_parser("score", help="MAP@5 of a Kaggle submission against a truth file",
                                  description="MAP@5 (Kaggle Happywhale) overall and per species.")
    score.add_argument("submission", help="CSV with columns image,predictions (up to five space-separated ids)")
    score.add_argument("--truth", required=True, help="CSV with columns image,individual_id[,species]")
    score.add_argument("--json", action="store_true", help='print {"map5": ..., "per_species": {...}}')
    score.set_defaults(func=run_score)


def run_score(args: argparse.Namespace) -> int:
    from services.core.identification.submission import format_scores, score_submission

    result = score_submission(args.submission, args.truth)
    if args.json:
        print(json.dumps({"map5": result["map5"], "per_species": result["per_species"]}, indent=2))
    else:
        print(format_scores(result["map5"], result["per_species"], result["count"]))
    return 0
