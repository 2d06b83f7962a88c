"""The label-free CAM localiser (issue 21 item 4) served as the Triton `detector`: exported to ONNX (parity
checked), built into a repository with `--detector cam`, it returns the same box and score as the offline
localiser (training.localiser, the crop of `localiser: cam` in evaluate, predict and gallery build) for
generated photos, and the worker's crop step crops there. A small backbone (Lite0 at 160 px) keeps it quick;
the box arithmetic is the same for every backbone (services.core.localisation)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from support.model_repo import fake_export

BACKBONE, SIZE = "EfficientNetLite0", 160


def _photos(count=8, seed=1):
    """Generated photos of a few sizes: a bright blob (the 'animal') somewhere on a noisy darker background."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        height, width = (150, 240) if i % 2 else (200, 180)
        yy, xx = np.mgrid[0:height, 0:width]
        cx, cy = rng.uniform(0.2, 0.8) * width, rng.uniform(0.25, 0.75) * height
        rx, ry = rng.uniform(0.08, 0.2) * width, rng.uniform(0.08, 0.2) * height
        blob = np.exp(-(((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2) / 2)[..., None]
        background = rng.uniform(30, 110, 3) + rng.normal(0, 10, (height, width, 3))
        out.append(np.clip(background * (1 - blob) + rng.uniform(160, 250, 3) * blob, 0, 255).astype(np.uint8))
    return out


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cam_export_dir(tmp_path_factory):
    from training.localiser import export_cam

    return export_cam(tmp_path_factory.mktemp("cam") / "export", BACKBONE, SIZE)


@pytest.fixture(scope="module")
def served(cam_export_dir, tmp_path_factory):
    from services.devtools.stack.triton import launch_triton
    from services.serving.model_repo import build_repository

    root = tmp_path_factory.mktemp("cam_repo")
    fake_export(root / "exports", "m")
    mp = pytest.MonkeyPatch()
    mp.setenv("WHALEID_CAM_DETECTOR", str(cam_export_dir))  # `--detector cam` finds this export
    try:
        record = build_repository(root / "exports", root / "repo", detector="cam")
    finally:
        mp.undo()
    triton = launch_triton(root / "repo", tmp_path_factory.mktemp("cam_triton"))
    try:
        triton.wait_healthy(90)
        yield triton, record
    finally:
        triton.stop()


def test_the_export_is_parity_checked(cam_export_dir):
    manifest = json.loads((cam_export_dir / "detector.json").read_text())
    assert manifest["kind"] == "detector" and manifest["localiser"] == "cam"
    assert manifest["backbone"] == BACKBONE and manifest["image_size"] == SIZE and manifest["grid"] == SIZE // 32
    assert manifest["parity_max_rel_diff"] <= 1e-3


def test_served_cam_detector_gives_the_offline_box(served):
    import tritonclient.grpc as grpcclient

    from services.chain.worker.cropping import TritonDetector, UploaderBox, crop_sighting
    from services.core.imaging import validate_box
    from training.localiser import CamLocaliser

    triton, record = served
    assert record["detector"]["localiser"] == "cam" and record["detector"]["image_size"] == SIZE
    assert "detector/1/whaleid_localisation.py" in record["python_sources"]
    photos = _photos()
    offline = CamLocaliser(BACKBONE, SIZE).boxes(photos)
    client = grpcclient.InferenceServerClient(triton.grpc)
    for pixels, (box, score) in zip(photos, offline, strict=True):
        tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[_png(pixels)]], dtype=np.object_))
        result = client.infer("detector", [tensor])
        np.testing.assert_allclose(result.as_numpy("BOX_NORM")[0], box, atol=1e-5)
        np.testing.assert_allclose(result.as_numpy("SCORE")[0, 0], score, atol=1e-4)
        height, width = pixels.shape[:2]
        np.testing.assert_allclose(result.as_numpy("BOX")[0], box * [width, height, width, height], atol=1e-3)
    client.close()
    # the blob is found: every box is a crop, not the whole frame (on Lite0@160's 5 x 5 grid, margin included)
    assert all((b[2] - b[0]) * (b[3] - b[1]) < 0.9 for b, _ in offline)
    detector = TritonDetector.if_available(triton.grpc, "detector", recheck_s=0.1)
    assert detector is not None
    expected = CamLocaliser(BACKBONE, SIZE).crop_boxes(photos)
    used = 0
    for pixels, want in zip(photos, expected, strict=True):
        crop = crop_sighting(pixels, {}, [UploaderBox(), detector])
        if want is None:
            assert crop.source == "full"
            continue
        used += 1
        assert crop.source == "detector"
        height, width = pixels.shape[:2]
        np.testing.assert_allclose(crop.box, validate_box(want, width, height), atol=1.0)  # float32 rounding
    assert used == len(photos)  # a concentrated map: every score >= 0.5, so the worker crops every photo
