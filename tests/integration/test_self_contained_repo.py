"""A built repository runs where the project is not installed (issue #15, item 1).

- Python environment: a virtual environment of this Python holding only numpy, Pillow and onnxruntime (links
  to this environment's copies), what a Triton image needs besides the repository; `services`, `training` and
  the rest of the project are not importable in it (checked).
- Vendored code: `preprocess/1/whaleid_imaging.py` and `blend/1/whaleid_vectors.py`, imported from the built
  repository in that environment, compute byte for byte what `services.core.imaging` and
  `services.core.identification.vectors` compute in-process: JPEG, PNG, EXIF-rotated, 16-bit, palette, alpha, CMYK,
  WebP and MPO images, with and without a crop box, and the same refusals with the same reasons.
- Triton: the repository, copied elsewhere, served by the bundled tritonserver with that environment first on
  PATH, no PYTHONPATH and its working directory outside the project: every model loads, the preprocess model's
  pixels equal services.core.imaging's, and the ensemble's embeddings and species equal the offline path
  (services.core.imaging + onnxruntime in-process + the identification blend).
- The builder refuses a template or vendored module that imports what Triton's python backend lacks.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
import venv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from services.core.errors import RepositoryError
from support.model_repo import EPOCHS, SERVED_SPECIES, crops, fake_detector_export, fake_export

REAL = f"b0-tiny-f0-e{EPOCHS[-1]:03d}"  # the exported EfficientNet snapshot (64 px, species head)
PROBE = "probe"  # a tiny second embedder (96 px: a second preprocess model) with other species
PROBE_SPECIES = ["humpback_whale", "beluga"]
WEIGHTS = {REAL: 0.6, PROBE: 0.4}
PURE_PACKAGES = ("numpy", "PIL", "onnxruntime")
PROJECT_MODULES = ("services", "training", "bench", "tritonclient", "tensorflow")


# ----------------------------------------------------------------------------- a Python without the project
def pure_python_env(root: Path) -> Path:
    """A venv (no pip, no system site-packages) with links to this environment's numpy, Pillow and onnxruntime
    and their bundled shared libraries (numpy.libs, pillow.libs)."""
    venv.EnvBuilder(with_pip=False, symlinks=True, system_site_packages=False).create(root)
    site = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    for name in PURE_PACKAGES:
        package = Path(__import__(name).__file__).parent
        (site / package.name).symlink_to(package)
    for libs in ("numpy.libs", "pillow.libs", "onnxruntime.libs"):  # auditwheel's bundled shared libraries
        if (package.parent / libs).is_dir():
            (site / libs).symlink_to(package.parent / libs)
    return root


def pure_env_vars(python_env: Path, home: Path) -> dict[str, str]:
    """A whole environment (nothing inherited): the pure venv first on PATH, no PYTHONPATH, the libraries
    Triton needs (services.devtools.stack.triton.triton_env's LD_LIBRARY_PATH)."""
    from services.devtools.stack.triton import triton_env

    return {"PATH": f"{python_env / 'bin'}:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "LD_LIBRARY_PATH": triton_env()["LD_LIBRARY_PATH"]}


def run_pure(python_env: Path, cwd: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python_env / "bin" / "python"), "-c", script, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=pure_env_vars(python_env, cwd))


@pytest.fixture(scope="module")
def python_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("pure_env")
    env = pure_python_env(root / "venv")
    probe = ("import importlib.util, json, sys\n"
             f"print(json.dumps({{m: importlib.util.find_spec(m) is not None for m in {PURE_PACKAGES + PROJECT_MODULES}}}))")
    found = json.loads(run_pure(env, root, probe).stdout)
    assert found == {**{m: True for m in PURE_PACKAGES}, **{m: False for m in PROJECT_MODULES}}, found
    return env


# ----------------------------------------------------------------------------- the repository
@pytest.fixture(scope="module")
def repository(tmp_path_factory, exported):
    """Built (flip TTA, species, two input sizes, a detector), then copied away from where it was built."""
    from services.core.identification.tuning import Tuning
    from services.serving.model_repo import build_repository

    root = tmp_path_factory.mktemp("self_contained")
    folder = root / "exports"
    folder.mkdir()
    (folder / REAL).symlink_to(exported / REAL)
    fake_export(folder, PROBE, image_size=96, seed=5, species=PROBE_SPECIES)
    tuning = Tuning(weights=WEIGHTS, flip_tta=True).save(root / "tuning.json")
    build_repository(folder, root / "built", tuning, detector=fake_detector_export(root / "detector"))
    deployed = tmp_path_factory.mktemp("deployed") / "models"
    shutil.copytree(root / "built", deployed)
    return deployed


def _jpeg(image: Image.Image, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=92, **options)
    return buffer.getvalue()


def _encoded(image: Image.Image, format: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def sample_images() -> dict[str, bytes]:
    """Every kind of input the worker may send (and some it must refuse)."""
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:90, 0:140]
    rgb = np.stack([xx * 255 // 139, yy * 255 // 89, (xx + yy) % 256], axis=-1).astype(np.uint8)
    rgb[20:50, 30:70] = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
    photo = Image.fromarray(rgb)
    images = {"jpeg": _jpeg(photo), "png": _encoded(photo, "PNG"), "webp": _encoded(photo, "WEBP", quality=90)}
    for orientation in (2, 3, 5, 6, 8):
        exif = Image.Exif()
        exif[0x0112] = orientation
        images[f"jpeg_exif_{orientation}"] = _jpeg(photo, exif=exif.tobytes())
    sixteen = (np.mgrid[0:60, 0:80][1] * 829 + 17).astype(np.uint16)
    images["png_16bit"] = _encoded(Image.fromarray(sixteen), "PNG")  # mode I;16
    images["png_palette"] = _encoded(photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=37), "PNG")
    rgba = photo.convert("RGBA")
    rgba.putalpha(Image.fromarray((xx * 255 // 139).astype(np.uint8)))
    images["png_rgba"] = _encoded(rgba, "PNG")
    images["png_grey"] = _encoded(photo.convert("L"), "PNG")
    images["jpeg_cmyk"] = _jpeg(photo.convert("CMYK"))
    images["mpo"] = _encoded(photo, "MPO", save_all=True, append_images=[photo.transpose(Image.Transpose.ROTATE_180)])
    images["crop_jpeg"], images["crop_png"] = crops(2)[0], crops(6)[-1]
    # refused, each for its reason
    images["empty"] = b""
    images["garbage"] = b"this is not an image"
    images["truncated"] = images["jpeg"][: len(images["jpeg"]) // 2]
    images["gif"] = _encoded(photo, "GIF")
    images["strip"] = _encoded(Image.fromarray(np.zeros((4, 200, 3), np.uint8)), "PNG")  # bad_dimensions
    return images


BOXES = [None, [10, 5, 60, 40], [3.5, 2.2, 50.7, 33.1], [-20, -20, 1000, 1000], [5, 5, 6, 6], [float("nan"), 0, 9, 9]]
SIZES = (64, 97)
MAX_PIXELS = 40_000  # the 140x90 photos pass; 'big' is refused for too_many_pixels (max_pixels 100)

# run in the pure environment against the vendored module: every (image, box, size) -> pixels or the refusal
VENDORED_RUN = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import whaleid_imaging as imaging
assert not any(m.split(".")[0] in ("services", "training") for m in sys.modules), sorted(sys.modules)
cases = json.loads(open(sys.argv[2]).read())
results, arrays = {}, {}
for key, case in cases.items():
    data = open(case["file"], "rb").read()
    try:
        image = imaging.decode_image(data, case["max_pixels"])
        arrays[key + "/decoded"] = image
        for b, box in enumerate(case["boxes"]):
            try:
                cropped = imaging.crop(image, box)
                arrays[f"{key}/{b}/crop"] = cropped
                for size in case["sizes"]:
                    arrays[f"{key}/{b}/{size}"] = imaging.preprocess(image, size, box)
                    arrays[f"{key}/{b}/{size}/flip"] = imaging.resize_for_model(np.ascontiguousarray(cropped[:, ::-1]), size)
            except imaging.DataError as exc:
                results[f"{key}/{b}"] = ["DataError", str(exc)]
    except imaging.ImageRejected as exc:
        results[key] = ["ImageRejected", exc.reason, exc.detail, str(exc)]
np.savez(sys.argv[3], **arrays)
open(sys.argv[4], "w").write(json.dumps(results))
"""


def _in_process(cases: dict) -> tuple[dict, dict]:
    from services.core.errors import DataError
    from services.core.imaging import ImageRejected, crop, decode_image, preprocess, resize_for_model

    results, arrays = {}, {}
    for key, case in cases.items():
        data = Path(case["file"]).read_bytes()
        try:
            image = decode_image(data, case["max_pixels"])
        except ImageRejected as exc:
            results[key] = ["ImageRejected", exc.reason, exc.detail, str(exc)]
            continue
        arrays[key + "/decoded"] = image
        for b, box in enumerate(case["boxes"]):
            try:
                cropped = crop(image, box)
            except DataError as exc:
                results[f"{key}/{b}"] = ["DataError", str(exc)]
                continue
            arrays[f"{key}/{b}/crop"] = cropped
            for size in case["sizes"]:
                arrays[f"{key}/{b}/{size}"] = preprocess(image, size, box)
                arrays[f"{key}/{b}/{size}/flip"] = resize_for_model(np.ascontiguousarray(cropped[:, ::-1]), size)
    return results, arrays


def test_vendored_imaging_is_services_imaging_byte_for_byte(repository, python_env, tmp_path):
    images = sample_images()
    images["big"] = images["png"]  # refused below: max_pixels smaller than its 140x90
    cases = {}
    for name, data in images.items():
        (tmp_path / name).write_bytes(data)
        cases[name] = {"file": str(tmp_path / name), "boxes": BOXES, "sizes": SIZES,
                       "max_pixels": 100 if name == "big" else MAX_PIXELS}
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    out = tmp_path / "vendored.npz", tmp_path / "vendored.json"
    done = run_pure(python_env, tmp_path, VENDORED_RUN, str(repository / "preprocess_64" / "1"),
                    str(tmp_path / "cases.json"), str(out[0]), str(out[1]))
    assert done.returncode == 0, done.stderr
    vendored_results = json.loads(out[1].read_text())
    with np.load(out[0]) as loaded:
        vendored = {key: loaded[key] for key in loaded.files}

    results, arrays = _in_process(cases)
    assert vendored_results == results
    assert sorted(vendored) == sorted(arrays)
    for key, expected in arrays.items():
        assert vendored[key].dtype == expected.dtype and vendored[key].shape == expected.shape, key
        assert np.array_equal(vendored[key], expected), key
    # the set has teeth: every kind decoded, the EXIF turns applied, every refusal reason met
    assert {r[1] for r in results.values() if r[0] == "ImageRejected"} == {
        "empty", "not_an_image", "truncated", "unsupported_format", "bad_dimensions", "too_many_pixels"}
    assert arrays["jpeg_exif_6/decoded"].shape == (140, 90, 3) and arrays["jpeg/decoded"].shape == (90, 140, 3)
    assert arrays["png_16bit/decoded"].max() > 200 and len(np.unique(arrays["png_16bit/decoded"])) > 50
    decoded = sum(1 for key in arrays if key.endswith("/decoded"))
    assert decoded == len(images) - 6  # all but the 6 refused
    # per decoded image two refused boxes: the empty one and the NaN one
    assert sum(1 for r in results.values() if r[0] == "DataError") == 2 * decoded


VECTORS_RUN = r"""
import json, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
import whaleid_vectors as vectors
assert "services" not in sys.modules
data = np.load(sys.argv[2])
a, b, c, p, q = (data[k] for k in "abcpq")
out = {"flip": vectors.combine_flip(a, b), "blend": vectors.blend({"x": a, "y": c}, {"x": 0.7, "y": 0.3}),
       "probabilities": vectors.blend_probabilities([(p, ["s1", "s2"], 0.6), (q, ["s3", "s1", "s4"], 0.4)],
                                                    ["s1", "s2", "s3", "s4"])}
try:
    vectors.blend({"x": np.zeros_like(a)}, {"x": 1.0})
except vectors.DataError as exc:
    out_error = str(exc)
np.savez(sys.argv[3], **out)
open(sys.argv[4], "w").write(out_error)
"""


def test_vendored_vectors_are_the_identification_blend_byte_for_byte(repository, python_env, tmp_path):
    from services.core.errors import DataError
    from services.core.identification.vectors import blend, blend_probabilities, combine_flip

    rng = np.random.default_rng(2)
    a, b, c = (rng.normal(size=(5, 512)).astype(np.float32) for _ in range(3))
    p, q = rng.dirichlet(np.ones(2), 5).astype(np.float32), rng.dirichlet(np.ones(3), 5).astype(np.float32)
    np.savez(tmp_path / "in.npz", a=a, b=b, c=c, p=p, q=q)
    done = run_pure(python_env, tmp_path, VECTORS_RUN, str(repository / "blend" / "1"), str(tmp_path / "in.npz"),
                    str(tmp_path / "out.npz"), str(tmp_path / "error.txt"))
    assert done.returncode == 0, done.stderr
    expected = {"flip": combine_flip(a, b), "blend": blend({"x": a, "y": c}, {"x": 0.7, "y": 0.3}),
                "probabilities": blend_probabilities([(p, ["s1", "s2"], 0.6), (q, ["s3", "s1", "s4"], 0.4)],
                                                     ["s1", "s2", "s3", "s4"])}
    with np.load(tmp_path / "out.npz") as served:
        for key, value in expected.items():
            assert served[key].dtype == value.dtype and np.array_equal(served[key], value), key
    with pytest.raises(DataError) as info:
        blend({"x": np.zeros_like(a)}, {"x": 1.0})
    assert (tmp_path / "error.txt").read_text() == str(info.value)


def test_repository_python_sources_import_only_numpy_pillow_onnxruntime(repository):
    import ast

    from services.serving.model_repo.validation import validate_repository

    record = validate_repository(repository)
    python_models = sorted({path.split("/")[0] for path in record["python_sources"]})
    assert python_models == sorted(n for n in record["models"] if n != "ensemble")
    third_party = set()
    for relative in record["python_sources"]:
        tree = ast.parse((repository / relative).read_text())
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) else [])
            third_party |= {n.split(".")[0] for n in names if n.split(".")[0] not in sys.stdlib_module_names}
    assert third_party == {"numpy", "PIL", "onnxruntime", "triton_python_backend_utils",
                           "whaleid_imaging", "whaleid_vectors", "whaleid_localisation"}
    vendored = (repository / "preprocess_64" / "1" / "whaleid_imaging.py").read_text()
    assert vendored.startswith("# Generated by `whaleid model-repo build` from services.core.imaging")
    assert "def decode_image(" in vendored
    assert not [line for line in vendored.splitlines() if line.startswith(("import services", "from services"))]


# ----------------------------------------------------------------------------- Triton without the project
PROBE_MODEL = '''
import importlib.util, json, os, sys
import numpy as np
import triton_python_backend_utils as pb_utils

class TritonPythonModel:
    def initialize(self, args):
        self.info = json.dumps({"services": importlib.util.find_spec("services") is not None,
                                "training": importlib.util.find_spec("training") is not None,
                                "cwd": os.getcwd(), "pythonpath": os.environ.get("PYTHONPATH"),
                                "prefix": sys.prefix, "path": sys.path})

    def execute(self, requests):
        out = np.array([[self.info.encode()]], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("INFO", out)]) for _ in requests]
'''
PROBE_CONFIG = '''name: "environment_probe"
backend: "python"
max_batch_size: 0
input [ { name: "X" data_type: TYPE_FP32 dims: [ 1 ] } ]
output [ { name: "INFO" data_type: TYPE_STRING dims: [ 1, 1 ] } ]
'''


@pytest.fixture(scope="module")
def isolated_triton(repository, python_env, tmp_path_factory):
    """tritonserver on the copied repository (+ a probe model reporting its Python's view), started with a
    whole environment of its own (pure_env_vars) and its working directory outside the project."""
    import tritonclient.grpc as grpcclient

    from services.devtools.stack.binaries import package_file
    from services.devtools.stack.ports import free_ports
    from services.devtools.stack.triton import python_backend_dir

    root = tmp_path_factory.mktemp("isolated_triton")
    probe = repository / "environment_probe"
    (probe / "1").mkdir(parents=True)
    (probe / "1" / "model.py").write_text(PROBE_MODEL)
    (probe / "config.pbtxt").write_text(PROBE_CONFIG)
    backends = python_backend_dir(root / "backends")
    http, grpc, metrics = free_ports(3)
    argv = [str(package_file("pytriton", "tritonserver/bin/tritonserver")), f"--model-repository={repository}",
            f"--backend-directory={backends}", "--model-control-mode=none", "--strict-readiness=true",
            "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
            "--allow-metrics=false", "--allow-gpu-metrics=false", "--metrics-address=127.0.0.1",
            f"--metrics-port={metrics}", "--exit-on-error=true", "--exit-timeout-secs=1"]
    cwd = root / "cwd"
    cwd.mkdir()
    log_path = root / "triton.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(argv, cwd=cwd, env=pure_env_vars(python_env, cwd), stdin=subprocess.DEVNULL,
                                   stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"127.0.0.1:{grpc}"
    try:
        with grpcclient.InferenceServerClient(url) as client:
            deadline = time.monotonic() + 120
            while True:
                if process.poll() is not None:
                    pytest.fail(f"tritonserver exited ({process.returncode}):\n{log_path.read_text()[-4000:]}")
                try:
                    if client.is_server_ready():
                        break
                except Exception:  # noqa: BLE001 - not listening yet
                    pass
                if time.monotonic() > deadline:
                    pytest.fail(f"tritonserver not ready after 120 s:\n{log_path.read_text()[-4000:]}")
                time.sleep(0.2)
            yield client
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def _infer(client, model: str, inputs: dict, outputs: list[str]) -> dict[str, np.ndarray]:
    import tritonclient.grpc as grpcclient

    request = []
    for name, array in inputs.items():
        datatype = "BYTES" if array.dtype == np.object_ else grpcclient.np_to_triton_dtype(array.dtype)
        tensor = grpcclient.InferInput(name, list(array.shape), datatype)
        tensor.set_data_from_numpy(array)
        request.append(tensor)
    result = client.infer(model, request, outputs=[grpcclient.InferRequestedOutput(n) for n in outputs],
                          client_timeout=120)
    return {name: result.as_numpy(name) for name in outputs}


def _decodable(images: dict[str, bytes]) -> dict[str, bytes]:
    from services.core.imaging import ImageRejected, decode_image

    kept = {}
    for name, data in images.items():
        try:
            decode_image(data)
        except ImageRejected:
            continue
        kept[name] = data
    return kept


def test_triton_without_the_project_loads_every_model(isolated_triton, repository):
    from services.serving.model_repo.validation import validate_repository

    client = isolated_triton
    record = validate_repository(repository)
    index = {m.name: m.state for m in client.get_model_repository_index().models}
    assert index == {**{name: "READY" for name in record["models"]}, "environment_probe": "READY"}
    info = json.loads(_infer(client, "environment_probe", {"X": np.zeros(1, np.float32)}, ["INFO"])["INFO"][0, 0])
    assert info["services"] is False and info["training"] is False and not info["pythonpath"], info
    assert not any(str(Path.cwd()) == p or "/.venv/" in p for p in info["path"]), info["path"]
    assert Path(info["cwd"]).name == "cwd"


def test_triton_without_the_project_serves_the_offline_pixels_embeddings_and_species(isolated_triton, repository):
    """Offline: services.core.imaging (decode, resize; the mirrored crop for flip TTA), onnxruntime in-process on
    each export's model.onnx, the identification blend with the tuning weights."""
    import onnxruntime as ort

    from services.core.identification.vectors import blend, blend_probabilities, combine_flip
    from services.core.imaging import decode_image, resize_for_model

    client = isolated_triton
    images = _decodable(sample_images())
    names = list(images)
    batch = np.array([[images[n]] for n in names], dtype=np.object_)
    decoded = [decode_image(images[n]) for n in names]
    views = [decoded, [np.ascontiguousarray(d[:, ::-1]) for d in decoded]]

    embeddings, species = {}, []
    members = {REAL: (64, SERVED_SPECIES), PROBE: (96, PROBE_SPECIES)}
    for model_id, (size, member_species) in members.items():
        pixels = [np.stack([resize_for_model(image, size) for image in view]) for view in views]
        served = _infer(client, f"preprocess_{size}", {"IMAGE": batch}, ["PIXELS", "PIXELS_FLIP"])
        assert np.array_equal(served["PIXELS"], pixels[0]) and np.array_equal(served["PIXELS_FLIP"], pixels[1])
        session = ort.InferenceSession(str(repository / f"embedder_{model_id}" / "1" / "model.onnx"),
                                       providers=["CPUExecutionProvider"])
        runs = [session.run(["embedding", "species"], {"image": view}) for view in pixels]
        embeddings[model_id] = combine_flip(runs[0][0], runs[1][0])
        species += [(run[1], member_species, WEIGHTS[model_id] / 2) for run in runs]
    offline = blend(embeddings, WEIGHTS)
    offline_species = blend_probabilities(species, SERVED_SPECIES + ["humpback_whale"])

    served = _infer(client, "ensemble", {"IMAGE": batch}, ["EMBEDDING", "SPECIES"])
    assert served["EMBEDDING"].shape == (len(names), 1024) and served["SPECIES"].shape == (len(names), 3)
    assert np.max(np.abs(served["EMBEDDING"] - offline)) <= 1e-5
    assert np.max(np.abs(served["SPECIES"] - offline_species)) <= 1e-6
    # teeth: the EXIF-rotated photo is not embedded as the stored one, and the blend's weights matter (the
    # score-level blend concatenates the members, so it never equals one model alone)
    assert np.max(np.abs(offline[names.index("jpeg_exif_6")] - offline[names.index("jpeg")])) > 1e-3
    assert np.max(np.abs(offline - blend(embeddings, {m: 1.0 / len(embeddings) for m in embeddings}))) > 1e-3

    # the worker's pixels as binary PPM: the embeddings of the very same pixels sent as the upload itself
    from services.core.imaging import encode_ppm

    ppm = np.array([[encode_ppm(decoded[names.index(n)])] for n in ("jpeg", "jpeg_exif_6")], dtype=np.object_)
    as_ppm = _infer(client, "ensemble", {"IMAGE": ppm}, ["EMBEDDING"])["EMBEDDING"]
    assert np.max(np.abs(as_ppm - served["EMBEDDING"][[names.index("jpeg"), names.index("jpeg_exif_6")]])) <= 1e-6
    parameters = client.get_model_config("ensemble", as_json=True)["config"]["parameters"]
    assert "PPM" in parameters["image_formats"]["string_value"].split(",")

    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException, match=r"preprocess: IMAGE #1: not_an_image"):
        _infer(client, "ensemble", {"IMAGE": np.array([[images["png"]], [b"not an image"]], dtype=np.object_)},
               ["EMBEDDING"])


def test_triton_without_the_project_serves_the_offline_detector_boxes(isolated_triton, repository):
    """The detector model (its vendored decode: EXIF-upright, then resized as in training) gives the boxes of
    services.core.imaging + onnxruntime in-process, in pixels of the upright photo."""
    import onnxruntime as ort

    from services.core.imaging import decode_image, encode_ppm, resize_for_model

    images = _decodable(sample_images())
    names = list(images)
    served = _infer(isolated_triton, "detector", {"IMAGE": np.array([[images[n]] for n in names], dtype=np.object_)},
                    ["BOX", "BOX_NORM", "SCORE"])
    decoded = [decode_image(images[n]) for n in names]
    session = ort.InferenceSession(str(repository / "detector" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["box", "score"], {"image": np.stack([resize_for_model(d, 96) for d in decoded])
                                                   .astype(np.float32)})
    sizes = np.array([[d.shape[1], d.shape[0]] * 2 for d in decoded], np.float32)
    assert np.max(np.abs(served["BOX_NORM"] - boxes)) <= 1e-6
    assert np.max(np.abs(served["BOX"] - boxes * sizes)) <= 1e-3
    assert np.max(np.abs(served["SCORE"][:, 0] - scores)) <= 1e-6
    # the worker sends the upright pixels as binary PPM: the same boxes
    ppm = np.array([[encode_ppm(d)] for d in decoded], dtype=np.object_)
    assert np.max(np.abs(_infer(isolated_triton, "detector", {"IMAGE": ppm}, ["BOX"])["BOX"] - served["BOX"])) <= 1e-3
    # teeth: the EXIF-rotated photo's box is in its upright frame (width and height swapped)
    rotated, stored = names.index("jpeg_exif_6"), names.index("jpeg")
    assert decoded[rotated].shape[:2] == decoded[stored].shape[1::-1] != decoded[stored].shape[:2]
    assert not np.allclose(served["BOX"][rotated], boxes[rotated] * sizes[stored], atol=1.0)


# ----------------------------------------------------------------------------- the builder refuses
def test_vendoring_refuses_a_module_with_project_imports(tmp_path, monkeypatch):
    from services.serving.model_repo import vendor

    module = tmp_path / "impure_module.py"
    module.write_text('"""doc"""\nimport numpy as np\nfrom services.core.errors import DataError\n'
                      "from services.core.settings import load_settings\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(RepositoryError, match=r"cannot vendor impure_module .*line 4 imports services.core.settings "
                                              r"\(load_settings\)"):
        vendor.vendored_source(vendor.Vendored("impure_module", "impure.py"))
    module.write_text('"""doc"""\nfrom services.core.errors import DataError\n\n\ndef f():\n    raise DataError("x")\n')
    text = vendor.vendored_source(vendor.Vendored("impure_module", "impure.py"))
    namespace: dict = {}
    exec(compile(text, "impure.py", "exec"), namespace)  # noqa: S102 - the generated module stands alone
    with pytest.raises(Exception, match="x") as info:
        namespace["f"]()
    assert type(info.value).__name__ == "DataError"
    problems = vendor.import_problems("import os\nimport pandas\nfrom services import imaging\nimport PIL.Image\n",
                                      "model m: 1/model.py")
    assert problems == [
        "model m: 1/model.py: line 2 imports pandas, which Triton's python backend cannot import (allowed: the "
        "standard library, PIL, numpy, onnxruntime, triton_python_backend_utils)",
        "model m: 1/model.py: line 3 imports services, which Triton's python backend cannot import (allowed: the "
        "standard library, PIL, numpy, onnxruntime, triton_python_backend_utils)"]


def test_a_template_with_a_project_import_fails_the_build(tmp_path, monkeypatch):
    from services.serving.model_repo import build_repository, builder

    fake_export(tmp_path / "exports", "m")
    original = builder.template_source
    monkeypatch.setattr(builder, "template_source", lambda name: original(name) + (
        "\nfrom services.core.identification.vectors import blend\n" if name == "blend" else ""))
    with pytest.raises(RepositoryError, match=r"model blend: 1/model.py: line \d+ imports "
                                              r"services.core.identification.vectors"):
        build_repository(tmp_path / "exports", tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_a_changed_python_source_is_refused_by_validation(repository, tmp_path):
    from services.serving.model_repo.validation import validate_repository

    broken = tmp_path / "repo"
    shutil.copytree(repository, broken, ignore=shutil.ignore_patterns("environment_probe"))
    path = broken / "preprocess_64" / "1" / "whaleid_imaging.py"
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(RepositoryError, match="model preprocess_64: checksum mismatch for .*whaleid_imaging.py"):
        validate_repository(broken)
    path.unlink()
    with pytest.raises(RepositoryError, match="model preprocess_64: .*whaleid_imaging.py is missing"):
        validate_repository(broken)


def test_a_repository_built_before_vendoring_is_accepted_with_a_warning(repository, tmp_path, caplog):
    from services.serving.model_repo.validation import validate_repository

    old = tmp_path / "repo"
    shutil.copytree(repository, old, ignore=shutil.ignore_patterns("environment_probe"))
    record = json.loads((old / "repository.json").read_text())
    del record["python_sources"]
    (old / "repository.json").write_text(json.dumps(record))
    assert validate_repository(old)["build_id"] == record["build_id"]
    assert "built before python sources were vendored: blend, detector, embedder_" in caplog.text


INSTALLED_BUILD = r"""
import importlib.resources, json, sys
from pathlib import Path
import services
from services.serving.model_repo import build_repository
record = build_repository(Path(sys.argv[1]), Path(sys.argv[2]))
template = importlib.resources.files("model_repo") / "preprocess" / "config.pbtxt"
print(json.dumps({"services": services.__file__, "template": str(template),
                  "sources": sorted(record["python_sources"])}))
"""


def test_an_installed_wheel_builds_a_self_contained_repository(tmp_path):
    """Templates (model_repo/, package data) and vendored sources come from the installed wheel, not from a
    checkout."""
    from services.serving.model_repo.builder import template_source

    project = Path(__file__).resolve().parents[2]
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(project / name, source / name)
    for package in ("services", "model_repo"):
        shutil.copytree(project / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    wheel = next((tmp_path / "dist").glob("whaleid-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", str(tmp_path / "site"), str(wheel)], check=True,
                   capture_output=True, timeout=300, cwd=tmp_path)
    shutil.rmtree(source)  # nothing of a checkout is left
    fake_export(tmp_path / "exports", "m")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", INSTALLED_BUILD, str(tmp_path / "exports"), str(tmp_path / "repo")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["services"] == str(tmp_path / "site" / "services" / "__init__.py")
    assert result["template"] == str(tmp_path / "site" / "model_repo" / "preprocess" / "config.pbtxt")
    assert result["sources"] == ["blend/1/model.py", "blend/1/whaleid_vectors.py", "embedder_m/1/model.py",
                                 "preprocess/1/model.py", "preprocess/1/whaleid_imaging.py"]
    assert (tmp_path / "repo" / "preprocess" / "1" / "model.py").read_text() == template_source("preprocess")
    requirements = (tmp_path / "repo" / "requirements.txt").read_text().splitlines()
    assert [line.split("==")[0] for line in requirements[1:]] == ["numpy", "Pillow", "onnxruntime"]


@pytest.mark.parametrize("lean", [False, True], ids=["standard", "lean"])
def test_the_build_id_covers_the_served_python_code(tmp_path, monkeypatch, lean):
    """Same exports, weights and code: the same build id; the same exports with changed preprocessing code (a
    vendored module or a template): another build id, so the worker tags embeddings made by other code apart."""
    from services.serving.model_repo import BuildOptions, build_repository, builder, vendor

    fake_export(tmp_path / "exports", "m")
    options = BuildOptions(lean=lean)
    first = build_repository(tmp_path / "exports", tmp_path / "a", options=options)
    again = build_repository(tmp_path / "exports", tmp_path / "b", options=options)
    assert first["build_id"] == again["build_id"]

    original_vendored = vendor.vendored_source
    monkeypatch.setattr(vendor, "vendored_source", lambda v: original_vendored(v) + (
        "\n# another resize\n" if v.module == "services.core.imaging" else ""))
    vendored_changed = build_repository(tmp_path / "exports", tmp_path / "c", options=options)
    monkeypatch.setattr(vendor, "vendored_source", original_vendored)
    original_template = builder.template_source
    template = "pipeline" if lean else "preprocess"
    monkeypatch.setattr(builder, "template_source", lambda name: original_template(name) + (
        "\n# another decode\n" if name == template else ""))
    template_changed = build_repository(tmp_path / "exports", tmp_path / "d", options=options)
    ids = {first["build_id"], vendored_changed["build_id"], template_changed["build_id"]}
    assert len(ids) == 3, ids
