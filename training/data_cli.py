"""`whaleid synth OUT ...` (synthetic Happywhale data) and `whaleid baseline DATA` (pixel / histogram kNN)."""

from __future__ import annotations

import argparse
import json


def _synth(args) -> int:
    from training.synth import generate

    if args.scenes:
        return _scenes(args)
    if args.individuals is None:
        from services.core.errors import ConfigError

        raise ConfigError("synth: --individuals is required (unless --scenes N)")
    summary = generate(
        args.out, individuals=args.individuals, seed=args.seed, species=args.species, image_size=args.image_size,
        test_new_share=args.test_new_share, max_photos=args.max_photos, misspelt_share=args.misspelt_share,
        jpeg_quality=args.jpeg_quality, zipf_a=args.zipf_a, nuisance=args.nuisance, overwrite=args.overwrite,
        preview=not args.no_preview, style=args.style, progress=True,
    )
    print(json.dumps(summary, indent=2))
    return 0


def _scenes(args) -> int:
    from training.synth.scenes import generate_scenes

    summary = generate_scenes(args.out, args.scenes, seed=args.seed, image_size=args.image_size, looks=args.look,
                              individuals=args.individuals or 24, jpeg_quality=args.jpeg_quality,
                              overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def _baseline(args) -> int:
    from training.baseline import pixel_baseline_map5

    result = pixel_baseline_map5(args.data, box_source=args.box_source or None)
    print(json.dumps(result, indent=2))
    return 0


def register(subparsers) -> None:
    """Add `synth` and `baseline` to `whaleid`."""
    from training.synth.render import NUISANCE_PRESETS
    from training.synth.species import SPECIES
    from training.synth.styles import STYLE_NAMES

    synth = subparsers.add_parser(
        "synth", help="write a synthetic Happywhale data set (deterministic by seed)",
        description="Write a synthetic Happywhale-style data set in the Kaggle layout (train.csv, train_images/, "
                    "test_images/, sample_submission.csv, test_truth.csv, boxes.csv, dataset.json, preview.png).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    synth.add_argument("out", help="output directory")
    synth.add_argument("--individuals", type=int,
                       help="number of individuals (seen + new); required, except with --scenes (default 24 there)")
    synth.add_argument("--seed", type=int, default=0, help="random seed; same seed -> identical files")
    synth.add_argument("--species", type=int, default=len(SPECIES), help=f"number of species (1..{len(SPECIES)})")
    synth.add_argument("--image-size", type=int, default=192, help="photo width in pixels (height = 2/3 of it)")
    synth.add_argument("--test-new-share", type=float, default=0.3,
                       help="share of test images showing individuals absent from train")
    synth.add_argument("--max-photos", type=int, default=12, help="most photos of one individual")
    synth.add_argument("--zipf-a", type=float, default=1.8, help="Zipf exponent of photos per individual (> 1)")
    synth.add_argument("--misspelt-share", type=float, default=0.05,
                       help="share of train labels written with the Kaggle misspellings (fixed by the loader)")
    synth.add_argument("--nuisance", choices=sorted(NUISANCE_PRESETS), default="normal",
                       help="how much pose, light and view vary between photos (easy: milder, so even the pixel baseline "
                            "scores higher; hard: stronger, with mirrored photos)")
    synth.add_argument("--style", choices=STYLE_NAMES, default="photo",
                       help="the look of the photos: sea, sky, colour, camera effects (photo: the original look; "
                            "grey: grey-scale, strong contrast; overcast: washed-out, hazy, green-brown water, "
                            "noisy; textured: procedural sea texture and camera effects; random: a style, grey or "
                            "colour and camera strengths drawn per photo)")
    synth.add_argument("--scenes", type=int, metavar="N",
                       help="write N full scenes for the crop detector instead (OUT/scenes/, scene_boxes.csv with "
                            "every animal's true box, scenes.json): one or more animals, some partly out of frame, "
                            "some water only")
    synth.add_argument("--look", default="photo,grey,overcast",
                       help="with --scenes: the looks (styles, comma-separated), one drawn per scene; the "
                            "detector's held-out look is textured")
    synth.add_argument("--jpeg-quality", type=int, default=90)
    synth.add_argument("--overwrite", action="store_true", help="replace a data set already in OUT")
    synth.add_argument("--no-preview", action="store_true", help="skip preview.png")
    synth.set_defaults(func=_synth)

    baseline = subparsers.add_parser(
        "baseline", help="MAP@5 of raw-pixel and colour-histogram nearest-neighbour baselines on a data set",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    baseline.add_argument("data", help="data set directory (Kaggle layout with test_truth.csv)")
    baseline.add_argument("--box-source", default="fullbody",
                          help="crop with this box source when present (empty: whole image)")
    baseline.set_defaults(func=_baseline)
