"""Streaming chain throughput and latency beside the raw embedder, measured side by side in one run.

Set-up: the embedded stack with a Triton repository of the b0-tiny network (untrained weights: the same cost as a
trained one; cached under `--workdir`), a gallery of random unit vectors, and `whaleid serve bridge|worker|matcher`.
1. raw: EmbeddingClient.embed straight to Triton, batches of `worker_batch_size` crops, one call at a time (the
   worker's own pattern) -> crops/s.
2. saturated chain: `--burst` photos PUT to S3 at once (S3 event -> SQS -> bridge -> Kafka -> worker -> Triton
   -> matcher -> Redis) -> sightings/s from the first PUT to the last identification.
3. steady chain: photos offered at `--load` x the saturated rate for `--seconds` -> upload->Redis latency
   p50/p95/p99.
Targets: chain >= 0.8 x raw; p99 <= 2 x p50 below saturation. A PNG (latency histogram + rates) is written next
to the JSON result.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.chain")
RESULTS = Path(__file__).parent / "results"


def photos(count: int, seed: int = 0, size: tuple[int, int] = (192, 128)) -> list[bytes]:
    """Smooth random colour photos as JPEG bytes."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        small = rng.integers(0, 256, size=(4, 6, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize(size, Image.BILINEAR).save(buffer, format="JPEG", quality=90)
        out.append(buffer.getvalue())
    return out


def raw_throughput(client, crops: list[bytes], batch: int, seconds: float) -> float:
    """Crops per second through EmbeddingClient, sequential batches of `batch`."""
    client.embed(crops[:batch])  # warm up
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        part = [crops[(done + i) % len(crops)] for i in range(batch)]
        client.embed(part)
        done += batch
    return done / (time.perf_counter() - start)


class Uploader:
    """PUTs photos to the sightings bucket (the S3 event starts the chain) and waits for their results."""

    def __init__(self, settings, redis_client):
        from services.operations.model_store import s3_client

        self.settings = settings
        self.s3 = s3_client(settings)
        self.redis = redis_client
        self.sent: dict[str, float] = {}

    def put(self, data: bytes) -> str:
        sighting_id = uuid.uuid4().hex
        self.s3.put_object(Bucket=self.settings.sightings_bucket, Key=f"uploads/{sighting_id}.jpg", Body=data,
                           ContentType="image/jpeg")
        self.sent[sighting_id] = time.time()
        return sighting_id

    def wait(self, ids: list[str], timeout: float) -> dict[str, float]:
        """identified_at per sighting (from the results in Redis)."""
        found: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(ids) and time.monotonic() < deadline:
            pending = [i for i in ids if i not in found]
            for sighting_id, raw in zip(pending, self.redis.mget([f"identification:{i}" for i in pending]),
                                        strict=True):
                if raw is not None:
                    found[sighting_id] = json.loads(raw)["identified_at"]
            time.sleep(0.05)
        if len(found) < len(ids):
            raise RuntimeError(f"only {len(found)}/{len(ids)} sightings identified within {timeout:.0f} s")
        return found


def saturated(uploader: Uploader, images: list[bytes], timeout: float) -> tuple[float, list[float]]:
    start = time.time()
    ids = [uploader.put(image) for image in images]
    done = uploader.wait(ids, timeout)
    rate = len(ids) / (max(done.values()) - start)
    return rate, [done[i] - uploader.sent[i] for i in ids]


def steady(uploader: Uploader, images: list[bytes], rate: float, seconds: float, timeout: float) -> list[float]:
    ids, interval = [], 1.0 / rate
    start = time.monotonic()
    count = int(rate * seconds)
    for n in range(count):
        wake = start + n * interval
        time.sleep(max(0.0, wake - time.monotonic()))
        ids.append(uploader.put(images[n % len(images)]))
    done = uploader.wait(ids, timeout)
    return [done[i] - uploader.sent[i] for i in ids]


def pct(values: list[float], q: float) -> float:
    return round(float(np.percentile(np.asarray(values) * 1000.0, q)), 1)


def plot(result: dict, latencies: list[float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.hist(np.asarray(latencies) * 1000, bins=30, color="#3874a8")
    for key, style in (("p50_ms", "--"), ("p95_ms", ":"), ("p99_ms", "-.")):
        left.axvline(result[key], color="black", linestyle=style, label=f"{key[:3]} {result[key]:.0f} ms")
    left.set_xlabel("upload -> identification in Redis (ms)")
    left.set_title(f"steady load {result['offered_rate']:.1f}/s")
    left.legend()
    names = ["raw embedder", "chain (saturated)"]
    right.bar(names, [result["raw_crops_per_s"], result["chain_sightings_per_s"]], color=["#999999", "#3874a8"])
    right.set_ylabel("per second")
    right.set_title(f"chain / raw = {result['chain_over_raw']:.2f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench chain")
    parser.add_argument("--workdir", type=Path, default=Path(".whaleid/bench"), help="model cache")
    parser.add_argument("--config", default="b0-tiny", help="model config of the served network")
    parser.add_argument("--burst", type=int, default=200, help="photos of the saturated run")
    parser.add_argument("--load", type=float, default=0.5, help="steady offered rate, as a share of the saturated")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the steady run")
    parser.add_argument("--raw-seconds", type=float, default=10.0, help="duration of the raw measurement")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    import redis

    from services.demo.model import untrained_repository
    from services.demo.processes import ServiceProcess, service_env
    from services.identification import Tuning, build_gallery
    from services.operations.model_store import GalleryStore
    from services.settings import load_settings
    from services.stack import Stack
    from services.triton_client import EmbeddingClient

    progress = lambda message: log.info(message)  # noqa: E731
    repository = untrained_repository(args.workdir.resolve(), args.config, progress)
    root = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    overrides = {"run_dir": root / "stack", "model_repository": repository}
    stack = Stack(load_settings(profile="local", environ={}, **overrides), with_prometheus=False)
    services: list[ServiceProcess] = []
    stack.up(timeout=180)
    try:
        settings = load_settings(profile="local", environ={}, **overrides)
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(500, 512)).astype(np.float32)
        gallery = build_gallery(vectors / np.linalg.norm(vectors, axis=1, keepdims=True),
                                [f"whale-{i // 5}" for i in range(500)], ["beluga"] * 500, [f"{i}.jpg" for i in range(500)])
        gallery.save(root / "gallery")
        Tuning(threshold=0.5).save(root / "gallery" / "tuning.json")
        store = GalleryStore.from_settings(settings)
        store.set_current(store.publish(root / "gallery", parent=None, added_sightings=[],
                                        individuals=gallery.individual_ids, size=len(gallery)), "bench")

        images = photos(64)
        from services.imaging import decode_image, encode_png

        crops = [encode_png(decode_image(image)) for image in images]  # what the worker sends (whole image)
        with EmbeddingClient.from_settings(settings) as client:
            client.wait_ready(120)
            raw = raw_throughput(client, crops, settings.worker_batch_size, args.raw_seconds)
        log.info("raw embedder: %.1f crops/s", raw)

        env = service_env(root / "stack")
        for name in ("worker", "matcher", "bridge"):
            services.append(ServiceProcess(name, env, root / "logs").start())
        for service in services:
            service.wait_ready(180)
        uploader = Uploader(settings, redis.Redis.from_url(settings.redis_url))
        saturated(uploader, images[:16], 120)  # warm up every step once
        chain_rate, burst_latencies = saturated(uploader, [images[i % len(images)] for i in range(args.burst)], 600)
        log.info("chain saturated: %.1f sightings/s", chain_rate)
        offered = max(0.5, args.load * chain_rate)
        latencies = steady(uploader, images, offered, args.seconds, 300)
        result = {
            "raw_crops_per_s": round(raw, 1),
            "chain_sightings_per_s": round(chain_rate, 1),
            "chain_over_raw": round(chain_rate / raw, 3),
            "target_chain_over_raw": 0.8,
            "offered_rate": round(offered, 2),
            "steady_sightings": len(latencies),
            "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95), "p99_ms": pct(latencies, 99),
            "saturated_p50_ms": pct(burst_latencies, 50),
            "batch_size": settings.worker_batch_size,
            "model": args.config,
        }
        result["p99_over_p50"] = round(result["p99_ms"] / result["p50_ms"], 2)
        RESULTS.mkdir(exist_ok=True)
        plot(result, latencies, RESULTS / "chain.png")
        result["plot"] = str(RESULTS / "chain.png")
        return result
    finally:
        for service in reversed(services):
            service.stop()
        stack.down()


if __name__ == "__main__":
    print(json.dumps(main([]), indent=2))
