"""Session fixtures shared by every test module.

`stack`: the whole embedded stack (Kafka, S3 = SeaweedFS as by default, its filer events on Kafka, Redis, Triton,
Prometheus when installed) brought up ONCE per session in a temporary run dir, and always brought down at the end.
`moto_stack`: Kafka, moto (S3 + SQS: the AWS path S3 -> SQS -> bridge) and Redis, brought up once, only for the
tests that ask for it (`WHALEID_TEST_S3=moto` runs the session stack on moto too). Each yields a `RunningStack`:
  .settings          Settings (local profile, no WHALEID_* environment) with every address filled
  .state             the state dict (docs/interfaces.md)
  .model_repository  Path of Triton's (initially empty) model repository: write a model there, then load it
                     with tritonclient `load_model(name)` (Triton runs with --model-control-mode=explicit)
  .stack             the services.devtools.stack.Stack (e.g. `.stack.add_scrape_target(job, "127.0.0.1:PORT")`)
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"


@dataclass
class RunningStack:
    stack: Any  # services.devtools.stack.Stack
    settings: Any  # services.core.settings.Settings
    state: dict
    model_repository: Path


def pytest_configure(config):
    # kafka-python 3.0 loads its protocol schemas with deprecated importlib.resources calls, on every client
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")


def _terminate_as_interrupt(signum, frame):  # pragma: no cover - only when CI stops the run
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session", autouse=True)
def general_identifier(tmp_path_factory):
    """The general identifier that `--run general`, `gallery build` / `model-repo build` without a run and
    evaluate's comparison use in tests: Lite0 at 224 px in a session folder ($WHALEID_GENERAL_RUN, inherited by
    subprocesses), where the configured Lite2 at 384 px would cost 4x the CPU and land in the checkout's runs/."""
    from training.general import DIR_ENV, write_general_run

    folder = write_general_run(tmp_path_factory.mktemp("general") / "run",
                               {"backbone": "EfficientNetLite0", "image_size": 224})
    previous = os.environ.get(DIR_ENV)
    os.environ[DIR_ENV] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop(DIR_ENV, None)
    else:
        os.environ[DIR_ENV] = previous


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
