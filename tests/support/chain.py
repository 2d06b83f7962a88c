"""Helpers for the streaming-chain tests: a small deterministic Triton model, chain services as subprocesses,
hostile uploads, and waiting on Redis.

The "toy" model repository holds a real python-backend model named `ensemble` with the ensemble's contract
(IMAGE bytes -> EMBEDDING 512 floats): the pixels of the crop resized to 13x13, centred, L2-normalised. Served
by a real Triton, it lets the worker/matcher tests run without a trained network; the end-to-end test uses the
trained tiny model instead. Like a built ensemble it carries the parameters `build_id` and `model_ids`
(`toy_config`). Overload on demand: while `<repo>/ensemble/slow_calls` holds N > 0, each execution sleeps
`slow_s` (the file's second line) and counts N down (`make_slow`).
"""

from __future__ import annotations

import io
import json
import os
import struct
import time
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from services.core import keys, topics
from services.devtools.demo.processes import ServiceProcess  # noqa: F401 - re-exported for the chain tests

TOY_MODEL_IDS = ("toy-embedder",)


def toy_config(build_id: str = "toy", model_ids=TOY_MODEL_IDS) -> str:
    """The toy ensemble's config.pbtxt with these `build_id` / `model_ids` parameters."""
    return f"""name: "ensemble"
backend: "python"
max_batch_size: 16
input [ {{ name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] }} ]
output [ {{ name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 512 ] }} ]
parameters: {{ key: "build_id" value: {{ string_value: {json.dumps(build_id)} }} }}
parameters: {{ key: "model_ids" value: {{ string_value: {json.dumps(json.dumps(list(model_ids)))} }} }}
dynamic_batching {{ max_queue_delay_microseconds: 2000 }}
instance_group [ {{ count: 1 kind: KIND_CPU }} ]
"""


TOY_CONFIG = toy_config()

TOY_MODEL = '''
import io
import os
import time
import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


def embed(data):
    image = Image.open(io.BytesIO(data)).convert("RGB").resize((13, 13), Image.BILINEAR)
    values = np.asarray(image, dtype=np.float32).reshape(-1)
    values = values - values.mean()
    out = np.zeros(512, dtype=np.float32)
    out[: values.size] = values
    return out / max(float(np.linalg.norm(out)), 1e-6)


class TritonPythonModel:
    def initialize(self, args):
        self.slow_file = os.path.join(args["model_repository"], "slow_calls")

    def slow_down(self):
        """Sleep while the test's slow_calls file says so (N, then the seconds), counting N down."""
        try:
            with open(self.slow_file) as fh:
                left, seconds = fh.read().split()
        except (OSError, ValueError):
            return
        if int(left) > 0:
            with open(self.slow_file, "w") as fh:
                fh.write(f"{int(left) - 1} {seconds}")
            time.sleep(float(seconds))

    def execute(self, requests):
        self.slow_down()
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            try:
                rows = np.stack([embed(bytes(item[0])) for item in images])
            except Exception as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(f"bad image: {exc}")))
                continue
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("EMBEDDING", rows)]))
        return responses
'''


DETECTOR_CONFIG = """name: "detector"
backend: "python"
max_batch_size: 8
input [ { name: "IMAGE" data_type: TYPE_STRING dims: [ 1 ] } ]
output [ { name: "BOX" data_type: TYPE_FP32 dims: [ 4 ] }, { name: "SCORE" data_type: TYPE_FP32 dims: [ 1 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
"""

# The toy detector: the bounding box of the pixels that are not (near) black; confident only when that box is
# smaller than the image (an animal on a dark background), so ordinary photos keep the whole-image crop.
DETECTOR_MODEL = '''
import io
import numpy as np
import triton_python_backend_utils as pb_utils
from PIL import Image


def detect(data):
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), dtype=np.int32)
    rows, cols = np.nonzero(pixels > 12)
    if rows.size == 0:
        return [0, 0, 0, 0], 0.0
    box = [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
    whole = box[2] - box[0] >= pixels.shape[1] - 2 and box[3] - box[1] >= pixels.shape[0] - 2
    return box, 0.0 if whole else 0.9


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            images = pb_utils.get_input_tensor_by_name(request, "IMAGE").as_numpy()
            found = [detect(bytes(item[0])) for item in images]
            boxes = np.array([b for b, _ in found], dtype=np.float32)
            scores = np.array([[s] for _, s in found], dtype=np.float32)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor("BOX", boxes), pb_utils.Tensor("SCORE", scores)]))
        return responses
'''


def write_toy_repository(root: Path, detector: bool = False) -> Path:
    """The toy `ensemble` (and, with `detector`, the toy crop detector) as a Triton model repository."""
    models = {"ensemble": (TOY_CONFIG, TOY_MODEL)}
    if detector:
        models["detector"] = (DETECTOR_CONFIG, DETECTOR_MODEL)
    for name, (config, code) in models.items():
        model = Path(root) / name
        (model / "1").mkdir(parents=True, exist_ok=True)
        (model / "config.pbtxt").write_text(config)
        (model / "1" / "model.py").write_text(code)
    return Path(root)


def make_slow(repository: Path, calls: int, seconds: float) -> Path:
    """The toy ensemble's next `calls` executions each sleep `seconds` (an overloaded Triton)."""
    path = Path(repository) / "ensemble" / "slow_calls"
    path.write_text(f"{int(calls)} {float(seconds)}")
    return path


def slow_calls_left(repository: Path) -> int:
    path = Path(repository) / "ensemble" / "slow_calls"
    return int(path.read_text().split()[0]) if path.exists() else 0


# --------------------------------------------------------------------------- photos, good and hostile
def photo(seed: int, size: tuple[int, int] = (96, 72)) -> np.ndarray:
    """A smooth random colour pattern, distinct per seed (uint8 H x W x 3)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(small).resize(size, Image.BILINEAR))


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def truncated_jpeg(seed: int = 99) -> bytes:
    data = jpeg_bytes(photo(seed, (160, 120)))
    return data[: len(data) // 2]


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header announcing width x height pixels with a tiny body (a decompression bomb's header)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


# --------------------------------------------------------------------------- chain services as subprocesses
def chain_env(stack_state: dict, run_dir: Path, triton_grpc: str | None = None, **settings) -> dict[str, str]:
    """The environment of a chain service: the stack's addresses, a private run dir, extra WHALEID_ settings."""
    servers = stack_state["servers"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHALEID_")}
    env.update({
        "WHALEID_PROFILE": "local",
        "WHALEID_RUN_DIR": str(run_dir),
        "WHALEID_KAFKA_BOOTSTRAP": servers["kafka"]["bootstrap"],
        "WHALEID_S3_ENDPOINT": servers["s3"]["endpoint"],
        "WHALEID_REDIS_URL": servers["redis"]["url"],
        "WHALEID_TRITON_GRPC_URL": triton_grpc or servers["triton"]["grpc"],
        "WHALEID_BRIDGE_SOURCE": servers["s3"].get("bridge_source", "sqs"),  # the private run dir has no state
        "PYTHONUNBUFFERED": "1",
    })
    env.update({f"WHALEID_{k.upper()}": str(v) for k, v in settings.items()})
    return env


# --------------------------------------------------------------------------- events and results
def uploaded_event(sighting_id: str, bucket: str, key: str, metadata: dict | None = None) -> bytes:
    return topics.SightingUploaded(
        sighting_id=sighting_id, bucket=bucket, key=key, metadata=metadata, uploaded_at=time.time(),
        event_name="ObjectCreated:Put",
    ).to_json()


def wait_until(condition: Callable[[], bool], timeout: float, what: str, interval: float = 0.25) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def identification(redis_client, sighting_id: str) -> dict | None:
    raw = redis_client.get(keys.identification_key(sighting_id))
    return None if raw is None else json.loads(raw)


def announced(redis_client, sighting_id: str) -> bool:
    """Whether the matcher finished a sighting: its last step adds the stream entry and the `announced:` marker in
    one atomic script, after the result key and the Kafka topics. Tests that assert on the stream or the topics
    wait on this, not on the result key (written first)."""
    return bool(redis_client.exists(keys.announced_key(sighting_id)))


def wait_announced(redis_client, sighting_ids, timeout: float, what: str = "") -> None:
    ids = list(sighting_ids)
    wait_until(lambda: all(announced(redis_client, s) for s in ids), timeout,
               what or f"{len(ids)} announced identifications")


def parked(redis_client, sighting_id: str) -> bool:
    """Whether the matcher parked the sighting (its model version is not among the gallery's models)."""
    return redis_client.zscore(keys.PARKED_INDEX, sighting_id) is not None


def failure(redis_client, sighting_id: str) -> dict | None:
    raw = redis_client.get(keys.failure_key(sighting_id))
    return None if raw is None else json.loads(raw)


def stream_counts(redis_client, stream: str = "identifications") -> dict[str, int]:
    """How many stream entries each sighting has."""
    counts: dict[str, int] = {}
    for _, fields in redis_client.xrange(stream):
        sighting = fields[b"sighting_id"].decode()
        counts[sighting] = counts.get(sighting, 0) + 1
    return counts


def read_topic(bootstrap: str, topic: str, timeout_s: float = 2.0) -> list[tuple[str, dict]]:
    """Every (key, JSON value) on a topic from the beginning (a fresh consumer, no group).

    The broker is shared by the whole session, and some tests put deliberately malformed records on the chain's
    topics: a value that is not JSON is returned as None rather than failing the reader."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000))
    try:
        return [((m.key or b"").decode(errors="replace"), _json_or_none(m.value)) for m in consumer]
    finally:
        consumer.close()


def _json_or_none(value: bytes | None):
    try:
        return json.loads(value.decode("utf-8")) if value is not None else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
