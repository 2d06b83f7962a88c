"""A fine-tuned run blended with the general identifier (what `whaleid evaluate` may recommend): members of
different sizes (512-d snapshot + 1280-d Lite0), `model-repo build --tuning` adds the general member named in the
tuning file by itself, and Triton serves exactly the offline score-level blend (vectors.blend)."""

from __future__ import annotations

import numpy as np

from support.model_repo import EPOCHS, crops

REAL = f"b0-tiny-f0-e{EPOCHS[-1]:03d}"
GENERAL = "general-lite0-224"  # the tests' general identifier (conftest.general_identifier)
WEIGHTS = {REAL: 0.4, GENERAL: 0.6}


def test_run_plus_general_through_model_repo_build_and_triton_equals_the_offline_blend(
        exported, snapshot_run, general_identifier, tmp_path, capsys):
    from services.cli.main import main
    from services.core.identification.tuning import Tuning
    from services.core.identification.vectors import blend
    from services.core.imaging import decode_image
    from services.devtools.stack import launch_triton
    from services.serving.triton_client import EmbeddingClient
    from training.embed import Embedder

    exports = tmp_path / "exports"
    exports.mkdir()
    (exports / REAL).symlink_to(exported / REAL)  # only the run: the general member comes from the tuning file
    tuning = Tuning(threshold=0.4, weights=WEIGHTS, members={GENERAL: "general"}).save(tmp_path / "tuning.json")
    repository = tmp_path / "repository"
    assert main(["model-repo", "build", "--exports", str(exports), "--tuning", str(tuning),
                 "--out", str(repository)]) == 0
    assert f"serving {REAL} 0.40 + {GENERAL} 0.60: EMBEDDING 1792-d" in capsys.readouterr().out  # model-id order

    images = crops(4)
    decoded = [decode_image(b) for b in images]
    per_model = {REAL: Embedder.from_run(snapshot_run, EPOCHS[-1]).embed_images(decoded),
                 GENERAL: Embedder.from_run(general_identifier).embed_images(decoded)}
    offline = blend(per_model, WEIGHTS)
    with launch_triton(repository, tmp_path / "triton") as server:
        server.wait_healthy(120)
        with EmbeddingClient(server.grpc, timeout_s=60) as client:
            client.wait_ready(60)
            served = client.embed(images)
    assert served.shape == (4, 512 + 1280)
    assert np.max(np.abs(served - offline)) <= 1e-4
    # the check has teeth: other weights give other embeddings; cosines are the weighted mean of the members'
    assert np.max(np.abs(served - blend(per_model, {REAL: 0.5, GENERAL: 0.5}))) > 1e-3
    cosines = {m: x @ x.T for m, x in per_model.items()}
    np.testing.assert_allclose(served @ served.T, 0.4 * cosines[REAL] + 0.6 * cosines[GENERAL], atol=2e-4)
