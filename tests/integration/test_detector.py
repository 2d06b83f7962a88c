"""The crop detector (issue #15 item 2), end to end in well under a minute:

- synthetic full scenes: deterministic, every box inside the frame, several animals, partial views, empty water;
- a tiny detector (pretrained Lite0 at 96 px, a few dozen scenes, a few seconds of head fitting) beats the
  trivial whole-frame box on fresh scenes of the training looks;
- exported to ONNX (parity-checked), built into a repository with `--detector`, served by Triton: the worker's
  crop step gets its boxes, the uploader's box still wins, a detector loaded after the worker started is picked
  up (readiness re-checked), and an EXIF-rotated photo gets its box in the upright frame.
"""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from support.model_repo import fake_export

TINY = {"image_size": 96, "scenes": 96, "validation_scenes": 48, "epochs": 30, "hidden": 128, "seed": 3}


# ----------------------------------------------------------------------------- scenes
def test_scenes_are_deterministic_with_true_boxes_inside_the_frame(tmp_path):
    from training.synth.scenes import generate_scenes, iter_scenes, read_scene_boxes

    scenes = list(iter_scenes(40, seed=5, image_size=120, looks="photo,textured"))
    again = list(iter_scenes(3, seed=5, image_size=120, looks="photo,textured"))
    for a, b in zip(scenes, again, strict=False):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.animals == b.animals
    counts = [len(s.animals) for s in scenes]
    assert 0 in counts and max(counts) >= 2 and {s.look for s in scenes} == {"photo", "textured"}
    touching = 0
    for scene in scenes:
        width, height = scene.image.size
        areas = [(a.box[2] - a.box[0]) * (a.box[3] - a.box[1]) for a in scene.animals]
        assert areas == sorted(areas, reverse=True)  # the main (largest) animal first
        for animal in scene.animals:
            x0, y0, x1, y1 = animal.box
            assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
            touching += x0 == 0 or y0 == 0 or x1 == width
    assert touching >= 3  # animals partly out of frame
    summary = generate_scenes(tmp_path, 6, seed=5, image_size=120, looks="photo,textured")
    boxes = read_scene_boxes(tmp_path)
    assert len(boxes) == 6 and summary["animals"] == sum(len(v) for v in boxes.values())
    assert [b for b in boxes.values()] == [[a.box for a in s.animals] for s in scenes[:6]]


# ----------------------------------------------------------------------------- the readiness cache
class _Client:
    def __init__(self):
        self.ready, self.asked = False, 0

    def is_model_ready(self, name, client_timeout=None):
        self.asked += 1
        return self.ready


def test_the_detector_step_rechecks_readiness_at_most_every_recheck_s():
    from services.chain.worker.cropping import TritonDetector

    now = [0.0]
    detector = TritonDetector("127.0.0.1:1", "detector", recheck_s=10.0, clock=lambda: now[0])
    detector.client = _Client()
    image = np.zeros((40, 60, 3), np.uint8)
    assert detector.find_box(image, {}) is None and detector.client.asked == 1
    for _ in range(5):
        assert detector.find_box(image, {}) is None
    assert detector.client.asked == 1  # cached
    detector.client.ready = True
    now[0] = 10.5
    assert detector.ready() and detector.client.asked == 2


# ----------------------------------------------------------------------------- train, export, serve
@pytest.fixture(scope="module")
def detector_run(tmp_path_factory):
    from training.detector.export import export_detector
    from training.detector.train import config_with, train_detector

    root = tmp_path_factory.mktemp("detector")
    result = train_detector(root / "run", config_with(TINY))
    export = export_detector(root / "run", root / "export")
    return root, result, export


def test_a_tiny_detector_beats_the_whole_frame_box(detector_run):
    _, result, export = detector_run
    report = result["validation"]  # fresh scenes of the training looks
    assert report["with_animal"] >= 30
    assert report["mean_iou"] > report["whole_frame_mean_iou"] + 0.05, report
    assert report["presence_accuracy"] >= 0.8, report
    manifest = json.loads((export / "detector.json").read_text())
    assert manifest["kind"] == "detector" and manifest["image_size"] == 96
    assert manifest["parity_max_abs_diff"] <= 1e-4


@pytest.fixture(scope="module")
def served(detector_run, tmp_path_factory):
    from services.devtools.stack.triton import launch_triton
    from services.serving.model_repo import build_repository

    root, _, export = detector_run
    fake_export(root / "exports", "m")
    record = build_repository(root / "exports", root / "repo", detector=export)
    triton = launch_triton(root / "repo", tmp_path_factory.mktemp("detector_triton"))
    try:
        triton.wait_healthy(90)
        yield triton, record
    finally:
        triton.stop()


def _jpeg(pixels: np.ndarray, exif_orientation: int | None = None) -> bytes:
    buffer = io.BytesIO()
    extra = {}
    if exif_orientation:
        exif = Image.Exif()
        exif[0x0112] = exif_orientation
        extra["exif"] = exif.tobytes()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, **extra)
    return buffer.getvalue()


def test_the_worker_crops_with_the_served_detector(served, detector_run):
    import tritonclient.grpc as grpcclient

    from services.chain.worker.cropping import TritonDetector, UploaderBox, crop_sighting
    from services.core.imaging import decode_image
    from training.detector.data import iou
    from training.synth.scenes import iter_scenes

    triton, record = served
    assert "detector" in record["models"] and record["detector"]["image_size"] == 96
    assert "detector/1/whaleid_imaging.py" in record["python_sources"]
    client = grpcclient.InferenceServerClient(triton.grpc)
    client.unload_model("detector")  # the worker starts before the detector is loaded ...
    detector = TritonDetector.if_available(triton.grpc, "detector", recheck_s=0.3)
    assert detector is not None and not detector.ready()
    scenes = [s for s in iter_scenes(16, seed=99, image_size=144, looks="photo,grey,overcast") if s.animals]
    pixels = [decode_image(_jpeg(np.asarray(s.image))) for s in scenes]
    assert crop_sighting(pixels[0], {}, [UploaderBox(), detector]).source == "full"
    client.load_model("detector")  # ... and picks it up once Triton has it
    import time

    time.sleep(0.4)
    crops = [crop_sighting(p, {}, [UploaderBox(), detector]) for p in pixels]
    assert "PPM" in detector._formats  # the built detector reads the worker's pixels as binary PPM (not PNG)
    found = [(c.box, s.main_box) for c, s in zip(crops, scenes, strict=True) if c.source == "detector"]
    assert len(found) >= len(scenes) // 2
    ious = iou(np.array([f[0] for f in found]), np.array([f[1] for f in found]))
    height, width = pixels[0].shape[:2]
    whole = iou(np.tile([[0, 0, width, height]], (len(found), 1)), np.array([f[1] for f in found]))
    assert ious.mean() > whole.mean(), (ious, whole)
    boxed = crop_sighting(pixels[0], {"crop_box": [5, 6, 50, 40]}, [UploaderBox(), detector])
    assert boxed.source == "uploader" and boxed.box == [5.0, 6.0, 50.0, 40.0]  # the uploader's box wins

    # EXIF: a photo stored sideways with orientation 6 gets the box of the upright photo (the same pixels)
    upright = np.asarray(scenes[0].image)
    stored = np.ascontiguousarray(np.rot90(upright, 1))  # orientation 6 turns it back (ROTATE_270)
    out = {}
    for name, data in (("upright", _jpeg(upright)), ("exif", _jpeg(stored, 6))):
        tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        out[name] = client.infer("detector", [tensor]).as_numpy("BOX_NORM")[0]
    assert np.allclose(out["upright"], out["exif"], atol=0.05), out
    client.close()
