"""Fixtures and hooks shared by both lanes of the suite.

tests/unit/         runs with no servers and no training: `make test-fast`.
tests/integration/  the embedded stack, real training, the browser, end to end: its conftest.py adds the server
                    fixtures (`stack`, `moto_stack`) and the trained or exported models.
tests/support/      helpers (functions, constants, builders; never fixtures), imported as `support.<module>`
                    (pyproject.toml's pytest `pythonpath`).

Each test gets the marker of its lane (`unit` or `integration`) from its folder, so `-m unit` selects the same
tests as the folder does.

`general_identifier` (autouse): the general identifier's run, a session folder (see its docstring).
`synth_dataset`: `synth_dataset(**options)` -> (data_dir, summary) of `training.synth.generate(**SMALL, **options)`,
generated once per session and set of options.
`snapshot_run`: a run directory with two untrained b0-tiny snapshots (support.model_repo.build_snapshot_run).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"

TESTS = Path(__file__).resolve().parent
LANES = ("unit", "integration")
SMALL = {"individuals": 50, "seed": 5, "misspelt_share": 0.25}  # the data tests' synthetic set


def pytest_configure(config):
    # kafka-python 3.0 loads its protocol schemas with deprecated importlib.resources calls, on every client
    config.addinivalue_line("filterwarnings", "ignore:read_text is deprecated:DeprecationWarning")
    config.addinivalue_line("filterwarnings", "ignore:open_text is deprecated:DeprecationWarning")


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


def pytest_collection_modifyitems(config, items):
    """The lane's marker, from the folder the test lives in (tests/unit/... -> `unit`)."""
    for item in items:
        path = Path(item.path).resolve()
        lane = path.relative_to(TESTS).parts[0] if path.is_relative_to(TESTS) else None
        if lane not in LANES:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in tests/unit/ or tests/integration/")
        item.add_marker(lane)


@pytest.fixture(scope="session")
def synth_dataset(tmp_path_factory):
    made: dict[tuple, tuple] = {}

    def make(**options):
        from training.synth import generate

        arguments = {**SMALL, **options}
        key = tuple(sorted(arguments.items()))
        if key not in made:
            out = tmp_path_factory.mktemp("synth")
            made[key] = (out, generate(out, preview=False, **arguments))
        return made[key]

    return make


@pytest.fixture(scope="session")
def snapshot_run(tmp_path_factory) -> Path:
    from support.model_repo import build_snapshot_run

    return build_snapshot_run(tmp_path_factory.mktemp("snapshot_run"))
