"""What local-feature re-ranking costs per sighting in the live chain (issue #21 item 6), measured side by side in
one run on one stack: the same worker + matcher ("core", as `bench chain`'s core phase: objects already in S3,
sightings.uploaded events produced at once) with the setting `rerank_local_features` off, then on.

Set-up: the embedded stack (SeaweedFS) with the untrained b0-tiny Triton repository of `bench chain` (the same
cost as a trained one), a gallery of `--individuals` individuals whose local features are made by gallery build's
code (services.curation.catalogue.gallery_features: at most 8 photos each) from real nyala photos
(../shared/data/real-reid/nyala train; generated textures when ../shared is absent), the served tuning's `rerank`
at the defaults (weight 0.3, cap 20, top 5), and `--count` query photos (nyala test). The gallery's embeddings are
random unit vectors (one per individual): the top 5 individuals of every query are arbitrary, and each has its
photos in the bank, so the matcher does the full work of re-ranking for every sighting.

The matcher re-ranks a batch's (query, photo) pairs on `rerank_workers` threads (reported as `matcher_rerank_workers`).
Reported per mode: sightings/s, CPU ms per sighting of each process tree (worker, matcher, Kafka, Redis, S3,
Triton), the worker's and matcher's mean step times, the sightings.embedded record size; and the gallery's
local features: kB and CPU ms per photo, MB per 1k individuals at 8 photos each.
`python -m bench rerank_chain [--count 96] [--individuals 60] [--matcher-blas-threads 1]` (the last: a third mode,
`on` again with the matcher's numpy BLAS on that many threads).

`--threads 1 2` measures instead, in this process and without servers, the matcher's core step alone
(local_features.candidate_inliers) on the same photos with each number of matching threads (the setting
`rerank_workers`), interleaved rounds, batches of `--batch`: CPU and wall ms per sighting, and whether every
count equals the one-thread count. numpy's BLAS threads are the process's: run it again with
OPENBLAS_NUM_THREADS=1 to compare.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np

log = logging.getLogger("bench.rerank_chain")
RESULTS = Path(__file__).parent / "results"
NYALA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-reid" / "nyala"
PER_INDIVIDUAL = 8


def step_sums(port: int) -> dict[str, tuple[float, float]]:
    """(sum s, count) of each step's latency histogram of a service, from its /metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    out: dict[str, list[float]] = {}
    for kind, step, value in re.findall(
            r'whaleid_step_latency_seconds_(sum|count)\{stage="\w+",step="(\w+)"\} ([0-9.e+-]+)', text):
        out.setdefault(step, [0.0, 0.0])[0 if kind == "sum" else 1] = float(value)
    return {step: (s, c) for step, (s, c) in out.items()}


def step_ms(before: dict, after: dict) -> dict[str, float]:
    """Mean ms per call of each step between two step_sums readings."""
    out = {}
    for step, (total, count) in after.items():
        total0, count0 = before.get(step, (0.0, 0.0))
        if count > count0:
            out[step] = round(1000 * (total - total0) / (count - count0), 1)
    return out


def source_photos(individuals: int, count: int):
    """(gallery {individual: [jpeg bytes]}, query jpeg bytes, source): nyala train / test, else textures."""
    if NYALA.is_dir():
        folders = sorted(p for p in (NYALA / "train").iterdir() if p.is_dir())[:individuals]
        gallery = {f.name: [p.read_bytes() for p in sorted(f.glob("*.jpg"))[:PER_INDIVIDUAL]] for f in folders}
        queries = [p.read_bytes() for p in sorted((NYALA / "test").glob("*/*.jpg"))[:count]]
        return gallery, queries, "nyala"
    import io

    from PIL import Image

    def texture(seed: int) -> bytes:
        rng = np.random.default_rng(seed)
        big = np.kron(rng.random((40, 60)), np.ones((8, 8)))
        grey = np.where(big > 0.5, 220, 40).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2)).save(buffer, format="JPEG", quality=90)
        return buffer.getvalue()

    gallery = {f"whale-{i}": [texture(1000 + 10 * i + j) for j in range(4)] for i in range(individuals)}
    return gallery, [texture(i) for i in range(count)], "textures"


def embedded_sizes(bootstrap: str, ids: set[str]) -> list[int]:
    """Byte sizes of the sightings.embedded records of these sightings."""
    from kafka import KafkaConsumer

    from services.core import topics

    consumer = KafkaConsumer(topics.SIGHTINGS_EMBEDDED, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        return [len(m.value) for m in consumer if (m.key or b"").decode() in ids]
    finally:
        consumer.close()


def core_run(settings, redis_client, images: list[bytes], trees: dict[str, int], timeout: float):
    """`len(images)` sightings through worker + matcher at once: (ids, sightings/s, CPU ms per sighting)."""
    from kafka import KafkaProducer

    from bench.bench_chain import Uploader, cpu_per_item, process_tree_cpu
    from services.core import topics
    from services.curation.operations.gallery_versions import s3_client

    s3 = s3_client(settings)
    events = []
    for data in images:
        sighting_id = uuid.uuid4().hex
        key = f"bench-rerank/{sighting_id}.jpg"
        s3.put_object(Bucket=settings.sightings_bucket, Key=key, Body=data, ContentType="image/jpeg")
        events.append(topics.SightingUploaded(sighting_id=sighting_id, bucket=settings.sightings_bucket, key=key,
                                              uploaded_at=time.time()))
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    before = process_tree_cpu(trees)
    start = time.time()
    for event in events:
        producer.send(topics.SIGHTINGS_UPLOADED, key=event.sighting_id.encode(), value=event.to_json())
    producer.flush()
    producer.close()
    ids = [e.sighting_id for e in events]
    done = Uploader(None, redis_client).wait(ids, timeout)
    rate = len(ids) / (max(done.values()) - start)
    return ids, rate, cpu_per_item(before, process_tree_cpu(trees), len(ids))


def matching_threads(args) -> dict:
    """`--threads`: candidate_inliers alone with each number of threads (module docstring)."""
    from services.core.identification.local_features import RerankConfig, candidate_inliers
    from services.core.identification.ranking import Candidates
    from services.core.imaging import decode_image
    from services.core.keypoints import extract

    by_individual, queries, source = source_photos(args.individuals, args.count)
    bank = {i: [extract(decode_image(d)) for d in photos] for i, photos in by_individual.items()}
    features = [extract(decode_image(d)) for d in queries]
    rng = np.random.default_rng(0)
    names = list(bank)
    ids = np.array([list(rng.choice(names, 5, replace=False)) for _ in features], dtype=object)
    scores = np.sort(rng.random((len(features), 5)).astype(np.float32), axis=1)[:, ::-1].copy()
    config = RerankConfig()

    def run(workers: int) -> np.ndarray:
        return np.concatenate([candidate_inliers(Candidates(ids[s:s + args.batch], scores[s:s + args.batch]),
                                                 features[s:s + args.batch], bank.__getitem__, config, workers)
                               for s in range(0, len(features), args.batch)])

    reference = run(1)  # also fills every photo's RootSIFT cache, as a running matcher has it
    times: dict[int, list[tuple[float, float]]] = {n: [] for n in args.threads}
    identical = True
    for round_ in range(args.rounds):
        for workers in (args.threads if round_ % 2 == 0 else args.threads[::-1]):
            wall, cpu = time.perf_counter(), time.process_time()
            counts = run(workers)
            times[workers].append((time.perf_counter() - wall, time.process_time() - cpu))
            identical &= bool(np.array_equal(counts, reference))
    per = {str(n): {"cpu_ms_per_sighting": round(1000 * float(np.median([c for _, c in t])) / len(features), 1),
                    "wall_ms_per_sighting": round(1000 * float(np.median([w for w, _ in t])) / len(features), 1)}
           for n, t in times.items()}
    return {"photos": source, "queries": len(features), "individuals": len(bank), "batch": args.batch,
            "rounds": args.rounds, "openblas_num_threads": os.environ.get("OPENBLAS_NUM_THREADS", "(numpy's default)"),
            "threads": per, "counts_identical_to_one_thread": identical}


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench rerank_chain")
    parser.add_argument("--workdir", type=Path, default=Path(".whaleid/bench"), help="model cache")
    parser.add_argument("--config", default="b0-tiny", help="model config of the served network")
    parser.add_argument("--count", type=int, default=96, help="sightings per mode")
    parser.add_argument("--individuals", type=int, default=60, help="gallery individuals (with their photos' features)")
    parser.add_argument("--matcher-blas-threads", type=int,
                        help="also run `on` again with the matcher's OPENBLAS_NUM_THREADS set to this")
    parser.add_argument("--threads", type=int, nargs="+",
                        help="measure the matcher's matching alone with these numbers of threads (no servers)")
    parser.add_argument("--batch", type=int, default=16, help="with --threads: sightings per matcher batch")
    parser.add_argument("--rounds", type=int, default=3, help="with --threads: interleaved timing rounds")
    args = parser.parse_args(argv)
    if args.threads:
        return {"mode": "matching_threads", **matching_threads(args)}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kafka.net").setLevel(logging.CRITICAL)

    import redis

    from services.core import keys
    from services.core.identification import Tuning, build_gallery
    from services.core.identification.local_features import RerankConfig
    from services.core.settings import load_settings
    from services.curation.catalogue.gallery_build import Photos
    from services.curation.catalogue.gallery_features import gallery_features
    from services.curation.operations.gallery_versions import GalleryStore
    from services.curation.operations.publish import publish_gallery
    from services.devtools.demo.model import untrained_repository
    from services.devtools.demo.processes import ServiceProcess, service_env
    from services.devtools.stack import Stack
    from services.devtools.stack.ports import free_port

    repository = untrained_repository(args.workdir.resolve(), args.config, log.info)
    root = Path(tempfile.mkdtemp(prefix="bench-rerank-chain-"))
    overrides = {"run_dir": root / "stack", "model_repository": repository}
    stack = Stack(load_settings(profile="local", environ={}, **overrides), with_prometheus=False, s3="seaweedfs")
    services: list[ServiceProcess] = []
    stack.up(timeout=180)
    try:
        settings = load_settings(profile="local", environ={}, **overrides)
        by_individual, queries, source = source_photos(args.individuals, args.count)
        paths, ids = [], []
        for individual, photos in by_individual.items():
            for n, data in enumerate(photos):
                paths.append(root / "photos" / f"{individual}-{n}.jpg")
                paths[-1].parent.mkdir(exist_ok=True)
                paths[-1].write_bytes(data)
                ids.append(individual)
        cpu = time.process_time()
        bank = gallery_features(Photos([p.name for p in paths], ids, ["nyala"] * len(ids), paths), None, PER_INDIVIDUAL)
        bank_cpu_ms = 1000 * (time.process_time() - cpu) / max(1, len(bank))
        bank_bytes = bank.size_bytes()
        names = list(by_individual)
        vectors = np.random.default_rng(0).normal(size=(len(names), 512)).astype(np.float32)
        gallery = build_gallery(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), names,
                                ["nyala"] * len(names), [f"{n}.jpg" for n in names])
        gallery.save(root / "gallery")
        config = RerankConfig()
        rerank = {"method": "sift", **{k: getattr(config, k) for k in RerankConfig.__dataclass_fields__}}
        Tuning(threshold=0.5, rerank=rerank).save(root / "gallery" / "tuning.json")
        store = GalleryStore.from_settings(settings)
        publish_gallery(store, gallery, root / "gallery" / "tuning.json", reason="bench rerank_chain",
                        extra_files=[bank.save(root)])

        env = service_env(root / "stack")
        ports = {"matcher": free_port()}
        matcher = ServiceProcess("matcher", env, root / "logs", metrics_port=ports["matcher"]).start()
        services.append(matcher)
        matcher.wait_ready(180)
        client = redis.Redis.from_url(settings.redis_url)
        servers = {name: int(entry["pid"]) for name, entry in stack.state["servers"].items() if entry.get("pid")}
        modes = {}
        runs = ["off", "on"] + ([f"on_matcher_blas_{args.matcher_blas_threads}"] if args.matcher_blas_threads else [])
        for mode in runs:
            if mode.startswith("on_matcher_blas"):  # the same, with the matcher's BLAS on that many threads
                matcher.stop()
                services.remove(matcher)
                ports["matcher"] = free_port()
                matcher = ServiceProcess("matcher", {**env, "OPENBLAS_NUM_THREADS": str(args.matcher_blas_threads)},
                                         root / "logs", name="matcher-blas", metrics_port=ports["matcher"]).start()
                services.append(matcher)
                matcher.wait_ready(180)
            port = free_port()
            worker = ServiceProcess("worker", {**env, "WHALEID_RERANK_LOCAL_FEATURES": str(mode != "off").lower()},
                                    root / "logs", name=f"worker-{mode}", metrics_port=port).start()
            services.append(worker)
            worker.wait_ready(180)
            trees = {**servers, "worker": worker.proc.pid, "matcher": matcher.proc.pid, "bench": os.getpid()}
            core_run(settings, client, queries[:8], trees, 300)  # warm up every step once
            worker_before, matcher_before = step_sums(port), step_sums(ports["matcher"])
            sighting_ids, rate, cpu_ms = core_run(settings, client, queries, trees, 600)
            results = [json.loads(client.get(keys.identification_key(s))) for s in sighting_ids]
            sizes = embedded_sizes(settings.kafka_bootstrap, set(sighting_ids))
            modes[mode] = {
                "sightings_per_s": round(rate, 2), "cpu_ms_per_sighting": cpu_ms,
                "worker_step_ms": step_ms(worker_before, step_sums(port)),
                "matcher_step_ms": step_ms(matcher_before, step_sums(ports["matcher"])),
                "embedded_record_bytes_mean": round(float(np.mean(sizes))) if sizes else None,
                "re_ranked": sum("rerank" in r for r in results), "sightings": len(results),
            }
            log.info("rerank %s: %s", mode, modes[mode])
            worker.stop()
            services.remove(worker)
        off, on = modes["off"], modes["on"]
        extra = {name: round(on["cpu_ms_per_sighting"].get(name, 0.0) - off["cpu_ms_per_sighting"].get(name, 0.0), 1)
                 for name in ("worker", "matcher", "kafka", "redis")}
        result = {
            "photos": source, "sightings_per_mode": args.count, "individuals": len(names), "model": args.config,
            "gallery_local_features": {
                "photos": len(bank), "kb_per_photo": round(bank_bytes / max(1, len(bank)) / 1000, 1),
                "cpu_ms_per_photo": round(bank_cpu_ms, 1),
                "mb_per_1k_individuals_at_8_photos": round(bank_bytes / max(1, len(bank)) * 8 * 1000 / 1e6, 1)},
            "matcher_rerank_workers": load_settings(environ=env).rerank_workers,  # the setting the matcher ran with
            "off": off, "on": on, **{m: modes[m] for m in runs[2:]},
            "extra_cpu_ms_per_sighting": extra,
            "rate_on_over_off": round(on["sightings_per_s"] / off["sightings_per_s"], 3),
            "chain_cpu_on_over_off": round(sum(on["cpu_ms_per_sighting"].values())
                                           / max(1e-9, sum(off["cpu_ms_per_sighting"].values())), 3),
        }
        return result
    finally:
        for service in reversed(services):
            service.stop()
        stack.down()


if __name__ == "__main__":
    import sys

    from bench.__main__ import quiet_tensorflow

    quiet_tensorflow()
    outcome = {"bench": "rerank_chain", **main(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "rerank_chain.json").write_text(json.dumps(outcome, indent=2))
    print(json.dumps(outcome, indent=2))
