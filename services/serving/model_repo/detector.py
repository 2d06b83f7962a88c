"""The optional `detector` model of a built repository (`whaleid model-repo build --detector EXPORT|cam`).

EXPORT is what `whaleid detector export` writes (model.onnx + detector.json); `cam` is the label-free CAM
localiser (training.localiser: the pretrained EfficientNet-Lite's class activation map, no training), exported on
first use to runs/cam-detector (or $WHALEID_CAM_DETECTOR). The model folder holds the ONNX file, the
python-backend source `model_repo/detector/1/model.py` with services.core.imaging and services.core.localisation
vendored next to it (decode, EXIF orientation, resize; the CAM box: self-contained like the other python models)
and its config; a CAM export's detector.json goes next to model.onnx (its box settings). repository.json gets a
`detector` entry (image size, checksum, `localiser`, the export's validation figures) and lists it among the
models. The worker finds the model by its name (settings.triton_detector_model, default `detector`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from services.core.checksums import sha256_file
from services.core.errors import RepositoryError
from services.core.imaging import FORMATS_PARAMETER_VALUE
from services.serving.model_repo.configs import detector_config

NAME = "detector"
ONNX_FILE, MANIFEST = "model.onnx", "detector.json"
CAM = "cam"  # --detector cam: the label-free CAM localiser (training.localiser)


def resolve_export(spec: Path | str) -> Path:
    """A --detector value: `cam` is the CAM localiser's export (written on first use), anything else a folder."""
    if str(spec) == CAM:
        from training.localiser import cam_export

        return cam_export()
    return Path(spec)


def read_export(directory: Path) -> dict[str, Any]:
    folder = Path(directory)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except FileNotFoundError:
        raise RepositoryError(f"--detector {folder}: not a detector export (no {MANIFEST}; run `whaleid detector "
                              "export RUN`)") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"--detector {folder}: cannot read {MANIFEST}: {exc}") from None
    if manifest.get("kind") != "detector":
        raise RepositoryError(f"--detector {folder}: {MANIFEST} has kind {manifest.get('kind')!r}, not 'detector'")
    onnx_path = folder / ONNX_FILE
    if not onnx_path.is_file():
        raise RepositoryError(f"--detector {folder}: {ONNX_FILE} is missing")
    if sha256_file(onnx_path) != manifest.get("files", {}).get(ONNX_FILE):
        raise RepositoryError(f"--detector {folder}: checksum mismatch for {onnx_path}: not the exported model")
    return manifest


def add_detector(root: Path, export_dir: Path, options, record: dict[str, Any], copy_template) -> dict[str, Any]:
    """Write root/detector/ and add it to the record (returned; repository.json is rewritten by the caller).
    `copy_template(template, model_dir, sources)` is the builder's own (import checks, checksums)."""
    export_dir = resolve_export(export_dir)
    manifest = read_export(export_dir)
    size = int(manifest["image_size"])
    model_dir = root / NAME
    (model_dir / "1").mkdir(parents=True)
    shutil.copy2(Path(export_dir) / ONNX_FILE, model_dir / "1" / ONNX_FILE)
    if manifest.get("localiser") == CAM:
        shutil.copy2(Path(export_dir) / MANIFEST, model_dir / "1" / MANIFEST)  # model.py reads its box settings
    sources = dict(record["python_sources"])
    copy_template("detector", model_dir, sources)
    (model_dir / "config.pbtxt").write_text(detector_config(size, options, FORMATS_PARAMETER_VALUE))
    record = {**record, "python_sources": dict(sorted(sources.items())),
              "models": sorted({*record["models"], NAME}),
              "detector": {"name": NAME, "image_size": size, "sha256": manifest["files"][ONNX_FILE],
                           "backbone": manifest.get("backbone"), "export": str(Path(export_dir).resolve()),
                           "localiser": manifest.get("localiser"),
                           "validation": manifest.get("validation"), "looks": manifest.get("looks")}}
    return record


def check_detector(root: Path, record: dict[str, Any]) -> None:
    """A recorded detector has its model.onnx with the recorded checksum and the outputs the worker reads."""
    entry = record.get("detector")
    if not entry:
        return
    onnx_path = Path(root) / entry["name"] / "1" / ONNX_FILE
    if not onnx_path.is_file():
        raise RepositoryError(f"model {entry['name']}: {onnx_path} is missing")
    if sha256_file(onnx_path) != entry["sha256"]:
        raise RepositoryError(f"model {entry['name']}: checksum mismatch for {onnx_path}: not the exported detector")
