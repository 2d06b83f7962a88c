"""`whaleid model-repo build` + a real Triton (bundled python backend) + services.serving.triton_client.

Served embeddings are compared with the offline path (training.embed + services.core.imaging + the identification
blend) on the same encoded crops; broken exports/repositories are refused before Triton starts, naming the model.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from services.serving.model_repo import BuildOptions, RepositoryError, build_repository, validate_repository
from services.serving.triton_client import (
    EmbeddingClient,
    InvalidEmbeddingInput,
    TritonRequestError,
    TritonUnavailable,
)
from support.model_repo import EPOCHS, crops, fake_export

REAL = f"b0-tiny-f0-e{EPOCHS[-1]:03d}"  # the exported EfficientNet snapshot
PROBE = "probe"  # a small second embedder (support.model_repo.tiny_onnx), so the ensemble blends two models
WEIGHTS = {REAL: 0.7, PROBE: 0.3}
BLENDED = 1024  # the score-level blend concatenates the two 512-d members (vectors.blend)


@pytest.fixture(scope="module")
def run_dir(snapshot_run):
    return snapshot_run


@pytest.fixture(scope="module")
def repository(tmp_path_factory, exported):
    from services.core.identification.tuning import Tuning

    root = tmp_path_factory.mktemp("model_repo")
    exports = root / "exports"
    exports.mkdir()
    (exports / REAL).symlink_to(exported / REAL)
    fake_export(exports, PROBE, seed=5)
    tuning = Tuning(weights=WEIGHTS).save(root / "tuning.json")
    build_repository(exports, root / "repository", tuning)
    return root / "repository"


@pytest.fixture(scope="module")
def triton(repository, tmp_path_factory):
    from services.devtools.stack import launch_triton

    with launch_triton(repository, tmp_path_factory.mktemp("triton")) as server:
        server.wait_healthy(120)
        yield server


@pytest.fixture(scope="module")
def client(triton):
    with EmbeddingClient(triton.grpc, timeout_s=60) as client:
        client.wait_ready(60)
        yield client


# ----------------------------------------------------------------------------- served == offline
def test_served_embeddings_equal_the_offline_blend(client, run_dir, repository):
    """Offline: training.embed for the snapshot, onnxruntime on services.core.imaging.preprocess pixels for the
    probe, the identification core's blend with the tuning weights."""
    import onnxruntime as ort

    from services.core.identification.vectors import blend
    from services.core.imaging import decode_image, preprocess
    from training.embed import Embedder

    images = crops()
    served = client.embed(images)
    decoded = [decode_image(b) for b in images]
    probe = ort.InferenceSession(str(repository / f"embedder_{PROBE}" / "1" / "model.onnx"))
    per_model = {
        REAL: Embedder.from_run(run_dir, EPOCHS[-1]).embed_images(decoded),
        PROBE: probe.run(["embedding"], {"image": np.stack([preprocess(image, 64) for image in decoded])})[0],
    }
    offline = blend(per_model, WEIGHTS)
    assert served.shape == (len(images), BLENDED) and served.dtype == np.float32
    assert np.max(np.abs(served - offline)) <= 1e-4
    assert np.allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    # the check has teeth: the blend differs from an equal-weight blend
    assert np.max(np.abs(served - blend(per_model, {m: 0.5 for m in per_model}))) > 1e-4
    record = validate_repository(repository)
    assert {e["model_id"]: round(e["weight"], 6) for e in record["embedders"]} == WEIGHTS


def test_large_requests_are_split_to_the_max_batch_size(client):
    images = crops()
    many = images * 7  # 42 > max_batch_size 32
    assert client.max_batch_size() == 32
    np.testing.assert_allclose(client.embed(many), np.tile(client.embed(images), (7, 1)), atol=1e-5)
    assert client.embed([]).shape == (0, BLENDED)


def test_ready_and_served_versions(client, repository):
    record = validate_repository(repository)
    assert client.ready()
    versions = client.model_versions()
    assert set(versions) == set(record["models"]) == {
        "preprocess", "blend", "ensemble", f"embedder_{REAL}", f"embedder_{PROBE}"}
    assert all(v == ["1"] for v in versions.values())
    assert client.model_version() == f"ensemble:1:{record['build_id']}"
    assert EmbeddingClient(client.url, model="no_such_model").ready() is False


def test_reload_brings_the_ensemble_back_into_the_running_server(client, repository, triton):
    import time

    import tritonclient.grpc as grpcclient

    from services.serving.model_repo.serving import reload_models

    with grpcclient.InferenceServerClient(triton.grpc) as admin:
        admin.unload_model("ensemble")
    deadline = time.monotonic() + 30
    while client.ready() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not client.ready()
    with pytest.raises(TritonRequestError):
        client.embed([crops()[0]])
    names = reload_models(repository, triton.grpc)
    assert names[-1] == "ensemble" and set(names) == set(validate_repository(repository)["models"])
    client.wait_ready(30)
    assert client.embed([crops()[0]]).shape == (1, BLENDED)


# ----------------------------------------------------------------------------- bad input, server errors
@pytest.mark.parametrize("bad, message", [
    (b"\x89PNG...", "not a single bytes"),
    (["not bytes"], "#0: str"),
    ([b"ok", b""], "#1: bytes (empty)"),
    ([np.zeros((8, 8, 3), np.uint8)], "#0: ndarray"),
])
def test_client_refuses_inputs_that_are_not_encoded_images(client, bad, message):
    with pytest.raises(InvalidEmbeddingInput) as info:
        client.embed(bad)
    assert message in str(info.value)


def test_wrong_dtype_and_shape_are_refused_by_the_server_with_the_reason(client):
    with pytest.raises(TritonRequestError, match="data-type is 'FP32', but model 'ensemble' expects 'BYTES'") as info:
        client.infer({"IMAGE": np.zeros((2, 1), np.float32)})
    assert info.value.status == "StatusCode.INVALID_ARGUMENT"
    with pytest.raises(TritonRequestError, match=r"unexpected shape for input 'IMAGE'.*Expected \[-1,1\], got \[1,2\]"):
        client.infer({"IMAGE": np.array([[b"a", b"b"]], dtype=np.object_)})


def test_undecodable_images_fail_with_the_item_and_reason(client):
    good = crops()[0]
    with pytest.raises(TritonRequestError, match=r"preprocess: IMAGE #1: not_an_image"):
        client.embed([good, b"this is not an image"])
    with pytest.raises(TritonRequestError, match=r"IMAGE #0: truncated"):
        client.embed([good[: len(good) // 2]])
    assert client.embed([good]).shape == (1, BLENDED)  # the server is still fine


def test_unreachable_server_is_retried_with_backoff_then_reported():
    from services.core.metrics import TRITON_RETRIES
    from services.devtools.stack.ports import free_port

    before = TRITON_RETRIES._value.get()
    client = EmbeddingClient(f"127.0.0.1:{free_port()}", retries=2, backoff=0.01)
    assert client.ready() is False
    with pytest.raises(TritonUnavailable, match="unavailable after 3 attempt"):
        client.embed([b"x"])
    assert TRITON_RETRIES._value.get() - before == 2
    with pytest.raises(TritonUnavailable, match="no Triton gRPC address"):
        EmbeddingClient("")


# ----------------------------------------------------------------------------- refused before Triton starts
def test_repository_with_a_missing_or_changed_model_file_is_refused(repository, tmp_path, capsys):
    from services.cli.main import main

    broken = tmp_path / "repository"
    shutil.copytree(repository, broken)
    name = f"embedder_{REAL}"
    with open(broken / name / "1" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(RepositoryError, match=f"model {name}: checksum mismatch"):
        validate_repository(broken)
    # the stack's Triton refuses to start on it, naming the model, before any server process exists
    from services.devtools.stack import ServerStartError, launch_triton

    with pytest.raises(ServerStartError, match=f"triton failed to start: .*model {name}: checksum mismatch"):
        launch_triton(broken, tmp_path / "triton")
    (broken / name / "1" / "model.onnx").unlink()
    with pytest.raises(RepositoryError, match=f"model {name}: .*model.onnx is missing"):
        validate_repository(broken)
    assert main(["model-repo", "validate", str(broken)]) == 2
    assert f"model {name}" in capsys.readouterr().err
    (broken / "repository.json").unlink()
    with pytest.raises(RepositoryError, match="not a repository built by `whaleid model-repo build`"):
        validate_repository(broken)


def test_exports_with_wrong_shapes_or_files_are_refused_naming_the_model(tmp_path):
    out = tmp_path / "repository"

    def refused(exports, pattern):
        with pytest.raises(RepositoryError, match=pattern):
            build_repository(exports, out)
        assert not out.exists()

    nchw = tmp_path / "nchw"
    fake_export(nchw, "nchw", layout="NCHW")  # the manifest claims NHWC, the file is NCHW
    refused(nchw, r"model nchw: .*input 'image' has shape \[-1, 3, 64, 64\], expected NHWC 3-channel")
    manifest = json.loads((nchw / "nchw" / "manifest.json").read_text())
    manifest["input"].update(layout="NCHW", shape=[-1, 3, 64, 64])
    (nchw / "nchw" / "manifest.json").write_text(json.dumps(manifest))
    refused(nchw, "model nchw: the manifest's input must be NHWC 3-channel")

    missing = tmp_path / "missing"
    (fake_export(missing, "gone") / "model.onnx").unlink()
    refused(missing, "model gone: the manifest references model.onnx but .* is missing")

    changed = tmp_path / "changed"
    with open(fake_export(changed, "changed") / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    refused(changed, "model changed: checksum mismatch")

    refused(tmp_path / "nowhere", "exports directory .* does not exist")


# ----------------------------------------------------------------------------- build options
def test_missing_tuning_weights_fall_back_to_equal_weights_and_say_so(tmp_path, caplog):
    from services.core.identification.tuning import Tuning

    fake_export(tmp_path / "exports", "a", seed=1)
    fake_export(tmp_path / "exports", "b", seed=2)
    tuning = Tuning(weights={"a": 0.9, "other": 0.1}).save(tmp_path / "tuning.json")
    record = build_repository(tmp_path / "exports", tmp_path / "repo", tuning)
    assert [e["weight"] for e in record["embedders"]] == [0.5, 0.5]
    assert "no weight for b: equal weights" in record["weights_source"]
    assert "no weight for b" in caplog.text
    blend = (tmp_path / "repo" / "blend" / "config.pbtxt").read_text()
    assert '[\\"a\\", \\"b\\"]' in blend and "[0.5, 0.5]" in blend


def test_one_onnx_artifact_two_configs_cpu_and_gpu(tmp_path):
    from services.core.checksums import sha256_file
    from services.serving.model_repo.validation import read_config

    export = fake_export(tmp_path / "exports", "m")
    cpu = build_repository(tmp_path / "exports", tmp_path / "cpu")
    gpu = build_repository(tmp_path / "exports", tmp_path / "gpu", options=BuildOptions(target="gpu", tensorrt=True))
    assert cpu["build_id"] != gpu["build_id"]
    for root in (tmp_path / "cpu", tmp_path / "gpu"):
        assert sha256_file(root / "embedder_m" / "1" / "model.onnx") == sha256_file(export / "model.onnx")
    on_cpu, on_gpu = read_config(tmp_path / "cpu" / "embedder_m"), read_config(tmp_path / "gpu" / "embedder_m")
    assert (on_cpu.backend, on_cpu.platform) == ("python", "")
    assert (tmp_path / "cpu" / "embedder_m" / "1" / "model.py").is_file()
    assert (on_gpu.platform, on_gpu.backend, on_gpu.default_model_filename) == ("onnxruntime_onnx", "", "model.onnx")
    assert not (tmp_path / "gpu" / "embedder_m" / "1" / "model.py").exists()
    assert on_gpu.instance_group[0].kind == on_gpu.instance_group[0].KIND_GPU
    assert on_gpu.optimization.execution_accelerators.gpu_execution_accelerator[0].name == "tensorrt"
    for config in (on_cpu, on_gpu):
        assert list(config.input[0].dims) == [64, 64, 3] and list(config.output[0].dims) == [512]
        assert config.dynamic_batching.max_queue_delay_microseconds == 2000 and config.max_batch_size == 32
    ensemble = read_config(tmp_path / "gpu" / "ensemble")
    assert [s.model_name for s in ensemble.ensemble_scheduling.step] == ["preprocess", "embedder_m", "blend"]


def test_cli_build_writes_the_repository(tmp_path, capsys):
    from services.cli.main import main

    fake_export(tmp_path / "exports", "m")
    assert main(["model-repo", "build", "--exports", str(tmp_path / "exports"), "--out", str(tmp_path / "repo"),
                 "--embedder-instances", "2", "--max-batch-size", "8"]) == 0
    assert "models: blend, embedder_m, ensemble, preprocess" in capsys.readouterr().out
    record = validate_repository(tmp_path / "repo")
    assert record["options"]["embedder_instances"] == 2 and record["options"]["max_batch_size"] == 8


# ----------------------------------------------------------------------------- mixed sizes, bench, model store
def test_mixed_input_sizes_get_one_preprocess_each_and_match_in_process(tmp_path):
    """Two embedders at 64 and 96 px: preprocess_64 + preprocess_96 in one ensemble, served == in-process,
    through the benchmark's own code path (a smoke run; timings are not asserted)."""
    from bench.triton_serving import run_benchmark
    from services.devtools.stack import launch_triton

    fake_export(tmp_path / "exports", "small", image_size=64, seed=1)
    fake_export(tmp_path / "exports", "large", image_size=96, seed=2)
    record = build_repository(tmp_path / "exports", tmp_path / "repo")
    assert record["preprocess"] == {"64": "preprocess_64", "96": "preprocess_96"}
    with launch_triton(tmp_path / "repo", tmp_path / "triton") as server:
        server.wait_healthy(120)
        result = run_benchmark(tmp_path / "repo", server.grpc, requests=4, concurrency=2, rounds=1, image_count=4)
    assert result["max_abs_diff"] <= 1e-5
    assert result["latency_ratio"] > 0 and result["throughput_ratio"] > 0
    assert result["models"] == ["large", "small"] and result["image_sizes"] == [64, 96]


def test_push_and_pull_through_the_model_store(stack, tmp_path):
    from services.curation.operations.gallery_versions import s3_client
    from services.serving.model_repo.repository_builds import pull, push

    fake_export(tmp_path / "exports", "m")
    built = build_repository(tmp_path / "exports", tmp_path / "repo")
    settings = stack.settings
    client = s3_client(settings)
    if settings.models_bucket not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket=settings.models_bucket)
    prefix = f"test-model-repo-{tmp_path.name}"
    uri = push(tmp_path / "repo", prefix=prefix, settings=settings)
    assert uri == f"s3://{settings.models_bucket}/{prefix}/{built['build_id']}"
    pulled = pull(tmp_path / "pulled", prefix=prefix, settings=settings)
    assert pulled["build_id"] == built["build_id"]
    assert validate_repository(tmp_path / "pulled")["build_id"] == built["build_id"]
    with pytest.raises(RepositoryError, match="no repository build nope"):
        pull(tmp_path / "other", prefix=prefix, build_id="nope", settings=settings)
