"""Checks of a built repository before Triton starts: every model's config parses, python-backend sources are
present, each embedder's model.onnx exists with the recorded checksum and the shapes its config declares (the species
output included), all embedders give one embedding size, and the ensemble's SPECIES output has the record's
species. Every refusal names the model.

Self-contained python models: a repository built since python sources were vendored records each python-backend
file's checksum (`python_sources`); every such file must be present, unchanged, and import only what Triton's
python backend has (services.serving.model_repo.vendor). An older build (no `python_sources`) imports the project
(`services.*`), which only a Triton with the project installed can load: it is accepted with a warning."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from services.core.checksums import sha256_file
from services.core.errors import RepositoryError
from services.core.model_exports import ONNX_FILE
from services.core.onnx_signature import embedder_signature_problems

log = logging.getLogger(__name__)

RECORD = "repository.json"


def read_config(model_dir: Path):
    """config.pbtxt parsed into Triton's ModelConfig message (a syntax error is refused here, not by Triton)."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    path = model_dir / "config.pbtxt"
    if not path.is_file():
        raise RepositoryError(f"model {model_dir.name}: {path} is missing")
    try:
        return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise RepositoryError(f"model {model_dir.name}: {path} does not parse: {exc}") from None


def _dims(tensors, name: str) -> list[int]:
    for tensor in tensors:
        if tensor.name == name:
            return list(tensor.dims)
    return []


def check_embedder(root: Path, entry: dict[str, Any], dim: int) -> None:
    name, size = entry["name"], int(entry["image_size"])
    species = list(entry.get("species") or [])
    config = read_config(root / name)
    if _dims(config.input, "image") != [size, size, 3]:
        raise RepositoryError(f"model {name}: config input 'image' dims {_dims(config.input, 'image')} are not "
                              f"NHWC 3-channel [{size}, {size}, 3]")
    if _dims(config.output, "embedding") != [dim]:
        raise RepositoryError(f"model {name}: config output 'embedding' dims {_dims(config.output, 'embedding')}, "
                              f"expected [{dim}] like the other embedders")
    if _dims(config.output, "species") != ([len(species)] if species else []):
        raise RepositoryError(f"model {name}: config output 'species' dims {_dims(config.output, 'species')}, "
                              f"expected {[len(species)] if species else 'none'} for its {len(species)} species")
    onnx_path = root / name / "1" / ONNX_FILE
    if not onnx_path.is_file():
        raise RepositoryError(f"model {name}: {onnx_path} is missing (rebuild with `whaleid model-repo build` or "
                              "pull it with `whaleid model-repo pull`)")
    if sha256_file(onnx_path) != entry["sha256"]:
        raise RepositoryError(f"model {name}: checksum mismatch for {onnx_path}: not the exported model "
                              f"{entry['model_id']}")
    problems = embedder_signature_problems(onnx_path, size, dim, len(species))
    if problems:
        raise RepositoryError(f"model {name}: {onnx_path}: {'; '.join(problems)}")
    if config.backend == "python" and not (root / name / "1" / "model.py").is_file():
        raise RepositoryError(f"model {name}: python backend without 1/model.py")


def check_python_sources(root: Path, record: dict[str, Any], python_models: list[str]) -> None:
    """The recorded python-backend files exist with their checksums and import only what Triton has."""
    from services.serving.model_repo.vendor import import_problems

    sources = record.get("python_sources")
    if sources is None:
        if python_models:
            log.warning("%s: built before python sources were vendored: %s import the project (services.*), which "
                        "only a Triton with the project installed can load; rebuild with `whaleid model-repo build`",
                        root, ", ".join(python_models))
        return
    for name in python_models:
        if f"{name}/1/model.py" not in sources:
            raise RepositoryError(f"model {name}: 1/model.py is not among the python sources of {RECORD}")
    for relative, checksum in sources.items():
        path = root / relative
        name = relative.split("/")[0]
        if not path.is_file():
            raise RepositoryError(f"model {name}: {path} is missing (rebuild with `whaleid model-repo build`)")
        if sha256_file(path) != checksum:
            raise RepositoryError(f"model {name}: checksum mismatch for {path}: not the file the build wrote")
    for relative in sources:
        path = root / relative
        siblings = {p.stem for p in path.parent.glob("*.py")} - {path.stem}
        problems = import_problems(path.read_text(encoding="utf-8"), f"model {relative.split('/')[0]}: {relative}",
                                   siblings)
        if problems:
            raise RepositoryError("; ".join(problems))


def check_lean(root: Path, record: dict[str, Any], dim: int) -> None:
    """The lean layout's fused graph (services.serving.model_repo.lean): present, unchanged, uint8 `pixels_<size>`
    inputs [?, S, S, 3] for the record's sizes, EMBEDDING [?, D] (+ SPECIES [?, S]) outputs."""
    from services.core.onnx_signature import onnx_signature

    lean = record["lean"]
    path = root / lean["onnx"]
    name = lean["model"]
    if not path.is_file():
        raise RepositoryError(f"model {name}: {path} is missing (rebuild with `whaleid model-repo build --lean`)")
    if sha256_file(path) != lean["onnx_sha256"]:
        raise RepositoryError(f"model {name}: checksum mismatch for {path}: not the fused graph the build wrote")
    inputs, outputs = onnx_signature(path)
    want = {f"pixels_{s}": ("uint8", [-1, int(s), int(s), 3]) for s in lean["image_sizes"]}
    found = {i.name: (i.dtype, list(i.shape)) for i in inputs}
    if found != want:
        raise RepositoryError(f"model {name}: {path} inputs {found}, expected {want}")
    species = list(record.get("species") or [])
    want_out = {"EMBEDDING": [-1, dim], **({"SPECIES": [-1, len(species)]} if species else {})}
    found_out = {o.name: list(o.shape) for o in outputs}
    if found_out != want_out:
        raise RepositoryError(f"model {name}: {path} outputs {found_out}, expected {want_out}")


def validate_repository(root: Path) -> dict[str, Any]:
    """Validate a repository written by `whaleid model-repo build`; returns its record (repository.json)."""
    root = Path(root)
    try:
        record = json.loads((root / RECORD).read_text())
    except FileNotFoundError:
        raise RepositoryError(f"{root} is not a repository built by `whaleid model-repo build` (no {RECORD})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise RepositoryError(f"cannot read {root / RECORD}: {exc}") from None
    dim = int(record["embedding_size"])
    python_models = []
    for name in record["models"]:
        config = read_config(root / name)
        if config.name != name:
            raise RepositoryError(f"model {name}: config.pbtxt names it {config.name!r}")
        if config.backend == "python":
            if not (root / name / "1" / "model.py").is_file():
                raise RepositoryError(f"model {name}: python backend without 1/model.py")
            python_models.append(name)
    check_python_sources(root, record, python_models)
    for entry in record["embedders"]:
        if record.get("lean"):
            break  # the lean layout: one fused graph (check_lean), no embedder models
        check_embedder(root, entry, int(entry["embedding_size"]))
    member_sizes = sum(int(entry["embedding_size"]) for entry in record["embedders"])
    if not record.get("lean") and member_sizes != dim:  # the blend concatenates its members (vectors.blend)
        raise RepositoryError(f"the embedders' sizes sum to {member_sizes}, the repository's EMBEDDING is {dim}")
    if record.get("lean"):
        check_lean(root, record, dim)
    from services.serving.model_repo.detector import check_detector

    check_detector(root, record)  # the optional crop detector
    ensemble = read_config(root / "ensemble")
    if _dims(ensemble.output, "EMBEDDING") != [dim] or _dims(ensemble.input, "IMAGE") != [1]:
        raise RepositoryError(f"model ensemble: expected IMAGE [1] -> EMBEDDING [{dim}]")
    species = list(record.get("species") or [])
    if _dims(ensemble.output, "SPECIES") != ([len(species)] if species else []):
        raise RepositoryError(f"model ensemble: output SPECIES dims {_dims(ensemble.output, 'SPECIES')} do not match "
                              f"the {len(species)} species of {RECORD}")
    return record


def validate_if_built(root: Path) -> dict[str, Any] | None:
    """For servers about to start on `root`: validate it when `whaleid model-repo build` wrote it (it has a
    repository.json); None for other repositories (empty, or hand-made test models)."""
    return validate_repository(root) if (Path(root) / RECORD).is_file() else None
