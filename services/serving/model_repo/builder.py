"""`whaleid model-repo build`: a complete Triton repository from training's exports and the tuning file.

    OUT/preprocess[_<size>]/   python backend: encoded crop -> eval-path pixels (one per input size; with flip
                               TTA also the pixels of the mirrored crop)
    OUT/embedder_<model_id>/   1/model.onnx + (cpu) python backend running it / (gpu) onnxruntime_onnx platform;
                               outputs embedding [+ species probabilities when the export has a species head]
    OUT/blend/                 python backend: per model combine_flip of the two views (flip TTA), then the
                               score-level blend (vectors.blend: each normalised embedding scaled by
                               sqrt(weight), concatenated; EMBEDDING has the sum of the members' sizes); species:
                               the weighted average of the members' probabilities
    OUT/ensemble/              platform "ensemble": IMAGE -> EMBEDDING [+ SPECIES]
    OUT/repository.json        what was built (models, checksums, weights, flip TTA, species, build id)

The models' sources are the top-level `model_repo/` folder (package data, services.serving.model_repo.templates):
each model's `config.pbtxt` template, filled by services.serving.model_repo.configs, and each python model's
`1/model.py`. The python-backend models are self-contained (services.serving.model_repo.vendor): each model.py
imports only numpy, Pillow, onnxruntime, Triton's utilities and the modules vendored next to it, generated from
the project's own source (services.core.imaging -> whaleid_imaging.py, services.core.identification.vectors ->
whaleid_vectors.py). Triton needs no `services` package; repository.json records the checksum of every python
source.

Flip TTA comes from the tuning file (`flip_tta`, written by `whaleid evaluate --flip-tta`), so the served
embeddings are those the evaluation scored.

The repository is written next to OUT, validated, and only then swapped into place.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any, Sequence

from services.core.checksums import sha256_file
from services.core.errors import RepositoryError
from services.core.imaging import FORMATS_PARAMETER, FORMATS_PARAMETER_VALUE
from services.core.model_exports import ONNX_FILE, Export, check_export, load_exports
from services.core.staging import staged_folder
from services.serving.model_repo import configs, vendor
from services.serving.model_repo.templates import model_source
from services.serving.model_repo.validation import RECORD, validate_repository

log = logging.getLogger(__name__)

REQUIREMENTS = "requirements.txt"
# the python models of model_repo/ (<model>/1/model.py) and the project modules each needs vendored next to it
VENDORED: dict[str, tuple[vendor.Vendored, ...]] = {
    "preprocess": (vendor.IMAGING,),
    "embedder": (),  # the cpu target's embedders
    "blend": (vendor.VECTORS,),
    "pipeline": (vendor.IMAGING,),  # the lean cpu layout's single step (services.serving.model_repo.lean)
    "detector": (vendor.IMAGING, vendor.LOCALISATION),  # the optional crop detector (model_repo.detector)
}


def resolve_weights(model_ids: Sequence[str], tuning_file: Path | None) -> tuple[list[float], str]:
    """Blend weights in `model_ids` order (summing to 1) and where they came from."""
    equal = [1.0 / len(model_ids)] * len(model_ids)
    if tuning_file is None:
        note = "no tuning file given: equal weights"
        log.warning("%s for %d model(s)", note, len(model_ids))
        return equal, note
    from services.core.identification.tuning import Tuning

    weights = Tuning.load(tuning_file).weights
    missing = [m for m in model_ids if m not in weights]
    if missing:
        note = f"tuning file {tuning_file} has no weight for {', '.join(missing)}: equal weights"
        log.warning("%s for all %d model(s)", note, len(model_ids))
        return equal, note
    ignored = sorted(set(weights) - set(model_ids))
    if ignored:
        log.warning("tuning file %s: weights of %s ignored (not among the exports)", tuning_file, ", ".join(ignored))
    values = [float(weights[m]) for m in model_ids]
    bad = [m for m, w in zip(model_ids, values, strict=True) if not w >= 0]
    if bad or sum(values) <= 0:
        raise RepositoryError(f"tuning file {tuning_file}: blend weights must be >= 0 and not all zero; "
                              f"got {dict(zip(model_ids, values, strict=True))}")
    total = sum(values)
    return [w / total for w in values], f"weights from {tuning_file}"


def resolve_flip_tta(tuning_file: Path | None) -> bool:
    """Whether the tuned configuration averages each crop with its mirror image (false without a tuning file)."""
    if tuning_file is None:
        return False
    from services.core.identification.tuning import Tuning

    return bool(Tuning.load(tuning_file).flip_tta)


def species_union(exports: Sequence[Export]) -> list[str]:
    """The SPECIES output's names: every export's species, in first-seen order (exports sorted by model id)."""
    return list(dict.fromkeys(name for export in exports for name in export.species))


def blended_size(exports: Sequence[Export]) -> int:
    """The served EMBEDDING's size: the blend concatenates its members (weight > 0), vectors.blend."""
    return sum(e.embedding_size for e in exports)


def embedder_name(model_id: str) -> str:
    return f"embedder_{model_id}"


def python_requirements(target: str) -> dict[str, str]:
    """The packages (at this environment's versions) Triton's python backend needs for this repository's python
    models: numpy and Pillow (preprocess, blend) and, on the cpu target, onnxruntime (the embedders). Pillow's
    version matters: decoding and resizing are byte-identical to the offline path only with the same Pillow."""
    from importlib.metadata import version

    names = ["numpy", "Pillow"] + (["onnxruntime"] if target == "cpu" else [])
    return {name: version(name) for name in names}


def template_source(template: str) -> str:
    """The text of model_repo/<template>/1/model.py, a python-backend model (package data: works from a checkout
    and an installed wheel)."""
    return model_source(template)


def _copy_template(template: str, model_dir: Path, sources: dict[str, str]) -> None:
    """model_dir/1/model.py from the template and, next to it, the modules it needs vendored; every file is
    checked to import only what Triton's python backend has (the build fails otherwise, naming the import)."""
    vendored = VENDORED[template]
    files = {"model.py": template_source(template), **{v.file: vendor.vendored_source(v) for v in vendored}}
    siblings = {v.name for v in vendored}
    problems = [p for name, text in files.items()
                for p in vendor.import_problems(text, f"model {model_dir.name}: 1/{name}", siblings)]
    if problems:
        raise RepositoryError("; ".join(problems))
    (model_dir / "1").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        path = model_dir / "1" / name
        path.write_text(text, encoding="utf-8")
        sources[f"{model_dir.name}/1/{name}"] = sha256_file(path)


def _build_id(target: str, exports: Sequence[Export], weights: Sequence[float], flip_tta: bool = False,
              sources: dict[str, str] | None = None) -> str:
    """What the served embeddings depend on: the target, each export (its ONNX checksum) and weight, flip TTA, and
    the checksum of every python-backend file (`sources`: model.py and the vendored preprocessing), so a change of
    the decoding or resizing code is another build even with the same weights."""
    parts = [target] + [f"{e.model_id}:{e.onnx_sha256}:{w:.6f}" for e, w in zip(exports, weights, strict=True)]
    parts += ["flip_tta"] if flip_tta else []  # other embeddings: another build
    parts += [f"{name}:{digest}" for name, digest in sorted((sources or {}).items())]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:12]


def write_lean_repository(root: Path, exports: Sequence[Export], weights: Sequence[float], note: str,
                          options: configs.BuildOptions, flip_tta: bool = False) -> dict[str, Any]:
    """The lean cpu layout (services.serving.model_repo.lean): ensemble -> pipeline (one python hop, one fused graph)."""
    import onnx

    from services.serving.model_repo import lean

    sizes = sorted({e.image_size for e in exports})
    dim = blended_size(exports)
    species = species_union(exports)
    sources: dict[str, str] = {}
    requirements = python_requirements(options.target)
    _copy_template("pipeline", root / lean.PIPELINE, sources)
    members = [(e.onnx_path, e.model_id, e.image_size, e.species) for e in exports]
    fused = root / lean.PIPELINE / "1" / lean.FUSED_FILE
    onnx.save(lean.fused_graph(members, weights, flip_tta, species, dim), str(fused))
    build_id = _build_id("cpu-lean", exports, weights, flip_tta, sources)
    parameters = {"build_id": build_id, "model_ids": json.dumps([e.model_id for e in exports]),
                  "weights": json.dumps([round(w, 6) for w in weights]), "flip_tta": "true" if flip_tta else "false",
                  FORMATS_PARAMETER: FORMATS_PARAMETER_VALUE}
    (root / lean.PIPELINE / "config.pbtxt").write_text(configs.pipeline_config(
        sizes, dim, species, options, flip_tta, requirements["Pillow"]))
    (root / "ensemble" / "1").mkdir(parents=True)
    (root / "ensemble" / "config.pbtxt").write_text(configs.lean_ensemble_config(dim, species, options, parameters))
    embedders = [{"name": lean.PIPELINE, "model_id": e.model_id, "image_size": e.image_size,
                  "embedding_size": e.embedding_size,
                  "sha256": e.onnx_sha256, "weight": w, "species": list(e.species),
                  "precision": e.manifest.get("precision", "fp32"), "export": str(e.directory.resolve()),
                  "backbone": e.manifest.get("backbone"), "fold": e.manifest.get("fold"),
                  "epoch": e.manifest.get("epoch")} for e, w in zip(exports, weights, strict=True)]
    record = {
        "build_id": build_id, "target": options.target,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "embedding_size": dim, "weights_source": note, "flip_tta": flip_tta, "species": species,
        "preprocess": {}, "embedders": embedders, "models": sorted([lean.PIPELINE, "ensemble"]),
        "lean": {"model": lean.PIPELINE, "onnx": f"{lean.PIPELINE}/1/{lean.FUSED_FILE}",
                 "onnx_sha256": sha256_file(fused), "image_sizes": sizes},
        "python_sources": dict(sorted(sources.items())), "python_requirements": requirements,
        "options": dataclasses.asdict(options),
    }
    (root / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    (root / REQUIREMENTS).write_text("".join(f"{n}=={v}\n" for n, v in requirements.items()))
    return record


def write_repository(root: Path, exports: Sequence[Export], weights: Sequence[float], note: str,
                     options: configs.BuildOptions, flip_tta: bool = False) -> dict[str, Any]:
    if options.lean:
        return write_lean_repository(root, exports, weights, note, options, flip_tta)
    sizes = sorted({e.image_size for e in exports})
    preprocess = {s: "preprocess" if len(sizes) == 1 else f"preprocess_{s}" for s in sizes}
    dim = blended_size(exports)
    species = species_union(exports)
    sources: dict[str, str] = {}  # python-backend files -> sha256 (recorded, checked by validation)
    requirements = python_requirements(options.target)
    for size, name in preprocess.items():
        _copy_template("preprocess", root / name, sources)
        (root / name / "config.pbtxt").write_text(
            configs.preprocess_config(name, size, options, flip_tta, requirements["Pillow"]))

    embedders = []
    for index, (export, weight) in enumerate(zip(exports, weights, strict=True), 1):
        name = embedder_name(export.model_id)
        log.info("[%d/%d] %s: copying %s (%.1f MB)", index, len(exports), name, export.onnx_path,
                 export.onnx_path.stat().st_size / 1e6)
        (root / name / "1").mkdir(parents=True)
        shutil.copy2(export.onnx_path, root / name / "1" / ONNX_FILE)
        if options.target == "cpu":
            _copy_template("embedder", root / name, sources)
        config = configs.embedder_config(name, export.image_size, export.embedding_size, options, export.model_id,
                                         len(export.species))
        (root / name / "config.pbtxt").write_text(config)
        embedders.append({"name": name, "model_id": export.model_id, "image_size": export.image_size,
                          "embedding_size": export.embedding_size, "sha256": export.onnx_sha256, "weight": weight,
                          "species": list(export.species),
                          "export": str(export.directory.resolve()), "backbone": export.manifest.get("backbone"),
                          "fold": export.manifest.get("fold"), "epoch": export.manifest.get("epoch")})

    model_ids = [e.model_id for e in exports]
    members = [configs.Member(embedder_name(e.model_id), e.model_id, e.image_size, e.species, e.embedding_size)
               for e in exports]
    _copy_template("blend", root / "blend", sources)
    (root / "blend" / "config.pbtxt").write_text(configs.blend_config(members, weights, dim, options, species, flip_tta))

    build_id = _build_id(options.target, exports, weights, flip_tta, sources)
    ensemble_parameters = {"build_id": build_id, "model_ids": json.dumps(model_ids),
                           "weights": json.dumps([round(w, 6) for w in weights]), FORMATS_PARAMETER: FORMATS_PARAMETER_VALUE}
    (root / "ensemble" / "1").mkdir(parents=True)  # an ensemble needs an (empty) version folder
    (root / "ensemble" / "config.pbtxt").write_text(configs.ensemble_config(
        preprocess, members, dim, options, ensemble_parameters, species, flip_tta))

    record = {
        "build_id": build_id,
        "target": options.target,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "embedding_size": dim,
        "weights_source": note,
        "flip_tta": flip_tta,
        "species": species,
        "preprocess": {str(s): n for s, n in preprocess.items()},
        "embedders": embedders,
        "models": sorted([*preprocess.values(), *(e["name"] for e in embedders), "blend", "ensemble"]),
        "python_sources": dict(sorted(sources.items())),  # self-contained: numpy, Pillow, onnxruntime only
        "python_requirements": requirements,  # also requirements.txt: what Triton's Python must have
        "options": dataclasses.asdict(options),
    }
    (root / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    (root / REQUIREMENTS).write_text("# Python packages Triton's python backend needs for this repository, at the "
                                     "build's versions (pip install -r)\n"
                                     + "".join(f"{n}=={v}\n" for n, v in requirements.items()))
    return record


def build_repository(exports_dir: Path, out_dir: Path, tuning_file: Path | None = None,
                     options: configs.BuildOptions | None = None, detector: Path | None = None,
                     members: Sequence[Path] = ()) -> dict[str, Any]:
    """Check the exports, write the repository to a staging folder, validate it, then move it to `out_dir`.
    `members`: more export folders served with those of `exports_dir` (the tuning file's `members`, e.g. the
    general identifier blended with the run: training.general.member_exports).
    `detector`: a `whaleid detector export` folder, served as the model `detector` (services.serving.model_repo.detector)."""
    options = options or configs.BuildOptions()
    if options.target not in configs.TARGETS:
        raise RepositoryError(f"unknown target {options.target!r}; use one of {', '.join(configs.TARGETS)}")
    if options.max_batch_size < 1:
        raise RepositoryError("max_batch_size must be >= 1 (the ensemble batches requests)")
    if options.lean and options.target != "cpu":
        raise RepositoryError("--lean is the cpu target's layout; the gpu target keeps Triton's native backends")
    exports = load_exports(Path(exports_dir))
    known = {e.model_id for e in exports}
    exports = sorted(exports + [e for e in map(check_export, map(Path, members)) if e.model_id not in known],
                     key=lambda e: e.model_id)
    log.info("%d export(s) checked: %s", len(exports), ", ".join(e.model_id for e in exports))
    weights, note = resolve_weights([e.model_id for e in exports], tuning_file)
    flip_tta = resolve_flip_tta(tuning_file)
    kept = [(e, w) for e, w in zip(exports, weights, strict=True) if w > 0]
    if len(kept) < len(exports):
        log.info("weight 0: %s left out of the ensemble", ", ".join(e.model_id for e, w in zip(exports, weights, strict=True) if w <= 0))
    exports, weights = [e for e, _ in kept], [w for _, w in kept]

    out_dir = Path(out_dir)
    with staged_folder(out_dir) as staging:
        record = write_repository(staging, exports, weights, note, options, flip_tta)
        if detector is not None:
            from services.serving.model_repo.detector import add_detector

            record = add_detector(staging, Path(detector), options, record, _copy_template)
            (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n")
        validate_repository(staging)
    log.info("repository %s built (%s target, build %s, flip TTA %s, %d species): %s", out_dir, options.target,
             record["build_id"], "on" if flip_tta else "off", len(record["species"]), ", ".join(record["models"]))
    return record
