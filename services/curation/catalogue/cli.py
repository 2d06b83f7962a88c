"""`whaleid catalogue import SRC [--format folders|kaggle|csv] [--json] [--dry-run]`, `whaleid catalogue status`."""

from __future__ import annotations

import json
import sys

from services.curation.catalogue.sources import FORMATS

SHOWN_BAD_ROWS = 50


def register(subparsers) -> None:
    c = subparsers.add_parser("catalogue", help="the researcher's catalogue of known individuals (photos in S3)")
    csub = c.add_subparsers(dest="catalogue_command", metavar="ACTION", required=True)
    sp = csub.add_parser("import", help="import a catalogue: a folder per individual, a Kaggle train.csv + "
                                        "train_images/, or a CSV of image,individual_id[,species][,encounter]"
                                        "[,date][,latitude,longitude]")
    sp.add_argument("src", help="the folder or CSV file to import")
    sp.add_argument("--format", choices=FORMATS, help="the layout of SRC (default: detected)")
    sp.add_argument("--dry-run", action="store_true", help="validate and report; store nothing")
    sp.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    sp.add_argument("--json", action="store_true", help="print the report as JSON")
    sp.set_defaults(func=_import)
    sp = csub.add_parser("status", help="photos and individuals in the catalogue")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=_status)


def _store():
    from services.core.settings import load_settings
    from services.curation.catalogue.photo_bucket import CatalogueStore

    return CatalogueStore.from_settings(load_settings())


def _import(args) -> int:
    from services.curation.catalogue.importer import import_catalogue

    report = import_catalogue(args.src, _store(), args.format, progress=not args.no_progress and not args.json,
                              dry_run=args.dry_run)
    data = report.as_dict()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        for warning in data["warnings"][:SHOWN_BAD_ROWS]:
            print(f"  warning {warning['where']}: {warning['reason']}", file=sys.stderr)
        for bad in data["bad"][:SHOWN_BAD_ROWS]:
            print(f"  bad row {bad['where']}: {bad['reason']}", file=sys.stderr)
        if len(data["bad"]) > SHOWN_BAD_ROWS:
            print(f"  ... and {len(data['bad']) - SHOWN_BAD_ROWS} more bad row(s) (--json lists them all)",
                  file=sys.stderr)
        print(f"{'checked' if args.dry_run else 'imported'} {report.source} ({report.format}): {report.rows} row(s), "
              f"{report.added} added, {report.updated} updated, {report.unchanged} unchanged, {len(report.bad)} bad; "
              f"{report.photos_stored} photo(s) stored; catalogue: {report.catalogue_photos} photos of "
              f"{report.individuals} individuals ({report.seconds:.1f}s)")
    return 1 if report.bad else 0


def _status(args) -> int:
    store = _store()
    records = store.records()
    individuals: dict[str, int] = {}
    for record in records.values():
        individuals[record["individual_id"]] = individuals.get(record["individual_id"], 0) + 1
    data = {"bucket": store.bucket, "records": store.records_key, "photos": len(records),
            "individuals": len(individuals), "species": sorted({r.get("species", "") for r in records.values()})}
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"s3://{store.bucket}/{store.records_key}: {data['photos']} photos of {data['individuals']} "
              f"individuals; species: {', '.join(data['species']) or '-'}")
    return 0
