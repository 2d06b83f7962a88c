"""The matcher's model state (gallery + tuning of one version) and the ranking of embedded sightings.

`Matcher.reload()` builds the new Gallery + Identifier off to the side and swaps one reference, so a search in
progress keeps the state it started with (hot swap without locks).

The species whose tuned `new_individual` threshold applies (`choose_species`): the app's hint (metadata
`species_hint`) first, else the model's most probable species (the record's `species_scores`, from the Triton
ensemble's SPECIES output) when its probability is above `species_min_probability` (setting
`matcher_species_min_probability`, default 0.5), else none (the global threshold). Each Identification records
the species, its source and the threshold applied.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.chain.failures import PermanentFailure
from services.core import topics
from services.core.errors import ConfigError
from services.core.identification import NEW_INDIVIDUAL
from services.core.metrics import (
    GALLERY_BUILT,
    GALLERY_INDIVIDUALS,
    GALLERY_SIZE,
    GALLERY_VERSION,
    SEARCH_LATENCY,
)
from services.core.settings import Settings

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class SpeciesChoice:
    species: str  # "" = none
    source: str  # app | model | none (topics.SPECIES_SOURCES)


def choose_species(metadata: dict | None, scores: dict[str, float] | None, min_probability: float) -> SpeciesChoice:
    """The app's species hint, else the model's most probable species when its probability is above
    `min_probability`, else none."""
    hint = str((metadata or {}).get("species_hint") or "").strip()
    if hint:
        return SpeciesChoice(hint, "app")
    if scores:
        name, probability = max(scores.items(), key=lambda item: float(item[1]))
        if float(probability) > min_probability:
            return SpeciesChoice(str(name), "model")
    return SpeciesChoice("", "none")


@dataclass(frozen=True)
class ModelState:
    version: str
    gallery: object  # services.core.identification.Gallery
    identifier: object  # services.core.identification.Identifier
    embedding_size: int
    built_at: float  # when the version was published (version.json created_at)
    features: object = None  # local_features.FeatureBank of the gallery photos (None: the version has none)


def load_state(directory: Path, version: str, built_at: float = 0.0) -> ModelState:
    """Gallery (Gallery.save files) + tuning.json of one version, with its Identifier and a built index, and the
    gallery photos' local features when the version has them (local_features.BANK_FILE)."""
    from services.core.identification import Gallery, Identifier, Tuning
    from services.core.identification.local_features import FeatureBank

    gallery = Gallery.load(directory)
    tuning = Tuning.load(directory)
    gallery.index  # noqa: B018 - build the FAISS index now, not in the first search
    return ModelState(version, gallery, Identifier(gallery, tuning), gallery.dimension, built_at or time.time(),
                      FeatureBank.load(directory))


def rerank_config(state: ModelState, enabled: bool):
    """The re-ranking the matcher applies with `state` (None: none): the served tuning's `rerank`, else the
    defaults (local_features.RerankConfig) when the setting `rerank_local_features` is on; only when the version
    has the gallery photos' local features."""
    from services.core.identification.local_features import RerankConfig
    from services.core.identification.local_features_tuning import served_config

    if state.features is None:
        return None
    config = served_config(state.identifier.tuning.rerank)
    return config if config is not None else (RerankConfig() if enabled else None)


def query_features(records: list[topics.SightingEmbedded]) -> list | None:
    """Each record's LocalFeatures (None without); None when no record has any. PermanentFailure
    (malformed_event) for a field that does not decode."""
    from services.core.errors import DataError
    from services.core.identification.local_features import LocalFeatures

    if all(r.local_features is None for r in records):
        return None
    out = []
    for record in records:
        try:
            data = record.local_features_bytes()
            out.append(None if data is None else LocalFeatures.from_bytes(data))
        except (topics.RecordError, DataError) as exc:
            raise PermanentFailure("malformed_event", f"sighting {record.sighting_id}: {exc}") from None
    return out


def identify_reranked(identifier, embeddings: np.ndarray, species, queries: list, bank, config, workers: int = 1):
    """Identifier.identify_detailed with the candidates re-ranked by local features (local_features.rerank_detailed,
    the one implementation; `workers`: the setting `rerank_workers`) before `new_individual`: (Identified, per query
    {individual_id: inliers})."""
    from services.core.identification.identifier import Identified
    from services.core.identification.local_features import rerank_detailed
    from services.core.identification.ranking import insert_new_individual

    fused, inliers = rerank_detailed(identifier.candidates(embeddings), queries, bank.photos_of, config, workers)
    thresholds = np.broadcast_to(identifier.thresholds(len(fused), species), (len(fused),))
    return Identified(insert_new_individual(fused, thresholds), thresholds, fused.matched_rows()), inliers


def limit_search_threads(threads: int) -> int:
    """Set the process's FAISS (OpenMP) threads to `threads` (the setting `matcher_search_threads`; 0 leaves
    OpenMP's default: every core, or OMP_NUM_THREADS); returns the number in use. The matcher searches batches of
    at most `worker_batch_size` queries: on a gallery of thousands of rows a second OpenMP thread does not shorten
    them on a host shared with the worker and Triton but spins and waits, costing 1.8-4.8x the CPU per query on a
    500-row gallery (docs/benchmarks.md, "The chain"); a gallery of millions of rows is where more threads pay.
    Process-wide (FAISS's setting is), so the matcher's process entry calls it."""
    import faiss

    if threads > 0:
        faiss.omp_set_num_threads(threads)
    return faiss.omp_get_max_threads()


class Matcher:
    """Serves one gallery version at a time from the model store (services.curation.operations.gallery_versions)."""

    def __init__(self, settings: Settings, store, species_min_probability: float | None = None):
        self.settings = settings
        self.store = store  # GalleryStore
        if species_min_probability is None:
            species_min_probability = settings.matcher_species_min_probability
        self.species_min_probability = float(species_min_probability)
        self.state: ModelState | None = None
        self._reload_lock = threading.Lock()

    def reload(self, force: bool = False) -> bool:
        """Load the version `current` names when it differs from the served one; True when it swapped."""
        with self._reload_lock:
            version = self.store.current_version()
            if version is None:
                raise ConfigError(
                    f"no gallery in the model store (s3://{self.settings.models_bucket}/"
                    f"{self.settings.gallery_prefix}/current): run `whaleid demo` or publish one"
                )
            if self.state is not None and self.state.version == version and not force:
                return False
            directory = Path(tempfile.mkdtemp(prefix=f"gallery-{version}-"))
            try:
                built_at = float(self.store.version_info(version).get("created_at", 0.0))
                state = load_state(self.store.download(version, directory), version, built_at)
            finally:
                shutil.rmtree(directory, ignore_errors=True)
            previous, self.state = self.state, state  # the swap: one reference assignment
            _export_gallery_metrics(state, previous)
            log.info("matcher: serving gallery %s (%d embeddings)", version, len(state.gallery))
            return True

    def identify(self, records: list[topics.SightingEmbedded], state: ModelState | None = None) -> list[topics.Identification]:
        """Rank a batch of embedded sightings against the served gallery, or `state` (the version their model
        versions were checked against), in one Identifier call."""
        state = state or self.state
        if state is None:
            raise ConfigError("the matcher has no gallery loaded")
        for record in records:
            if len(record.embedding) != state.embedding_size:
                raise PermanentFailure(
                    "embedding_mismatch",
                    f"sighting {record.sighting_id}: {len(record.embedding)} values, gallery has {state.embedding_size}",
                )
        embeddings = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in records])
        choices = [choose_species(r.metadata, r.species_scores, self.species_min_probability) for r in records]
        species = [c.species or None for c in choices] if any(c.species for c in choices) else None
        config = rerank_config(state, self.settings.rerank_local_features)
        queries = query_features(records) if config is not None else None
        start = time.perf_counter()
        if queries is None:
            identified = state.identifier.identify_detailed(embeddings, species=species)
            reranks = [None] * len(records)
        else:
            identified, inliers = identify_reranked(state.identifier, embeddings, species, queries, state.features,
                                                    config, self.settings.rerank_workers)
            reranks = [None if q is None else _rerank_entry(config, c, n)
                       for q, c, n in zip(queries, identified.predictions, inliers, strict=True)]
        SEARCH_LATENCY.observe((time.perf_counter() - start) / max(1, len(records)))
        identified_at = topics.now()
        images = state.gallery.images
        return [
            topics.Identification(
                sighting_id=record.sighting_id,
                candidates=[_candidate(i, s, matched, images) for i, s in candidates],
                new_individual=bool(candidates) and candidates[0][0] == NEW_INDIVIDUAL,
                model_version=record.model_version,
                gallery_version=state.version,
                uploaded_at=record.uploaded_at,
                identified_at=identified_at,
                species=choice.species,
                species_source=choice.source,
                threshold=round(float(threshold), 6),
                rerank=rerank,
            )
            for record, candidates, matched, choice, threshold, rerank in zip(
                records, identified.predictions, identified.matched_rows, choices, identified.thresholds, reranks,
                strict=True)
        ]


def _rerank_entry(config, candidates, inliers: dict[str, int]) -> dict:
    """The Identification's `rerank`: the method and fusion, and each candidate's inliers (in `candidates` order;
    None for new_individual and for a candidate outside the re-ranked top k)."""
    from services.core.identification.local_features_tuning import METHOD

    return {"method": METHOD, "weight": config.weight, "cap": config.cap, "k": config.k,
            "inliers": [inliers.get(str(i)) for i, _ in candidates]}


def _candidate(individual_id: str, score: float, matched: dict[str, int], images: list[str]) -> dict:
    """One candidate of an identification: id, score and, for a known individual, `image`: the gallery image it
    matched (its best-scoring one: a catalogue photo key, `sighting/<id>`, or the training image's name), which
    the gateway shows as the candidate's reference photo (services.chain.gateway.candidate_photos)."""
    candidate = {"individual_id": str(individual_id), "score": round(float(score), 6)}
    row = matched.get(str(individual_id), -1)
    if individual_id != NEW_INDIVIDUAL and 0 <= row < len(images):
        candidate["image"] = str(images[row])
    return candidate


def _export_gallery_metrics(state: ModelState, previous: ModelState | None) -> None:
    ids = list(state.gallery.individual_ids)
    GALLERY_SIZE.set(len(ids))
    GALLERY_INDIVIDUALS.set(len(set(ids)))
    if previous is not None and previous.version != state.version:
        GALLERY_VERSION.remove(previous.version)
    GALLERY_VERSION.labels(version=state.version).set(1)
    GALLERY_BUILT.set(state.built_at)
