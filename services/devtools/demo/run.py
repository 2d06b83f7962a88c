"""`whaleid demo`: prepare (or reuse) the lite0 model it serves, bring the embedded stack up, start the five services,
upload the test photos through the gateway as an app would, wait for the identifications, report, tear down."""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.chain.gateway.client import CONTENT_TYPES, AppClient, Upload
from services.core.errors import WhaleIdError
from services.core.settings import load_settings
from services.devtools.demo.system import (
    SERVICES,
    System,
    check_not_up,
    free_port_block,  # noqa: F401 - services.devtools.chaos imports it from here
    logs_to_file,
    stderr_to,
    up_state_path,
)

log = logging.getLogger(__name__)
# The demo's training, sized for a 5-minute first run on 2 cores (issue 23): one training, lite0 holding fold 0 of
# ten out (9 of the 85 catalogued individuals) for 16 epochs, served as it is with the threshold tuned out of that
# fold (animals it never trained on; no validation during training: the gallery step embeds the same photos).
# A compromise that trades some live MAP@5 (0.68 against 0.69-0.73) for time (277-318 s against 429-502 s):
# docs/benchmarks.md has every recipe measured.
DEMO_TRAINING = {"epochs": 16, "validate_every": 0, "folds": 10}
DEMO_FINAL_EPOCHS = 0  # 0: no final fit, the fold run is served (N: a final fit of N epochs from its backbone)
DEMO_INDIVIDUALS = 100
LOG_FILE = "demo.log"  # under the workdir: library logs (Kafka clients retrying while the broker starts, ...)


class DemoError(WhaleIdError):
    """A step of the demo failed; the message says which and where its log is."""


@dataclass
class DemoOptions:
    individuals: int = DEMO_INDIVIDUALS
    workdir: Path = Path(".whaleid/demo")
    keep_up: bool = False
    as_json: bool = False
    config: str | None = None  # settings TOML
    seed: int = 0
    model_config: str = "lite0"
    model_overrides: dict = field(default_factory=lambda: dict(DEMO_TRAINING))
    final_epochs: int | None = DEMO_FINAL_EPOCHS
    result_timeout_s: float = 300.0
    hostile: bool = True
    extra_env: dict[str, str] = field(default_factory=dict)


class Progress:
    """Numbered step lines with elapsed time (stderr when stdout carries the JSON)."""

    def __init__(self, stream):
        self.stream = stream
        self.started = time.monotonic()

    def __call__(self, message: str) -> None:
        sys.stdout.flush()  # Keras's epoch lines first
        print(f"[demo {time.monotonic() - self.started:6.1f}s] {message}", file=self.stream, flush=True)


def hostile_uploads(data_dir: Path) -> list[tuple[str, bytes, str]]:
    """(label, bytes, declared content type): uploads the worker must dead-letter."""
    photo = next(iter(sorted((data_dir / "test_images").glob("*.jpg"))))
    data = photo.read_bytes()
    return [
        ("hostile:text-file", b"Dear whale researchers, this is not a photo.\n" * 20, "image/jpeg"),
        ("hostile:truncated-jpeg", data[: len(data) // 2], "image/jpeg"),
    ]


def read_truth(data_dir: Path) -> dict[str, str]:
    path = data_dir / "test_truth.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as fh:
        return {row["image"]: row["individual_id"] for row in csv.DictReader(fh)}


def app_metadata(data, image: str, box_source: str | None, index: int) -> dict[str, Any]:
    """What the app sends with a photo: time, place, observer and the crop box the model evaluates with."""
    box = data.eval_box(image, box_source)
    metadata = {"taken_at": "2026-11-27T08:00:00Z", "latitude": 64.1 + index * 1e-3, "longitude": -21.9,
                "observer": "whaleid-demo"}
    if box is not None:
        metadata["crop_box"] = [float(v) for v in box]
    return metadata


def wait_for_results(client: AppClient, uploads: list[Upload], timeout_s: float, progress) -> dict[str, dict]:
    """Poll GET /v1/sightings/{id} until every upload is identified or failed (or the timeout)."""
    return client.wait(uploads, timeout_s, progress)


def result_row(upload: Upload, answer: dict | None) -> dict[str, Any]:
    row: dict[str, Any] = {"image": upload.name, "sighting_id": upload.sighting_id}
    if answer is None:
        return {**row, "status": "pending"}
    row["status"] = answer["status"]
    if answer["status"] == "identified":
        identification = answer["identification"]
        row["predictions"] = [c["individual_id"] for c in identification["candidates"]]
        row["scores"] = [c["score"] for c in identification["candidates"]]
        row["latency_s"] = max(0.0, identification["identified_at"] - upload.sent_at)
        row["gallery_version"] = identification["gallery_version"]
        row["model_version"] = identification["model_version"]
    else:
        row["reason"] = answer.get("failure", {}).get("reason", "")
    return row


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_demo(options: DemoOptions) -> int:
    workdir = Path(options.workdir).resolve()
    logs_to_file(workdir / LOG_FILE)
    console = sys.stderr if options.as_json else sys.stdout
    with os.fdopen(os.dup(console.fileno()), "w", buffering=1) as stream, stderr_to(workdir / LOG_FILE):
        return _run_demo(options, workdir, Progress(stream))


def _run_demo(options: DemoOptions, workdir: Path, progress: Progress) -> int:
    from services.devtools.demo.model import prepare_model

    progress(f"whaleid demo in {workdir} ({options.individuals} individuals, config {options.model_config}; "
             f"logs in {workdir / LOG_FILE})")
    state_path = up_state_path(load_settings(config_file=options.config))
    if options.keep_up:
        check_not_up(state_path)
    # with --json, stdout carries only the summary: training's progress (Keras prints) goes to stderr
    with contextlib.redirect_stdout(sys.stderr) if options.as_json else contextlib.nullcontext():
        model = prepare_model(workdir, options.individuals, options.seed, options.model_config, progress,
                              options.model_overrides, options.final_epochs)
    run_dir = workdir / "runs" / time.strftime("%Y%m%d-%H%M%S")
    chain = DemoChain(options, model, run_dir, progress)
    signal.signal(signal.SIGTERM, _interrupt)  # a SIGTERM tears down like Ctrl-C
    summary, rows = None, []
    try:
        chain.start()
        summary, rows = chain.upload_and_collect()
    except KeyboardInterrupt:
        progress("interrupted: bringing everything down")
        raise
    finally:
        if options.keep_up and chain.started and summary is not None:
            chain.system.write_state(state_path, "demo")
        else:
            chain.stop()
    chain.print_report(summary, rows)
    if options.keep_up:
        progress(f"--keep-up: the stack and the services stay up (state in {state_path}); stop them with "
                 f"`whaleid down`")
        progress(f"gateway:     {chain.system.gateway_url}   (`whaleid upload PHOTO --latitude LAT --longitude LON` "
                 f"finds it)")
        progress(f"review page: {chain.system.review_url}")
    return 0 if summary["identified"] and not summary["pending"] else 1


class DemoChain:
    """The stack and the five services of one demo run (logs under `run_dir`)."""

    def __init__(self, options: DemoOptions, model, run_dir: Path, progress):
        self.options, self.model, self.run_dir, self.progress = options, model, run_dir, progress
        self.system: System | None = None
        self.started = False
        self.settings = None

    @property
    def services(self):
        return self.system.services if self.system is not None else []

    @property
    def stack(self):
        return self.system.stack if self.system is not None else None

    def start(self) -> None:
        from services.core.identification import Gallery
        from services.curation.operations.gallery_versions import GalleryStore
        from services.serving.triton_client import EmbeddingClient

        base = load_settings(config_file=self.options.config)
        self.system = System(base, self.run_dir / "stack", self.run_dir / "logs", self.progress,
                             config=self.options.config, extra_env=self.options.extra_env)
        self.settings = self.system.start_stack(self.model.repository, timeout=180, gateway_port=_free_port())
        self.started = True
        with EmbeddingClient.from_settings(self.settings) as client:
            client.wait_ready(120)
            self.progress(f"Triton serves {client.model_version()}")

        store = GalleryStore.from_settings(self.settings)
        gallery_dir = self.model.gallery_dir
        gallery = Gallery.load(gallery_dir)
        version = store.publish(gallery_dir, parent=None, added_sightings=[], individuals=gallery.individual_ids,
                                size=len(gallery))
        store.set_current(version, "whaleid demo")
        self.progress(f"gallery {version} published ({len(gallery)} embeddings of "
                      f"{len(set(gallery.individual_ids))} individuals)")
        self.system.start_services(SERVICES, timeout=180)
        self.client = self.system.client

    def upload_and_collect(self) -> tuple[dict, list[dict]]:
        from services.devtools.demo.report import summarise
        from training.data import load_dataset

        data = load_dataset(self.model.data_dir)
        box_source = _box_source(self.model)
        uploads = []
        for index, image in enumerate(sorted(data.test_images)):
            path = data.image_path(image)
            uploads.append(self.client.upload(path.read_bytes(), image, CONTENT_TYPES[path.suffix.lower()],
                                              app_metadata(data, image, box_source, index)))
            if (index + 1) % 20 == 0:
                self.progress(f"uploaded {index + 1}/{len(data.test_images)} photos")
        hostile = []
        if self.options.hostile:
            for label, payload, content_type in hostile_uploads(self.model.data_dir):
                hostile.append(self.client.upload(payload, label, content_type, app_metadata(data, "", None, 0)))
        self.progress(f"uploaded {len(uploads)} test photos and {len(hostile)} hostile files; waiting for results")
        answers = wait_for_results(self.client, uploads + hostile, self.options.result_timeout_s, self.progress)
        rows = [result_row(u, answers.get(u.sighting_id)) for u in uploads]
        hostile_rows = [{"name": u.name, **result_row(u, answers.get(u.sighting_id))} for u in hostile]
        truth = read_truth(self.model.data_dir)
        summary = summarise(rows, truth, self.model.offline["predictions"], hostile_rows)
        summary["offline_map5_all_test_photos"] = self.model.offline.get("map5")
        summary["model_version"] = next((r["model_version"] for r in rows if "model_version" in r), None)
        summary["run_dir"] = str(self.run_dir)
        (self.run_dir / "results.json").write_text(json.dumps({"summary": summary, "rows": rows,
                                                               "hostile": hostile_rows}, indent=1))
        self.truth = truth
        return summary, rows

    def print_report(self, summary: dict, rows: list[dict]) -> None:
        from services.devtools.demo.report import plot_latency, table

        plot = plot_latency(rows, self.run_dir / "latency.png")
        if plot:
            summary["latency_plot"] = str(plot)
        if self.options.as_json:
            print(json.dumps(summary, indent=2))
            return
        print()
        print(table(rows, self.truth))
        print()
        for key, value in summary.items():
            print(f"{key:>30}: {value}")

    def stop(self) -> None:
        if self.system is not None:
            self.system.stop()
            self.progress("stack and services stopped")


def _free_port() -> int:
    from services.devtools.stack.ports import free_port

    return free_port()


def _box_source(model) -> str | None:
    manifest = next(iter(sorted(Path(model.exports_dir).glob("*/manifest.json"))), None)
    if manifest is None:
        return None
    return json.loads(manifest.read_text()).get("preprocessing", {}).get("eval_box_source") or None
