"""`whaleid up` / `whaleid down` (issue 23 item 5), run as a user runs them: the real stack and services come up
detached, a photo uploaded with `whaleid upload` (no --url: it finds the gateway) is identified, `whaleid down`
stops every process within seconds, and nothing prints a traceback. A stack brought down under running services
(`whaleid stack down` first) makes them exit by themselves within seconds, without CancelledError tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.devtools.stack.process import pid_alive

ROOT = Path(__file__).resolve().parents[2]
WHALEID = [sys.executable, "-m", "services.cli.main"]


@pytest.fixture(scope="module")
def home(tmp_path_factory, general_identifier, synth_dataset):
    """A run dir of its own (state in <home>/up.json) and a small catalogue."""
    root = tmp_path_factory.mktemp("up")
    data_dir, _ = synth_dataset(individuals=10, seed=23, misspelt_share=0.0)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WHALEID_") or k == "WHALEID_GENERAL_RUN"}
    env.update(WHALEID_RUN_DIR=str(root / "stack"), WHALEID_PROFILE="local", PYTHONUNBUFFERED="1")
    yield {"root": root, "data": data_dir, "env": env}
    if (root / "up.json").exists():  # a failed test leaves nothing running
        whaleid(env, "down", timeout=120)


def whaleid(env, *argv, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run([*WHALEID, *map(str, argv)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def all_pids(state: dict) -> dict[str, int]:
    stack = json.loads((Path(state["stack_run_dir"]) / "state.json").read_text())
    return {**{n: e["pid"] for n, e in state["services"].items()},
            **{n: e["pid"] for n, e in stack["servers"].items()}}


def assert_quiet(*results: subprocess.CompletedProcess) -> None:
    for result in results:
        console = result.stdout + result.stderr
        assert "Traceback" not in console and " ERROR " not in console, console[-3000:]


def service_logs(state: dict) -> str:
    return "".join(Path(e["log"]).read_text(errors="replace") for e in state["services"].values())


def test_up_upload_down(home):
    env, root = home["env"], home["root"]
    up = whaleid(env, "up", "--run", "general", "--catalogue", home["data"])
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((root / "up.json").read_text())
    assert set(state["services"]) == {"worker", "matcher", "bridge", "reconciler", "gateway"}
    assert f"gateway:     {state['gateway_url']}" in up.stdout
    assert f"review page: {state['gateway_url']}/review#token=local-researcher-token" in up.stdout
    assert f"--worker-url http://127.0.0.1:{state['services']['worker']['web_port']}" in up.stdout
    pids = all_pids(state)
    assert all(pid_alive(p) for p in pids.values()), pids

    photo = sorted((home["data"] / "test_images").glob("*.jpg"))[0]
    upload = whaleid(env, "upload", photo, "--latitude", "64.1", "--longitude", "-21.9", "--wait", "120", "--json")
    assert upload.returncode == 0, upload.stdout + upload.stderr
    answer = json.loads(upload.stdout.strip().splitlines()[-1])
    assert answer["status"] == "identified" and len(answer["answer"]["identification"]["candidates"]) == 5

    began = time.monotonic()
    down = whaleid(env, "down", timeout=180)
    assert down.returncode == 0, down.stdout + down.stderr
    services_s = float(down.stdout.split("services stopped")[1].split(" in ")[1].split(" s")[0])
    assert services_s < 10, down.stdout  # services first, each within seconds (servers still there)
    assert not [n for n, p in pids.items() if pid_alive(p)], f"left running after {time.monotonic() - began:.0f} s"
    assert not (root / "up.json").exists()
    assert_quiet(up, upload, down)
    assert "CancelledError" not in service_logs(state)
    print(up.stdout, upload.stdout, down.stdout, sep="\n")  # the figures, with -s


def test_services_exit_when_the_stack_goes_down_first(home):
    env, root = home["env"], home["root"]
    up = whaleid(env, "up", "--run", "general")  # the catalogue imported by the first test is still in S3
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((root / "up.json").read_text())
    services = {n: e["pid"] for n, e in state["services"].items()}

    stack_down = whaleid(env, "stack", "down", timeout=180)
    assert stack_down.returncode == 0, stack_down.stdout + stack_down.stderr
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(pid_alive(p) for p in services.values()):
        time.sleep(0.2)
    left = {n: p for n, p in services.items() if pid_alive(p)}
    assert not left, f"still running 15 s after the stack went down: {left}"
    logs = service_logs(state)
    assert "CancelledError" not in logs and "went down: stopping" in logs
    down = whaleid(env, "down", timeout=60)
    assert down.returncode == 0 and "none was running" in down.stdout, down.stdout + down.stderr
    assert_quiet(up, stack_down, down)
