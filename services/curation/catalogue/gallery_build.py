"""Embed labelled photos with a trained run, tune the new_individual threshold, build the served gallery: the
one implementation behind `whaleid gallery build` (the catalogue) and the demo (`services.devtools.demo.model`).

`build_gallery_dir(embedder, photos, folds_by_id, out, progress, fold_embedder=None, tuning=None)` writes
Gallery.save files + tuning.json to `out`, three ways:
  - default: the threshold is tuned out of fold by the identification core's `build_tuned_gallery` with its
    deployment defaults (validation `live`, references `means`: one mean embedding per individual), the
    validation fold being the run's held-out fold (`folds_by_id`: the run's folds.csv; individuals the run never
    saw count as held out);
  - `fold_embedder` (the run that held a fold out; `embedder` is then the final fit): tuned with the fold run's
    embeddings and transferred to the final fit (`training.train.transfer_tuning`), whose embeddings make the
    gallery;
  - `tuning` (e.g. another run's tuning.json): taken as it is (its weights now name `embedder`), no tuning.
`publish_catalogue_gallery` embeds the S3 catalogue (services.curation.catalogue.photo_bucket) that way and publishes a
version, with the model(s) RUN/tuning.json recommends (training.general.served_runs): the run, the general identifier,
or their blend (training.embed.BlendedEmbedder: the gallery's model_ids are the blend's members, as the Triton
ensemble of `model-repo build --tuning` registers them, and its tuning.json keeps the blend's weights and members).
"""

from __future__ import annotations

import dataclasses
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from services.core.errors import DataError
from services.core.progress import ProgressBar

log = logging.getLogger(__name__)
TUNING_FILE = "tuning.json"
EMBED_CHUNK = 64


@dataclass
class Photos:
    """Labelled photos: gallery image name, individual, species, local file, boxes ({source: box}) and viewpoint
    hint (services.core.identification.viewpoint; None = unknown) per row."""

    images: list[str]
    individual_ids: list[str]
    species: list[str]
    paths: list[Path]
    boxes: list[dict] = field(default_factory=list)
    viewpoints: list[str | None] = field(default_factory=list)

    def __post_init__(self):
        if not self.boxes:
            self.boxes = [{} for _ in self.images]
        if not self.viewpoints:
            self.viewpoints = [None for _ in self.images]
        if not (len(self.images) == len(self.individual_ids) == len(self.species) == len(self.paths)
                == len(self.boxes) == len(self.viewpoints)):
            raise DataError("photos: images, ids, species, paths, boxes and viewpoints differ in length")
        if not self.images:
            raise DataError("no photos to build a gallery from (import a catalogue first: `whaleid catalogue "
                            "import SRC`)")

    def box_list(self, source: str | None) -> list:
        return [b.get(source) if source else None for b in self.boxes]


def embed_photos(embedder, photos: Photos, progress_bar: bool = False) -> np.ndarray:
    """(N, D) embeddings of the photos with the embedder's evaluation crop (box source), in chunks."""
    boxes = photos.box_list(embedder.eval_box_source)
    bar = ProgressBar(f"embedding with {embedder.model_id}", len(photos.paths), enabled=progress_bar)
    out = []
    for start in range(0, len(photos.paths), EMBED_CHUNK):
        stop = start + EMBED_CHUNK
        out.append(embedder.embed_files(photos.paths[start:stop], boxes[start:stop]))
        bar.update(len(out[-1]))
    return np.concatenate(out)


def build_gallery_dir(embedder, photos: Photos, folds_by_id: dict[str, int], out: Path,
                      progress: Callable[[str], None], fold_embedder=None, tuning=None,
                      progress_bar: bool = False) -> dict:
    """Gallery + tuning.json in `out` (module docstring); returns a summary (threshold, validation figures)."""
    from services.core.identification.evaluation import LabelledImages, build_tuned_gallery, split_gallery
    from services.core.identification.gallery import build_reference_gallery
    from services.core.identification.threshold_choice import configured_quantile, describe_choice

    out = Path(out)
    images, ids, species = photos.images, photos.individual_ids, photos.species
    model_ids = list(getattr(embedder, "model_ids", None) or [embedder.model_id])  # a blend: its members
    summary: dict = {"model_id": embedder.model_id, "photos": len(images), "individuals": len(set(ids))}
    if tuning is not None:
        from services.core.identification.tuning import Tuning

        progress(f"embedding {len(images)} photos with {embedder.model_id}; threshold {tuning.threshold:.3f} "
                 "from the given tuning")
        embeddings = embed_photos(embedder, photos, progress_bar)
        references = str(tuning.validation.get("references") or "means")
        gallery = build_reference_gallery(embeddings, ids, species, images, references, model_ids=model_ids,
                                          viewpoints=photos.viewpoints)
        tuning = Tuning(threshold=tuning.threshold, per_species=dict(tuning.per_species),
                        weights={embedder.model_id: 1.0}, flip_tta=tuning.flip_tta, k=tuning.k,
                        validation={**tuning.validation, "transferred_to": embedder.model_id})
        summary.update(tuning_source="given", references=references)
    else:
        tuner = fold_embedder or embedder
        progress(f"embedding {len(images)} photos with {tuner.model_id} for the threshold"
                 + (f" and with {embedder.model_id} for the gallery" if fold_embedder else " and the gallery"))
        embeddings = embed_photos(tuner, photos, progress_bar)
        folds, eval_folds = validation_folds(tuner, folds_by_id, ids)
        labelled = LabelledImages(list(images), list(ids), list(species), folds, list(photos.viewpoints))
        gallery, evaluation = build_tuned_gallery({tuner.model_id: embeddings}, labelled, eval_folds,
                                                  default_quantile=configured_quantile(tuner.info.get("config", {})))
        report = evaluation.report
        choice = report["threshold_choice"]
        where = f"fold {eval_folds[0]}" if len(eval_folds) == 1 else f"{len(eval_folds)} folds"
        progress(f"{describe_choice(choice)} ({report['validation']} "
                 f"validation out of {where}; validation MAP@5 {report['map5']:.3f} in sample, "
                 f"{report['map5_held_out']:.3f} held out)")
        tuning = evaluation.tuning
        references = report["references"]
        summary.update(tuning_source=choice["source"], threshold_reason=choice["reason"],
                       threshold_interval=choice["interval"], fold=eval_folds[0], folds=eval_folds,
                       references=references,
                       validation={k: report[k] for k in ("validation", "queries", "map5_in_sample",
                                                          "map5_held_out")})
        if fold_embedder is not None:
            from training.train import transfer_tuning

            final = embed_photos(embedder, photos, progress_bar)
            tuning = transfer_tuning(tuning, embeddings, labelled, embedder.model_id, references)
            progress(f"threshold for the final fit {embedder.model_id}: {tuning.threshold:.3f} (fold {eval_folds[0]}'s live "
                     f"validation re-tuned for a model trained on every known animal: MAP@5 "
                     f"{tuning.validation['final_fit']['map5_held_out']:.3f} held out)")
            gallery = split_gallery(final, labelled, np.arange(len(images)), references, model_ids=model_ids)
            summary.update(tuning_source="transferred", tuning_model_id=tuner.model_id,
                           final_fit_map5_held_out=tuning.validation["final_fit"]["map5_held_out"])
    weights = getattr(embedder, "weights", None)
    if weights:  # a blend (training.embed.BlendedEmbedder): the served members, as `model-repo build --tuning`
        gallery.model_ids = model_ids
        tuning = dataclasses.replace(tuning, weights=dict(weights), members=dict(embedder.members_spec))
        summary.update(model_ids=model_ids, weights=dict(weights))
    progress(f"gallery: {len(gallery)} {references} of {len(images)} photos")
    out.mkdir(parents=True, exist_ok=True)
    gallery.save(out)
    tuning.save(out / TUNING_FILE)
    summary.update(size=len(gallery), threshold=round(float(tuning.threshold), 4))
    return summary


def validation_folds(embedder, folds_by_id: dict[str, int], ids: Sequence[str]) -> tuple[np.ndarray, list[int]]:
    """(fold of each photo, the folds to validate on). A trained run: its folds.csv, validated on the fold it held
    out (individuals it never saw count as held out). The general identifier trained on no individual: the
    catalogue's individuals in training.general.general_folds, every one validated."""
    if not embedder.info.get("trained", True):
        from training.general import general_folds

        by_id = general_folds(ids)
        folds = np.array([by_id[str(i)] for i in ids])
        return folds, sorted(set(folds.tolist()))
    run_fold = int(embedder.info.get("config", {}).get("fold", 0))
    unseen_fold = run_fold if run_fold >= 0 else 0  # individuals the run never trained on: held out
    folds = np.array([folds_by_id.get(i, unseen_fold) for i in ids])
    fold = run_fold if run_fold in set(folds.tolist()) else int(folds[0])
    return folds, [fold]


def catalogue_photos(store, records: Sequence[dict], cache_dir: Path, progress_bar: bool = False) -> Photos:
    """The catalogue's photos downloaded into `cache_dir` (named by content, so a cache is reused)."""
    records = sorted(records, key=lambda r: (r["individual_id"], r["photo_id"]))
    bar = ProgressBar("downloading the catalogue", len(records), enabled=progress_bar)
    paths = []
    for record in records:
        paths.append(store.download(record, cache_dir))
        bar.update()
    return Photos(images=[r["key"] for r in records], individual_ids=[r["individual_id"] for r in records],
                  species=[r.get("species") or "unknown" for r in records], paths=paths,
                  boxes=[dict(r.get("boxes") or {}) for r in records],
                  viewpoints=[r.get("viewpoint") for r in records])


def publish_catalogue_gallery(settings, run_dir: Path | None = None, tuning_path: Path | None = None,
                              tuning_run: Path | None = None, progress: Callable[[str], None] = log.info,
                              progress_bar: bool = True, move_pointer: bool = True, catalogue=None,
                              store=None, extend=None, reason: str = "", reindexed: bool = False) -> dict:
    """`whaleid gallery build`: the S3 catalogue embedded by `run_dir` (None or `general`: the general identifier,
    training.general), tuned (or `tuning_path`, or transferred
    from `tuning_run`), published as a new gallery version; the pointer moves unless `move_pointer` is False.
    `catalogue` (CatalogueStore) and `store` (GalleryStore) default to the settings' ones.
    `extend(gallery, embedder, tmp_dir) -> (gallery, added_sighting_ids, summary, their Photos or None)` adds rows
    before publishing (`whaleid reindex --re-embed`: the confirmed sightings, services.curation.catalogue.re_embed;
    their photos' keypoints join the local features when those are made: gallery_features.gallery_bank); `reason` and
    `reindexed` go to the pointer."""
    from services.core.identification.tuning import Tuning
    from services.curation.catalogue.photo_bucket import CatalogueStore
    from services.curation.operations.gallery_versions import GalleryStore
    from services.curation.operations.publish import publish_gallery
    from training.embed import Embedder, served_embedder

    start = time.perf_counter()
    catalogue = catalogue or CatalogueStore.from_settings(settings)
    records = list(catalogue.records().values())
    if not records:
        raise DataError(f"the catalogue in s3://{catalogue.bucket}/{catalogue.prefix}/ is empty: run `whaleid "
                        "catalogue import SRC` first")
    from training.general import resolve_run, served_runs

    given = Tuning.load(tuning_path) if tuning_path else None
    run_dir = Path(resolve_run(run_dir or "general"))
    if tuning_run is None:  # the model(s) `whaleid evaluate` recommended for the run (RUN/tuning.json)
        served, note = served_runs(run_dir)
        progress(note)
        if len(served) == 1:
            run_dir = Path(served[0][1])
        embedder = served_embedder(served)
        if hasattr(embedder, "describe"):
            progress(f"gallery embedded by the blend {embedder.describe()}")
    else:
        embedder = Embedder.from_run(run_dir)
    fold_embedder = Embedder.from_run(tuning_run) if tuning_run and given is None else None
    from training.folds import run_folds

    folds = run_folds(tuning_run or run_dir)
    store = store or GalleryStore.from_settings(settings)
    parent = store.current_version()
    with tempfile.TemporaryDirectory(prefix="whaleid-gallery-build-") as tmp:
        photos = catalogue_photos(catalogue, records, Path(tmp) / "photos", progress_bar)
        out = Path(tmp) / "gallery"
        summary = build_gallery_dir(embedder, photos, folds, out, progress, fold_embedder, given, progress_bar)
        from services.core.identification.gallery import Gallery

        gallery, added, sightings = Gallery.load(out), [], None
        if extend is not None:
            gallery, added, extra, sightings = extend(gallery, embedder, Path(tmp))
            summary.update(extra, size=len(gallery), individuals=len(set(gallery.individual_ids)))
        from services.curation.catalogue.gallery_features import gallery_bank, wanted

        extra_files = []
        if wanted(settings, Tuning.load(out / TUNING_FILE)):  # the live chain's re-ranking
            path, features = gallery_bank(photos, embedder.eval_box_source, gallery, Path(tmp), sightings,
                                          progress=progress)
            extra_files.append(path)
            if features is not None:
                summary.update(local_features=features)
        version = publish_gallery(store, gallery, out / TUNING_FILE, parent=parent, added_sightings=added,
                                  move_pointer=move_pointer, reindexed=reindexed, extra_files=extra_files,
                                  reason=reason or f"gallery build: {len(records)} catalogue photos, "
                                                   f"{embedder.model_id}")
    summary.update(version=version, previous_version=parent, current=move_pointer, run=str(run_dir),
                   tuning_file=str(tuning_path) if tuning_path else None,
                   tuning_run=str(tuning_run) if tuning_run else None,
                   seconds=round(time.perf_counter() - start, 2))
    return summary
