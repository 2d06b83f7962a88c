"""`whaleid upload PHOTO [PHOTO ...]`: what an app does, from the command line. Each photo becomes a sighting at
the gateway, is PUT to its presigned URL, and the answer (five candidates, or the reason it failed) is printed
once the chain has identified it.

When (`taken_at`) and where (`latitude`, `longitude`) come from the photo's EXIF (DateTimeOriginal, GPS) unless
given; a photo with neither GPS nor `--latitude/--longitude` is refused before anything is sent.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

EXIF_IFD, GPS_IFD = 0x8769, 0x8825
DATETIME_ORIGINAL, DATETIME = 0x9003, 0x0132
GPS_LATITUDE_REF, GPS_LATITUDE, GPS_LONGITUDE_REF, GPS_LONGITUDE = 1, 2, 3, 4


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "upload", help="upload photos through the gateway as an app does and print their identification",
        description="Creates a sighting per photo at the gateway (settings gateway_host/gateway_port, token "
                    "gateway_token unless --url/--token), PUTs the photo to its presigned URL and waits for the "
                    "answer: five candidates with scores (new_individual where the threshold puts it) or the "
                    "reason it failed. Exit status 1 when a photo failed or is still pending at --wait.")
    p.add_argument("photos", nargs="+", help="JPEG, PNG or WebP files")
    p.add_argument("--observer", default=None, help="who took the photos (default: $USER)")
    p.add_argument("--latitude", type=float, default=None, help="default: the photo's EXIF GPS")
    p.add_argument("--longitude", type=float, default=None, help="default: the photo's EXIF GPS")
    p.add_argument("--taken-at", default=None,
                   help="ISO 8601 date-time (default: the photo's EXIF DateTimeOriginal, else the file's time)")
    p.add_argument("--species-hint", default=None, help="species, if known (its own threshold applies)")
    p.add_argument("--encounter", default=None, metavar="ID",
                   help="the photos are of one animal from one sighting event: identified together (the answer "
                        "pools their candidates)")
    p.add_argument("--crop-box", default=None, metavar="X0,Y0,X1,Y1",
                   help="the animal's box in pixels of the photo as shown (one photo only)")
    p.add_argument("--wait", type=float, default=60.0, metavar="SECONDS",
                   help="how long to wait for the answers (0: upload only; default 60)")
    p.add_argument("--url", default=None, help="gateway base URL (default: from the settings)")
    p.add_argument("--token", default=None, help="the app's bearer token (default: setting gateway_token)")
    p.add_argument("--config", default=None, help="settings TOML file (else WHALEID_CONFIG / environment / stack)")
    p.add_argument("--json", action="store_true", help="print one JSON object per photo")
    p.set_defaults(func=run_upload)


def _ratio(value) -> float:
    try:
        return float(value)
    except TypeError:  # a (numerator, denominator) pair
        numerator, denominator = value
        return float(numerator) / float(denominator)


def exif_metadata(path: Path) -> dict[str, Any]:
    """taken_at / latitude / longitude from a photo's EXIF, for those it has."""
    from PIL import Image

    found: dict[str, Any] = {}
    try:
        with Image.open(path) as image:
            exif = image.getexif()
            stamp = exif.get_ifd(EXIF_IFD).get(DATETIME_ORIGINAL) or exif.get(DATETIME)
            gps = exif.get_ifd(GPS_IFD)
    except Exception:  # noqa: BLE001 - an unreadable EXIF block only means no metadata from it
        return found
    if isinstance(stamp, str):
        try:
            found["taken_at"] = datetime.strptime(stamp.strip(), "%Y:%m:%d %H:%M:%S").replace(
                tzinfo=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        except ValueError:
            pass
    try:
        for name, ref_tag, tag, negative in (("latitude", GPS_LATITUDE_REF, GPS_LATITUDE, "S"),
                                             ("longitude", GPS_LONGITUDE_REF, GPS_LONGITUDE, "W")):
            if tag in gps:
                degrees, minutes, seconds = (_ratio(v) for v in gps[tag])
                value = degrees + minutes / 60 + seconds / 3600
                found[name] = -value if str(gps.get(ref_tag, "")).upper().startswith(negative) else value
    except (TypeError, ValueError, ZeroDivisionError):
        found.pop("latitude", None)
        found.pop("longitude", None)
    return found


def sighting_metadata(path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The gateway's sighting fields for one photo (raises WhaleIdError naming what is missing)."""
    import getpass

    from services.core.errors import DataError

    exif = exif_metadata(path)
    latitude = args.latitude if args.latitude is not None else exif.get("latitude")
    longitude = args.longitude if args.longitude is not None else exif.get("longitude")
    if latitude is None or longitude is None:
        raise DataError(f"{path}: no GPS position in its EXIF; give --latitude and --longitude")
    taken_at = args.taken_at or exif.get("taken_at") or datetime.fromtimestamp(
        path.stat().st_mtime, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    metadata: dict[str, Any] = {"taken_at": taken_at, "latitude": latitude, "longitude": longitude,
                                "observer": args.observer or getpass.getuser()}
    if args.species_hint:
        metadata["species_hint"] = args.species_hint
    if args.encounter:
        metadata["encounter"] = args.encounter
    if args.crop_box:
        try:
            metadata["crop_box"] = [float(v) for v in args.crop_box.split(",")]
        except ValueError:
            raise DataError(f"--crop-box must be X0,Y0,X1,Y1 numbers, got {args.crop_box!r}") from None
    return metadata


def describe(name: str, sighting_id: str, answer: dict | None) -> str:
    if answer is None:
        return f"{name}: sighting {sighting_id} still pending"
    if answer["status"] != "identified":
        reason = (answer.get("failure") or {}).get("reason", "")
        return f"{name}: sighting {sighting_id} {answer['status']}" + (f" ({reason})" if reason else "")
    candidates = answer["identification"]["candidates"]
    ranked = ", ".join(f"{c['individual_id']} {c['score']:.3f}" for c in candidates)
    top = candidates[0]["individual_id"] if candidates else "?"
    verdict = "a new individual" if top == "new_individual" else top
    return f"{name}: sighting {sighting_id} -> {verdict}   [{ranked}]"


def describe_encounter(encounter: dict) -> str:
    ranked = ", ".join(f"{c['individual_id']} {c['score']:.3f}" for c in encounter["candidates"])
    top = encounter["candidates"][0]["individual_id"] if encounter["candidates"] else "?"
    verdict = "a new individual" if top == "new_individual" else top
    return (f"encounter {encounter['id']} ({encounter['identified']} of {len(encounter['sightings'])} photos "
            f"identified) -> {verdict}   [{ranked}]")


def run_upload(args: argparse.Namespace) -> int:
    from services.chain.gateway.client import CONTENT_TYPES, AppClient, GatewayError, gateway_url, unreachable
    from services.core.errors import DataError
    from services.core.settings import load_settings

    settings = load_settings(config_file=args.config)
    paths = [Path(p) for p in args.photos]
    if args.crop_box and len(paths) > 1:
        raise DataError("--crop-box is a box in one photo: upload one photo with it")
    for path in paths:
        if not path.is_file():
            raise DataError(f"{path}: no such file")
        if path.suffix.lower() not in CONTENT_TYPES:
            raise DataError(f"{path}: not a {', '.join(sorted(CONTENT_TYPES))} file")
    metadata = [sighting_metadata(path, args) for path in paths]  # every photo checked before any is sent
    url, source = gateway_url(settings, args.url)
    client = AppClient(url, args.token if args.token is not None else settings.gateway_token)
    uploads = []
    for path, fields in zip(paths, metadata, strict=True):
        try:
            uploads.append(client.upload(path.read_bytes(), path.name, CONTENT_TYPES[path.suffix.lower()], fields))
        except GatewayError as exc:
            raise unreachable(exc, url, source) if exc.status is None else exc from None
        if not args.json:
            print(f"{path.name}: uploaded as sighting {uploads[-1].sighting_id}", file=sys.stderr)
    answers = client.wait(uploads, args.wait, lambda text: print(text, file=sys.stderr)) if args.wait > 0 else {}
    if args.encounter and answers:  # every photo's answer carries the encounter; the last read is the fullest
        last = client.sighting(uploads[-1].sighting_id).get("encounter")
        if last and not args.json:
            print(describe_encounter(last))
    finished = 0
    for upload in uploads:
        answer = answers.get(upload.sighting_id)
        finished += answer is not None and answer["status"] == "identified"
        if args.json:
            print(json.dumps({"photo": upload.name, "sighting_id": upload.sighting_id,
                              "status": answer["status"] if answer else "pending", "answer": answer}))
        else:
            print(describe(upload.name, upload.sighting_id, answer))
    return 0 if args.wait <= 0 or finished == len(uploads) else 1
