"""`whaleid gallery build --run RUN` serves the blend that RUN/tuning.json (`whaleid evaluate`) recommends: the
catalogue embedded by the run and the general identifier, blended as `model-repo build --tuning` serves them, so
the gallery names the model ids the served ensemble registers (the matcher accepts the worker's embeddings)."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
import uuid

import numpy as np

from support.catalogue import photo
from support.model_repo import EPOCHS

REAL = f"b0-tiny-f0-e{EPOCHS[-1]:03d}"
GENERAL = "general-lite0-224"  # the tests' general identifier (conftest.general_identifier)
WEIGHTS = {REAL: 0.4, GENERAL: 0.6}


def ensemble_model_ids(repository) -> list[str]:
    """The ensemble's `model_ids` parameter: what the worker registers for the served version."""
    text = (repository / "ensemble" / "config.pbtxt").read_text()
    match = re.search(r'key: "model_ids" value \{ string_value: ("(?:[^"\\]|\\.)*") \}', text)
    assert match, text
    return json.loads(json.loads(match.group(1)))


def test_gallery_build_of_a_run_recommending_the_blend_serves_the_blend(
        tmp_path, stack, catalogue, exported, snapshot_run, general_identifier, capsys):
    from services.cli.main import main
    from services.core.identification.gallery import Gallery, build_reference_gallery
    from services.core.identification.tuning import Tuning
    from services.core.identification.vectors import blend
    from services.curation.catalogue.gallery_build import publish_catalogue_gallery
    from services.curation.catalogue.importer import import_catalogue
    from services.curation.operations.gallery_versions import GalleryStore
    from training.embed import Embedder

    run = tmp_path / "run"
    shutil.copytree(snapshot_run, run)  # the session's run stays without a tuning.json
    tuning = Tuning(threshold=0.4, weights=WEIGHTS, members={GENERAL: "general"}).save(run)
    src = tmp_path / "folders"
    individuals = [f"ind{i}" for i in range(4)]
    for i, individual in enumerate(individuals):
        for n in range(2):
            photo(src / individual / f"{n}.jpg", 300 + 10 * i + n)
    import_catalogue(src, catalogue, progress=False)
    settings = dataclasses.replace(stack.settings, gallery_prefix=f"test-galleries-{uuid.uuid4().hex[:8]}")
    store = GalleryStore.from_settings(settings)
    messages: list[str] = []
    summary = publish_catalogue_gallery(settings, run, progress=messages.append, progress_bar=False,
                                        catalogue=catalogue, store=store)
    assert any(f"serving the blend {REAL} 0.40 + {GENERAL} 0.60" in m for m in messages), messages
    assert any(f"EMBEDDING {512 + 1280}-d" in m for m in messages), messages
    served = store.download(summary["version"], tmp_path / "served")
    gallery = Gallery.load(served)
    assert Tuning.load(served).weights == WEIGHTS and Tuning.load(served).members == {GENERAL: "general"}

    # the gallery names the models the served ensemble blends (model-repo build --tuning of the same tuning)
    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / REAL).symlink_to(exported / REAL)
    repository = tmp_path / "repository"
    assert main(["model-repo", "build", "--exports", str(exports), "--tuning", str(tuning),
                 "--out", str(repository)]) == 0
    capsys.readouterr()
    assert list(gallery.model_ids) == ensemble_model_ids(repository) == [REAL, GENERAL]

    # and its rows are the offline blend of the members' embeddings (one mean per individual)
    paths = sorted(src.glob("*/*.jpg"))
    ids = [p.parent.name for p in paths]
    per_model = {REAL: Embedder.from_run(snapshot_run, EPOCHS[-1]).embed_files(paths),
                 GENERAL: Embedder.from_run(general_identifier).embed_files(paths)}
    def offline_rows(weights):
        offline = build_reference_gallery(blend(per_model, weights), ids, ["unknown"] * len(ids),
                                          [str(p) for p in paths], "means")
        row = {ind: i for i, ind in enumerate(offline.individual_ids)}
        return np.stack([offline.embeddings[row[ind]] for ind in gallery.individual_ids])

    assert gallery.embeddings.shape == (len(individuals), 512 + 1280)
    assert np.max(np.abs(gallery.embeddings - offline_rows(WEIGHTS))) <= 1e-4
    # the check has teeth: other weights give other rows
    assert np.max(np.abs(gallery.embeddings - offline_rows({REAL: 0.5, GENERAL: 0.5}))) > 1e-3
