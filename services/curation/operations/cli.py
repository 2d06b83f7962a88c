"""`whaleid reindex [--dry-run] [--json]`, `whaleid gallery list|current|rollback|publish|build`,
`whaleid confirmations show SIGHTING`."""

from __future__ import annotations

import json
import time


def register(subparsers) -> None:
    p = subparsers.add_parser("reindex", help="add confirmed sightings to a new gallery version and serve it")
    p.add_argument("--dry-run", action="store_true", help="report what would be added; write nothing")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--re-embed", action="store_true",
                   help="the model changed: embed the whole catalogue and every confirmed sighting's photo again "
                        "with --run's model (progress bars), re-tune the threshold as `gallery build` does, "
                        "publish a new version and serve it")
    p.add_argument("--run", help="with --re-embed: the training run whose model embeds everything (required)")
    kept = p.add_mutually_exclusive_group()
    kept.add_argument("--keep-threshold", action="store_true",
                      help="with --re-embed: keep the served version's tuned threshold instead of re-tuning")
    kept.add_argument("--tuning", metavar="FILE", help="with --re-embed: take the threshold from this tuning.json")
    kept.add_argument("--tuning-run", metavar="FOLD_RUN",
                      help="with --re-embed: tune with this fold run and transfer the threshold to --run")
    p.add_argument("--no-switch", action="store_true", help="with --re-embed: publish only; do not move the pointer")
    p.set_defaults(func=_reindex)

    g = subparsers.add_parser("gallery", help="gallery versions in the model store")
    gsub = g.add_subparsers(dest="gallery_command", metavar="ACTION", required=True)
    for name, func, text in (("list", _list, "list complete versions (the served one is marked *)"),
                             ("current", _current, "show the `current` pointer"),
                             ("rollback", _rollback, "point back to the previous version")):
        sp = gsub.add_parser(name, help=text)
        sp.add_argument("--json", action="store_true")
        sp.set_defaults(func=func)
    sp = gsub.add_parser("publish", help="upload a saved gallery directory (with tuning.json) as a new version")
    sp.add_argument("directory", help="directory written by Gallery.save, containing tuning.json (and "
                                      "local_features.bin, the gallery photos' keypoints for re-ranking, when made)")
    sp.add_argument("--no-switch", action="store_true", help="upload only; do not move the pointer")
    sp.add_argument("--without-local-features", action="store_true",
                    help="publish without local_features.bin although re-ranking is wanted (the setting "
                         "rerank_local_features, or tuning.json's rerank): the matcher then ranks by the embedding")
    sp.set_defaults(func=_publish)
    sp = gsub.add_parser("build", help="embed the catalogue with a training run, tune the threshold, publish a "
                                       "new version and serve it")
    sp.add_argument("--run", default="general",
                    help="the training run whose model embeds the catalogue (served); default `general`: the general "
                         "identifier, no training (training/general.py)")
    tuning = sp.add_mutually_exclusive_group()
    tuning.add_argument("--tuning", metavar="FILE", help="take the threshold from this tuning.json (e.g. the fold "
                                                         "run's for a final fit) instead of tuning")
    tuning.add_argument("--tuning-run", metavar="FOLD_RUN",
                        help="tune with this run (one that held a fold out) and transfer the threshold to --run "
                             "(a final fit), as the demo does")
    sp.add_argument("--no-switch", action="store_true", help="publish only; do not move the pointer")
    sp.add_argument("--json", action="store_true", help="print the summary as JSON")
    sp.set_defaults(func=_build)

    c = subparsers.add_parser("confirmations", help="researchers' confirmations")
    csub = c.add_subparsers(dest="confirmations_command", metavar="ACTION", required=True)
    sp = csub.add_parser("show", help="a sighting's confirmation and its audit trail")
    sp.add_argument("sighting_id")
    sp.set_defaults(func=_show_confirmation)


def _settings():
    from services.core.settings import load_settings

    return load_settings()


def _store(settings):
    from services.curation.operations.gallery_versions import GalleryStore

    return GalleryStore.from_settings(settings)


def _redis(settings):
    import redis

    from services.core.errors import ConfigError

    if not settings.redis_url:
        raise ConfigError("redis_url is not set (WHALEID_REDIS_URL, or `whaleid stack up` for the local stack)")
    return redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=5)


def _stamp(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(seconds)) if seconds else "-"


def _reindex(args) -> int:
    from services.curation.operations.reindex import reindex

    if args.re_embed or any(_re_embed_options(args)):
        return _re_embed(args)
    settings = _settings()
    report = reindex(_store(settings), _redis(settings), dry_run=args.dry_run,
                     sightings_bucket=settings.sightings_bucket)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        verb = "would add" if args.dry_run else "added"
        print(f"{report.previous_version} -> {report.new_version or '(unchanged)'}: {verb} {len(report.added)} "
              f"confirmed sighting(s), {len(report.new_individuals)} new individual(s); "
              f"{report.size} embeddings, {report.individuals} individuals")
        for sighting_id, reason in report.skipped.items():
            print(f"  skipped {sighting_id}: {reason}")
        if report.local_features is not None:  # the re-ranking's bank (docs/identification.md)
            features = report.local_features
            print(f"local features: {features['photos']} photos, {len(features['added'])} of the added sighting(s) "
                  f"in, {len(features['skipped'])} not" + "".join(
                      f"\n  no local features for {s}: {why}" for s, why in features["skipped"].items()))
    return 1 if report.skipped else 0


def _re_embed_options(args) -> list[str]:
    return [flag for flag, value in (("--run", args.run), ("--keep-threshold", args.keep_threshold),
                                     ("--tuning", args.tuning), ("--tuning-run", args.tuning_run),
                                     ("--no-switch", args.no_switch)) if value]


def _re_embed(args) -> int:
    import sys
    from pathlib import Path

    from services.core.errors import ConfigError

    if not args.re_embed:
        raise ConfigError(f"{', '.join(_re_embed_options(args))}: only with `whaleid reindex --re-embed --run RUN`")
    if not args.run:
        raise ConfigError("--re-embed needs --run RUN: the training run whose model embeds the catalogue and the "
                          "confirmed sightings")
    if args.dry_run:
        raise ConfigError("--re-embed has no --dry-run (it embeds everything); use `whaleid reindex --dry-run` to "
                          "see the confirmed sightings, `whaleid catalogue import --dry-run` for the catalogue")
    if not args.verbose:
        from services.cli.main import TENSORFLOW_LOG, import_tensorflow_quietly

        import_tensorflow_quietly(TENSORFLOW_LOG)
    from services.curation.catalogue.re_embed import re_embed

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    settings = _settings()
    summary = re_embed(settings, Path(args.run), keep_threshold=args.keep_threshold,
                       tuning_path=Path(args.tuning) if args.tuning else None,
                       tuning_run=Path(args.tuning_run) if args.tuning_run else None, progress=say,
                       move_pointer=not args.no_switch)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{summary['previous_version']} -> {summary['version']}: re-embedded {summary['photos']} catalogue "
              f"photos and {summary['sightings_added']} confirmed sighting(s) with {summary['model_id']}; "
              f"{summary['size']} embeddings, {summary['individuals']} individuals, threshold "
              f"{summary['threshold']:.3f} {summary['tuning_source']}" + ("" if args.no_switch else "; now current"))
        for sighting_id, reason in summary["skipped"].items():
            print(f"  skipped {sighting_id}: {reason}")
    return 1 if summary["skipped"] else 0


def _list(args) -> int:
    store = _store(_settings())
    versions = store.list_versions()
    current = store.current_version()
    if args.json:
        print(json.dumps({"current": current, "versions": versions}, indent=2))
        return 0
    if not versions:
        print("no gallery versions")
    for v in versions:
        mark = "*" if v["version"] == current else " "
        print(f"{mark} {v['version']}  {_stamp(v.get('created_at', 0))}  size={v.get('size')} "
              f"individuals={v.get('individuals')} +{len(v.get('added_sightings', []))} parent={v.get('parent')}")
    return 0


def _print_pointer(pointer, as_json: bool) -> None:
    if as_json:
        print(json.dumps(pointer.__dict__, indent=2))
    else:
        print(f"current: {pointer.version} (since {_stamp(pointer.updated_at)}, {pointer.reason}); "
              f"last re-index {_stamp(pointer.reindexed_at)}; previous: {', '.join(pointer.history[:3]) or '-'}")


def _current(args) -> int:
    from services.curation.operations.gallery_versions import ModelStoreError

    pointer = _store(_settings()).pointer()
    if pointer is None:
        raise ModelStoreError("no gallery version is published yet")
    _print_pointer(pointer, args.json)
    return 0


def _rollback(args) -> int:
    _print_pointer(_store(_settings()).rollback(), args.json)
    return 0


def _publish(args) -> int:
    from pathlib import Path

    from services.core.identification.gallery import Gallery
    from services.curation.operations.publish import TUNING_FILE, directory_bank, publish_gallery

    directory = Path(args.directory)
    settings = _settings()
    store = _store(settings)
    gallery = Gallery.load(directory)
    bank = directory_bank(directory, settings, args.without_local_features)
    version = publish_gallery(store, gallery, directory / TUNING_FILE, reason=f"published from {directory}",
                              parent=store.current_version(), move_pointer=not args.no_switch,
                              extra_files=[bank] if bank else [])
    print(f"published {version} ({len(gallery)} embeddings{', with its local features' if bank else ''})"
          f"{'' if args.no_switch else '; now current'}")
    return 0


def _build(args) -> int:
    import sys
    from pathlib import Path

    from services.curation.catalogue.gallery_build import publish_catalogue_gallery

    if not args.verbose:
        from services.cli.main import TENSORFLOW_LOG, import_tensorflow_quietly

        import_tensorflow_quietly(TENSORFLOW_LOG)

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    summary = publish_catalogue_gallery(_settings(), args.run, Path(args.tuning) if args.tuning else None,
                                        Path(args.tuning_run) if args.tuning_run else None, progress=say,
                                        move_pointer=not args.no_switch)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"published {summary['version']} ({summary['size']} embeddings of {summary['individuals']} "
              f"individuals from {summary['photos']} catalogue photos, {summary['model_id']}, threshold "
              f"{summary['threshold']:.3f} {summary['tuning_source']})"
              + ("" if args.no_switch else "; now current"))
    return 0


def _show_confirmation(args) -> int:
    from services.curation.operations.confirmations import audit_trail, stored_confirmation

    redis = _redis(_settings())
    conf = stored_confirmation(redis, args.sighting_id)
    print(json.dumps({"confirmation": conf.asdict() if conf else None,
                      "audit": audit_trail(redis, args.sighting_id)}, indent=2))
    return 0 if conf else 1
