"""Reading and checking training's exports (`EXPORTS/<model_id>/{model.onnx, manifest.json}`) before a
repository is built from them. Every refusal names the model and says what is wrong."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.core.checksums import sha256_file
from services.core.errors import RepositoryError
from services.core.onnx_signature import embedder_signature_problems

MANIFEST = "manifest.json"
ONNX_FILE = "model.onnx"
REQUIRED_KEYS = ("model_id", "backbone", "image_size", "embedding_size", "input", "output", "files")


@dataclass(frozen=True)
class Export:
    model_id: str
    directory: Path
    image_size: int
    embedding_size: int
    onnx_sha256: str
    manifest: dict[str, Any]
    species: tuple[str, ...] = ()  # names of the `species` output (probabilities); () = no species output

    @property
    def onnx_path(self) -> Path:
        return self.directory / ONNX_FILE


def read_manifest(directory: Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise RepositoryError(f"export {directory.name}: no {MANIFEST} in {directory}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"export {directory.name}: cannot read {path}: {exc}") from None
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise RepositoryError(f"export {directory.name}: {MANIFEST} lacks {', '.join(missing)}")
    return manifest


def check_export(directory: Path) -> Export:
    """The manifest is complete, the ONNX file exists with the recorded checksum, and its input/output shapes
    are the manifest's (NHWC 3-channel input, embedding of the stated size)."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    model_id = str(manifest["model_id"])
    size, dim = int(manifest["image_size"]), int(manifest["embedding_size"])

    declared_in = list(manifest["input"].get("shape", []))
    if manifest["input"].get("layout") != "NHWC" or declared_in[1:] != [size, size, 3]:
        raise RepositoryError(f"model {model_id}: the manifest's input must be NHWC 3-channel "
                              f"[-1, {size}, {size}, 3], got {manifest['input'].get('layout')} {declared_in}")
    declared_out = list(manifest["output"].get("shape", []))
    if declared_out[1:] != [dim]:
        raise RepositoryError(f"model {model_id}: the manifest's output shape {declared_out} does not match "
                              f"embedding_size {dim}")

    species = manifest_species(manifest, model_id)
    checksum = manifest["files"].get(ONNX_FILE)
    if not checksum:
        raise RepositoryError(f"model {model_id}: the manifest lists no {ONNX_FILE} checksum")
    onnx_path = directory / ONNX_FILE
    if not onnx_path.is_file():
        raise RepositoryError(f"model {model_id}: the manifest references {ONNX_FILE} but {onnx_path} is missing")
    actual = sha256_file(onnx_path)
    if actual != checksum:
        raise RepositoryError(f"model {model_id}: checksum mismatch for {onnx_path} (manifest {checksum[:12]}..., "
                              f"file {actual[:12]}...): the file changed after export")
    problems = embedder_signature_problems(onnx_path, size, dim, len(species))
    if problems:
        raise RepositoryError(f"model {model_id}: {onnx_path}: {'; '.join(problems)}")
    return Export(model_id, directory, size, dim, checksum, manifest, species)


def manifest_species(manifest: dict[str, Any], model_id: str) -> tuple[str, ...]:
    """The species names of the manifest's `species` block (() without one), checked against its shape."""
    block = manifest.get("species")
    if not block:
        return ()
    names = block.get("names") if isinstance(block, dict) else None
    if not isinstance(names, list) or not names or len(set(map(str, names))) != len(names):
        raise RepositoryError(f"model {model_id}: the manifest's species block needs a list of distinct names, "
                              f"got {names!r}")
    if list(block.get("shape", []))[1:] != [len(names)]:
        raise RepositoryError(f"model {model_id}: the manifest's species shape {block.get('shape')} does not match "
                              f"its {len(names)} names")
    return tuple(str(n) for n in names)


def load_exports(exports_dir: Path) -> list[Export]:
    """Every export under `exports_dir` (sub-folders with a manifest, or `exports_dir` itself), checked
    one by one and together (one embedding size, unique model ids); sorted by model id."""
    exports_dir = Path(exports_dir)
    if not exports_dir.is_dir():
        raise RepositoryError(f"exports directory {exports_dir} does not exist")
    if (exports_dir / MANIFEST).is_file():
        folders = [exports_dir]
    else:
        folders = sorted(p for p in exports_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise RepositoryError(f"no exports in {exports_dir} (run `whaleid export --run RUN --out {exports_dir}`)")
    exports = [check_export(folder) for folder in folders]
    by_id: dict[str, Export] = {}
    for export in exports:
        if export.model_id in by_id:
            raise RepositoryError(f"model {export.model_id}: exported twice ({by_id[export.model_id].directory} "
                                  f"and {export.directory})")
        by_id[export.model_id] = export
    return sorted(exports, key=lambda e: e.model_id)
