"""The bridge (SQS upload events -> Kafka) batched vs one message at a time, side by side in one run.

Set-up: Kafka, S3 + SQS (moto) and Redis of the embedded stack (no Triton). Each round puts `--burst` objects
under uploads/ (their sightings created in Redis first, as the gateway does), so S3 queues one event per object in
SQS, then drains the queue with an `UploadBridge` in one of two modes, alternating (A B A B ...) to share noise:
- one_by_one: receive 10, then each message on its own (its Redis round trips, produce + flush, delete): the
  bridge before batching;
- batched: receive 10 and handle them together (two Redis pipelines, one flush, one delete_message_batch).
Reports messages/s, the bridge's own work and the SQS receive per message (from the step histograms), and the
ratio batched / one_by_one. A PNG of both next to the JSON result.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

from services.core import keys

log = logging.getLogger("bench.bridge")
RESULTS = Path(__file__).parent / "results"
MODES = ("one_by_one", "batched")


def step_seconds() -> dict[str, float]:
    """Total seconds per bridge step so far (the process's STEP_LATENCY histogram)."""
    from services.core.metrics import STEP_LATENCY

    totals: dict[str, float] = {}
    for metric in STEP_LATENCY.collect():
        for sample in metric.samples:
            if sample.name.endswith("_sum") and sample.labels.get("stage") == "bridge":
                totals[sample.labels["step"]] = sample.value
    return totals


def fill_queue(settings, s3, redis, count: int, prefix: str) -> None:
    """`count` sightings in Redis and their objects in S3: one upload event each in the SQS queue."""
    for i in range(count):
        sighting_id = f"{prefix}-{i:05d}"
        redis.hset(keys.sighting_key(sighting_id), mapping={"metadata": json.dumps({"observer": "bench"})})
        s3.put_object(Bucket=settings.sightings_bucket, Key=f"uploads/{sighting_id}.jpg", Body=b"\xff\xd8" * 64)


def drain(bridge, count: int, batched: bool) -> tuple[float, dict[str, float]]:
    """Receive until `count` messages were handled; (seconds, seconds per step: receive and the bridge's work)."""
    from services.chain.bridge.bridge import MAX_MESSAGES
    from services.core.metrics import STEP_LATENCY, timed

    before = step_seconds()
    handled, start = 0, time.perf_counter()
    while handled < count:
        with timed(STEP_LATENCY, stage="bridge", step="receive"):
            messages = bridge.sqs.receive_message(QueueUrl=bridge.queue_url, MaxNumberOfMessages=MAX_MESSAGES,
                                                  WaitTimeSeconds=1).get("Messages", [])
        if batched:
            bridge.handle_messages(messages)
        else:
            for message in messages:
                bridge.handle_message(message)
        handled += len(messages)
    elapsed = time.perf_counter() - start
    after = step_seconds()
    return elapsed, {step: after[step] - before.get(step, 0.0) for step in after}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (rate_ax, cost_ax) = plt.subplots(1, 2, figsize=(10, 4))
    rates = [result[mode]["messages_per_s"] for mode in MODES]
    rate_ax.bar(MODES, rates, color=["#999999", "#2a7ab0"])
    rate_ax.set_ylabel("messages/s (median of rounds)")
    rate_ax.set_title(f"bridge drain rate, burst {result['burst']}")
    work = [result[mode]["work_ms_per_message"] for mode in MODES]
    receive = [result[mode]["receive_ms_per_message"] for mode in MODES]
    cost_ax.bar(MODES, work, label="bridge work (Redis, Kafka, delete)", color="#2a7ab0")
    cost_ax.bar(MODES, receive, bottom=work, label="SQS receive (moto)", color="#e0a030")
    cost_ax.set_ylabel("ms per message")
    cost_ax.legend()
    cost_ax.set_title(f"batched / one_by_one = {result['batched_over_one_by_one']:.2f}x")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def main(argv: list[str]) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench bridge")
    parser.add_argument("--burst", type=int, default=200, help="upload events queued before each drain")
    parser.add_argument("--rounds", type=int, default=2, help="drains per mode (alternating)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("kafka", "botocore", "urllib3", "services.chain.bridge"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    from services.chain.bridge.bridge import UploadBridge
    from services.chain.bridge.clients import kafka_producer, sqs_client, upload_queue_url
    from services.chain.markers import redis_client
    from services.core.settings import load_settings
    from services.curation.operations.gallery_versions import s3_client
    from services.devtools.stack import Stack

    root = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    overrides = {"run_dir": root / "stack", "model_repository": root}
    stack = Stack(load_settings(profile="local", environ={}, **overrides), servers=("kafka", "s3", "redis"),
                  s3="moto")  # the SQS path: moto is the only SQS here
    stack.up(timeout=120)
    producer = None
    try:
        settings = load_settings(profile="local", environ={}, **overrides)
        redis = redis_client(settings.redis_url)
        s3 = s3_client(settings)
        sqs = sqs_client(settings)
        producer = kafka_producer(settings)
        bridge = UploadBridge(settings, sqs, upload_queue_url(sqs, settings), redis, producer)
        fill_queue(settings, s3, redis, 10, "warmup")
        drain(bridge, 10, batched=True)  # also takes s3:TestEvent out of the way when it is still queued
        runs: dict[str, list[tuple[float, dict[str, float]]]] = {mode: [] for mode in MODES}
        for round_ in range(args.rounds):
            for mode in MODES:
                fill_queue(settings, s3, redis, args.burst, f"r{round_}-{mode}")
                seconds, steps = drain(bridge, args.burst, batched=mode == "batched")
                runs[mode].append((seconds, steps))
                log.info("round %d %s: %d messages in %.2f s (%.0f/s); receive %.2f s", round_ + 1, mode,
                         args.burst, seconds, args.burst / seconds, steps.get("receive", 0.0))
        result: dict = {"burst": args.burst, "rounds": args.rounds}
        for mode, measured in runs.items():  # "batch" step: handle_messages (one_by_one: batches of one)
            result[mode] = {
                "messages_per_s": round(median([args.burst / s for s, _ in measured]), 1),
                "receive_ms_per_message": round(1000 * median([st.get("receive", 0) for _, st in measured]) / args.burst, 2),
                "work_ms_per_message": round(1000 * median([st.get("batch", 0) for _, st in measured]) / args.burst, 2),
            }
        result["batched_over_one_by_one"] = round(
            result["batched"]["messages_per_s"] / result["one_by_one"]["messages_per_s"], 2)
        result["work_one_by_one_over_batched"] = round(
            result["one_by_one"]["work_ms_per_message"] / max(result["batched"]["work_ms_per_message"], 1e-6), 2)
        RESULTS.mkdir(exist_ok=True)
        plot(result, RESULTS / "bridge.png")
        result["plot"] = str(RESULTS / "bridge.png")
        return result
    finally:
        if producer is not None:
            producer.close(timeout=10)
        stack.down()


if __name__ == "__main__":
    print(json.dumps(main([]), indent=2))
