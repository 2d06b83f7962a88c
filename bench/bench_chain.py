"""Streaming chain throughput and latency beside the raw embedder, measured side by side in one run.

Set-up: the embedded stack with a Triton repository of the b0-tiny network (untrained weights: the same cost as a
trained one; cached under `--workdir`), a gallery of random unit vectors, and `whaleid serve bridge|worker|matcher`.
1. raw: EmbeddingClient.embed straight to Triton, batches of `worker_batch_size` crops, one call at a time (the
   worker's own pattern) -> crops/s.
2. saturated chain: `--burst` photos uploaded as an app does (gateway POST + presigned PUT to S3 -> S3 event ->
   SQS -> bridge -> Kafka -> worker -> Triton -> matcher -> Redis) -> sightings/s from the first upload to the
   last identification.
3. steady chain: photos offered at `--load` x the saturated rate for `--seconds` -> upload->Redis latency
   p50/p95/p99, and the median time of each hop (upload -> bridge -> worker -> matcher).
4. core: worker + matcher alone (events produced straight to sightings.uploaded for objects already in S3)
   -> sightings/s, to tell the streaming core's capacity from the front's (gateway, S3 events, bridge).
Targets (#15): core >= 0.8 x raw, chain >= 0.5 x raw; p99 <= 2 x p50 below saturation. CPU per crop / per
sighting of every process tree (each server with its children) in the raw and core phases says where the rest goes. A PNG (latency histogram + rates) is written next
to the JSON result.

`--s3 both` (the default) runs all of it twice in one run, each on its own stack: SeaweedFS (the filer publishes
its events to Kafka, read by the bridge's SeaweedFS source) and moto (S3 event -> SQS -> the bridge's SQS poll),
and compares them side by side (`s3_comparison`: upload -> bridge and upload -> worker latency p50/p99 under the
steady load, sustained sightings/s saturated; `chain_s3.png`). `--s3 seaweedfs|moto` runs one.
Options: `python -m bench.bench_chain --s3 both --burst 60 --seconds 10` (`python -m bench chain` takes defaults);
`--event-loop asyncio|uvloop` sets the worker's and the matcher's event loop (the setting `event_loop`).
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

from services.core import keys

log = logging.getLogger("bench.chain")
RESULTS = Path(__file__).parent / "results"
CHAIN_OWN = ("worker", "matcher", "kafka", "redis")  # the process trees of the chain's own cost (not Triton)
POLL_S = 0.25  # between the waiter's reads of the results (times come from the records, not from the polls)


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
    """Uploads photos as an app does (gateway POST + presigned PUT; the S3 event starts the chain) and waits for
    their results in Redis."""

    METADATA = {"taken_at": "2026-11-27T08:00:00Z", "latitude": 64.1, "longitude": -21.9, "observer": "bench"}

    def __init__(self, client, redis_client):
        self.client = client
        self.redis = redis_client
        self.sent: dict[str, float] = {}

    def put(self, data: bytes) -> str:
        upload = self.client.upload(data, "bench.jpg", "image/jpeg", self.METADATA)
        self.sent[upload.sighting_id] = upload.sent_at
        return upload.sighting_id

    def wait(self, ids: list[str], timeout: float) -> dict[str, float]:
        """identified_at per sighting (from the results in Redis)."""
        found: dict[str, float] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(ids) and time.monotonic() < deadline:
            pending = [i for i in ids if i not in found]
            for sighting_id, raw in zip(pending, self.redis.mget([keys.identification_key(i) for i in pending]),
                                        strict=True):
                if raw is not None:
                    found[sighting_id] = json.loads(raw)["identified_at"]
            time.sleep(POLL_S)
        if len(found) < len(ids):
            raise RuntimeError(f"only {len(found)}/{len(ids)} sightings identified within {timeout:.0f} s")
        return found


def stage_breakdown(uploader: Uploader, ids: list[str]) -> dict[str, float]:
    """Median milliseconds per hop from the timestamps the chain records: upload -> bridge (uploaded_at),
    bridge -> worker produced (embedded_at), worker -> matcher wrote the result (identified_at)."""
    hops: dict[str, list[float]] = {"upload_to_bridge_ms": [], "bridge_to_embedded_ms": [], "embedded_to_identified_ms": []}
    for sighting_id in ids:
        embedded = json.loads(uploader.redis.get(keys.embedding_key(sighting_id)))
        identified = json.loads(uploader.redis.get(keys.identification_key(sighting_id)))
        hops["upload_to_bridge_ms"].append(embedded["uploaded_at"] - uploader.sent[sighting_id])
        hops["bridge_to_embedded_ms"].append(embedded["embedded_at"] - embedded["uploaded_at"])
        hops["embedded_to_identified_ms"].append(identified["identified_at"] - embedded["embedded_at"])
    return {name: pct(values, 50) for name, values in hops.items()}


def step_means(port: int) -> dict[str, float]:
    """Mean milliseconds per step of a service over the whole run, from its /metrics histograms."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    sums, counts = {}, {}
    for kind, step, value in re.findall(
        r'whaleid_step_latency_seconds_(sum|count)\{stage="\w+",step="(\w+)"\} ([0-9.e+-]+)', text):
        (sums if kind == "sum" else counts)[step] = float(value)
    return {step: round(1000 * sums[step] / counts[step], 1) for step in sums if counts.get(step)}


def embed_calls(port: int) -> tuple[float, float]:
    """(sightings embedded, Triton calls) of the worker so far, from its /metrics."""
    import re
    import urllib.request

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    # prometheus_client writes the labels sorted by name: outcome before stage
    embedded = re.search(r'whaleid_events_total\{outcome="embedded",stage="worker"\} ([0-9.e+-]+)', text)
    calls = re.search(r'whaleid_step_latency_seconds_count\{stage="worker",step="embed"\} ([0-9.e+-]+)', text)
    return (float(embedded.group(1)) if embedded else 0.0), (float(calls.group(1)) if calls else 0.0)


def per_call(before: tuple[float, float], after: tuple[float, float]) -> float:
    calls = after[1] - before[1]
    return round((after[0] - before[0]) / calls, 2) if calls else 0.0


def saturated(uploader: Uploader, images: list[bytes], timeout: float, apps: int = 8):
    """Upload everything at once from `apps` concurrent clients; sightings/s from the first upload to the last
    identification."""
    from concurrent.futures import ThreadPoolExecutor

    start = time.time()
    with ThreadPoolExecutor(apps) as pool:
        ids = list(pool.map(uploader.put, images))
    uploaded = time.time()
    done = uploader.wait(ids, timeout)
    rate = len(ids) / (max(done.values()) - start)
    log.info("saturated: %d uploads took %.1f s, the last identification came %.1f s after the first upload",
             len(ids), uploaded - start, max(done.values()) - start)
    return rate, ids, [done[i] - uploader.sent[i] for i in ids], uploaded - start


def steady(uploader: Uploader, images: list[bytes], rate: float, seconds: float, timeout: float):
    """Offer uploads at `rate` per second (each from its own thread at its scheduled time, as independent apps)."""
    from concurrent.futures import ThreadPoolExecutor

    interval, count = 1.0 / rate, int(rate * seconds)
    start = time.monotonic()

    def offer(n: int) -> str:
        time.sleep(max(0.0, start + n * interval - time.monotonic()))
        return uploader.put(images[n % len(images)])

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(offer, range(count)))
    done = uploader.wait(ids, timeout)
    return ids, [done[i] - uploader.sent[i] for i in ids]


def core_saturated(settings, redis_client, images: list[bytes], count: int, timeout: float,
                   on_start=lambda: None) -> float:
    """Worker + matcher alone: objects put in S3 beforehand, then `count` sightings.uploaded events produced at
    once (what the bridge would send) -> sightings/s from the first event to the last identification.
    `on_start()` is called once the objects are in S3, just before the first event."""
    from kafka import KafkaProducer

    from services.core import topics
    from services.curation.operations.gallery_versions import s3_client

    s3 = s3_client(settings)
    events = []
    for n in range(count):
        sighting_id = uuid.uuid4().hex
        key = f"bench-core/{sighting_id}.jpg"  # outside uploads/: the bridge does not claim these
        s3.put_object(Bucket=settings.sightings_bucket, Key=key, Body=images[n % len(images)], ContentType="image/jpeg")
        events.append(topics.SightingUploaded(sighting_id=sighting_id, bucket=settings.sightings_bucket, key=key,
                                              uploaded_at=time.time()))
    producer = KafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5)
    log.info("worker + matcher alone: %d objects in S3, producing their events", count)
    on_start()
    start = time.time()
    for event in events:
        producer.send(topics.SIGHTINGS_UPLOADED, key=event.sighting_id.encode(), value=event.to_json())
    producer.flush()
    producer.close()
    waiter = Uploader(None, redis_client)
    done = waiter.wait([e.sighting_id for e in events], timeout)
    return count / (max(done.values()) - start)


def process_tree_cpu(roots: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) used so far by each named process together with all its descendants (Triton's
    python-backend stubs are children of tritonserver), read from Linux's /proc; {} elsewhere."""
    import os

    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    parent, cpu = {}, {}
    try:
        entries = [e for e in os.listdir("/proc") if e.isdigit()]
    except OSError:
        return {}
    for entry in entries:
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        parent[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / ticks
    owner = {}
    for pid in cpu:
        walk = pid
        while walk > 1 and walk not in owner:
            if walk in roots.values():
                break
            walk = parent.get(walk, 0)
        names = [n for n, root in roots.items() if root == walk]
        if names:
            owner[pid] = names[0]
    totals = {name: 0.0 for name in roots}
    for pid, name in owner.items():
        totals[name] += cpu[pid]
    return totals


def cpu_per_item(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Milliseconds of CPU per item of each process tree between two process_tree_cpu readings, largest first."""
    used = {name: 1000.0 * (after.get(name, 0.0) - before.get(name, 0.0)) / max(1, count) for name in after}
    return {name: round(ms, 2) for name, ms in sorted(used.items(), key=lambda kv: -kv[1]) if ms >= 0.005}


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
    from services.chain.faust_app import EVENT_LOOPS

    parser = argparse.ArgumentParser(prog="python -m bench chain")
    parser.add_argument("--workdir", type=Path, default=Path(".whaleid/bench"), help="model cache")
    parser.add_argument("--config", default="b0-tiny", help="model config of the served network")
    parser.add_argument("--burst", type=int, default=200, help="photos of the saturated run")
    parser.add_argument("--load", type=float, default=0.5, help="steady offered rate, as a share of the saturated")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of the steady run")
    parser.add_argument("--raw-seconds", type=float, default=10.0, help="duration of the raw measurement")
    parser.add_argument("--s3", choices=("both", "seaweedfs", "moto"), default="both",
                        help="S3 server(s) of the chain: both = SeaweedFS->Kafka and moto->SQS side by side")
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default=None,
                        help="the worker's and the matcher's event loop (the setting event_loop; default: its default)")
    args = parser.parse_args(argv)
    if args.s3 != "both":
        return run_chain(args, args.s3)
    results = {kind: run_chain(args, kind) for kind in ("seaweedfs", "moto")}
    return {"s3_comparison": s3_comparison(results), **results}


def s3_comparison(results: dict[str, dict]) -> dict:
    """The two event paths side by side; writes chain_s3.png."""
    rows = {kind: {"upload_to_bridge_p50_ms": r["steady_upload_to_bridge"]["p50_ms"],
                   "upload_to_bridge_p99_ms": r["steady_upload_to_bridge"]["p99_ms"],
                   "upload_to_worker_p50_ms": r["steady_upload_to_worker"]["p50_ms"],
                   "upload_to_worker_p99_ms": r["steady_upload_to_worker"]["p99_ms"],
                   "upload_to_identified_p50_ms": r["p50_ms"], "upload_to_identified_p99_ms": r["p99_ms"],
                   "saturated_upload_to_bridge_p50_ms": r["saturated_upload_to_bridge"]["p50_ms"],
                   "sustained_sightings_per_s": r["chain_sightings_per_s"], "offered_rate": r["offered_rate"]}
            for kind, r in results.items()}
    comparison = {"paths": {"seaweedfs": "PUT -> filer event on Kafka -> bridge (SeaweedFS source)",
                            "moto": "PUT -> S3 event -> SQS -> bridge (SQS long poll)"}, **rows}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "chain_s3.png"
    try:
        plot_s3(rows, path)
        comparison["plot"] = str(path)
    except ImportError as exc:  # matplotlib missing: the JSON is the result
        log.warning("no plot: %s", exc)
    return comparison


def plot_s3(rows: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kinds = list(rows)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    labels = ["upload->bridge p50", "upload->bridge p99", "upload->worker p50", "upload->worker p99"]
    keys = ["upload_to_bridge_p50_ms", "upload_to_bridge_p99_ms", "upload_to_worker_p50_ms", "upload_to_worker_p99_ms"]
    x = np.arange(len(keys))
    for n, kind in enumerate(kinds):
        left.bar(x + (n - 0.5) * 0.4, [rows[kind][k] for k in keys], 0.4, label=kind)
    left.set_xticks(x, labels, rotation=15)
    left.set_ylabel("ms (steady load)")
    left.set_title("latency by S3 event path")
    left.legend()
    right.bar(kinds, [rows[k]["sustained_sightings_per_s"] for k in kinds], color=["#3874a8", "#999999"][:len(kinds)])
    right.set_ylabel("sightings/s (saturated)")
    right.set_title("sustained chain throughput")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def hop_percentiles(uploader: "Uploader", ids: list[str]) -> tuple[dict, dict]:
    """p50/p99 ms of upload -> bridge produced (uploaded_at) and of upload -> worker produced (embedded_at)."""
    to_bridge, to_worker = [], []
    for sighting_id in ids:
        embedded = json.loads(uploader.redis.get(keys.embedding_key(sighting_id)))
        to_bridge.append(embedded["uploaded_at"] - uploader.sent[sighting_id])
        to_worker.append(embedded["embedded_at"] - uploader.sent[sighting_id])
    return ({"p50_ms": pct(to_bridge, 50), "p99_ms": pct(to_bridge, 99)},
            {"p50_ms": pct(to_worker, 50), "p99_ms": pct(to_worker, 99)})


def run_chain(args, s3_kind: str) -> dict:
    """Everything of the module docstring on one stack whose S3 server is `s3_kind` (the bridge follows it)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "botocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("kafka.net").setLevel(logging.CRITICAL)  # connection refused while the broker starts

    import redis

    from services.chain.gateway.client import AppClient
    from services.core.identification import Tuning, build_gallery
    from services.core.settings import load_settings
    from services.curation.operations.gallery_versions import GalleryStore
    from services.devtools.demo.model import untrained_repository
    from services.devtools.demo.processes import ServiceProcess, service_env
    from services.devtools.stack import Stack
    from services.devtools.stack.ports import free_port
    from services.serving.triton_client import EmbeddingClient

    progress = lambda message: log.info(message)  # noqa: E731
    repository = untrained_repository(args.workdir.resolve(), args.config, progress)
    root = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    overrides = {"run_dir": root / "stack", "model_repository": repository, "gateway_port": free_port()}
    stack = Stack(load_settings(profile="local", environ={}, **overrides), with_prometheus=False, s3=s3_kind)
    log.info("chain on S3 = %s", s3_kind)
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
        # what the worker sends for these uploads (plain upright RGB JPEGs, no box): the uploaded bytes themselves
        # (services.chain.worker.pipeline.prepare), so raw and chain make Triton decode the same JPEGs
        import os

        servers = {name: int(entry["pid"]) for name, entry in stack.state["servers"].items() if entry.get("pid")}
        with EmbeddingClient.from_settings(settings) as client:
            client.wait_ready(120)
            before = process_tree_cpu({**servers, "bench": os.getpid()})
            raw_start = time.perf_counter()
            raw = raw_throughput(client, images, settings.worker_batch_size, args.raw_seconds)
            raw_cpu = cpu_per_item(before, process_tree_cpu({**servers, "bench": os.getpid()}),
                                   round(raw * (time.perf_counter() - raw_start)))
        log.info("raw embedder: %.1f crops/s; CPU ms per crop %s", raw, raw_cpu)

        loop_setting = {"event_loop": args.event_loop} if args.event_loop else {}
        env = service_env(root / "stack", gateway_port=overrides["gateway_port"], **loop_setting)
        metrics_ports = {"worker": free_port(), "matcher": free_port()}
        for name in ("worker", "matcher", "bridge", "gateway"):
            services.append(ServiceProcess(name, env, root / "logs", metrics_port=metrics_ports.get(name, 0)).start())
        for service in services:
            service.wait_ready(180)
        client = AppClient(f"http://127.0.0.1:{settings.gateway_port}", settings.gateway_token)
        client.wait_healthy(60)
        uploader = Uploader(client, redis.Redis.from_url(settings.redis_url))
        saturated(uploader, images[:16], 120)  # warm up every step once
        chain_rate, burst_ids, burst_latencies, upload_s = saturated(uploader, [images[i % len(images)] for i in range(args.burst)], 600)
        log.info("chain saturated: %.1f sightings/s", chain_rate)
        offered = max(0.5, args.load * chain_rate)
        steady_ids, latencies = steady(uploader, images, offered, args.seconds, 300)
        for service in services:
            if service.service in ("gateway", "bridge"):
                service.stop()
        trees = {**servers, "bench": os.getpid(),
                 **{service.service: service.proc.pid for service in services if service.service in ("worker", "matcher")}}
        before: dict[str, float] = {}
        calls_before = embed_calls(metrics_ports["worker"])
        core_rate = core_saturated(settings, uploader.redis, images, args.burst, 600,
                                   on_start=lambda: before.update(process_tree_cpu(trees)))
        core_cpu = cpu_per_item(before, process_tree_cpu(trees), args.burst)
        core_batch = per_call(calls_before, embed_calls(metrics_ports["worker"]))
        log.info("worker + matcher alone, saturated: %.1f sightings/s; CPU ms per sighting %s", core_rate, core_cpu)
        result = {
            "raw_crops_per_s": round(raw, 1),
            "core_sightings_per_s": round(core_rate, 1),
            "core_over_raw": round(core_rate / raw, 3),
            "chain_sightings_per_s": round(chain_rate, 1),
            "chain_over_raw": round(chain_rate / raw, 3),
            "target_chain_over_raw": 0.5, "target_core_over_raw": 0.8,
            # where the CPU goes (ms per crop / per sighting, each server with its children; `bench` is this
            # process: the raw client, or the core's S3 puts, Kafka producer and Redis polling)
            "raw_cpu_ms_per_crop": raw_cpu, "core_cpu_ms_per_sighting": core_cpu,
            # on a host whose cores every process shares, core/raw cannot exceed raw CPU per crop / core CPU per sighting
            "core_over_raw_cpu_bound": round(sum(raw_cpu.values()) / max(1e-9, sum(core_cpu.values())), 3),
            # the chain's own CPU per sighting (#23): worker + matcher + the broker and Redis they use, without
            # Triton; and with S3 (the worker's GETs) as well
            "chain_own_cpu_ms_per_sighting": round(sum(core_cpu.get(n, 0.0) for n in CHAIN_OWN), 2),
            "chain_own_with_s3_cpu_ms_per_sighting": round(sum(core_cpu.get(n, 0.0) for n in (*CHAIN_OWN, "s3")), 2),
            "target_chain_own_cpu_ms_per_sighting": 1.5,
            "offered_rate": round(offered, 2),
            "steady_sightings": len(latencies),
            "p50_ms": pct(latencies, 50), "p95_ms": pct(latencies, 95), "p99_ms": pct(latencies, 99),
            "saturated_p50_ms": pct(burst_latencies, 50),
            "saturated_upload_rate": round(args.burst / upload_s, 1),
            "saturated_hops_p50": stage_breakdown(uploader, burst_ids),
            "steady_hops_p50": stage_breakdown(uploader, steady_ids),
            "batch_size": settings.worker_batch_size,
            "model": args.config,
            "s3": s3_kind, "bridge_source": settings.bridge_source,
            "event_loop": args.event_loop or settings.event_loop,
        }
        result["steady_upload_to_bridge"], result["steady_upload_to_worker"] = hop_percentiles(uploader, steady_ids)
        result["saturated_upload_to_bridge"], result["saturated_upload_to_worker"] = hop_percentiles(uploader,
                                                                                                     burst_ids)
        result["p99_over_p50"] = round(result["p99_ms"] / result["p50_ms"], 2)
        result["mean_step_ms"] = {name: step_means(port) for name, port in metrics_ports.items()}
        result["core_crops_per_triton_call"] = core_batch  # the worker's batches (raw: batch_size)
        RESULTS.mkdir(exist_ok=True)
        png = RESULTS / ("chain.png" if s3_kind == "seaweedfs" else f"chain_{s3_kind}.png")
        plot(result, latencies, png)
        result["plot"] = str(png)
        return result
    finally:
        for service in reversed(services):
            service.stop()
        stack.down()


if __name__ == "__main__":
    import sys

    from bench.__main__ import quiet_tensorflow

    quiet_tensorflow()
    outcome = {"bench": "chain", **main(sys.argv[1:])}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "chain.json").write_text(json.dumps(outcome, indent=2))
    print(json.dumps(outcome, indent=2))
